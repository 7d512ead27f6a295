"""Trainer CLI: `python -m model.train score|schedule|search ...` (see --help of each)."""

from __future__ import annotations

import argparse

from .score import ScoreTraining, train_score


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="train the score network eps_theta (resumes from --out)")
    s.add_argument("--data", required=True, help="directory of audio files (wav/flac), searched recursively")
    s.add_argument("--list", dest="id_list", help="file of utterance ids to use (e.g. train.txt)")
    s.add_argument("--out", required=True, help="weights directory to write (and resume from)")
    s.add_argument("--steps", type=int, required=True, help="steps to train in this run")
    s.add_argument("--config", default="small", help="architecture for a new run: tiny|small|base|large")
    s.add_argument("--batch", type=int, default=8, help="segments per step (per GPU under torchrun)")
    s.add_argument("--segment-frames", type=int, default=32, help="mel frames per segment (x256 samples)")
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--ema-decay", type=float, default=0.998)
    s.add_argument("--minutes", type=float, help="stop after this much wall time")
    s.add_argument("--save-every", type=int, default=250)
    s.add_argument("--device", default="auto", help="auto|cpu|cuda")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (default: on for CUDA)")
    s.add_argument("--seed", type=int, default=0)

    args = vars(p.parse_args(argv))
    command = args.pop("command")
    if command == "score":
        train_score(ScoreTraining(**args))


if __name__ == "__main__":
    main()
