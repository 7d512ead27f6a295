"""Offline vocoding: a mel `.npy` in, a 16-bit WAV out.

    python -m model.synth MEL.npy -o OUT.wav [--rho R | --preset fast|balanced|quality | --steps-schedule S.json]
                          [--refine K] [--seed S] [--mel-format NAME] [--weights DIR] [--device auto|cpu|cuda]
    python -m model.synth MEL.npy -o OUT.wav --method projection [--preset P] [--refine K] [...]
    python -m model.synth MEL.npy -o OUT.wav --method ne --steps N [--family fibonacci|linear] [...]

BDDM (the default method) takes its schedule from rho, a preset or a file; without one, the weights' default
rho. Then K mel-consistency refinements (`model.refine`): `--refine K`, else the preset's, else the default
preset's. `--method projection` is K projections of the mel's coherent start (`model.phase`), with no network
(0 steps): `--refine K`, else the preset's projections, else the default preset's. `--mel-format`
names the mel's contract (`model.profiles`: hifigan, the default, tacotron2, espnet, coqui, rayhane, bigvgan-24k, or
a contract JSON file); the WAV then has frames x its hop samples at its rate, and a mel whose values look like
another contract's is refused (`model.detect`). Noise estimation (`--method ne`, `model.noise_estimation`) fits an N-step schedule to the utterance as it
samples. Both sample with DDPM: on every schedule and step count of bench/results/quality-methods.md, on both shipped
nets, DDIM was below it beyond the 95% intervals on PESQ-WB or the noise in pauses, so it is not offered. Bad
input (file, mel, weights, schedule or options) gets a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .audio import encode_audio
from .checkpoint import CheckpointError
from .contract import MelSpec
from .detect import check as check_contract
from .mel import read_mel_file
from .noise_estimation import DEFAULT_FAMILY, FAMILIES
from .plan import BDDM, METHODS, PROJECTION, resolve_refine
from .profiles import PROFILES, contract
from .refine import MAX_ITERATIONS, refine_iterations
from .scheduling import canonical_rho
from .schedules import Schedule
from .vocoder import Vocoder

PRESETS = ("fast", "balanced", "quality")


class UsageError(ValueError):
    """A request these weights cannot serve (unknown preset, no default rho, bad schedule file)."""


def pick_schedule(voc: Vocoder, rho: float | None, preset: str | None, schedule_path: Path | None) -> Schedule:
    """The schedule the options ask for: a JSON file, a preset's rho, an explicit rho, else the default rho."""
    if schedule_path is not None:
        try:
            return Schedule.load(schedule_path, voc.diffusion)
        except (OSError, KeyError, TypeError, ValueError) as e:  # ValueError covers bad JSON and bad betas
            raise UsageError(f"cannot read schedule {schedule_path}: {e}") from None
    if preset is not None:
        if preset not in voc.presets:
            raise UsageError(f"these weights define no preset {preset!r} (have {sorted(voc.presets)})")
        rho = voc.presets[preset].rho
    if rho is None:
        rho = voc.default_rho
        if rho is None:
            raise UsageError("these weights have no default rho; pass --steps-schedule (or search the weights first)")
    return voc.schedule(canonical_rho(rho))  # the key stored schedules are saved under; ValueError outside (0, 1)


def mel_contract(mel_format: str | None) -> MelSpec | None:
    """--mel-format: a profile's name, or a contract JSON file (`MelSpec.from_dict`)."""
    if mel_format is None or mel_format in PROFILES:
        return contract(mel_format) if mel_format else None
    try:
        data = json.loads(Path(mel_format).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--mel-format {mel_format!r} is no profile ({', '.join(PROFILES)}) nor a readable contract "
                         f"JSON file ({e})") from None
    return MelSpec.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("mel", type=Path, help="log-mel .npy, (80, frames) or (1, 80, frames), float16/32/64")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output .wav (16-bit PCM)")
    ap.add_argument("--method", choices=(*METHODS, "ne"), default=BDDM,
                    help="bddm: a schedule from rho, a preset or a file; projection: projections of the mel's "
                         "coherent start, no network; ne: noise estimation in --steps steps")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--rho", type=float, help="BDDM noise-scheduling threshold: larger is faster, fewer steps")
    which.add_argument("--preset", choices=PRESETS)
    which.add_argument("--steps-schedule", type=Path, help="a schedule JSON (e.g. the official BDDM 7-step one)")
    which.add_argument("--steps", type=int, help="--method ne: the number of reverse steps")
    ap.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY, help="--method ne: the schedule "
                    "family fitted at each step")
    ap.add_argument("--refine", type=int, help=f"mel-consistency refinements after sampling, 0-{MAX_ITERATIONS} "
                                               "(default: the preset's, or the default preset's)")
    ap.add_argument("--seed", type=int, default=None, help="noise seed; the same seed gives the same audio")
    ap.add_argument("--mel-format", default=None, help=f"the mel's contract: {', '.join(PROFILES)}, or a contract "
                                                       ".json (default: the net's own)")
    ap.add_argument("--weights", type=Path, help="weights directory (default: weights/base on CUDA, weights/small "
                                                 "on a CPU)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)
    if (args.method == "ne") != (args.steps is not None):
        ap.error("--steps N goes with --method ne (noise estimation), and --method ne needs --steps N; BDDM takes "
                 "--rho, --preset or --steps-schedule")
    if args.method == "ne" and args.steps < 1:
        ap.error("--method ne needs --steps >= 1")
    if args.method == PROJECTION and (args.rho, args.steps_schedule) != (None, None):
        ap.error("--method projection takes no schedule (no diffusion step); it takes --preset or --refine")
    if args.refine is not None:
        try:
            refine_iterations(args.refine)
        except ValueError as e:
            ap.error(str(e))

    try:
        voc = Vocoder.load(args.weights, args.device)
        spec = mel_contract(args.mel_format) or voc.spec
        mel = read_mel_file(args.mel, spec.n_mels)
        check_contract(mel, spec)
        if args.method == "ne" and spec != voc.spec:
            raise UsageError("--method ne vocodes the net's own contract only; use bddm or projection")
        schedule = None if args.method != BDDM else pick_schedule(voc, args.rho, args.preset, args.steps_schedule)
        refine = resolve_refine(voc, PROJECTION if args.method == PROJECTION else BDDM, args.preset, args.refine)
        if args.method == "ne" and voc.ne_net is None:
            raise UsageError(f"{voc.directory} has no noise-level network (ne_net.safetensors): train one with "
                             "`python -m model.train ne`")
    except (ValueError, CheckpointError) as e:  # MelError, UsageError, ContractError, WrongContract, a bad rho
        print(f"error: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    if args.method == "ne":
        audio = voc.vocode_ne(mel, args.steps, seed=args.seed, family=args.family)
    else:
        audio = voc.vocode(mel, schedule, seed=args.seed, refine=refine, contract=spec)
    if voc.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    try:
        args.output.write_bytes(encode_audio(audio, spec.sample_rate))
    except OSError as e:
        print(f"error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    seconds = len(audio) / spec.sample_rate
    if args.method == "ne":
        how = f"{args.steps} steps (noise estimation, {args.family} schedule fitted per step)"
    elif args.method == PROJECTION:
        how = f"projection alone, {refine} projections of the coherent start (0 steps)"
    else:
        rho = schedule.meta.get("rho")
        how = (f"{schedule.steps} steps ({schedule.name or 'schedule'}{f', rho={rho:g}' if rho is not None else ''}), "
               f"{refine} refinements")
    print(f"{args.output}: {how}, {seconds:.2f} s of audio, wall {wall:.2f} s, RTF {wall / seconds:.3f} on "
          f"{voc.device.type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
