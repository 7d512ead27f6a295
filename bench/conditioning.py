"""Conditioning comparison: the conditioning-health history of score-net training runs, side by side.

Each run's trainer logs the conditioning gain and the silence gap (`model.conditioning`) on fixed clips
every few hundred steps into its `config.json`; this report puts the runs' histories in one table and
one plot, so designs are compared at equal steps and data.

    python -m bench.conditioning --run A=runs/cond-A --run B=runs/cond-B [--note "..."]

writes `conditioning.md`, `.json` and `.png` to --out (bench/results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.checkpoint import read_config

from .common import DEFAULT_OUT, fmt, header, table, write_outputs


def design(config: dict) -> str:
    """What a run's score net is, in the words of the comparison."""
    net = config["score_net"]
    return (f"{net['residual_channels']}x{net['residual_layers']}, "
            f"{'standardised' if net.get('mel_mean') else 'raw'} ln-mel, "
            f"{net.get('step_embedding', 'diffwave')} step embedding, {net.get('prior', 'standard')} prior")


def load_run(label: str, directory: Path) -> dict:
    """A run's design, its health history, and each training session's steps, batch, lr and hardware."""
    config = read_config(directory)
    score = config["training"]["score"]
    sessions = [{k: run[k] for k in ("steps", "batch", "segment_samples", "lr", "hardware", "wall_seconds")}
                for run in score["runs"]]
    return {"label": label, "dir": str(directory), "design": design(config), "steps": score["steps"],
            "wall_seconds": score["wall_seconds"], "sessions": sessions, "health": score.get("health", [])}


def session_rows(run: dict) -> list[list]:
    """One row per training session, so a run continued on other hardware shows where each step ran."""
    first = [run["label"], run["design"]]
    return [[*(first if i == 0 else ["", ""]), s["steps"], f"{s['batch']} x {s['segment_samples']}", s["lr"],
             s["hardware"], s["wall_seconds"] / 60] for i, s in enumerate(run["sessions"])]


def report(runs: list[dict], notes: list[str]) -> str:
    steps = sorted({h["step"] for r in runs for h in r["health"]})
    at = {(r["label"], h["step"]): h for r in runs for h in r["health"]}

    def cell(label: str, step: int, key: str):
        h = at.get((label, step))
        if h is None:
            return ""
        if key == "gain":
            return "/".join(f"{g:.2f}" for g in h["gain"].values())
        return fmt(h[key]) if h.get(key) is not None else ""

    lines = ["Conditioning health of each run's raw weights on the same fixed held-out clips, logged by the trainer "
             "(`model.conditioning`): gain = RMS x0 error with a silence mel / with the true mel at t = 20/60/100 "
             "(1.00: the mel is ignored); silence gap = speech/silence RMS in dB with one second of silence mel on "
             "each side (DDPM, DiffWave's 6-step schedule); noise floor = the same vocoding's level in the "
             "recordings' quiet frames over the recordings' own, in dB (where the probe clips have quiet frames); "
             "loss = mean L1 noise-prediction loss since the last probe.", "",
             table(["Run", "Design", "Steps", "Batch x samples", "lr", "Hardware", "Minutes"],
                   [row for r in runs for row in session_rows(r)]), ""]
    for key, title in (("gain", "Conditioning gain at t = 20/60/100"), ("silence_gap_db", "Silence gap, dB"),
                       ("floor_db", "Noise floor, dB over the recordings'"), ("loss", "Training loss")):
        if not any(h.get(key) is not None for r in runs for h in r["health"]):
            continue
        lines += [f"### {title}", "", table(["Step", *(r["label"] for r in runs)],
                                             [[s, *(cell(r["label"], s, key) for r in runs)] for s in steps]), ""]
    if notes:
        lines += ["Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def plot(runs: list[dict]):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for r in runs:
        h = [x for x in r["health"] if x["step"] > 0]
        steps = [x["step"] for x in h]
        axes[0].plot(steps, [x["gain"]["60"] for x in h], "o-", label=f"{r['label']}: {r['design']}")
        axes[1].plot(steps, [x["silence_gap_db"] for x in h], "o-", label=r["label"])
        axes[2].plot(steps, [x["loss"] for x in h], "o-", label=r["label"])
    for ax, title in zip(axes, ("Conditioning gain at t = 60 (1 = mel ignored)", "Silence gap (dB)",
                                "Training loss (L1)")):
        ax.set(xlabel="training steps", title=title)
        ax.grid(alpha=0.3)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    return fig


def add_runs(ap: argparse.ArgumentParser) -> None:
    """The options of a comparison of training runs: the runs, notes (the commands) and where to write."""
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a training run's weights dir")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (e.g. the commands)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)


def parse_runs(ap: argparse.ArgumentParser, specs: list[str]) -> list[tuple[str, Path]]:
    """--run LABEL=DIR options as (label, directory)."""
    runs = []
    for spec in specs:
        label, _, directory = spec.partition("=")
        if not directory:
            ap.error(f"--run {spec!r}: expected LABEL=DIR")
        runs.append((label, Path(directory)))
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.conditioning", description=__doc__.split("\n\n")[0])
    add_runs(ap)
    args = ap.parse_args(argv)
    runs = [load_run(label, directory) for label, directory in parse_runs(ap, args.run)]
    head = header("bench.conditioning", Path(runs[0]["dir"]))
    write_outputs(args.out, "conditioning", "Conditioning: which design follows its mel", head,
                  report(runs, args.note), {"runs": runs, "notes": args.note}, plot, runs)
    print(f"wrote {args.out}/conditioning.md, conditioning.json, conditioning.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
