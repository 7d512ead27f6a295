"""Train sigma_phi with BDDM's step loss, the score network of the same weights directory frozen; resumable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import MelSpec
from ..checkpoint import SCHEDULE_NET, SCORE_NET, load_module, read_config, save_module, write_config
from ..schedule_net import CONFIGS, ScheduleNet, ScheduleNetParams
from ..schedules import Diffusion
from ..score_net import ScoreNet, ScoreNetParams
from .common import (LoopOptions, TrainingRecord, adam_resumed, hardware, optimize, run_loop, runtime,
                     save_train_state)
from .data import AudioCorpus
from .losses import step_loss


@dataclass
class ScheduleTraining(LoopOptions):
    weights: str
    net: str = "paper"
    tau: int = 66


def _schedule_net_for(config: dict, name: str) -> ScheduleNet:
    """Resume the architecture stored in the config, else start the named one."""
    if config.get("schedule_net"):
        return ScheduleNet(ScheduleNetParams(**config["schedule_net"]))
    if name not in CONFIGS:
        raise SystemExit(f"unknown --net {name!r}; choose from {', '.join(CONFIGS)}")
    return ScheduleNet(CONFIGS[name])


def train_schedule(job: ScheduleTraining) -> Path:
    rt = runtime(job.device)
    out = Path(job.weights)
    config = read_config(out)
    diffusion, spec = Diffusion(**config["diffusion"]), MelSpec(**config["audio"])
    if not 0 < job.tau < (diffusion.steps - 1) / 2:
        raise SystemExit(f"--tau must be in (0, {(diffusion.steps - 1) / 2:g}) for a {diffusion.steps}-step grid")
    score_net = load_module(out / SCORE_NET, ScoreNet(ScoreNetParams(**config["score_net"])))
    score_net.to(rt.device).eval().requires_grad_(False)
    net = _schedule_net_for(config, job.net).to(rt.device)
    shipped = out / SCHEDULE_NET if (out / SCHEDULE_NET).exists() and config.get("schedule_net") else None
    opt, resumed = adam_resumed(out, "schedule", net, shipped, job.lr, rt)
    record = TrainingRecord(config, "schedule", job, rt, spec.hop)

    corpus = AudioCorpus(job.data, job.id_list, spec)
    print(f"data: {len(corpus)} clips, {corpus.seconds / 60:.1f} min from {job.data}; schedule net "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params on {hardware(rt)}; "
          f"{'resuming at step ' + str(record.steps) if resumed else 'new run'}")
    use_compile = job.compile if job.compile is not None else rt.device.type == "cuda"
    score_fwd, schedule_fwd = (torch.compile(score_net), torch.compile(net)) if use_compile else (score_net, net)
    rng = np.random.default_rng(job.seed + record.steps)
    gen = torch.Generator(rt.device).manual_seed(job.seed + record.steps)

    def save(run_steps: int, run_seconds: float) -> None:
        save_module(out / SCHEDULE_NET, net)
        save_train_state(out, "schedule", net, None, opt)
        config["schedule_net"] = net.params.to_dict()
        record.update(run_steps, run_seconds, tau=job.tau)
        write_config(out, config)

    def step() -> torch.Tensor:
        audio, mel = corpus.segments(job.batch, job.segment_frames, rng, rt.device)
        with rt.autocast():
            loss = step_loss(score_fwd, schedule_fwd, audio, mel, diffusion, job.tau, gen, score_net.prior)
        optimize(loss, net, opt, job.grad_clip)
        return loss

    steps, dt = run_loop(step, save, job.steps, job.minutes, job.save_every)
    print(f"trained the schedule net {steps} steps in {dt:.0f} s ({steps / max(dt, 1e-9):.2f} steps/s); "
          f"total {record.steps + steps} steps -> {out / SCHEDULE_NET}")
    return out
