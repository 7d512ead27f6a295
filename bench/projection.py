"""Projection alone on a CPU, in one run: what the coherent start (`model.phase`) and the projections
(`model.projector`) cost, part by part, against this CPU's FFT and GEMM rates measured in the same run; a whole
request against librosa's `mel_to_audio` (NNLS and 32 Griffin-Lim iterations) on the same mel; the server end to
end, alone and under concurrent clients; and the quality each preset buys on the acceptance clips and on predicted
mels, against the net's path (today's default before projection alone had its presets).

FLOPs are counted as the issue that asked for this did: an FFT of N points 5 N log2 N (the complex count; a real
FFT does about half of that work), a filterbank product two per multiply-add of its nonzero weights (and, for the
dense product it replaces, of all of them). Every time is the fastest of several tries, and the machine's load
average is printed beside it: other work shares these cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from model import metrics
from model.audio import MelSpec, mel_spectrogram
from model.phase import BLOCK, TOLERANCE, CoherentPhase, mel_magnitude, phase_steps, window_gamma
from model.projector import Projector, _apply_gains, _frame, _momentum, _overlap_add, in_pool
from model.refine import gain_floor, project, target_of
from model.vocoder import Vocoder

from .common import (TUNING_CLIPS, Client, Server, apply_threads, base_parser, closed_loop, fmt, header, npy_bytes,
                     parse_with_quick, table, validation_clips, weights_for, write_outputs)
from .quality import METRICS, clip_metrics
from .refine import librosa_mel_to_audio
from .speed_cpu import gemm_peak

PRESETS = ("fast", "balanced", "quality")
#: Projections after each start in the tuning comparison (`--tune`).
TUNING_PROJECTIONS = (8, 16, 32, 64, 128)
TTS_MELS = Path("../shared/data/tts-mels")
#: Predicted mels in the shipped nets' contract (tacotron2-c/d/e frame differently but are the same bands).
TTS_NAMES = ("tacotron2-a", "tacotron2-b", "tacotron2-c", "tacotron2-d", "tacotron2-e", "vi-fastspeech2")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def fastest(fn, tries: int) -> float:
    best = math.inf
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def fft_flops(frames: int, n: int) -> float:
    return frames * 5 * n * math.log2(n)


def rates(spec: MelSpec, frames: int, tries: int) -> dict[str, float]:
    """FLOP/s of this CPU's real FFT (torch's, rows of n_fft, as the kernel calls it) and of its best fp32 GEMM, on
    the calling thread (one pool thread: the kernel's own)."""
    rows = torch.randn(frames, spec.n_fft)
    fft = fft_flops(frames, spec.n_fft) / fastest(lambda: torch.fft.rfft(rows), tries)
    return {"fft": fft, "gemm": gemm_peak(torch.float32)}


def start_parts(spec: MelSpec, mel: np.ndarray, tries: int) -> dict[str, float]:
    """Seconds of each part of the coherent start on one mel."""
    magnitude = mel_magnitude(mel, spec)
    start = CoherentPhase(mel, spec, 0)

    def heap() -> None:
        start.done, start.final = start.level < 0, 0
        start.through(mel.shape[-1])

    return {"magnitude (NNLS)": fastest(lambda: mel_magnitude(mel, spec), tries),
            "phase steps": fastest(lambda: phase_steps(magnitude, spec.n_fft, spec.hop, window_gamma(spec)),
                                   tries),
            "heap": fastest(heap, tries),
            "synthesis (inverse STFT)": fastest(lambda: start.audio(0, mel.shape[-1]), tries),
            "whole start": fastest(lambda: CoherentPhase(mel, spec, 0).audio(0, mel.shape[-1]), tries)}


def projection_parts(spec: MelSpec, mel: np.ndarray, tries: int) -> list[dict]:
    """Seconds and FLOPs of each part of one projection (`model.projector`), on one mel. The parts are timed on
    buffers they keep changing; the whole projection, from the start each time."""
    frames = mel.shape[-1]
    p = Projector(spec, frames)
    start = CoherentPhase(mel, spec, 0).audio(0, frames)[0].numpy()
    audio = start.copy()
    target, floor = target_of(torch.from_numpy(mel), spec).T.contiguous().numpy(), gain_floor(spec)
    p.run(audio, target, 2, 0.99, 16.0, floor)
    spectrum, buffer = p.spectrum.numpy(), p.buffer.numpy()
    nonzero = int(sum(p.stop - p.start))
    bins = spec.n_fft // 2 + 1
    parts = [("frame (pad, window)", lambda: _frame(audio, p.pad, spec.hop, p.window, p.reflect, buffer), 0, "fft"),
             ("real FFT", lambda: torch.fft.rfft(p.buffer, out=p.spectrum), fft_flops(frames, spec.n_fft), "fft"),
             ("gains: |X|, two banded filterbank products, gains applied",
              lambda: _apply_gains(spectrum, target, p.start, p.stop, p.weights, p.nearest, p.norm, p.area,
                                   np.float32(16.0), np.float32(floor), int(spec.power), p.scratch, p.gains),
              2 * 2 * nonzero * frames, "gemm"),
             ("inverse real FFT", lambda: torch.fft.irfft(p.spectrum, n=spec.n_fft, out=p.buffer),
              fft_flops(frames, spec.n_fft), "fft"),
             ("overlap-add", lambda: _overlap_add(buffer, p.pad, spec.hop, p.window, p.inverse_sum, p.padded, audio),
              0, "fft"),
             ("momentum", lambda: _momentum(spectrum, p.previous, np.float32(0.99)), 0, "fft")]
    rows = [{"part": name, "seconds": fastest(fn, tries), "flops": flops, "rate": rate} for name, fn, flops, rate in parts]
    rows.append({"part": "one projection, as run (16 iterations / 16)", "seconds": fastest(
        lambda: p.run(start.copy(), target, 16, 0.99, 16.0, floor), tries) / 16,
        "flops": 2 * fft_flops(frames, spec.n_fft) + 2 * 2 * nonzero * frames, "rate": "fft",
        "dense_filterbank_flops": 2 * 2 * spec.n_mels * bins * frames})
    return rows


def request_rows(voc: Vocoder, mel: torch.Tensor, tries: int) -> list[dict]:
    """Whole requests in the model (no server) on one mel, interleaved: each projection preset, the net's balanced
    preset, librosa's mel_to_audio."""
    runs = {f"projection {name} ({p.projections})": (lambda p=p: voc.vocode(mel, None, seed=0, refine=p.projections))
            for name, p in voc.presets.items()}
    balanced = voc.presets["balanced"]
    schedule = voc.schedule(balanced.rho)
    runs[f"bddm balanced ({schedule.steps} steps + {balanced.refine})"] = lambda: voc.vocode(
        mel, schedule, seed=0, refine=balanced.refine)
    runs["librosa mel_to_audio (32 iterations)"] = lambda: librosa_mel_to_audio(mel)
    best = {name: math.inf for name in runs}
    for _ in range(tries):
        for name, fn in runs.items():
            best[name] = min(best[name], fastest(fn, 1))
    seconds = mel.shape[-1] * voc.spec.hop / voc.spec.sample_rate
    return [{"path": name, "seconds": s, "rtf": s / seconds} for name, s in best.items()]


def served(weights: Path, voc: Vocoder, mel: torch.Tensor, requests: int, clients: int, seconds: float) -> dict:
    """The server end to end: one client's requests in turn (p50), then `clients` at once for `seconds`, with
    librosa's mel_to_audio timed between them on the same mel."""
    body, audio_seconds = npy_bytes(mel.numpy()), mel.shape[-1] * voc.spec.hop / voc.spec.sample_rate
    with Server(weights, Path(tempfile.mkdtemp()) / "server.log", {**os.environ, "VOCODER_DEVICE": "cpu"}) as srv:
        alone = Client(srv.url, requests + 1, 1, timeout=120)
        first = alone.http.post("/v1/vocode", content=body, headers={"Content-Type": "application/x-npy"})
        first.raise_for_status()
        times = [alone.vocode(body, {})["latency"] for _ in range(requests)]
        alone.close()
        librosa = fastest(lambda: librosa_mel_to_audio(mel), 3)
        model = httpx.get(f"{srv.url}/v1/model", timeout=30).json()
        many = Client(srv.url, 10**6, clients, timeout=2 * seconds + 60)
        start = time.monotonic()
        results = closed_loop(many, clients, seconds, lambda i: (body, {}, "application/x-npy", {}))
        wall = time.monotonic() - start
        many.close()
    ok = [r for r in results if r["status"] == 200]
    loaded = {"clients": clients, "ok": len(ok), "errors": len(results) - len(ok),
              "throughput": audio_seconds * len(ok) / wall, "p50_s": float(np.median([r["latency"] for r in ok]))}
    return {"method": first.headers.get("x-method"), "refine": first.headers.get("x-refine-iterations"),
            "p50_s": float(np.median(times)), "librosa_s": librosa, "ratio": float(np.median(times)) / librosa,
            "audio_seconds": audio_seconds, "load": loaded, "model": model, "loadavg": load()}


def quality_rows(voc: Vocoder, clips: list, dnsmos: bool) -> list[dict]:
    """Each projection preset, the whole-request heap at balanced (what blocks cost), the net's balanced preset
    with its refinements and librosa, on the same clips and seeds (clip i, seed i)."""
    balanced = voc.presets["balanced"]
    schedule = voc.schedule(balanced.rho)
    methods = {f"projection {name} ({p.projections})": (lambda mel, i, p=p: voc.vocode(mel, None, seed=i,
                                                                                       refine=p.projections))
               for name, p in voc.presets.items()}
    methods[f"projection balanced, whole-request heap ({balanced.projections})"] = lambda mel, i: project(
        CoherentPhase(mel, voc.spec, i, block=None).audio(0, mel.shape[-1]), mel[None], voc.spec,
        balanced.projections)[0].numpy()
    methods[f"bddm balanced ({schedule.steps} steps + {balanced.refine})"] = lambda mel, i: voc.vocode(
        mel, schedule, seed=i, refine=balanced.refine)
    methods["librosa mel_to_audio (32 iterations)"] = lambda mel, i: librosa_mel_to_audio(mel)
    rows = []
    for name, fn in methods.items():
        per_clip = [clip_metrics(c, np.asarray(fn(mel_spectrogram(c.audio, voc.spec), i)).reshape(-1), dnsmos)
                    for i, c in enumerate(clips)]
        rows.append({"method": name, "summary": {k: metrics.mean_ci95([c[k] for c in per_clip]) for k in METRICS},
                     "clips": per_clip})
        print(f"{name}: STOI {fmt(rows[-1]['summary']['stoi'][0])} PESQ-WB {fmt(rows[-1]['summary']['pesq'][0])}",
              file=sys.stderr)
    return rows


def tts_rows(voc: Vocoder, dnsmos: bool) -> list[dict]:
    """DNSMOS of the default projection preset and of the net's balanced preset on each predicted mel; on
    tacotron2-a, voicing and periodicity against WaveGlow's output for the same mel (a peer, not a recording)."""
    from model.audio import load_audio  # noqa: PLC0415

    balanced = voc.presets["balanced"]
    schedule = voc.schedule(balanced.rho)
    paths = {"projection balanced": lambda mel: voc.vocode(mel, None, seed=0, refine=balanced.projections),
             "bddm balanced": lambda mel: voc.vocode(mel, schedule, seed=0, refine=balanced.refine)}
    rows = []
    for name in TTS_NAMES:
        if not (TTS_MELS / f"{name}.npy").exists():
            continue
        mel = torch.from_numpy(np.load(TTS_MELS / f"{name}.npy").astype(np.float32))
        for path, fn in paths.items():
            audio = fn(mel)
            row = {"mel": name, "path": path, **(metrics.dnsmos(audio) if dnsmos else {})}
            peer = TTS_MELS / f"{name}.waveglow.wav"
            if peer.exists():
                row.update({f"waveglow_{k}": v for k, v in metrics.pitch_errors(load_audio(peer), audio).items()})
            rows.append(row)
    return rows


def tuning_rows(voc: Vocoder, clips: list) -> list[dict]:
    """On the tuning clips (clip i, seed i): PGHI's start at the paper's tolerance and at the shipped one, block-wise
    and whole-request, and seeded noise (the start projection alone had before), each followed by K projections;
    what `phase.TOLERANCE` and `refine.PRESET_PROJECTIONS` were chosen from."""
    def pghi(tolerance: float, block: int | None = BLOCK):
        return lambda mel, i: CoherentPhase(mel, voc.spec, i, block, tolerance).audio(0, mel.shape[-1])

    def noise(mel: torch.Tensor, i: int) -> torch.Tensor:
        return 0.1 * torch.randn(1, mel.shape[-1] * voc.spec.hop, generator=torch.Generator().manual_seed(i))

    starts = {"seeded noise": noise, "PGHI, tolerance 1e-5": pghi(1e-5), f"PGHI, tolerance {TOLERANCE:g}": pghi(TOLERANCE),
              f"PGHI, tolerance {TOLERANCE:g}, whole-request heap": pghi(TOLERANCE, None)}
    rows = []
    for name, start in starts.items():
        for k in TUNING_PROJECTIONS:
            per_clip = []
            for i, c in enumerate(clips):
                mel = mel_spectrogram(c.audio, voc.spec)
                audio = project(start(mel, i), mel[None], voc.spec, k)[0].numpy()
                per_clip.append(metrics.evaluate(c.audio, audio))
            rows.append({"start": name, "projections": k,
                         "summary": {m: metrics.mean_ci95([c[m] for c in per_clip]) for m in ("stoi", "pesq", "pesq_nb")}})
            print(f"tuning: {name} + {k}: PESQ-WB {fmt(rows[-1]['summary']['pesq'][0])}", file=sys.stderr)
    return rows


def ci(summary: dict, key: str) -> str:
    mean, half = summary[key]
    return f"{fmt(mean)} ± {fmt(half)}"


def report(data: dict, args: argparse.Namespace) -> str:
    r, s = data["rates"], data["served"]
    seconds = data["audio_seconds"]
    parts = [[p["part"], p["seconds"] * 1e3, p["flops"] / 1e6, p["flops"] / p["seconds"] / 1e9 if p["flops"] else None,
              f"{100 * p['flops'] / p['seconds'] / r[p['rate']]:.1f}% of {p['rate'].upper()}" if p["flops"] else ""]
             for p in data["projection_parts"]]
    whole = next(x for x in data["requests"] if x["path"].startswith("projection balanced"))
    start = data["start_parts"]["whole start"]
    share = f"{100 * start / whole['seconds']:.0f}%"
    body = [
        f"One {seconds:g} s mel (valid.txt's first clip) on this CPU, {torch.get_num_threads()} torch thread(s); the "
        f"load average (1/5/15 min) was {data['loadavg_start']} at the start and {data['loadavg_end']} at the end: "
        "other work shared the cores, so every time is the fastest of several tries and the ratios compare runs "
        "made side by side.",
        "",
        f"Rates measured in this run on one pool thread (the kernel's: `projector.in_pool`): torch's real FFT of "
        f"{data['frames']} rows of n_fft {fmt(r['fft'] / 1e9)} GFLOP/s (5 N log2 N per FFT), the best fp32 GEMM "
        f"{fmt(r['gemm'] / 1e9)} GFLOP/s. The parts below ran there too.",
        "",
        "## The coherent start",
        "",
        table(["Part", "ms", f"share of the balanced request ({fmt(whole['seconds'] * 1e3)} ms)"],
              [[k, v * 1e3, f"{100 * v / whole['seconds']:.0f}%"] for k, v in data["start_parts"].items()]),
        "",
        "## One projection, part by part",
        "",
        table(["Part", "ms", "MFLOP", "GFLOP/s", "of the measured rate"], parts),
        "",
        f"The dense filterbank products this kernel replaces would be "
        f"{fmt(data['projection_parts'][-1]['dense_filterbank_flops'] / 1e6)} MFLOP per projection.",
        "",
        "## Whole requests (in the model, no server)",
        "",
        table(["Path", "s", "RTF"], [[x["path"], x["seconds"], x["rtf"]] for x in data["requests"]]),
        "",
        f"The start is {share} of the default's request here; the projections are the rest.",
        "",
        "## Through the server",
        "",
        f"Default request ({s['method']}, {s['refine']} projections), {fmt(s['audio_seconds'])} s: p50 "
        f"{fmt(s['p50_s'])} s end to end, against {fmt(s['librosa_s'])} s for librosa's mel_to_audio on the same "
        f"mel in the same run: **{fmt(s['ratio'])}x**. {s['load']['clients']} clients at once: "
        f"**{fmt(s['load']['throughput'])} audio s/s** ({s['load']['ok']} requests, p50 {fmt(s['load']['p50_s'])} s, "
        f"{s['load']['errors']} errors). Load average then: {s['loadavg']}.",
        "",
        "## Quality on the acceptance clips",
        "",
        f"{len(data['clips'])} held-out clips (valid.txt after the first {TUNING_CLIPS}), cropped to "
        f"{args.seconds:g} s, clip i with seed i. Mean ± 95% interval.",
        "",
        table(["Method", *(METRICS[k] for k in KEYS)],
              [[q["method"], *(ci(q["summary"], k) for k in KEYS)] for q in data["quality"]]),
    ]
    if data["tts"]:
        keys = [k for k in ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "waveglow_vuv_f1", "waveglow_periodicity")
                if any(k in t for t in data["tts"])]
        body += ["", "## Predicted mels (no recording)", "",
                 "DNSMOS of each output; on tacotron2-a the voicing F1 and periodicity error against WaveGlow's output.",
                 "", table(["Mel", "Path", *keys], [[t["mel"], t["path"], *(t.get(k) for k in keys)] for t in data["tts"]])]
    return "\n".join(body)


KEYS = ("stoi", "pesq", "pesq_nb", "floor_db", "periodicity", "vuv_f1", "dnsmos_ovrl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = base_parser("python -m bench.projection", __doc__)
    ap.add_argument("--seconds", type=float, default=4.0, help="crop each acceptance clip to S seconds")
    ap.add_argument("--clips", type=int, default=8, help="acceptance clips (valid.txt after the tuning clips)")
    ap.add_argument("--request-seconds", type=float, default=5.0, help="the timed request's audio")
    ap.add_argument("--tries", type=int, default=7)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--load-seconds", type=float, default=20.0)
    ap.add_argument("--no-dnsmos", dest="dnsmos", action="store_false")
    ap.add_argument("--tune", action="store_true", help="only the starts and projection counts on the tuning clips "
                                                        "(projection-tuning.md)")
    return parse_with_quick(ap, argv, {"clips": 2, "seconds": 1.0, "tries": 2, "load_seconds": 3.0, "dnsmos": False})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    (weights,) = weights_for(args.weights, "cpu")
    voc = Vocoder.load(weights, device="cpu", dtype=args.dtype)
    if args.tune:
        clips = validation_clips(args.data, TUNING_CLIPS, args.seconds, voc.spec.sample_rate)
        rows = tuning_rows(voc, clips)
        body = (f"{len(clips)} tuning clips (valid.txt's first {TUNING_CLIPS}), cropped to {args.seconds:g} s, clip i "
                "with seed i; mean ± 95% interval. Load average at the end: " + load() + ".\n\n" + table(
                    ["Start", "Projections", "STOI", "PESQ-WB", "PESQ-NB"],
                    [[r["start"], r["projections"], *(ci(r["summary"], k) for k in ("stoi", "pesq", "pesq_nb"))]
                     for r in rows]))
        write_outputs(args.out, "projection-tuning", "Projection alone's start and projections on the tuning clips",
                      header("bench.projection", weights), body, {"clips": [c.id for c in clips], "rows": rows})
        return 0
    clip = validation_clips(args.data, 1, args.request_seconds, voc.spec.sample_rate)[0]
    mel = mel_spectrogram(clip.audio[:len(clip.audio) // voc.spec.hop * voc.spec.hop], voc.spec)
    data = {"loadavg_start": load(), "frames": mel.shape[-1], "audio_seconds": mel.shape[-1] * voc.spec.hop / voc.spec.sample_rate}
    # on a pool thread, as the server runs them (one OpenMP thread: `projector.in_pool`)
    data["rates"], data["start_parts"], data["projection_parts"] = in_pool(lambda _: (
        rates(voc.spec, mel.shape[-1], args.tries), start_parts(voc.spec, mel.numpy(), args.tries),
        projection_parts(voc.spec, mel.numpy(), args.tries)), [0], 1)[0]
    data["requests"] = request_rows(voc, mel, args.tries)
    data["served"] = served(weights, voc, mel, 3 * args.tries, args.clients, args.load_seconds)
    clips = validation_clips(args.data, args.clips, args.seconds, voc.spec.sample_rate, skip=TUNING_CLIPS)
    data["clips"] = [c.id for c in clips]
    data["quality"] = quality_rows(voc, clips, args.dnsmos)
    data["tts"] = [] if args.quick else tts_rows(voc, args.dnsmos)
    data["loadavg_end"] = load()
    write_outputs(args.out, "projection", "Projection alone on a CPU: cost by part, the server, quality",
                  header("bench.projection", weights), report(data, args), data)
    print(f"wrote {args.out}/projection.md, projection.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
