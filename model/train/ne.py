"""Train the noise-level network P_theta (`model.ne_net`) on data alone, the score net untouched; resumable.

It reads the weights directory only for its audio settings and its score net's prior (the level is estimated in
that prior's whitened coordinates), and writes `ne_net.safetensors` and the config's `ne_net` entry there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import MelSpec
from ..checkpoint import NE_NET, git_revision, load_module, read_config, save_module, write_config
from ..ne_net import CONFIGS, NENet, NENetParams
from ..schedules import Diffusion
from ..score_net import ScoreNetParams
from .common import hardware, load_train_state, optimize, run_loop, runtime, save_train_state
from .data import AudioCorpus
from .losses import ne_loss


@dataclass
class NETraining:
    weights: str
    data: str
    steps: int
    id_list: str | None = None
    net: str = "small"
    batch: int = 16
    segment_frames: int = 32
    lr: float = 1e-3
    grad_clip: float = 1.0
    minutes: float | None = None
    save_every: int = 250
    device: str = "auto"
    compile: bool | None = None
    seed: int = 0


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
    opt = torch.optim.Adam(net.parameters(), lr=job.lr, fused=rt.device.type == "cuda")
    resumed = load_train_state(out, "ne", net, None, opt)
    if not resumed and (out / NE_NET).exists() and config.get("ne_net"):
        load_module(out / NE_NET, net)
    for g in opt.param_groups:
        g["lr"] = job.lr
    record = config["training"].get("ne") or {"steps": 0, "wall_seconds": 0.0, "runs": []}

    corpus = AudioCorpus(job.data, job.id_list, spec)
    print(f"data: {len(corpus)} clips, {corpus.seconds / 60:.1f} min from {job.data}; noise-level net "
          f"{sum(p.numel() for p in net.parameters()) / 1e3:.1f} k params on {hardware(rt)}, {prior.kind} prior; "
          f"{'resuming at step ' + str(record['steps']) if resumed else 'new run'}")
    use_compile = job.compile if job.compile is not None else rt.device.type == "cuda"
    forward = torch.compile(net) if use_compile else net
    rng = np.random.default_rng(job.seed + record["steps"])
    gen = torch.Generator(rt.device).manual_seed(job.seed + record["steps"])
    revision = git_revision()  # the code this run started with, not whatever HEAD is at save time
    started, base_steps, base_wall = time.strftime("%Y-%m-%dT%H:%M:%S"), record["steps"], record["wall_seconds"]

    def save(run_steps: int, run_seconds: float) -> None:
        save_module(out / NE_NET, net)
        save_train_state(out, "ne", net, None, opt)
        run = {"started": started, "hardware": hardware(rt), "steps": run_steps, "batch": job.batch,
               "segment_samples": job.segment_frames * spec.hop, "lr": job.lr, "wall_seconds": round(run_seconds, 1),
               "data": str(job.data), "list": str(job.id_list) if job.id_list else None, "git_revision": revision}
        runs = [r for r in record["runs"] if r.get("started") != started]
        config["ne_net"] = net.params.to_dict()
        config["training"]["ne"] = {"steps": base_steps + run_steps, "wall_seconds": round(base_wall + run_seconds, 1),
                                    "runs": runs + [run]}
        write_config(out, config)

    def step() -> torch.Tensor:
        audio, mel = corpus.segments(job.batch, job.segment_frames, rng)
        audio, mel = audio.to(rt.device, non_blocking=True), mel.to(rt.device, non_blocking=True)
        with rt.autocast():
            loss = ne_loss(forward, audio, mel, diffusion, gen, prior)
        optimize(loss, net, opt, job.grad_clip)
        return loss

    steps, dt = run_loop(step, save, job.steps, job.minutes, job.save_every)
    print(f"trained the noise-level net {steps} steps in {dt:.0f} s ({steps / max(dt, 1e-9):.2f} steps/s); "
          f"total {base_steps + steps} steps -> {out / NE_NET}")
    return out
