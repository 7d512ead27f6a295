"""Train sigma_phi with BDDM's step loss, the score network of the same weights directory frozen; resumable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import SCHEDULE_NET, SCORE_NET, load_module, read_config
from ..schedule_net import CONFIGS, ScheduleNet, ScheduleNetParams
from ..schedules import Diffusion
from ..score_net import ScoreNet, ScoreNetParams
from .common import LoopOptions, compiled, runtime, train_small_net
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
    diffusion = Diffusion(**config["diffusion"])
    if not 0 < job.tau < (diffusion.steps - 1) / 2:
        raise SystemExit(f"--tau must be in (0, {(diffusion.steps - 1) / 2:g}) for a {diffusion.steps}-step grid")
    score_net = load_module(out / SCORE_NET, ScoreNet(ScoreNetParams(**config["score_net"])))
    score_net.to(rt.device).eval().requires_grad_(False)
    net = _schedule_net_for(config, job.net).to(rt.device)
    score_fwd, schedule_fwd = compiled(job, rt, score_net, net)
    size = f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params"
    return train_small_net(job, rt, out, config, "schedule", net, SCHEDULE_NET, "schedule net",
                           lambda audio, mel, gen: step_loss(score_fwd, schedule_fwd, audio, mel, diffusion, job.tau,
                                                             gen, score_net.prior), size, tau=job.tau)
