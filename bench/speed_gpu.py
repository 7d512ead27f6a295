"""How far batching and torch.compile carry (`bench.speed` (f)): batched throughput at the balanced preset, eager and
compiled, with the compile time, the achieved TFLOP/s and, on CUDA, the profile's top kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.vocoder import Vocoder

from .common import sync, table, timed
from .speed_synthesis import bench_schedules, device_label, median_time, mel_of, net_label, step_macs


def compile_modes(which: str, device: str) -> list[str]:
    """--compile: auto times eager and compiled on CUDA, eager only on the CPU; on: both; off: eager only."""
    return ["off", "on"] if which == "on" or (which == "auto" and device == "cuda") else ["off"]


@torch.inference_mode()
def batch_rows(args, weights: Path, audio: np.ndarray, dev: str) -> tuple[list[dict], list[dict]]:
    """(f) rows per (compile mode, batch) and, on CUDA, the compiled synthesis's top kernels."""
    rows, kernels = [], []
    batches = args.batches or ([1, 4, 16, 64] if dev == "cuda" else [1, 4])
    for mode in compile_modes(args.compile, dev):
        voc = Vocoder.load(weights, device=dev, dtype=args.dtype, compile=mode)
        schedules, _ = bench_schedules(voc, args.reference_schedules)
        label = next((k for k in schedules if k.startswith("balanced")), next(iter(schedules)))
        mel = mel_of(voc, audio, args.batch_seconds)
        first_calls = [(mel[None, :, :16 + b].repeat(b, 1, 1), list(range(b))) for b in (1, 2)]
        _, warm_s = timed(lambda: [voc.vocode(m, schedules[label], seed=s) for m, s in first_calls])  # the compile
        macs = step_macs(voc.score_net) * mel.shape[-1] * voc.spec.hop * schedules[label].steps
        for batch in batches:
            clips = mel[None].repeat(batch, 1, 1)
            wall = median_time(lambda: voc.vocode(clips, schedules[label], seed=list(range(batch))), args.reps)
            rows.append({"net": net_label(voc), "device": device_label(voc.device),
                         "dtype": str(voc.dtype).removeprefix("torch."),
                         "compiled": voc.compiled, "warm_up_s": warm_s, "schedule": label,
                         "steps": schedules[label].steps, "seconds": args.batch_seconds, "batch": batch,
                         "wall_s": wall, "rtf": wall / (batch * args.batch_seconds),
                         "audio_s_per_s": batch * args.batch_seconds / wall, "tflops": 2 * macs * batch / wall / 1e12})
        if dev == "cuda" and voc.compiled:
            kernels = top_kernels(lambda: voc.vocode(mel, schedules[label], seed=0))
    return rows, kernels


def top_kernels(fn, top: int = 10, device: str = "cuda") -> list[dict]:
    """The CUDA kernels (or on the CPU, the operators) that take the time of one call of `fn`, by total self time."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    activity, key = ((ProfilerActivity.CUDA, "self_device_time_total") if device == "cuda"
                     else (ProfilerActivity.CPU, "self_cpu_time_total"))
    with profile(activities=[activity]) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, key))
    return [{"kernel": e.key[:90], "calls": e.count, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total}
            for e in events[:top]]


def kernel_table(kernels: list[dict]) -> str:
    return table(["Kernel", "Calls", "ms", "Share"],
                 [[f"`{k['kernel']}`", k["calls"], k["ms"], f"{100 * k['share']:.1f}%"] for k in kernels])


def batch_section(rows: list[dict], kernels: list[dict]) -> list[str]:
    if not rows:
        return []
    parts = ["## Batched and compiled", "",
             "Seeded DDPM at the balanced preset on copies of one real-speech mel per batch, median wall time of "
             "`Vocoder.vocode`. Compiled = `torch.compile(dynamic=True)` of the score-net step (VOCODER_COMPILE); "
             "*warm-up* is the first two calls (batch 1 and 2), which compile it. Audio s / s = batch x clip "
             "seconds / wall; TFLOP/s counts the audio-rate convs' multiply-adds (2 FLOPs each).", "",
             table(["Net", "Device", "Dtype", "Compiled", "Warm-up s", "Steps", "Clip s", "Batch", "Wall s",
                    "RTF per clip", "Audio s / s", "TFLOP/s"],
                   [[r["net"], r["device"], r["dtype"], str(r["compiled"]), r["warm_up_s"], r["steps"], r["seconds"], r["batch"],
                     r["wall_s"], r["rtf"], r["audio_s_per_s"], r["tflops"]] for r in rows])]
    if kernels:
        parts += ["", "Top CUDA kernels of one compiled synthesis (batch 1):", "", kernel_table(kernels)]
    return parts + [""]
