"""Training throughput: the score net's optimiser step as it was (*today*) against the faster one, in one run.

Both run the trainer's own step (`model.train.score.ScoreStep`: the score loss under autocast, backward, gradient
clipping, Adam, the EMA) as `model.train` runs it: bf16 autocast and torch.compile on CUDA, fp32 eager on the CPU.
*Today* is lmnt-com's reference `DiffWave` (`bench.speed_synthesis.reference_diffwave`), which computes what the score net
computed before its faster rewrite (a transposed-conv upsampler, one conditioner conv per layer), loaded with
the same weights; *fast* is `model.score_net.ScoreNet`. Inputs are random device-resident batches of the
trainer's shapes: the data pipeline is not timed. Both steps run at --batch x --segment-frames; --batches adds
rows of the fast step at other batch sizes beside it.

TFLOP/s counts the audio-rate convs' multiply-adds (`bench.speed_synthesis.step_macs`), 2 FLOPs each, 3 times over for the
forward and backward passes. Peak memory is CUDA's largest allocation, or on the CPU the process's resident-set
high-water mark during the row. The top kernels (CUDA) or operators (CPU) are those of one profiled step.

    python -m bench.train --config base --batch 32 --segment-frames 64 --batches 64    on CUDA: train-gpu.md
    python -m bench.train --quick                                                      a CPU smoke run: train.md
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import partial
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from model.schedules import Diffusion
from model.score_net import CONFIGS, ScoreNet
from model.train.common import EMA, Runtime, runtime
from model.train.score import ScoreStep

from .common import DEFAULT_OUT, apply_threads, fmt, header, parse_with_quick, table, timed, write_outputs
from .speed_gpu import kernel_table, top_kernels
from .speed_synthesis import device_label, reference_diffwave, step_macs

KINDS = ("today", "fast")


class Today(nn.Module):
    """The reference DiffWave with the score net's weights, called as the trainer calls the score net: it is fed the
    mel the score net standardises itself, and the integer step (its table lerps a float step only at batch 1)."""

    def __init__(self, net: ScoreNet, reference: nn.Module) -> None:
        super().__init__()
        self.reference = reference
        self.register_buffer("mel_mean", net.mel_mean.clone(), persistent=False)
        self.register_buffer("mel_std", net.mel_std.clone(), persistent=False)

    def forward(self, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.reference(x, (mel - self.mel_mean) / self.mel_std, t.long()).squeeze(1)


def model_for(kind: str, net: ScoreNet) -> nn.Module | None:
    """The module whose step is timed; None for today's where the `diffwave` package is not installed."""
    if kind == "fast":
        return net
    reference = reference_diffwave(net, Diffusion().betas)
    return None if reference is None else Today(net, reference)


def score_step(model: nn.Module, rt: Runtime, compiled: bool) -> ScoreStep:
    model.to(rt.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=rt.device.type == "cuda")
    return ScoreStep(torch.compile(model) if compiled else model, model, opt, EMA(model, 0.998), Diffusion(), rt,
                     torch.Generator(rt.device).manual_seed(0))


def reset_peak_memory(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
        return
    try:  # Linux: "5" resets the process's VmHWM to its current resident set
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gb(rt: Runtime) -> float | None:
    if rt.device.type == "cuda":
        return torch.cuda.max_memory_allocated(rt.device) / 2**30
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**20
    except (OSError, AttributeError):
        return None


def batch_of(batch: int, args, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (audio (B, frames * hop), log-mel (B, n_mels, frames)) on the device, seeded."""
    p, g = CONFIGS[args.config], torch.Generator().manual_seed(batch)
    audio = 0.5 * torch.rand(batch, args.segment_frames * p.hop, generator=g) - 0.25
    mel = torch.randn(batch, p.n_mels, args.segment_frames, generator=g) - 5.0
    return audio.to(rt.device), mel.to(rt.device)


def time_row(step: ScoreStep, batch: int, args, rt: Runtime, macs: int) -> dict:
    """Warm-up steps (the compile happens in the first), then --steps timed ones."""
    audio, mel = batch_of(batch, args, rt)
    reset_peak_memory(rt)
    _, warm_up = timed(lambda: [step(audio, mel) for _ in range(args.warmup)])
    _, wall = timed(lambda: [step(audio, mel) for _ in range(args.steps)])
    samples_s = audio.numel() * args.steps / wall
    return {"batch": batch, "segment_samples": audio.shape[-1], "warm_up_s": warm_up, "steps_per_s": args.steps / wall,
            "samples_per_s": samples_s, "tflops": 3 * 2 * macs * samples_s / 1e12, "peak_memory_gb": peak_memory_gb(rt)}


def measure(args, rt: Runtime, save: Callable[[list[dict], dict[str, list[dict]], list[str]], None]) -> None:
    """Both steps' rows, the top kernels of each at --batch, and notes, passed to `save` after every row (a run cut
    short by a time limit keeps what it has)."""
    compiled = args.compile == "on" or (args.compile == "auto" and rt.device.type == "cuda")
    rows, kernels, notes = [], {}, []
    for kind in KINDS:
        torch.manual_seed(0)  # the same weights for both steps
        net = ScoreNet(CONFIGS[args.config])
        model, macs = model_for(kind, net), step_macs(net)
        if model is None:
            notes.append("today's step not timed: install lmnt-com's reference with `pip install --no-deps diffwave`")
            continue
        step = score_step(model, rt, compiled)
        for batch in [args.batch] + (args.batches if kind == "fast" else []):
            rows.append({"step": kind, "compiled": compiled, "dtype": "bf16 autocast" if rt.device.type == "cuda"
                         else "fp32", **time_row(step, batch, args, rt, macs)})
            print(f"{kind} step at batch {batch}: {fmt(rows[-1]['steps_per_s'])} steps/s, "
                  f"{fmt(rows[-1]['samples_per_s'])} samples/s", file=sys.stderr)
            if batch == args.batch:
                audio, mel = batch_of(batch, args, rt)
                kernels[kind] = top_kernels(partial(step, audio, mel), device=rt.device.type)
            save(rows, kernels, notes)
        del step, model, net
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()


def report(rows: list[dict], kernels: dict[str, list[dict]], notes: list[str], args, device: str) -> str:
    today = next((r["samples_per_s"] for r in rows if r["step"] == "today" and r["batch"] == args.batch), None)
    what = "kernels" if device.startswith("cuda") else "operators"
    parts = [f"## Score-net training step: `{args.config}` on {device}", "",
             f"{args.steps} timed steps per row after {args.warmup} untimed ones (which run any compile). "
             f"Samples/s = batch x segment samples x steps/s; *vs today* = samples/s over today's step at batch "
             f"{args.batch}.",
             "",
             table(["Step", "Batch", "Segment", "Dtype", "Compiled", "Warm-up s", "Steps/s", "Samples/s", "TFLOP/s",
                    "Peak memory GB", "vs today"],
                   [[r["step"], r["batch"], r["segment_samples"], r["dtype"], str(r["compiled"]), r["warm_up_s"],
                     r["steps_per_s"], r["samples_per_s"], r["tflops"], r["peak_memory_gb"],
                     None if today is None else r["samples_per_s"] / today] for r in rows])]
    for kind, top in kernels.items():
        parts += ["", f"Top {what} of one {kind} step at batch {args.batch}, by self time:", "", kernel_table(top)]
    if notes:
        parts += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="base", choices=sorted(CONFIGS), help="score-net size (random weights)")
    ap.add_argument("--batch", type=int, default=32, help="the batch both steps run at")
    ap.add_argument("--segment-frames", type=int, default=64, help="mel frames per segment (x256 samples)")
    ap.add_argument("--batches", type=int, nargs="*", default=[], help="other batch sizes for the fast step")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compile runs in them)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="cuda writes train-gpu.md, the CPU train.md")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA only")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run on the tiny net")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parse_with_quick(ap, argv, {"config": "tiny", "batch": 2, "segment_frames": 16, "batches": [4],
                                       "steps": 3, "warmup": 1})
    if min(args.batch, args.segment_frames, args.steps, *args.batches) < 1 or args.warmup < 0:
        ap.error("--batch, --batches, --segment-frames and --steps must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    rt = runtime(args.device)
    if rt.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    head, device = header("bench.train", []), device_label(rt.device)
    name = "train-gpu" if rt.device.type == "cuda" else "train"

    def save(rows: list[dict], kernels: dict[str, list[dict]], notes: list[str]) -> None:
        write_outputs(args.out, name, f"Training throughput{' (GPU)' if rt.device.type == 'cuda' else ''}", head,
                      report(rows, kernels, notes, args, device),
                      {"config": args.config, "device": device, "rows": rows, "top_kernels": kernels, "notes": notes})

    measure(args, rt, save)
    print(f"wrote {args.out}/{name}.md, {name}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
