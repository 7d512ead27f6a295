"""Train the noise-level network P_theta (`model.ne_net`) on data alone, the score net untouched; resumable.

It reads the weights directory only for its audio settings and its score net's prior (the level is estimated in
that prior's whitened coordinates), and writes `ne_net.safetensors` and the config's `ne_net` entry there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import NE_NET, read_config
from ..ne_net import CONFIGS, NENet, NENetParams
from ..schedules import Diffusion
from ..score_net import ScoreNetParams
from .common import LoopOptions, compiled, runtime, train_small_net
from .losses import ne_loss


@dataclass
class NETraining(LoopOptions):
    weights: str
    net: str = "small"


def train_ne(job: NETraining) -> Path:
    rt = runtime(job.device)
    out = Path(job.weights)
    config = read_config(out)
    diffusion, prior = Diffusion(**config["diffusion"]), ScoreNetParams(**config["score_net"]).diffusion_prior
    if config.get("ne_net"):
        net = NENet(NENetParams(**config["ne_net"]))
    elif job.net in CONFIGS:
        net = NENet(CONFIGS[job.net])
    else:
        raise SystemExit(f"unknown --net {job.net!r}; choose from {', '.join(CONFIGS)}")
    net.to(rt.device)
    (forward,) = compiled(job, rt, net)
    size = f"{sum(p.numel() for p in net.parameters()) / 1e3:.1f} k params, {prior.kind} prior"
    return train_small_net(job, rt, out, config, "ne", net, NE_NET, "noise-level net",
                           lambda audio, mel, gen: ne_loss(forward, audio, mel, diffusion, gen, prior), size)
