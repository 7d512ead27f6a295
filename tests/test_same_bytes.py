"""Same seeds, same bytes: the shipped `small` net's audio at every preset, in both methods, through the model's entry
points and through the server, digested (sha256) against `fixtures/same-bytes-small.json`.

A refactor must leave these digests alone. A change that alters the audio on purpose re-records them
(`python tests/test_same_bytes.py --record`) and says why in its commit. Recorded in fp32 on the CPU fast path with
one thread, so the float arithmetic is the same wherever the test runs on this kind of host; the host is recorded
beside the digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

# run as a script: this checkout's packages and conftest first
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from conftest import voiced_tone  # noqa: E402
from model.audio import mel_spectrogram  # noqa: E402
from model.runtime import cpu_bf16_isa  # noqa: E402
from model.vocoder import Vocoder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "weights" / "small"
FIXTURE = Path(__file__).parent / "fixtures" / "same-bytes-small.json"
PRESETS = ("fast", "balanced", "quality")
METHODS = ("bddm", "projection")
SEED = 7


def mels() -> dict[str, np.ndarray]:
    """An LJ clip's mel (the audition page's example, first 35 frames) and a synthetic voiced tone's (0.3 s)."""
    return {"lj": np.load(REPO / "server" / "static" / "examples" / "LJ003-0043.npy")[:, :35].astype(np.float32),
            "tone": mel_spectrogram(torch.from_numpy(voiced_tone(0.3))).numpy()}


def digest(audio: np.ndarray | bytes) -> str:
    data = audio if isinstance(audio, bytes) else np.ascontiguousarray(audio, np.float32).tobytes()
    return hashlib.sha256(data).hexdigest()[:32]


def model_digests() -> dict[str, str]:
    """Vocoder entry points: vocode at each preset and method, a seeded batch, DDIM, NE sampling and streams."""
    torch.set_num_threads(1)
    voc = Vocoder.load(WEIGHTS, "cpu", "fp32", threads=1)
    out, named = {}, mels()
    for name, mel in named.items():
        for preset in PRESETS:
            p = voc.presets[preset]
            for method in METHODS:
                schedule = voc.schedule(p.rho) if method == "bddm" else None
                refine = p.refine if method == "bddm" else p.projections  # each method's own refinements
                out[f"vocode/{name}/{preset}/{method}"] = digest(voc.vocode(mel, schedule, seed=SEED, refine=refine))
    balanced = voc.presets["balanced"]
    frames = min(m.shape[-1] for m in named.values())
    batch = np.stack([m[:, :frames] for m in named.values()])
    out["vocode/batch/balanced/bddm"] = digest(voc.vocode(batch, voc.schedule(balanced.rho), seed=[3, 4],
                                                          refine=balanced.refine))
    out["ddim/lj/fast"] = digest(voc.vocode(named["lj"], voc.schedule(voc.presets["fast"].rho), seed=SEED,
                                            sampler="ddim"))
    out["ne/lj/3"] = digest(voc.vocode_ne(named["lj"], 3, seed=SEED))
    for method in METHODS:
        schedule = voc.schedule(balanced.rho) if method == "bddm" else None
        refine = balanced.refine if method == "bddm" else balanced.projections
        stream = voc.stream(named["lj"], schedule, SEED, refine, first=8, largest=16)
        out[f"stream/lj/balanced/{method}"] = digest(np.concatenate([stream.render(c) for c in stream.plan]))
    return out


def served_digests() -> dict[str, str]:
    """The server's answers (/v1 WAV, /v1 stream, /v2 FP32) for each preset and method, seeded."""
    from server import Settings  # noqa: PLC0415  (the model's digests need no server)
    from test_server_api import started  # noqa: PLC0415

    out, mel = {}, mels()["lj"]
    buf = io.BytesIO()
    np.save(buf, mel)
    client = started(Settings(weights=WEIGHTS, device="cpu", dtype="fp32", threads=1, batch_wait_ms=0))
    try:
        for preset in (*PRESETS, None):
            for method in METHODS:
                params = {"seed": SEED, "method": method, **({"rho": preset} if preset else {})}
                r = client.post("/v1/vocode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"},
                                params=params)
                assert r.status_code == 200, r.text
                out[f"v1/{preset or 'default'}/{method}"] = digest(sf.read(io.BytesIO(r.content), dtype="int16")[0]
                                                                   .tobytes())
        for method in METHODS:
            r = client.post("/v1/vocode/stream", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"},
                            params={"seed": SEED, "method": method, "rho": "fast"})
            assert r.status_code == 200, r.text
            out[f"v1-stream/fast/{method}"] = digest(r.content)
        name = client.get("/v2").json()["models"][0]
        for method in METHODS:
            body = {"inputs": [{"name": "mel", "datatype": "FP32", "shape": [1, *mel.shape],
                                "data": mel.reshape(-1).tolist()}],
                    "parameters": {"seed": SEED, "rho": "quality", "method": method}}
            r = client.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200, r.text
            out[f"v2/quality/{method}"] = digest(np.asarray(r.json()["outputs"][0]["data"], np.float32))
    finally:
        client.__exit__(None, None, None)
    return out


def host() -> dict[str, str]:
    return {"torch": torch.__version__, "machine": platform.machine(), "cpu_bf16_isa": str(cpu_bf16_isa())}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def test_the_models_bytes_are_as_recorded(recorded):
    assert model_digests() == recorded["model"], f"recorded on {recorded['host']}, this is {host()}"


def test_the_servers_bytes_are_as_recorded(recorded):
    assert served_digests() == recorded["served"], f"recorded on {recorded['host']}, this is {host()}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_same_bytes.py --record")
    FIXTURE.write_text(json.dumps({"host": host(), "model": model_digests(), "served": served_digests()},
                                  indent=1, sort_keys=True) + "\n")
    print(FIXTURE.read_text())
