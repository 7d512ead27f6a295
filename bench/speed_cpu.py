"""How fast the CPU paths run side by side (`bench.speed` (h), `--cpu-paths`): `Vocoder` on today's eager module, the
fast path (`model.score_net_cpu`) in fp32 and bf16, and lmnt's DiffWave in a plain DDPM loop, each path's GFLOP/s
against the best GEMM rate measured in the same run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from model import score_net_cpu
from model.checkpoint import read_config
from model.sampling import step
from model.schedules import Schedule
from model.vocoder import Vocoder

from .common import DEFAULT_REFERENCE, fmt, log_axes, table, timed, write_outputs
from .speed_synthesis import (bench_schedules, mel_of, net_label, reference_diffwave, run_flops, speech,
                              synthesis_rows, synthesis_section)


def gemm_peak(dtype: torch.dtype, reps: int = 5) -> float:
    """The best FLOP/s of a GEMM in `dtype`, torch.mm's or oneDNN's (the fast path's: on AMD's AVX-512 cores
    twice MKL's fp32 rate), over a square GEMM and the fast path's tile shapes, in this run."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 96, 64), (4096, 192, 128)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        runs = [(torch.mm, b)] + ([(score_net_cpu.linear, b.t().contiguous())] if score_net_cpu.ONEDNN else [])
        for gemm, w in runs:
            best = max(best, 2 * m * k * n / min(timed(gemm, a, w)[1] for _ in range(reps)))
    return best


@torch.inference_mode()
def reference_synthesis(ref: torch.nn.Module, mel: torch.Tensor, schedule: Schedule, seed: int = 0) -> torch.Tensor:
    """A plain DDPM loop over `schedule` with lmnt's DiffWave at the nearest integer steps, on its own standardised
    mel (`reference_diffwave`): what a naive eager vocoder of the same shape and step count spends."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, mel.shape[-1] * 256, generator=g)
    for n in reversed(range(schedule.steps)):
        alpha, beta, sigma = float(schedule.alpha[n]), float(schedule.beta[n]), float(schedule.sigma[n])
        eps = ref(x, mel, torch.tensor([round(float(schedule.timesteps[n]))])).squeeze(1)
        x = step(x, eps, alpha**2, beta, sigma, torch.randn(x.shape, generator=g) if n > 0 else None)
    return x


#: (h) the paths timed side by side: label -> Vocoder.load keywords (None: lmnt's DiffWave).
CPU_PATHS = {"eager module": {"dtype": "fp32", "cpu_fast": False}, "fast fp32": {"dtype": "fp32"},
             "fast bf16": {"dtype": "bf16"}, "lmnt DiffWave": None}


def cpu_path_rows(weights: Path, audio: np.ndarray, lengths: list[float], reps: int) -> list[dict]:
    """(h) Balanced synthesis per path and length, the paths interleaved within each repetition (median)."""
    vocs = {label: Vocoder.load(weights, "cpu", **kw) for label, kw in CPU_PATHS.items() if kw is not None}
    voc = vocs["fast fp32"]
    schedules, _ = bench_schedules(voc, DEFAULT_REFERENCE)
    label = next((k for k in schedules if k.startswith("balanced")), next(iter(schedules)))
    schedule, net = schedules[label], voc.score_net
    ref = reference_diffwave(net, voc.diffusion.betas)
    peak = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}

    def paths(mel: torch.Tensor) -> dict:
        runs = {k: (lambda v=v: v.vocode(mel, schedule, seed=0)) for k, v in vocs.items()}
        if ref is not None:
            ref_mel = (mel[None] - net.mel_mean) / net.mel_std
            runs["lmnt DiffWave"] = lambda: reference_synthesis(ref, ref_mel, schedule)
        return runs

    for run in paths(mel_of(voc, audio, 1.0)).values():  # warm-up: allocator, oneDNN kernels
        run()
    rows = []
    for seconds in lengths:
        mel = mel_of(voc, audio, seconds)
        runs = paths(mel)
        walls = {k: [] for k in runs}
        for _ in range(reps):
            for k, run in runs.items():
                walls[k].append(timed(run)[1])
        flops = run_flops(net, mel.shape[-1], schedule.steps)
        reference = float(np.median(walls["lmnt DiffWave"])) if ref is not None else None
        for k, w in walls.items():
            wall = float(np.median(w))
            rate = (flops if k != "lmnt DiffWave" else  # one pass over the whole input, projecting at every step
                    run_flops(net, mel.shape[-1], schedule.steps, 0, mel.shape[-1])) / wall
            rows.append({"net": net_label(voc), "path": k, "schedule": label, "steps": schedule.steps,
                         "seconds": seconds, "wall_s": wall, "rtf": wall / seconds,
                         "over_reference": wall / reference if reference else None, "gflops": rate / 1e9,
                         "peak_gflops": peak["bf16" if "bf16" in k else "fp32"] / 1e9,
                         "efficiency": rate / peak["bf16" if "bf16" in k else "fp32"]})
        print(f"cpu paths of {net_label(voc)}, {seconds:g} s: "
              + ", ".join(f"{k} RTF {fmt(float(np.median(w)) / seconds)}" for k, w in walls.items()), file=sys.stderr)
    return rows


def cpu_path_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["## CPU paths side by side", "",
            f"Seeded DDPM at the {rows[0]['schedule']} preset ({rows[0]['steps']} steps), batch 1, real speech, "
            f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
            "median wall time with the paths interleaved in each repetition. "
            "*Eager module*: `Vocoder` with today's `ScoreNet` (`cpu_fast=False`); *fast*: `Vocoder` on "
            "`model.score_net_cpu` (fp32 exact; bf16 GEMMs); *lmnt DiffWave*: lmnt-com's `DiffWave` with our "
            "weights in a plain DDPM loop at the same step count. GFLOP/s counts the step as it runs "
            "(`run_flops`; lmnt's projects the conditioner at every step); efficiency is against the best fp32 "
            "(bf16 for the bf16 path) GEMM rate measured in the same run, torch.mm's (MKL) or oneDNN's, whichever "
            "was the faster.", "",
            table(["Net", "Path", "Audio s", "Wall s", "RTF", "x lmnt time", "GFLOP/s", "GEMM peak GFLOP/s",
                   "Efficiency"],
                  [[r["net"], r["path"], r["seconds"], r["wall_s"], r["rtf"], r["over_reference"], r["gflops"],
                    r["peak_gflops"], f"{100 * r['efficiency']:.0f}%"] for r in rows]), ""]


def plot_cpu_paths(rows: list[dict]):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    nets = list(dict.fromkeys(r["net"] for r in rows))
    fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 4.5), squeeze=False)
    for ax, net in zip(axes[0], nets):
        for path in CPU_PATHS:
            mine = [r for r in rows if (r["net"], r["path"]) == (net, path)]
            if mine:
                ax.plot([r["seconds"] for r in mine], [r["rtf"] for r in mine], "o-", label=path)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        log_axes(ax, sorted({r["seconds"] for r in rows}))
        ax.set(xlabel="audio seconds", ylabel="RTF (wall / audio)", title=f"{net}: balanced synthesis on the CPU")
        ax.legend(fontsize=8)
    return fig


def cpu_paths_main(args, nets: list[Path], head: dict) -> int:
    """--cpu-paths: (h) alone for each net, one report named after the nets (each a run under 10 minutes)."""
    audio = speech(args.data, max(*args.lengths, args.preset_seconds), read_config(nets[0])["audio"]["sample_rate"])
    rows, presets = [], []
    for weights in nets:
        rows += cpu_path_rows(weights, audio, args.lengths, args.reps)
        for dtype in ("fp32", "bf16"):  # every preset on the fast path, for the choice of the CPU default
            voc = Vocoder.load(weights, "cpu", dtype)
            presets += [{**r, "device": f"cpu, fast {dtype}"} for r in
                        synthesis_rows(voc, audio, bench_schedules(voc, args.reference_schedules)[0],
                                       [args.preset_seconds])]
    name = "speed-cpu-" + "-".join(w.resolve().name for w in nets)
    write_outputs(args.out, name, "CPU paths side by side", head,
                  "\n".join(cpu_path_section(rows) + synthesis_section(presets)),
                  {"cpu_paths": rows, "presets": presets}, plot_cpu_paths, rows)
    print(f"wrote {args.out}/{name}.md, {name}.json, {name}.png", file=sys.stderr)
    return 0
