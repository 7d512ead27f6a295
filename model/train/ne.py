"""Train the noise-level network P_theta (`model.ne_net`) on data alone, the score net untouched; resumable.

It reads the weights directory only for its audio settings and its score net's prior (the level is estimated in
that prior's whitened coordinates), and writes `ne_net.safetensors` and the config's `ne_net` entry there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import MelSpec
from ..checkpoint import NE_NET, read_config, save_module, write_config
from ..ne_net import CONFIGS, NENet, NENetParams
from ..schedules import Diffusion
from ..score_net import ScoreNetParams
from .common import (LoopOptions, TrainingRecord, adam_resumed, hardware, optimize, run_loop, runtime,
                     save_train_state)
from .data import AudioCorpus
from .losses import ne_loss


@dataclass
class NETraining(LoopOptions):
    weights: str
    net: str = "small"


def train_ne(job: NETraining) -> Path:
    rt = runtime(job.device)
    out = Path(job.weights)
    config = read_config(out)
    diffusion, spec = Diffusion(**config["diffusion"]), MelSpec(**config["audio"])
    prior = ScoreNetParams(**config["score_net"]).diffusion_prior
    if config.get("ne_net"):
        net = NENet(NENetParams(**config["ne_net"]))
    elif job.net in CONFIGS:
        net = NENet(CONFIGS[job.net])
    else:
        raise SystemExit(f"unknown --net {job.net!r}; choose from {', '.join(CONFIGS)}")
    net.to(rt.device)
    shipped = out / NE_NET if (out / NE_NET).exists() and config.get("ne_net") else None
    opt, resumed = adam_resumed(out, "ne", net, shipped, job.lr, rt)
    record = TrainingRecord(config, "ne", job, rt, spec.hop)

    corpus = AudioCorpus(job.data, job.id_list, spec)
    print(f"data: {len(corpus)} clips, {corpus.seconds / 60:.1f} min from {job.data}; noise-level net "
          f"{sum(p.numel() for p in net.parameters()) / 1e3:.1f} k params on {hardware(rt)}, {prior.kind} prior; "
          f"{'resuming at step ' + str(record.steps) if resumed else 'new run'}")
    use_compile = job.compile if job.compile is not None else rt.device.type == "cuda"
    forward = torch.compile(net) if use_compile else net
    rng = np.random.default_rng(job.seed + record.steps)
    gen = torch.Generator(rt.device).manual_seed(job.seed + record.steps)

    def save(run_steps: int, run_seconds: float) -> None:
        save_module(out / NE_NET, net)
        save_train_state(out, "ne", net, None, opt)
        config["ne_net"] = net.params.to_dict()
        record.update(run_steps, run_seconds)
        write_config(out, config)

    def step() -> torch.Tensor:
        audio, mel = corpus.segments(job.batch, job.segment_frames, rng, rt.device)
        with rt.autocast():
            loss = ne_loss(forward, audio, mel, diffusion, gen, prior)
        optimize(loss, net, opt, job.grad_clip)
        return loss

    steps, dt = run_loop(step, save, job.steps, job.minutes, job.save_every)
    print(f"trained the noise-level net {steps} steps in {dt:.0f} s ({steps / max(dt, 1e-9):.2f} steps/s); "
          f"total {record.steps + steps} steps -> {out / NE_NET}")
    return out
