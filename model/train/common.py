"""What every training loop shares: device and DDP set-up, EMA, resumable state, hardware notes."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..audio import MelSpec
from ..checkpoint import TRAIN_STATE, git_revision, load_module, load_tensors, save_module, save_tensors, write_config
from .data import AudioCorpus


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on GPU (the loss stays fp32); plain fp32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def runtime(device: str = "auto") -> Runtime:
    """CPU or CUDA automatically; under torchrun (WORLD_SIZE > 1) one process per GPU with NCCL."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            return Runtime(torch.device("cuda", local), rank, world)
        return Runtime(torch.device("cpu"), rank, world)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Runtime(torch.device(device))


def hardware(rt: Runtime) -> str:
    if rt.device.type == "cuda":
        return f"{rt.world}x {torch.cuda.get_device_name(rt.device)}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class StopRequest:
    """Set by SIGTERM or SIGINT (`docker stop`, `kill`, Ctrl-C), so a training loop ends its step and saves.

    A background job has SIGINT ignored by its shell, and SIGTERM would otherwise end the process
    without saving; both now just ask the loop to stop."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request)

    def _request(self, signum: int, _frame) -> None:
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving", flush=True)

    def __bool__(self) -> bool:
        return self.requested


@dataclass(kw_only=True)
class CorpusOptions:
    """What every job over the corpus takes (`model.train`'s shared options): its data, device and seed."""

    data: str
    id_list: str | None = None
    device: str = "auto"
    seed: int = 0


@dataclass(kw_only=True)
class LoopOptions(CorpusOptions):
    """What every trainer takes besides: length, batch, optimiser."""

    steps: int
    batch: int = 8
    segment_frames: int = 32
    lr: float = 5e-4
    grad_clip: float = 1.0
    minutes: float | None = None
    save_every: int = 250
    compile: bool | None = None


class TrainingRecord:
    """A network's entry under `training` in config.json: steps and seconds over all runs, and one entry per run
    (this one's replaced at each save), each with its hardware, batch, data and the code it started with."""

    def __init__(self, config: dict, key: str, job: LoopOptions, rt: Runtime, hop: int) -> None:
        self.config, self.key, self.job, self.rt, self.hop = config, key, job, rt, hop
        self.before = config["training"].get(key) or {"steps": 0, "wall_seconds": 0.0, "runs": []}
        self.started, self.revision = time.strftime("%Y-%m-%dT%H:%M:%S"), git_revision()

    @property
    def steps(self) -> int:
        return self.before["steps"]

    def update(self, run_steps: int, run_seconds: float, **extra) -> None:
        job = self.job
        run = {"started": self.started, "hardware": hardware(self.rt), "steps": run_steps, "batch": job.batch,
               "segment_samples": job.segment_frames * self.hop, "lr": job.lr, **extra,
               "wall_seconds": round(run_seconds, 1), "data": str(job.data),
               "list": str(job.id_list) if job.id_list else None, "git_revision": self.revision}
        runs = [r for r in self.before["runs"] if r.get("started") != self.started]
        self.config["training"][self.key] = {"steps": self.before["steps"] + run_steps, **extra,
                                             "wall_seconds": round(self.before["wall_seconds"] + run_seconds, 1),
                                             "runs": runs + [run]}


def adam_resumed(directory: Path, prefix: str, net: nn.Module, weights: Path | None, lr: float,
                 rt: Runtime) -> tuple[torch.optim.Optimizer, bool]:
    """Adam for `net` at `lr`: with `net` and the moments restored from the directory's train state (`prefix`), or
    else the net from its `weights` file when there is one (continued with a fresh Adam). Returns (opt, resumed)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=rt.device.type == "cuda")
    resumed = load_train_state(directory, prefix, net, None, opt)
    if not resumed and weights is not None:
        load_module(weights, net)
    for g in opt.param_groups:
        g["lr"] = lr
    return opt, resumed


def optimize(loss: torch.Tensor, module: nn.Module, opt: torch.optim.Optimizer, grad_clip: float) -> None:
    """One Adam step on `loss`, gradients clipped to `grad_clip`."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()


def run_loop(step: Callable[[], torch.Tensor], save: Callable[[int, float], None], steps: int,
             minutes: float | None, save_every: int) -> tuple[int, float]:
    """The loop of the small trainers (schedule net, noise-level net): `step` until `steps`, `minutes` or a stop
    signal, `save(steps done, seconds)` every `save_every` steps and at the end. Returns (steps, seconds)."""
    t0, done, stop = time.time(), 0, StopRequest()
    bar = tqdm(total=steps, dynamic_ncols=True, mininterval=5)
    try:
        while not stop and done < steps and (minutes is None or time.time() - t0 < 60 * minutes):
            loss = step()
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", steps_s=f"{done / (time.time() - t0):.2f}", refresh=False)
            if done % save_every == 0:
                save(done, time.time() - t0)
    finally:
        bar.close()
        save(done, time.time() - t0)
    return done, time.time() - t0


def compiled(job: LoopOptions, rt: Runtime, *modules: nn.Module) -> tuple[nn.Module, ...]:
    """The modules torch.compiled where the job says so (unset: on CUDA), else as they are."""
    use = job.compile if job.compile is not None else rt.device.type == "cuda"
    return tuple(torch.compile(m) if use else m for m in modules)


def train_small_net(job: LoopOptions, rt: Runtime, out: Path, config: dict, key: str, net: nn.Module, file: str,
                    name: str, loss: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor], size: str,
                    **record: float | int) -> Path:
    """What the small trainers (schedule net, noise-level net) share: `net` resumed from the weights directory
    `out` (its train state under `key`, else its shipped `file`), trained on `loss(audio, mel, generator)` by
    `run_loop`, and saved with its config entry `{key}_net` and its `training` record (`name`, `size`: what it is)."""
    spec = MelSpec(**config["audio"])
    shipped = out / file if (out / file).exists() and config.get(f"{key}_net") else None
    opt, resumed = adam_resumed(out, key, net, shipped, job.lr, rt)
    history = TrainingRecord(config, key, job, rt, spec.hop)
    corpus = AudioCorpus(job.data, job.id_list, spec)
    print(f"data: {len(corpus)} clips, {corpus.seconds / 60:.1f} min from {job.data}; {name} {size} on {hardware(rt)}; "
          f"{'resuming at step ' + str(history.steps) if resumed else 'new run'}")
    rng = np.random.default_rng(job.seed + history.steps)
    gen = torch.Generator(rt.device).manual_seed(job.seed + history.steps)

    def save(run_steps: int, run_seconds: float) -> None:
        save_module(out / file, net)
        save_train_state(out, key, net, None, opt)
        config[f"{key}_net"] = net.params.to_dict()
        history.update(run_steps, run_seconds, **record)
        write_config(out, config)

    def step() -> torch.Tensor:
        audio, mel = corpus.segments(job.batch, job.segment_frames, rng, rt.device)
        with rt.autocast():
            value = loss(audio, mel, gen)
        optimize(value, net, opt, job.grad_clip)
        return value

    steps, dt = run_loop(step, save, job.steps, job.minutes, job.save_every)
    print(f"trained the {name} {steps} steps in {dt:.0f} s ({steps / max(dt, 1e-9):.2f} steps/s); "
          f"total {history.steps + steps} steps -> {out / file}")
    return out


class EMA:
    """Exponential moving average of a module's parameters; the EMA weights are what ships."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, module: nn.Module) -> nn.Module:
        module.load_state_dict(self.shadow)
        return module


def save_train_state(directory: Path, prefix: str, module: nn.Module, ema: EMA | None,
                     opt: torch.optim.Optimizer) -> None:
    """Weights, EMA and Adam moments of one network under `prefix.` keys, beside other networks' state."""
    path = directory / TRAIN_STATE
    tensors = {k: v for k, v in (load_tensors(path).items() if path.exists() else []) if not k.startswith(prefix + ".")}
    tensors.update({f"{prefix}.model.{k}": v for k, v in module.state_dict().items()})
    if ema is not None:
        tensors.update({f"{prefix}.ema.{k}": v for k, v in ema.shadow.items()})
    names = {p: n for n, p in module.named_parameters()}
    for p, st in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"{prefix}.adam.{key}.{names[p]}"] = torch.as_tensor(st[key]).float().reshape(-1) \
                if key == "step" else st[key]
    save_tensors(path, tensors)


def load_train_state(directory: Path, prefix: str, module: nn.Module, ema: EMA | None,
                     opt: torch.optim.Optimizer) -> bool:
    """Restore what `save_train_state` wrote; False when there is nothing to resume."""
    path = directory / TRAIN_STATE
    if not path.exists():
        return False
    state = load_tensors(path)
    model = {k[len(prefix) + 7:]: v for k, v in state.items() if k.startswith(prefix + ".model.")}
    if not model:
        return False
    module.load_state_dict(model)
    if ema is not None:
        ema.shadow = {k: state.get(f"{prefix}.ema.{k}", v.detach().float().cpu()).to(v.device).float()
                      for k, v in module.state_dict().items()}
    for n, p in module.named_parameters():
        if f"{prefix}.adam.exp_avg.{n}" in state:
            opt.state[p] = {
                "exp_avg": state[f"{prefix}.adam.exp_avg.{n}"].to(p.device),
                "exp_avg_sq": state[f"{prefix}.adam.exp_avg_sq.{n}"].to(p.device),
                "step": state[f"{prefix}.adam.step.{n}"].reshape(()).to(p.device if opt.defaults.get("fused") else "cpu"),
            }
    return True
