"""Train eps_theta with the DDPM noise-prediction loss; resumable, EMA, bf16 + compile + DDP on GPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..audio import MelSpec
from ..checkpoint import CONFIG, SCORE_NET, git_revision, load_module, read_config, save_module, write_config
from ..conditioning import describe, health
from ..prior import DEFAULT_PRIOR, Prior
from ..schedules import Diffusion
from ..score_net import CONFIGS, ScoreNet, ScoreNetParams
from .common import (EMA, LoopOptions, Runtime, StopRequest, hardware, load_train_state, optimize, runtime,
                     save_train_state)
from .data import AudioCorpus
from .losses import score_loss


@dataclass
class ScoreTraining(LoopOptions):
    out: str
    config: str = "small"
    ema_decay: float = 0.998
    mel_norm: bool = True
    step_embedding: str = "smooth"
    prior: str | None = None  # a new net's prior (None: DEFAULT_PRIOR); set on a trained net, it switches
    probe_list: str | None = None
    probe_every: int = 250
    probe_clips: int = 2
    probe_seconds: float = 1.5


def with_prior(params: ScoreNetParams, prior: str, corpus: AudioCorpus) -> ScoreNetParams:
    """`params` under `prior`, the energy prior's range from the training set (`model.prior`)."""
    energy = corpus.energy_range() if prior == "energy" else None
    return replace(params, prior=prior, prior_energy=energy)


@dataclass
class ScoreStep:
    """One optimiser step on the score loss, as `train_score` repeats it and `bench.train` times it: the loss under
    the runtime's autocast, backward, gradient clipping, Adam and the EMA."""

    forward: Callable  # the net as called, compiled or DDP-wrapped; `net` holds the parameters
    net: nn.Module
    opt: torch.optim.Optimizer
    ema: EMA
    diffusion: Diffusion
    rt: Runtime
    generator: torch.Generator
    grad_clip: float = 1.0
    prior: Prior = Prior()

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        with self.rt.autocast():
            loss = score_loss(self.forward, audio, mel, self.diffusion, self.generator, self.prior)
        optimize(loss, self.net, self.opt, self.grad_clip)
        self.ema.update(self.net)
        return loss


def _score_net_for(out: Path, job: ScoreTraining, corpus: AudioCorpus) -> tuple[ScoreNet, dict]:
    """Resume the architecture stored in `out`, else start the named config (with the corpus's mel statistics).
    An explicit `job.prior` other than a resumed net's own continues its weights under that prior."""
    if (out / CONFIG).exists():
        config = read_config(out)
        params = ScoreNetParams(**config["score_net"])
        if job.prior is not None and job.prior != params.prior:
            print(f"the net was trained under the {params.prior} prior: continuing its weights under {job.prior}")
            params = with_prior(params, job.prior, corpus)
            config["score_net"] = params.to_dict()
            config["training"].setdefault("prior_switches", []).append(
                {"at_step": (config["training"].get("score") or {}).get("steps", 0), "to": job.prior})
        return ScoreNet(params), config
    if job.config not in CONFIGS:
        raise SystemExit(f"unknown --config {job.config!r}; choose from {', '.join(CONFIGS)}")
    params = replace(CONFIGS[job.config], step_embedding=job.step_embedding)
    params = params.with_mel_stats(*corpus.mel_stats()) if job.mel_norm else params
    params = with_prior(params, job.prior or DEFAULT_PRIOR, corpus)
    config = {"audio": corpus.spec.to_dict(), "diffusion": Diffusion().to_dict(), "score_net": params.to_dict(),
              "training": {}}
    return ScoreNet(params), config


def _probe_clips(job: ScoreTraining, corpus: AudioCorpus) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The fixed clips the conditioning probe runs on: held-out ones when `--probe-list` names them."""
    source = AudioCorpus(job.data, job.probe_list, corpus.spec) if job.probe_list else corpus
    audio, mel, ids = source.fixed_clips(job.probe_clips, job.probe_seconds)
    return audio, mel, f"{'held-out' if job.probe_list else 'training'} clips {', '.join(ids)}"


def train_score(job: ScoreTraining) -> Path:
    rt = runtime(job.device)
    out = Path(job.out)
    spec = MelSpec(**read_config(out)["audio"]) if (out / CONFIG).exists() else MelSpec()
    corpus = AudioCorpus(job.data, job.id_list, spec)
    net, config = _score_net_for(out, job, corpus)
    diffusion = Diffusion(**config["diffusion"])
    net.to(rt.device)
    opt = torch.optim.Adam(net.parameters(), lr=job.lr, fused=rt.device.type == "cuda")
    ema = EMA(net, job.ema_decay)
    resumed = load_train_state(out, "score", net, ema, opt)
    continued = not resumed and (out / SCORE_NET).exists()
    if continued:  # weights without optimizer state: continue from them
        load_module(out / SCORE_NET, net)
        ema = EMA(net, job.ema_decay)
    for g in opt.param_groups:
        g["lr"] = job.lr
    record = config["training"].setdefault("score", {"steps": 0, "wall_seconds": 0.0, "samples": 0, "runs": []})
    record.setdefault("health", [])
    probe_audio, probe_mel, probe_source = _probe_clips(job, corpus)
    probe_audio, probe_mel = probe_audio.to(rt.device), probe_mel.to(rt.device)

    start = (f"resuming at step {record['steps']}" if resumed else "new run" if not continued else
             f"continuing its weights at step {record['steps']} with a fresh Adam")
    if rt.main:
        print(f"data: {len(corpus)} clips, {corpus.seconds / 60:.1f} min from {job.data}; "
              f"score net {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params on {hardware(rt)}, "
              f"{'standardised' if net.params.normalized else 'raw'} ln-mel input, {net.prior.kind} prior; "
              f"{start}\n"
              f"conditioning probe every {job.probe_every} steps on the raw weights, {probe_source}")
    model = DistributedDataParallel(net) if rt.world > 1 else net
    use_compile = job.compile if job.compile is not None else rt.device.type == "cuda"
    rng = np.random.default_rng(job.seed + 1000 * rt.rank + record["steps"])
    gen = torch.Generator(rt.device).manual_seed(job.seed + 7919 * rt.rank + record["steps"])
    train_step = ScoreStep(torch.compile(model) if use_compile else model, net, opt, ema, diffusion, rt, gen,
                           job.grad_clip, net.prior)

    def save(run_steps: int, run_seconds: float) -> None:
        if not rt.main:
            return
        ema_net = ema.copy_to(ScoreNet(net.params))
        save_module(out / SCORE_NET, ema_net)
        save_train_state(out, "score", net, ema, opt)
        run = {"date": time.strftime("%Y-%m-%d"), "hardware": hardware(rt), "steps": run_steps,
               "batch": job.batch * rt.world, "segment_samples": job.segment_frames * spec.hop, "lr": job.lr,
               "ema_decay": job.ema_decay, "wall_seconds": round(run_seconds, 1),
               "steps_per_second": round(run_steps / max(run_seconds, 1e-9), 3), "data": str(job.data),
               "list": str(job.id_list) if job.id_list else None, "probe": probe_source, "git_revision": revision}
        runs = [r for r in record["runs"] if r.get("started") != started]
        record_now = {**record, "steps": base_steps + run_steps, "wall_seconds": round(base_wall + run_seconds, 1),
                      "samples": base_samples + run_steps * job.batch * rt.world * job.segment_frames * spec.hop,
                      "runs": runs + [{"started": started, **run}], "health": history}
        config["training"]["score"] = record_now
        write_config(out, config)

    history = list(record["health"])
    loss_sum, loss_count = torch.zeros((), device=rt.device), 0

    def probe() -> None:
        """Loss since the last probe and the conditioning health of the raw weights, logged and recorded."""
        nonlocal loss_sum, loss_count
        h = health(net, probe_audio, probe_mel, diffusion, seed=job.seed)
        loss = float(loss_sum) / loss_count if loss_count else None
        loss_sum, loss_count = torch.zeros((), device=rt.device), 0
        history.append({"step": base_steps + step, "loss": None if loss is None else round(loss, 5),
                        "gain": {str(t): round(g, 4) for t, g in h["gain"].items()},
                        "silence_gap_db": round(h["silence_gap_db"], 2),
                        "floor_db": None if h["floor_db"] is None else round(h["floor_db"], 2)})
        tqdm.write(f"step {base_steps + step}: loss {'-' if loss is None else f'{loss:.4f}'}, {describe(h)}")

    revision = git_revision()  # the code this run started with, not whatever HEAD is at save time
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    base_steps, base_wall, base_samples = record["steps"], record["wall_seconds"], record["samples"]
    t0 = time.time()
    step = 0
    stop = StopRequest()
    if rt.main and not history:
        probe()  # the starting point of the trend
    bar = tqdm(total=job.steps, disable=not rt.main, dynamic_ncols=True, mininterval=5)
    try:
        while not stop and step < job.steps and (job.minutes is None or time.time() - t0 < 60 * job.minutes):
            audio, mel = corpus.segments(job.batch, job.segment_frames, rng, rt.device)
            loss = train_step(audio, mel)
            loss_sum += loss.detach().float()
            loss_count += 1
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", steps_s=f"{step / (time.time() - t0):.2f}",
                                total=base_steps + step)
            if rt.main and step % job.probe_every == 0:
                probe()
            if step % job.save_every == 0:
                save(step, time.time() - t0)
    finally:
        bar.close()
        if rt.main and loss_count:
            probe()
        save(step, time.time() - t0)
    if rt.main:
        dt = time.time() - t0
        print(f"trained {step} steps in {dt:.0f} s ({step / max(dt, 1e-9):.2f} steps/s, "
              f"{step * job.batch * rt.world * job.segment_frames * spec.hop / max(dt, 1e-9):.0f} samples/s); "
              f"total {base_steps + step} steps -> {out}")
    return out
