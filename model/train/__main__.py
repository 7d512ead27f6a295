"""Trainer CLI: `python -m model.train score|schedule|search|ne|all ...` (see --help of each)."""

from __future__ import annotations

import argparse

from ..checkpoint import CheckpointError
from ..prior import DEFAULT_PRIOR, PRIORS
from .ne import NETraining, train_ne
from .schedule import ScheduleTraining, train_schedule
from .score import ScoreTraining, train_score
from .search import Search, run_search


def add_data(s: argparse.ArgumentParser, what: str = "audio files (wav/flac), searched recursively") -> None:
    s.add_argument("--data", required=True, help=f"directory of {what}")
    s.add_argument("--list", dest="id_list", help="file of utterance ids to use (e.g. train.txt, valid.txt)")


def add_loop(s: argparse.ArgumentParser, steps_required: bool = True) -> None:
    """The options every training loop shares (score and schedule nets)."""
    if steps_required:
        s.add_argument("--steps", type=int, required=True, help="steps to train in this run")
    else:
        s.add_argument("--steps", type=int, default=10**9, help="score-net steps (the time budget usually ends first)")
    s.add_argument("--batch", type=int, default=8, help="segments per step (per GPU under torchrun)")
    s.add_argument("--segment-frames", type=int, default=32, help="mel frames per segment (x256 samples)")
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--minutes", type=float, help="stop after this much wall time")
    s.add_argument("--save-every", type=int, default=250)
    s.add_argument("--device", default="auto", help="auto|cpu|cuda")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the networks (default: on for CUDA)")
    s.add_argument("--seed", type=int, default=0)


def add_score(s: argparse.ArgumentParser) -> None:
    """What a new score net is and how its training is watched."""
    s.add_argument("--out", required=True, help="weights directory to write (and resume from)")
    s.add_argument("--config", default="small", help="architecture for a new run: tiny|small|medium|base|large")
    s.add_argument("--ema-decay", type=float, default=0.998)
    add_probe(s)


def add_schedule_net(s: argparse.ArgumentParser) -> None:
    s.add_argument("--net", default="paper", help="schedule net architecture for a new run: tiny|small|paper")
    s.add_argument("--tau", type=int, default=66, help="grid steps the step loss jumps (BDDM's tau)")


def add_search(s: argparse.ArgumentParser) -> None:
    s.add_argument("--clips", type=int, default=3, help="held-out clips that score each candidate")
    s.add_argument("--grid", type=int, default=9, help="candidates per axis (grid x grid pairs)")
    s.add_argument("--seconds", type=float, default=1.0, help="crop clips to this length (bounds the time)")
    s.add_argument("--rho", type=float, default=0.01,
                   help="threshold the candidates are scheduled with (--objective rho)")
    s.add_argument("--objective", choices=("presets", "rho"), default="presets",
                   help="score each pair on the presets' 3/7/12-step schedules (geometric mean LS-MSE) or on rho's")


def run_all(a: dict) -> None:
    """score -> schedule -> search in one wall-time budget: the prepared GPU run (weights/default/TRAINING.md).

    The schedule net gets `--schedule-minutes` (default 15% of the budget), the search is left
    `--search-minutes`, and the score net the rest. The schedule net is not compiled: GALR's LSTMs gain
    little from it and compiling would eat its short slot.
    """
    schedule_minutes = a["schedule_minutes"] if a["schedule_minutes"] is not None else 0.15 * a["minutes"]
    score_minutes = a["minutes"] - schedule_minutes - a["search_minutes"]
    if score_minutes <= 0 or schedule_minutes <= 0:
        raise SystemExit("--minutes must leave time for the score net after --schedule-minutes and --search-minutes")
    loop = {k: a[k] for k in ("data", "id_list", "batch", "segment_frames", "lr", "save_every", "device", "seed")}
    train_score(ScoreTraining(out=a["out"], steps=a["steps"], minutes=score_minutes, compile=a["compile"],
                              config=a["config"], ema_decay=a["ema_decay"], probe_list=a["valid_list"],
                              **{k: a[k] for k in ("mel_norm", "step_embedding", "prior", "probe_every",
                                                   "probe_clips", "probe_seconds")}, **loop))
    train_schedule(ScheduleTraining(weights=a["out"], steps=a["schedule_steps"], minutes=schedule_minutes,
                                    compile=False, net=a["net"], tau=a["tau"], **loop))
    run_search(Search(weights=a["out"], data=a["data"], id_list=a["valid_list"], device=a["device"], seed=a["seed"],
                      **{k: a[k] for k in ("clips", "grid", "seconds", "rho", "objective")}))


def add_probe(s: argparse.ArgumentParser) -> None:
    """Conditioning health (`model.conditioning`), logged beside the loss, and the mel input of a new net."""
    s.add_argument("--mel-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="a new net standardises its mel with the corpus's per-band statistics (default: on)")
    s.add_argument("--step-embedding", choices=("diffwave", "smooth"), default="smooth",
                   help="step-embedding frequencies of a new net (model.score_net.STEP_FREQUENCIES)")
    s.add_argument("--prior", choices=PRIORS,
                   help=f"diffusion prior (model.prior): standard N(0, I), or energy, PriorGrad's N(0, s^2) with s "
                        f"from each mel frame's energy. A new net's (default: {DEFAULT_PRIOR}); given for a trained "
                        "net under another prior, training continues its weights under this one")
    s.add_argument("--probe-every", type=int, default=250, help="steps between conditioning probes")
    s.add_argument("--probe-clips", type=int, default=2)
    s.add_argument("--probe-seconds", type=float, default=1.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="train the score network eps_theta (resumes from --out)")
    add_data(s)
    s.add_argument("--probe-list", help="ids of held-out clips (in --data) for the conditioning probe "
                                        "(default: the first training clips)")
    add_score(s)
    add_loop(s)

    s = sub.add_parser("schedule", help="train the schedule network sigma_phi, the score net frozen (resumes)")
    s.add_argument("--weights", required=True, help="weights directory with a trained score net; written in place")
    add_data(s)
    add_schedule_net(s)
    add_loop(s)

    s = sub.add_parser("search", help="grid-search (alpha_hat_N, beta_hat_N), store schedules per rho and presets")
    s.add_argument("--weights", required=True, help="weights directory with score and schedule nets; written in place")
    add_data(s, "held-out audio files")
    add_search(s)
    s.add_argument("--device", default="auto", help="auto|cpu|cuda")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("ne", help="train the noise-level network of noise-estimation sampling (San-Roman et al. "
                                  "2021) on data alone, the score net untouched (resumes)")
    s.add_argument("--weights", required=True, help="weights directory (its audio settings and prior); written "
                                                    "in place: ne_net.safetensors")
    add_data(s)
    s.add_argument("--net", default="small", help="noise-level net architecture for a new run: tiny|small")
    add_loop(s)
    s.set_defaults(batch=16, lr=1e-3)

    s = sub.add_parser("all", help="score -> schedule -> search in one --minutes budget (resumes from --out)")
    add_data(s)
    s.add_argument("--valid-list", required=True, help="held-out ids: the conditioning probe and the search")
    add_score(s)
    add_schedule_net(s)
    s.add_argument("--schedule-steps", type=int, default=10000)
    s.add_argument("--schedule-minutes", type=float, help="the schedule net's share (default: 15%% of --minutes)")
    s.add_argument("--search-minutes", type=float, default=1.0, help="time left for the search")
    add_search(s)
    add_loop(s, steps_required=False)

    args = vars(p.parse_args(argv))
    command = args.pop("command")
    for key in ("steps", "batch", "segment_frames", "clips", "grid", "save_every", "probe_every", "probe_clips",
                "schedule_steps"):
        if key in args and args[key] < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if "rho" in args and not (args["seconds"] > 0 and 0 < args["rho"] < 1):
        p.error("--seconds must be positive and --rho in (0, 1)")
    if command == "all" and args["minutes"] is None:
        p.error("all needs --minutes: it splits that budget between the three stages")
    if command == "score":
        train_score(ScoreTraining(**args))
        return
    try:
        if command == "schedule":
            train_schedule(ScheduleTraining(**args))
        elif command == "ne":
            train_ne(NETraining(**args))
        elif command == "search":
            run_search(Search(**args))
        else:
            run_all(args)
    except CheckpointError as e:
        p.exit(2, f"{p.prog} {command}: error: {e}\n")


if __name__ == "__main__":
    main()
