"""How soon a stream's first audio comes (`bench.speed` (g)): the whole request against `/v1/vocode/stream` on the same
server, at each preset and length, and how far the two answers are apart in 16-bit steps.
"""

from __future__ import annotations

import sys
import time

import httpx
import numpy as np

from model.vocoder import Vocoder

from .common import fmt, npy_bytes, table, timed
from .speed_synthesis import mel_of


#: What counts as the first audio of a stream: the WAV header and the first 16 KiB of PCM (0.37 s at 22050 Hz).
FIRST_AUDIO_BYTES = 44 + 16 * 1024


def stream_rows(url: str, voc: Vocoder, audio: np.ndarray, lengths: list[float], presets: list[str]) -> list[dict]:
    """(g) Per length and preset, seeded: the whole request's wall time, then the stream's first audio and last
    byte, and how far the streamed samples are from the whole request's."""
    rows, npy_type = [], {"content-type": "application/x-npy"}
    with httpx.Client(base_url=url, timeout=3600) as client:
        for seconds in lengths:
            body = npy_bytes(mel_of(voc, audio, seconds).numpy())
            for preset in presets:
                params = {"rho": preset, "seed": 0}
                whole, whole_s = timed(client.post, "/v1/vocode", content=body, headers=npy_type, params=params)
                whole.raise_for_status()
                received, first_s, t0 = bytearray(), None, time.perf_counter()
                with client.stream("POST", "/v1/vocode/stream", content=body, headers=npy_type, params=params) as r:
                    r.raise_for_status()
                    for piece in r.iter_bytes():
                        received += piece
                        if first_s is None and len(received) >= FIRST_AUDIO_BYTES:
                            first_s = time.perf_counter() - t0
                total_s = time.perf_counter() - t0
                a, b = (np.frombuffer(x[44:], np.int16).astype(int) for x in (bytes(received), whole.content))
                rows.append({"preset": preset, "steps": int(whole.headers["x-diffusion-steps"]),
                             "refine": int(whole.headers["x-refine-iterations"]), "seconds": seconds,
                             "whole_s": whole_s, "first_audio_s": first_s, "stream_total_s": total_s,
                             "first_over_whole": first_s / whole_s,
                             "max_lsb": int(np.abs(a - b).max()) if a.shape == b.shape else None})
                print(f"stream {seconds:g} s {preset}: first audio {fmt(first_s)} s, whole {fmt(whole_s)} s",
                      file=sys.stderr)
    return rows


def stream_section(load: dict) -> list[str]:
    rows = load.get("stream") or []
    if not rows:
        return []
    return ["## Streaming", "",
            f"`python -m server` serving {load['net']} (device {load['device']}): each input (real speech, seed 0) "
            "first as a whole request (`/v1/vocode`, wall time to the last byte), then streamed "
            "(`/v1/vocode/stream`): *first audio* is the WAV header and the first 16 KiB of PCM at the client. "
            "Max difference = the largest |streamed - whole| sample, in 16-bit steps.", "",
            table(["Audio s", "Preset", "Steps", "Refinements", "Whole request s", "First audio s", "Stream total s",
                   "First audio / whole", "Max difference (LSB)"],
                  [[r["seconds"], r["preset"], r["steps"], r.get("refine", 0), r["whole_s"], r["first_audio_s"],
                    r["stream_total_s"],
                    f"{100 * r['first_over_whole']:.1f}%", r["max_lsb"]] for r in rows]), ""]
