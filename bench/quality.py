"""Quality benchmark: every schedule method, and the baselines a user already has, on the same held-out
recordings, score networks and seeds.

For each validation clip the log-mel is computed from the real recording, vocoded by each method,
and the result is compared with the recording (LS-MSE, MCD, STOI, PESQ-WB and -NB, the noise floor in the
recording's quiet frames; `model.metrics`). Methods: DDPM over all T steps (the ceiling), DDIM on a linear
subset of 3/7/12 steps, DiffWave's fixed 6-step schedule (DDPM), each with both DDPM and DDIM the official
BDDM 7/12-step schedules and our schedule network's schedules at the rho presets, and noise estimation
(San-Roman et al. 2021) at 3/7/12 steps with each schedule family. Clip i always uses seed i, so methods
differ only in their schedule and sampler. Several --weights run side by side on the same clips.

Baselines first: librosa's `mel_to_audio` (NNLS mel inversion and 32 Griffin-Lim iterations) and projection
alone from seeded noise (`model.refine`, no network) at K iterations; then each net alone and each net followed
by its presets' refinements, the served path. Beside the intrusive metrics: Praat's pitch error, voiced/unvoiced
F1 and periodicity error, and DNSMOS P.835 (`model.metrics`). `--conditions` adds mels that look like an
acoustic model's (over-smoothed, or off in level) and reports the non-intrusive metrics on them.
The clips are valid.txt's after the first `--skip` (8: the search's and the probe's, on which `bench.refine`
tunes), so what is tuned there is accepted here on other clips.

The conditioning health of the score network (`model.conditioning`) is reported beside them: the
conditioning gain at t = 20, 60, 100 on every clip, and the silence gap of each rho preset (DDPM), the
clip's mel with one second of silence mel on each side.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import metrics
from model.audio import mel_spectrogram
from model.checkpoint import CheckpointError
from model.conditioning import GAIN_STEPS, conditioning_gain, silence_gap
from model.noise_estimation import DEFAULT_FAMILY, FAMILIES
from model.schedules import Diffusion, Schedule, diffwave_fast, full, linear_subset
from model.vocoder import Vocoder

from .common import (DEFAULT_REFERENCE, OFFICIAL, TUNING_CLIPS, Clip, base_parser, fmt, log_axes, nets_of,
                     parse_with_quick, table, timed, validation_clips, write_outputs)
from .refine import librosa_mel_to_audio

METRICS = {"ls_mse": "LS-MSE ↓", "mcd": "MCD dB ↓", "stoi": "STOI ↑", "pesq": "PESQ-WB ↑", "pesq_nb": "PESQ-NB ↑",
           "quiet_db": "Quiet dBFS ↓", "floor_db": "Floor dB ↓", "pitch_cents": "Pitch err ¢ ↓",
           "periodicity": "Periodicity err ↓", "vuv_f1": "V/UV F1 ↑", "dnsmos_ovrl": "DNSMOS OVRL ↑",
           "dnsmos_sig": "DNSMOS SIG ↑", "dnsmos_bak": "DNSMOS BAK ↑"}
#: What the robustness conditions report: what does not need the recording, and the pitch against it.
NON_INTRUSIVE = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "vuv_f1", "periodicity", "pitch_cents")
#: Projection alone's iteration counts among the baselines.
PROJECTIONS = (32, 128, 512)
#: The family of each preset with its refinements: the served path.
REFINED = "BDDM ours + refine (DDPM)"
#: The net column of the rows that use none.
NO_NET = "none (no net)"
#: Projection alone's iterations on the degraded mels.
DEGRADED_PROJECTION = 128
#: Mels that look like an acoustic model's: ln-mel -> ln-mel (`--conditions`).
LEVEL_DB = 3.0


def smoothed(mel: torch.Tensor) -> torch.Tensor:
    """An over-smoothed mel, as a regression-trained acoustic model makes: a Gaussian blur (sigma 1.5) over frames
    and over bands of the ln-mel."""
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    return torch.from_numpy(gaussian_filter(mel.numpy(), sigma=1.5, mode="nearest").astype(np.float32))


CONDITIONS = {"smoothed": smoothed,
              f"+{LEVEL_DB:g} dB": lambda mel: mel + LEVEL_DB / 20 * math.log(10),
              f"-{LEVEL_DB:g} dB": lambda mel: mel - LEVEL_DB / 20 * math.log(10)}


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # one line / marker set in the plot
    sampler: str
    steps: int
    schedule: str  # its name; noise estimation makes one per utterance
    vocode: Callable[[Vocoder, torch.Tensor, int], np.ndarray]  # (vocoder, mel, seed) -> audio
    key: str = ""  # what lines a row up with the same method on another net (the name, less a net's own rho)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.key or self.name)


def scheduled(name: str, family: str, sampler: str, schedule: Schedule, key: str = "") -> Method:
    """A method with a fixed schedule."""
    return Method(name, family, sampler, schedule.steps, schedule.name,
                  lambda voc, mel, seed: voc.vocode(mel, schedule, seed=seed, sampler=sampler), key)


def ne_methods(voc: Vocoder, quick: bool) -> tuple[list[Method], list[str]]:
    """Noise estimation (San-Roman et al. 2021) at 3, 7 and 12 steps, with each schedule family."""
    if voc.ne_net is None:
        return [], ["noise estimation skipped: these weights have no noise-level network (`model.train ne`)"]
    return [Method(f"NE {family} {n} (DDPM)", f"NE {family} (DDPM)", "ddpm", n, f"ne-{family}-{n}",
                   lambda voc, mel, seed, n=n, family=family: voc.vocode_ne(mel, n, seed=seed, family=family))
            for family in ((DEFAULT_FAMILY,) if quick else sorted(FAMILIES)) for n in ((7,) if quick else (3, 7, 12))], []


def baseline_methods(diffusion: Diffusion, quick: bool, skip_full: bool) -> list[Method]:
    """Schedules that need no schedule network: full DDPM, DDIM linear subsets, DiffWave's fast schedule."""
    out = [] if skip_full or quick else [scheduled(f"DDPM, all {diffusion.steps} steps", "DDPM full", "ddpm",
                                                   full(diffusion))]
    out += [scheduled(f"DDIM linear {n}", "DDIM linear", "ddim", linear_subset(n, diffusion))
            for n in ((7,) if quick else (3, 7, 12))]
    out.append(scheduled("DiffWave fast 6 (DDPM)", "DiffWave fast (DDPM)", "ddpm", diffwave_fast(diffusion)))
    return out


def official_methods(voc: Vocoder, reference: Path, quick: bool) -> tuple[list[Method], list[str]]:
    """The official BDDM LJSpeech schedules, sampled with DDPM and DDIM."""
    out, notes = [], []
    for steps in (7,) if quick else (7, 12):
        path = reference / OFFICIAL.format(steps)
        if not path.exists():
            notes.append(f"official BDDM {steps}-step schedule skipped: {path} not found")
            continue
        schedule = Schedule.load(path, voc.diffusion)
        samplers = ("ddpm",) if quick else ("ddpm", "ddim")
        out += [scheduled(f"BDDM official {steps} ({s.upper()})", f"BDDM official ({s.upper()})", s, schedule)
                for s in samplers]
    return out, notes


def our_methods(voc: Vocoder, quick: bool) -> tuple[list[Method], list[str]]:
    """Our schedule network's schedule at each rho preset (presets sharing a rho share a row), DDPM and DDIM."""
    if not voc.presets:
        return [], ["BDDM (ours) skipped: these weights have no rho presets (schedule net not trained/searched)"]
    names: dict[float, list[str]] = {}
    for name, preset in voc.presets.items():
        names.setdefault(preset.rho, []).append(name)
    out, notes = [], []
    for rho, presets in sorted(names.items(), reverse=True):
        label = "/".join(presets)
        try:
            schedule = voc.schedule(rho)
        except CheckpointError as e:
            notes.append(f"BDDM (ours) {label} skipped: {e}")
            continue
        out += [scheduled(f"BDDM ours {label} ρ={rho:g} ({s.upper()})", f"BDDM ours ({s.upper()})", s, schedule,
                          f"BDDM ours {label} ({s.upper()})") for s in (("ddpm",) if quick else ("ddpm", "ddim"))]
    return out, notes


LIBROSA = Method("librosa mel_to_audio, 32 GLA", "librosa", "none", 0, "none",
                 lambda voc, mel, seed: librosa_mel_to_audio(mel))


def projection_alone(k: int) -> Method:
    return Method(f"projection alone, {k}", "projection alone", "none", 0, f"projection-{k}",
                  lambda voc, mel, seed: voc.vocode(mel, None, seed=seed, refine=k))


def refine_methods(voc: Vocoder, quick: bool) -> tuple[list[Method], list[Method]]:
    """(baselines, refined): librosa and projection alone at each of `PROJECTIONS`; each preset with its
    refinements (the path the server serves for that preset)."""
    baselines = [LIBROSA, *(projection_alone(k) for k in ((PROJECTIONS[0],) if quick else PROJECTIONS))]
    refined = []
    for name, preset in sorted(voc.presets.items(), key=lambda kv: -kv[1].rho):
        if preset.refine:
            schedule, k = voc.schedule(preset.rho), preset.refine
            refined.append(Method(f"BDDM ours {name} ρ={preset.rho:g} + {k} refinements (DDPM)", REFINED, "ddpm",
                                  schedule.steps, schedule.name,
                                  lambda voc, mel, seed, s=schedule, k=k: voc.vocode(mel, s, seed=seed, refine=k),
                                  f"BDDM ours {name} + refine (DDPM)"))
    return baselines, refined


def net_name(voc: Vocoder) -> str:
    return voc.directory.name if voc.directory else "in-memory"


def clip_metrics(clip: Clip, audio: np.ndarray, dnsmos: bool) -> dict[str, float]:
    """Every metric of one output against its recording (DNSMOS NaN when left out)."""
    scores = {**metrics.evaluate(clip.audio, audio, clip.sample_rate),
              **metrics.pitch_errors(clip.audio, audio, clip.sample_rate)}
    return {**scores, **(metrics.dnsmos(audio, clip.sample_rate) if dnsmos else dict.fromkeys(NON_INTRUSIVE[:3], math.nan))}


def run_method(voc: Vocoder, method: Method, clips: list[Clip], mels: list, seed: int, dnsmos: bool = True,
               condition: str = "clean") -> dict:
    """Vocode every clip with one method; per-clip metrics and the real-time factor over all clips."""
    per_clip, wall = [], 0.0
    for i, (clip, mel) in enumerate(zip(clips, mels)):
        audio, seconds = timed(method.vocode, voc, mel, seed + i)
        wall += seconds
        per_clip.append({"id": clip.id, "wall_s": seconds, **clip_metrics(clip, audio, dnsmos)})
    audio_seconds = sum(c.seconds for c in clips)
    summary = {k: metrics.mean_ci95([c[k] for c in per_clip]) for k in METRICS}
    return {"net": net_name(voc), "name": method.name, "key": method.key, "family": method.family,
            "sampler": method.sampler, "steps": method.steps, "schedule": method.schedule, "condition": condition,
            "rtf": wall / audio_seconds, "summary": summary, "clips": per_clip}


def run_logged(voc: Vocoder, method: Method, clips: list[Clip], mels: list, seed: int, dnsmos: bool = True,
               condition: str = "clean") -> dict:
    """`run_method`, with one progress line on stderr (the full run takes a while on a CPU)."""
    t0 = time.time()
    r = run_method(voc, method, clips, mels, seed, dnsmos, condition)
    print(f"{r['net']} [{condition}]: {method.name:40s} steps={r['steps']:3d} PESQ={fmt(r['summary']['pesq'][0])} "
          f"STOI={fmt(r['summary']['stoi'][0])} RTF={fmt(r['rtf'])} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return r


def conditioning_health(voc: Vocoder, clips: list[Clip], mels: list, seed: int) -> dict:
    """Conditioning gain per noise level, and the silence gap per rho preset (DDPM), over the clips."""
    gains = []
    for i, (clip, mel) in enumerate(zip(clips, mels)):
        audio = torch.from_numpy(clip.audio[:mel.shape[-1] * voc.spec.hop])[None].to(voc.device)
        gains.append(conditioning_gain(voc.score_net, audio, mel[None].to(voc.device), voc.diffusion, seed=seed + i))
    gaps = {}
    for name, preset in sorted(voc.presets.items(), key=lambda kv: -kv[1].rho):
        schedule = voc.schedule(preset.rho)
        gaps[name] = {"rho": preset.rho, "steps": schedule.steps, "db": [
            silence_gap(lambda m, i=i: voc.vocode(m, schedule, seed=seed + i), m[None], voc.spec.hop,
                        voc.spec.sample_rate) for i, m in enumerate(mels)]}
    return {"gain": {t: [g[t] for g in gains] for t in GAIN_STEPS}, "silence_gap": gaps}


def health_report(health: dict[str, dict]) -> str:
    """One column per net: the conditioning gain per noise level and the silence gap per preset."""
    nets = list(health)
    first = health[nets[0]]
    rows = [[f"conditioning gain at t = {t}", *(mean_pm(metrics.mean_ci95(health[n]["gain"][t])) for n in nets)]
            for t in first["gain"]]
    presets = list(dict.fromkeys(p for n in nets for p in health[n]["silence_gap"]))
    rows += [[f"silence gap, {p} (DDPM)", *(gap_cell(health[n]["silence_gap"].get(p)) for n in nets)] for p in presets]
    return "\n".join([
        "## Conditioning health",
        "",
        "Does the network follow its mel (`model.conditioning`)? Conditioning gain: RMS error of x0_hat with a "
        "silence mel / with the true mel, on each clip noised to level t (1.0: the mel is ignored). Silence gap: "
        "RMS of the speech span / RMS of one second of silence mel on each side of it, vocoded.",
        "",
        table(["Measure", *(f"{n}: mean ± 95% CI over clips" for n in nets)], rows),
    ])


def gap_cell(g: dict | None) -> str:
    return "n/a" if g is None else f"{mean_pm(metrics.mean_ci95(g['db']))} dB (ρ={g['rho']:g}, {g['steps']} steps)"


def mean_pm(mean_ci: tuple[float, float]) -> str:
    mean, half = mean_ci
    return fmt(mean) if not np.isfinite(half) else f"{fmt(mean)} ± {fmt(half)}"


def side_by_side(results: list[dict]) -> list[dict]:
    """Rows in method order, each method's nets next to each other."""
    keys = list(dict.fromkeys(r["key"] for r in results))
    return sorted(results, key=lambda r: keys.index(r["key"]))


def preset_summary(results: list[dict]) -> list[str]:
    """The baselines, then each net's own presets (DDPM) alone and with their refinements, side by side: steps,
    STOI, PESQ-WB, PESQ-NB, periodicity error, noise floor, DNSMOS and RTF."""
    clean = [r for r in results if r["condition"] == "clean"]
    ours = [r for r in clean if r["family"] in ("BDDM ours (DDPM)", REFINED)]
    nets = list(dict.fromkeys(r["net"] for r in ours))
    if not ours:
        return []
    cell = {(r["net"], r["key"]): r for r in ours}
    rows = [[r["name"], preset_cell(r), *([""] * (len(nets) - 1))] for r in clean if r["net"] == NO_NET]
    rows += [[key.removeprefix("BDDM ours ").removesuffix(" (DDPM)"),
              *(preset_cell(cell.get((n, key))) for n in nets)] for key in dict.fromkeys(r["key"] for r in ours)]
    return ["The baselines, then each net at its own searched presets (DDPM), alone and with the preset's "
            "refinements, side by side: steps · STOI · PESQ-WB · PESQ-NB · periodicity error · floor dB · "
            "DNSMOS OVRL · RTF.", "",
            table(["Method", *nets], rows), ""]


def preset_cell(r: dict | None) -> str:
    if r is None:
        return "n/a"
    m = r["summary"]
    return (f"{r['steps']} · {fmt(m['stoi'][0])} · {fmt(m['pesq'][0])} · {fmt(m['pesq_nb'][0])} · "
            f"{fmt(m['periodicity'][0])} · {fmt(m['floor_db'][0])} · {fmt(m['dnsmos_ovrl'][0])} · {fmt(r['rtf'])}")


def robustness(results: list[dict]) -> list[str]:
    """The non-intrusive metrics (and pitch against the recording) on the degraded mels of `--conditions`."""
    rows = [[r["condition"], r["name"], r["net"], *(mean_pm(r["summary"][k]) for k in NON_INTRUSIVE)]
            for r in results if r["condition"] != "clean"]
    if not rows:
        return []
    return ["", "## Mels like an acoustic model's", "",
            "The same clips, their mels over-smoothed (a Gaussian blur, sigma 1.5, over frames and bands) or off in "
            f"level by {LEVEL_DB:g} dB, as a TTS front end's may be. No threshold: this is where a better-trained net "
            "has to win. DNSMOS needs no reference; pitch, V/UV F1 and periodicity are against the recording.", "",
            table(["Condition", "Method", "Net", *(METRICS[k] for k in NON_INTRUSIVE)], rows)]


def report(results: list[dict], health: dict, clips: list[Clip], args: argparse.Namespace, notes: list[str]) -> str:
    rows = [[r["name"], r["net"], r["sampler"].upper(), r["steps"], *(mean_pm(r["summary"][k]) for k in METRICS),
             r["rtf"]] for r in side_by_side([r for r in results if r["condition"] == "clean"])]
    audio = sum(c.seconds for c in clips)
    lines = [
        f"{len(clips)} held-out LJ Speech clips ({', '.join(c.id for c in clips)}: {args.data / 'valid.txt'} after its "
        f"first {args.skip}; {audio:.1f} s of audio"
        + (f", each cropped to its first {args.seconds:g} s" if args.seconds else "")
        + f"), log-mels computed from the recordings; clip i is sampled with seed {args.seed} + i for every method.",
        "",
        *preset_summary(results),
        "Each cell is the mean ± the half-width of its 95% Student-t interval over clips. "
        f"RTF = synthesis wall seconds / audio seconds on {args.device.upper()} (one clip at a time, lower is faster).",
        "Quiet dBFS: the median level of the output in the recording's quiet frames (256 samples more than 45 dB "
        "below its loudest); Floor dB: that level over the recording's own there (0 is the recording's floor).",
        "PESQ-WB is P.862.2 wideband; PESQ-NB is narrow-band P.862.1 MOS-LQO (raw P.862, the scale of BDDM's "
        "published 4.05, maps to it as 0.999 + 4 / (1 + exp(-1.4945 raw + 4.6607)): raw 4.05 is 4.20).",
        "Pitch (Praat, 10 ms frames): RMS error in cents on frames voiced in both, V/UV F1 against the recording, "
        "periodicity error (RMS of the pitch-strength difference). DNSMOS P.835 (speechmos) at 16 kHz; a clip "
        "shorter than 9 s is looped to 9 s by the package" + ("" if args.dnsmos else " (left out: --no-dnsmos)") + ".",
        "", table(["Method", "Net", "Sampler", "Steps", *METRICS.values(), f"RTF ({args.device})"], rows),
        *robustness(results),
    ]
    if health:
        lines += ["", health_report(health)]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def plot(results: list[dict]):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    several = len({r["net"] for r in results}) > 1
    for r in results:
        r["line"] = f"{r['family']}, {r['net']}" if several else r["family"]
    families = list(dict.fromkeys(r["line"] for r in results))
    markers = "os^Dvx*P"
    ticks = sorted({r["steps"] for r in results})
    for ax, key in zip(axes, ("pesq", "stoi")):
        for i, fam in enumerate(families):
            pts = sorted((r["steps"], *r["summary"][key]) for r in results if r["line"] == fam)
            steps, means, halves = (np.array(v, dtype=float) for v in zip(*pts))
            dodge = 1 + 0.02 * (i - len(families) / 2)  # keep equal-step error bars apart
            ax.errorbar(steps * dodge, means, yerr=np.nan_to_num(halves), marker=markers[i % len(markers)],
                        capsize=3, label=fam, linestyle="-" if len(pts) > 1 else "none")
        log_axes(ax, ticks, log_y=False)
        ax.set(xlabel="sampling steps", ylabel=METRICS[key])
    axes[0].legend(fontsize=8)
    fig.suptitle("Quality vs steps (mean ± 95% CI over held-out clips)")
    return fig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = base_parser("python -m bench.quality", __doc__, several=True)
    ap.add_argument("--reference-schedules", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--clips", type=int, default=None, help="N validation clips after --skip (default: all of them)")
    ap.add_argument("--skip", type=int, default=TUNING_CLIPS, help="leave out valid.txt's first N clips (the search's "
                    "and probe's, on which bench.refine tunes)")
    ap.add_argument("--methods", choices=("all", "refine"), default="all", help="refine: only the baselines and each "
                    "net's presets alone and refined (the served paths)")
    ap.add_argument("--conditions", nargs="*", choices=sorted(CONDITIONS), default=[],
                    help="also vocode degraded mels and report the non-intrusive metrics there")
    ap.add_argument("--no-dnsmos", dest="dnsmos", action="store_false", help="leave DNSMOS out (seconds per clip)")
    ap.add_argument("--seconds", type=float, default=3.0, help="crop every clip to its first S seconds; 0: whole clips")
    ap.add_argument("--skip-full", action="store_true", help="leave out 200-step DDPM (slow on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where to synthesise (the RTF column is measured there)")
    args = parse_with_quick(ap, argv, {"clips": 3, "seconds": 2.0})
    if (args.clips is not None and args.clips < 1) or args.seconds < 0 or args.skip < 0:
        ap.error("--clips must be positive and --seconds and --skip not negative")
    args.seconds = args.seconds or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nets, head = nets_of("bench.quality", args)
    results, health, notes = [], {}, []
    for index, weights in enumerate(nets):  # the same clips, seeds and schedules for every net
        voc = Vocoder.load(weights, device=args.device, dtype=args.dtype)
        clips = validation_clips(args.data, args.clips, args.seconds, voc.spec.sample_rate, args.skip)
        mels = [mel_spectrogram(c.audio, voc.spec) for c in clips]
        baselines, refined = refine_methods(voc, args.quick)
        ours, ours_notes = our_methods(voc, args.quick or args.methods == "refine")
        notes += [f"{net_name(voc)}: {n}" for n in ours_notes]
        methods = ours + refined
        if args.methods == "all":
            official, more = official_methods(voc, args.reference_schedules, args.quick)
            ne, ne_notes = ne_methods(voc, args.quick)
            notes += [f"{net_name(voc)}: {n}" for n in more + ne_notes]
            methods = baseline_methods(voc.diffusion, args.quick, args.skip_full) + official + ours + ne + refined
        for condition, degrade in {"clean": None, **{c: CONDITIONS[c] for c in args.conditions}}.items():
            these = mels if degrade is None else [degrade(m) for m in mels]
            served = methods if degrade is None else [m for m in methods if m.family == REFINED and m.schedule ==
                                                       voc.schedule(voc.default_rho).name]  # the default preset
            shown = baselines if degrade is None else [LIBROSA, projection_alone(DEGRADED_PROJECTION)]
            if index == 0:  # the baselines need no net: once, on the first net's clips
                results += [{**run_logged(voc, m, clips, these, args.seed, args.dnsmos, condition), "net": NO_NET}
                            for m in shown]
            results += [run_logged(voc, m, clips, these, args.seed, args.dnsmos, condition) for m in served]
        if args.methods == "all":
            health[net_name(voc)] = conditioning_health(voc, clips, mels, args.seed)
    write_outputs(args.out, "quality", "Quality benchmark", head, report(results, health, clips, args, notes),
                  {"clips": [c.id for c in clips], "seconds": args.seconds, "seed": args.seed, "notes": notes,
                   "results": results, "conditioning": health}, plot,
                  [r for r in results if r["condition"] == "clean" and r["steps"] > 0])
    print(f"wrote {args.out}/quality.md, quality.json, quality.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
