"""Trainer CLI: `python -m model.train score|schedule|search ...` (see --help of each)."""

from __future__ import annotations

import argparse

from ..checkpoint import CheckpointError
from .schedule import ScheduleTraining, train_schedule
from .score import ScoreTraining, train_score
from .search import Search, run_search


def add_data(s: argparse.ArgumentParser, what: str = "audio files (wav/flac), searched recursively") -> None:
    s.add_argument("--data", required=True, help=f"directory of {what}")
    s.add_argument("--list", dest="id_list", help="file of utterance ids to use (e.g. train.txt, valid.txt)")


def add_loop(s: argparse.ArgumentParser) -> None:
    """The options every training loop shares (score and schedule nets)."""
    s.add_argument("--steps", type=int, required=True, help="steps to train in this run")
    s.add_argument("--batch", type=int, default=8, help="segments per step (per GPU under torchrun)")
    s.add_argument("--segment-frames", type=int, default=32, help="mel frames per segment (x256 samples)")
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--minutes", type=float, help="stop after this much wall time")
    s.add_argument("--save-every", type=int, default=250)
    s.add_argument("--device", default="auto", help="auto|cpu|cuda")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the networks (default: on for CUDA)")
    s.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="train the score network eps_theta (resumes from --out)")
    add_data(s)
    s.add_argument("--out", required=True, help="weights directory to write (and resume from)")
    s.add_argument("--config", default="small", help="architecture for a new run: tiny|small|medium|base|large")
    s.add_argument("--ema-decay", type=float, default=0.998)
    add_loop(s)

    s = sub.add_parser("schedule", help="train the schedule network sigma_phi, the score net frozen (resumes)")
    s.add_argument("--weights", required=True, help="weights directory with a trained score net; written in place")
    add_data(s)
    s.add_argument("--net", default="paper", help="schedule net architecture for a new run: tiny|small|paper")
    s.add_argument("--tau", type=int, default=66, help="grid steps the step loss jumps (BDDM's tau)")
    add_loop(s)

    s = sub.add_parser("search", help="grid-search (alpha_hat_N, beta_hat_N), store schedules per rho and presets")
    s.add_argument("--weights", required=True, help="weights directory with score and schedule nets; written in place")
    add_data(s, "held-out audio files")
    s.add_argument("--clips", type=int, default=3, help="held-out clips that score each candidate")
    s.add_argument("--grid", type=int, default=9, help="candidates per axis (grid x grid pairs)")
    s.add_argument("--seconds", type=float, default=1.0, help="crop clips to this length (bounds the time)")
    s.add_argument("--rho", type=float, default=0.01, help="threshold the candidates are scheduled with")
    s.add_argument("--device", default="auto", help="auto|cpu|cuda")
    s.add_argument("--seed", type=int, default=0)

    args = vars(p.parse_args(argv))
    command = args.pop("command")
    for key in ("steps", "batch", "segment_frames", "clips", "grid", "save_every"):
        if command != "score" and key in args and args[key] < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if command == "search" and not (args["seconds"] > 0 and 0 < args["rho"] < 1):
        p.error("--seconds must be positive and --rho in (0, 1)")
    if command == "score":
        train_score(ScoreTraining(**args))
        return
    try:
        if command == "schedule":
            train_schedule(ScheduleTraining(**args))
        else:
            run_search(Search(**args))
    except CheckpointError as e:
        p.exit(2, f"{p.prog} {command}: error: {e}\n")


if __name__ == "__main__":
    main()
