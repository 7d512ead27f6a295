"""Mel-consistency refinement: which way of combining the score net with projections onto the mel is worth its
CPU time, compared at matched time with the baselines a user already has.

Candidates, all DDPM on the net's own searched presets, on the tuning clips (`common.TUNING_CLIPS`: the first clips
of valid.txt, which the search and the trainer's probe already use), clip i with seed i:

- (a) refinement after sampling: each preset, then K projections (`model.refine.project`);
- (b) GLA-Grad (Liu et al., ICASSP 2024): inside the first reverse steps, the x0 estimate is projected onto the
  mel and the step goes on from the projected x0 (`gla_grad`);
- (c) shallow diffusion (DiffSinger, Liu et al. 2022): projection alone from noise, noised to the level of one
  of the preset's last steps, and only those steps run (`shallow`);
- (d) combinations: (b) and (c) followed by K refinements;
- baselines: projection alone from seeded noise at K iterations (no net), and librosa's `mel_to_audio`
  (NNLS mel inversion and 32 Griffin-Lim iterations).

Every row is timed, but wall time on a shared 2-core machine swings with its neighbours, so rows are matched
by a cost measured in the same run instead: each candidate is so many score-net steps and so many projections,
and one of each is timed on the same 3 s of speech (the fastest of several tries). The modelled real-time factor
is steps x (one step's time) + projections x (one projection's time), over the audio's duration; the wall RTF
is reported beside it. The report lists rows by that cost, so a row is compared with what the same CPU time
buys elsewhere.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from model import metrics
from model.audio import mel_spectrogram
from model.refine import project
from model.sampling import Noise, State, ddpm, windowed_eps
from model.schedules import Schedule
from model.vocoder import Vocoder

from .common import (TUNING_CLIPS, Clip, apply_threads, base_parser, fmt, header, parse_with_quick, table, timed,
                     validation_clips, weights_for, write_outputs)

#: What a row reports, beside the time.
METRICS = {"stoi": "STOI ↑", "pesq": "PESQ-WB ↑", "pesq_nb": "PESQ-NB ↑", "mcd": "MCD dB ↓", "floor_db": "Floor dB ↓",
           "periodicity": "Periodicity err ↓", "vuv_f1": "V/UV F1 ↑"}
#: Librosa's one-liner, as a speech engineer already has it (its default power=2 is wrong for a magnitude mel).
LIBROSA = dict(sr=22050, n_fft=1024, hop_length=256, win_length=1024, power=1.0, fmin=0, fmax=8000, n_iter=32)


def librosa_mel_to_audio(mel: torch.Tensor) -> np.ndarray:
    """`librosa.feature.inverse.mel_to_audio` on exp(mel), cut to the mel's length."""
    import librosa  # noqa: PLC0415  (the test extra)

    audio = librosa.feature.inverse.mel_to_audio(np.exp(mel.numpy().astype(np.float64)), **LIBROSA)
    return np.pad(audio, (0, max(0, mel.shape[-1] * 256 - len(audio))))[:mel.shape[-1] * 256].astype(np.float32)


def projection_alone(voc: Vocoder, mel: torch.Tensor, seed: int, iterations: int) -> torch.Tensor:
    """Projection from seeded noise with no network, as the server's `method=projection` serves it."""
    return torch.from_numpy(voc.vocode(mel, None, seed=seed, refine=iterations))


def gla_grad(voc: Vocoder, mel: torch.Tensor, schedule: Schedule, seed: int, projected_steps: int,
             iterations: int) -> torch.Tensor:
    """DDPM on `schedule` where each of the first `projected_steps` reverse steps projects its x0 estimate onto the
    mel (`iterations` projections) and continues from it: eps is re-derived from the projected x0 (GLA-Grad), a
    hook on the sampler's step."""
    prior = voc.score_net.prior

    def project_x0(state: State) -> State | None:
        if schedule.steps - state.n > projected_steps:
            return None
        x0 = project(prior.to_audio(state.x0, mel), mel, voc.spec, iterations)
        return state.with_x0(prior.whiten(x0, mel))

    return ddpm(windowed_eps(voc.score_net), mel, schedule, seed, voc.spec.hop, prior, hook=project_x0)


class ShallowStart:
    """Shallow diffusion's noise: its first draw, x_m, is `start` noised to the level alpha_m (whitened), the
    rest are the seed's, so DDPM over the schedule's last m steps runs steps m..1 only."""

    def __init__(self, start: torch.Tensor, mel: torch.Tensor, alpha_m: float, prior, noise: Noise) -> None:
        self.start, self.mel, self.alpha_m, self.prior, self.noise, self.first = start, mel, alpha_m, prior, noise, True

    def draw(self, length: int, device: torch.device | str) -> torch.Tensor:
        z = self.noise.draw(length, device)
        if not self.first:
            return z
        self.first = False
        return self.alpha_m * self.prior.whiten(self.start, self.mel) + math.sqrt(1 - self.alpha_m**2) * z


def shallow(voc: Vocoder, mel: torch.Tensor, schedule: Schedule, seed: int, last_steps: int,
            iterations: int) -> torch.Tensor:
    """Shallow diffusion: projection alone (`iterations`), noised to the level alpha_m of the schedule's m-th step
    from the end (m = `last_steps`), then DDPM steps m..1 only."""
    start, m = projection_alone(voc, mel, seed, iterations), last_steps
    tail = Schedule(schedule.beta[:m], schedule.alpha[:m], schedule.sigma[:m], schedule.timesteps[:m], schedule.name)
    noise = ShallowStart(start, mel, float(schedule.alpha[m - 1]), voc.score_net.prior, Noise(seed, mel.shape[0]))
    return ddpm(windowed_eps(voc.score_net), mel, tail, hop=voc.spec.hop, prior=voc.score_net.prior, noise=noise)


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # (a), (b), (c), (d) or baseline
    net_steps: int
    projections: int  # in all: inside the sampler and after it
    audio: Callable[[Vocoder, torch.Tensor, int], torch.Tensor | np.ndarray]  # (vocoder, mel (1, n_mels, F), seed)
    measured: bool = False  # librosa: no step/projection model, its wall time is its cost


def after(iterations: int, sample: Callable[[Vocoder, torch.Tensor, int], torch.Tensor]):
    """`sample`, then `iterations` refinements."""
    return lambda voc, mel, seed: project(sample(voc, mel, seed), mel, voc.spec, iterations)


def candidates(voc: Vocoder, refines: list[int], projections: list[int]) -> list[Candidate]:
    presets = {name: voc.schedule(p.rho) for name, p in sorted(voc.presets.items(), key=lambda kv: -kv[1].rho)}
    out = [Candidate("librosa mel_to_audio (32 GLA)", "baseline", 0, 32,
                     lambda voc, mel, seed: librosa_mel_to_audio(mel[0]), measured=True)]
    out += [Candidate(f"projection alone, {k}", "baseline", 0, k,
                      lambda voc, mel, seed, k=k: projection_alone(voc, mel, seed, k)) for k in projections]
    out += [Candidate(f"(a) {name} ({schedule.steps} steps) + {k}", "(a)", schedule.steps, k,
                      lambda voc, mel, seed, schedule=schedule, k=k: voc.vocode(mel, schedule, seed=seed, refine=k))
            for name, schedule in presets.items() for k in refines]
    fast, balanced = presets.get("fast"), presets.get("balanced")
    for schedule, projected in ((balanced, 2), (fast, fast.steps if fast else 0)):
        if schedule is None:
            continue
        def gla(voc, mel, seed, schedule=schedule, projected=projected):
            return gla_grad(voc, mel, schedule, seed, projected, 8)
        label = f"GLA-Grad {schedule.steps} steps, first {projected} projected x8"
        out += [Candidate(f"({'b' if k == 0 else 'd'}) {label} + {k}", "(b)" if k == 0 else "(d)", schedule.steps,
                          8 * projected + k, after(k, gla)) for k in (0, max(refines))]
    if balanced is not None:
        for m in (1, 2, 3):
            def deep(voc, mel, seed, m=m):
                return shallow(voc, mel, balanced, seed, m, 64)
            label = f"shallow: projection 64, last {m} of balanced"
            out += [Candidate(f"({'c' if k == 0 else 'd'}) {label} + {k}", "(c)" if k == 0 else "(d)", m, 64 + k,
                              after(k, deep)) for k in (0, min(k for k in refines if k > 0))]
    return out


def fastest(fn, tries: int = 5) -> float:
    """The least wall time of `tries` calls: the machine's own speed, less its neighbours' interference."""
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def unit_costs(voc: Vocoder, clip: Clip, seconds: float = 3.0) -> dict[str, float]:
    """Seconds per audio second of one score-net step and of one projection, on the same speech."""
    audio = clip.audio[:int(seconds * voc.spec.sample_rate)]
    mel = mel_spectrogram(audio, voc.spec)[None]
    x = torch.zeros(1, mel.shape[-1] * voc.spec.hop)
    t = torch.full((1,), 50.0)
    eps = windowed_eps(voc.score_net)
    with torch.inference_mode():
        step = fastest(lambda: eps(x, mel, t))  # a cached step: the conditioners were computed by the first call
    projection = fastest(lambda: project(x + 1e-3, mel, voc.spec, 4)) / 4
    duration = x.shape[-1] / voc.spec.sample_rate
    return {"step": step / duration, "projection": projection / duration}


def modelled_rtf(candidate: Candidate, costs: dict[str, float], wall_rtf: float) -> float:
    if candidate.measured:
        return wall_rtf
    return candidate.net_steps * costs["step"] + candidate.projections * costs["projection"]


def run(voc: Vocoder, candidate: Candidate, clips: list[Clip], seed: int, costs: dict[str, float]) -> dict:
    """Every clip with one candidate, after one untimed warm-up call (first calls pay for allocation)."""
    candidate.audio(voc, mel_spectrogram(clips[0].audio[:voc.spec.sample_rate], voc.spec)[None], seed)
    per_clip, wall = [], 0.0
    for i, clip in enumerate(clips):
        mel = mel_spectrogram(clip.audio, voc.spec)[None]
        audio, seconds = timed(candidate.audio, voc, mel, seed + i)
        audio = np.asarray(audio).reshape(-1)
        wall += seconds
        per_clip.append({"id": clip.id, **metrics.evaluate(clip.audio, audio), **metrics.pitch_errors(clip.audio, audio)})
    summary = {k: metrics.mean_ci95([c[k] for c in per_clip]) for k in METRICS}
    wall_rtf = wall / sum(c.seconds for c in clips)
    row = {"name": candidate.name, "kind": candidate.kind, "net_steps": candidate.net_steps,
           "projections": candidate.projections, "rtf": modelled_rtf(candidate, costs, wall_rtf), "wall_rtf": wall_rtf,
           "summary": summary, "clips": per_clip}
    print(f"{candidate.name:55s} RTF {fmt(row['rtf'])} (so far; wall {fmt(wall_rtf)}) STOI {fmt(summary['stoi'][0])} "
          f"PESQ-WB {fmt(summary['pesq'][0])}", file=sys.stderr)
    return row


def report(rows: list[dict], clips: list[Clip], args: argparse.Namespace, net: str, costs: dict[str, float]) -> str:
    ordered = sorted(rows, key=lambda r: r["rtf"])
    best = max(rows, key=lambda r: r["summary"]["pesq"][0])
    alone = [r for r in rows if r["name"].startswith("projection alone")]
    matched = []
    for r in (r for r in ordered if r["kind"] != "baseline"):
        rival = max((a for a in alone if a["rtf"] <= r["rtf"]), key=lambda a: a["summary"]["pesq"][0], default=None)
        if rival is not None:
            win = r["summary"]["pesq"][0] > rival["summary"]["pesq"][0] and r["summary"]["stoi"][0] > rival["summary"]["stoi"][0]
            matched.append([r["name"], r["rtf"], cell(r), rival["name"], rival["rtf"], cell(rival),
                            "net path" if win else "projection alone"])
    body = [
        f"{len(clips)} tuning clips ({', '.join(c.id for c in clips)}: valid.txt's first {TUNING_CLIPS}, which the "
        "schedule search and the trainer's probe use), each cropped to its first "
        f"{args.seconds:g} s, net `{net}`; clip i sampled with seed {args.seed} + i for every row. Rows in order of "
        "their modelled real-time factor, so each row sits beside what the same CPU time buys otherwise: one "
        f"score-net step costs {fmt(costs['step'])} s and one projection {fmt(costs['projection'])} s per audio second "
        f"here ({args.device}, {torch.get_num_threads()} thread(s), the fastest of 5 tries on 3 s of speech, at the "
        "start and at the end of the run), "
        f"so one step buys {costs['step'] / costs['projection']:.0f} projections. Wall RTF: as measured, one clip at "
        "a time, on a machine shared with other work. Mean ± 95% interval over clips.",
        "",
        table(["Candidate", "Net steps", "Projections", "RTF (model)", "Wall RTF", *METRICS.values()],
              [[r["name"], r["net_steps"], r["projections"], r["rtf"], r["wall_rtf"],
                *(f"{fmt(r['summary'][k][0])} ± {fmt(r['summary'][k][1])}" for k in METRICS)] for r in ordered]),
        "",
        f"Highest PESQ-WB: {best['name']} ({fmt(best['summary']['pesq'][0])} at RTF {fmt(best['rtf'])}).",
        "",
        "## At matched time",
        "",
        "Each candidate with the net against the best projection alone (by PESQ-WB) that took no longer on these "
        "clips; the net path wins a row only if it is higher on both STOI and PESQ-WB.",
        "",
        table(["Candidate", "RTF", "STOI / PESQ-WB", "Projection alone, no slower", "RTF", "STOI / PESQ-WB", "Wins"],
              matched),
    ]
    return "\n".join(body)


def cell(row: dict) -> str:
    return f"{fmt(row['summary']['stoi'][0])} / {fmt(row['summary']['pesq'][0])}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = base_parser("python -m bench.refine", __doc__)
    ap.add_argument("--clips", type=int, default=TUNING_CLIPS, help="tuning clips (valid.txt's first ones)")
    ap.add_argument("--seconds", type=float, default=3.0, help="crop every clip to its first S seconds")
    ap.add_argument("--refines", type=int, nargs="+", default=[0, 16, 32, 64, 128])
    ap.add_argument("--projections", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = parse_with_quick(ap, argv, {"clips": 2, "seconds": 1.0, "refines": [0, 4], "projections": [4]})
    if not 1 <= args.clips <= TUNING_CLIPS:
        ap.error(f"--clips must be 1..{TUNING_CLIPS}: only valid.txt's first {TUNING_CLIPS} clips are for tuning")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    (weights,) = weights_for(args.weights, args.device)
    voc = Vocoder.load(weights, device=args.device, dtype=args.dtype)
    clips = validation_clips(args.data, args.clips, args.seconds, voc.spec.sample_rate)
    costs = unit_costs(voc, clips[0])
    rows = [run(voc, c, clips, args.seed, costs) for c in candidates(voc, args.refines, args.projections)]
    later = unit_costs(voc, clips[0])  # once more at the end: the quieter of the two moments counts
    costs = {k: min(costs[k], later[k]) for k in costs}
    for row, candidate in zip(rows, candidates(voc, args.refines, args.projections)):
        row["rtf"] = modelled_rtf(candidate, costs, row["wall_rtf"])
    write_outputs(args.out, "refine", "Refinement candidates at matched CPU time", header("bench.refine", weights),
                  report(rows, clips, args, voc.net, costs),
                  {"clips": [c.id for c in clips], "unit_costs": costs, "rows": rows})
    print(f"wrote {args.out}/refine.md, refine.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
