"""Prior comparison: score nets trained under different diffusion priors (`model.prior`), at equal data, steps
and seeds, side by side.

    python -m bench.prior --run standard=runs/prior-standard --run energy=runs/prior-energy [--note "..."]

Two parts, one report (`prior.md`, `.json`, `.png` in --out):
- the training history each run's trainer logged on its raw weights (`model.conditioning`): loss, conditioning
  gain, silence gap and noise floor per probe;
- quality on held-out clips (the first --clips of valid.txt, cropped to --seconds, seed i for clip i), DDPM on
  the same fixed schedules for every run (the official BDDM 7 and 12 steps, DiffWave's 6, all 200 steps) and
  beside them each run's own searched presets: STOI, PESQ-WB, PESQ-NB, MCD, LS-MSE, the level of the recordings'
  quiet frames (dBFS, and over the recordings' own), the conditioning gain and the silence gap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.audio import mel_spectrogram
from model.schedules import Schedule, diffwave_fast, full
from model.vocoder import Vocoder

from .common import (DEFAULT_DATA, DEFAULT_REFERENCE, OFFICIAL, apply_threads, header, table, validation_clips,
                     write_outputs)
from .conditioning import add_runs, load_run, parse_runs
from .conditioning import report as history_report
from .quality import METRICS, conditioning_health, health_report, mean_pm, our_methods, run_logged, scheduled


def fixed_methods(voc: Vocoder, reference: Path, skip_full: bool) -> list:
    """The schedules every run is measured on, with DDPM: the official BDDM 7 and 12, DiffWave's 6, all T steps."""
    official = [scheduled(f"BDDM official {n} (DDPM)", "BDDM official", "ddpm",
                          Schedule.load(reference / OFFICIAL.format(n), voc.diffusion)) for n in (7, 12)]
    out = official + [scheduled("DiffWave fast 6 (DDPM)", "DiffWave fast", "ddpm", diffwave_fast(voc.diffusion))]
    return out if skip_full else out + [scheduled(f"DDPM, all {voc.diffusion.steps} steps", "DDPM full", "ddpm",
                                                  full(voc.diffusion))]


def floor_differences(results: list[dict], labels: list[str]) -> list[str]:
    """Per fixed schedule, how much lower each run's quiet-frame level is than the first run's (dB)."""
    at = {(r["net"], r["key"]): r["summary"]["quiet_db"][0] for r in results}
    keys = list(dict.fromkeys(r["key"] for r in results if not r["key"].startswith("BDDM ours")))
    return [f"{key}: {label}'s quiet frames are {at[(labels[0], key)] - at[(label, key)]:+.1f} dB below "
            f"{labels[0]}'s" for key in keys for label in labels[1:] if (label, key) in at and (labels[0], key) in at]


def report(runs: list[dict], results: list[dict], health: dict, args: argparse.Namespace) -> str:
    labels = [r["label"] for r in runs]
    rows = [[r["name"], r["net"], r["steps"], *(mean_pm(r["summary"][k]) for k in METRICS)]
            for key in dict.fromkeys(r["key"] for r in results) for r in results if r["key"] == key]
    return "\n".join([
        "## Quality on held-out clips", "",
        f"The first {args.clips} clips of valid.txt, each cropped to {args.seconds:g} s, mels from the recordings, "
        f"clip i sampled with seed {args.seed} + i; mean ± 95% interval over clips. Quiet dBFS: the output's median "
        "level in the recording's quiet frames (256 samples more than 45 dB below its loudest); Floor dB: that level "
        "over the recording's own.", "",
        table(["Method", "Run", "Steps", *METRICS.values()], rows), "",
        "Quiet-frame level, run against run at equal steps and schedule:", "",
        *(f"- {line}" for line in floor_differences(results, labels)), "",
        health_report(health), "",
        "## Training history", "", history_report(runs, args.note)])


def plot(runs: list[dict], results: list[dict]):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for r in runs:
        h = [x for x in r["health"] if x["step"] > 0]
        axes[0].plot([x["step"] for x in h], [x["loss"] for x in h], "o-", label=r["label"])
        floors = [(x["step"], x["floor_db"]) for x in h if x.get("floor_db") is not None]
        if floors:
            axes[1].plot(*zip(*floors), "o-", label=r["label"])
    keys = list(dict.fromkeys(r["key"] for r in results))
    for i, label in enumerate(r["label"] for r in runs):
        values = [next((x["summary"]["quiet_db"][0] for x in results if x["key"] == k and x["net"] == label), None)
                  for k in keys]
        axes[2].bar([j + 0.4 * i for j in range(len(keys))], values, width=0.4, label=label)
    axes[2].set_xticks([j + 0.2 for j in range(len(keys))], [k.replace(" (DDPM)", "") for k in keys], rotation=30,
                       ha="right", fontsize=7)
    for ax, title in zip(axes, ("Training loss (L1, whitened)", "Noise floor on the probe, dB over the recordings'",
                                "Quiet-frame level, dBFS (lower is quieter)")):
        ax.set(title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prior", description=__doc__.split("\n\n")[0])
    add_runs(ap)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--reference-schedules", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-full", action="store_true", help="leave out 200-step DDPM (slow on a CPU)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    specs = parse_runs(ap, args.run)
    runs = [load_run(label, directory) for label, directory in specs]
    results, health = [], {}
    for label, directory in specs:
        voc = Vocoder.load(directory, "cpu")
        clips = validation_clips(args.data, args.clips, args.seconds, voc.spec.sample_rate)
        mels = [mel_spectrogram(c.audio, voc.spec) for c in clips]
        presets, _ = our_methods(voc, quick=True)  # each run's own searched presets, DDPM
        for method in fixed_methods(voc, args.reference_schedules, args.skip_full) + presets:
            results.append({**run_logged(voc, method, clips, mels, args.seed), "net": label})
        health[label] = conditioning_health(voc, clips, mels, args.seed)
    head = header("bench.prior", [directory for _, directory in specs])
    write_outputs(args.out, "prior", "Prior: standard N(0, I) against the energy prior", head,
                  report(runs, results, health, args), {"runs": runs, "results": results, "conditioning": health,
                                                        "notes": args.note}, plot, runs, results)
    print(f"wrote {args.out}/prior.md, prior.json, prior.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
