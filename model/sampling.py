"""Samplers: short pure functions over (score net, mel, schedule).

`ddpm` and `ddim` run the reverse process n = N..1 of any `Schedule`. The score network is applied
through `windowed_eps`, which splits long inputs into overlapping windows whose margins cover the
network's receptive field: the result equals one full pass, with memory bounded by the window size,
so minutes of audio run without seams. It also keeps each window's conditioning (the upsampled mel
through every layer's projection), which is the same at every step, for the rest of the request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from .prior import EpsFn, Prior
from .refine import NOISE_SCALE
from .schedules import Schedule
from .score_net import ScoreNet
from .score_net_cpu import CpuScoreNet

#: Window of the bounded-memory pass, in mel frames (~6 s of audio) and its context margin.
WINDOW_FRAMES = 512
MARGIN_FRAMES = 8
#: Most memory one sampler call spends on cached conditioning; windows beyond it are conditioned at every step.
CONDITIONING_CACHE_BYTES = 512 * 2**20


def _element_size(x: torch.Tensor) -> int:
    """Bytes per value of what the net computes from `x`: the autocast dtype's where autocast is on."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.finfo(torch.get_autocast_dtype(kind)).bits // 8
    return x.element_size()


def windowed_eps(net: ScoreNet | CpuScoreNet, window_frames: int = WINDOW_FRAMES, margin_frames: int = MARGIN_FRAMES,
                 cache_bytes: int = CONDITIONING_CACHE_BYTES) -> EpsFn:
    """eps_theta(x, mel, t) computed window by window; exact when margins cover the receptive field.

    The first step of a request computes each window's conditioners (`ScoreNet.conditioners`) and the
    later steps reuse them, as long as they fit in `cache_bytes` (0 turns the cache off). A new mel
    tensor is a new request and starts a new cache.
    """
    hop = net.params.hop
    # The mel upsampler reaches ~1 frame each side; the dilated stack reaches receptive_field samples.
    margin_frames = max(margin_frames, 2 + math.ceil(net.receptive_field / hop))
    per_sample = 2 * net.params.residual_channels * net.params.residual_layers  # conditioner values per sample
    cache: dict = {"mel": None, "windows": {}, "left": 0}

    def window_eps(x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if cache["mel"] is not mel:
            cache.update(mel=mel, windows={}, left=cache_bytes)
        conditioners = cache["windows"].get((lo, hi))
        if conditioners is None:
            size = x.shape[0] * (hi - lo) * hop * per_sample * _element_size(x)
            if size > cache["left"]:
                return net(x, mel[:, :, lo:hi], t)
            conditioners = cache["windows"][lo, hi] = net.conditioners(mel[:, :, lo:hi])
            cache["left"] -= size
        return net(x, mel[:, :, lo:hi], t, conditioners)

    def eps(x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1]
        if frames <= window_frames + 2 * margin_frames:
            return window_eps(x, mel, t, 0, frames)
        out = torch.empty_like(x)
        for start in range(0, frames, window_frames):
            end = min(start + window_frames, frames)
            lo, hi = max(0, start - margin_frames), min(frames, end + margin_frames)
            e = window_eps(x[:, lo * hop:hi * hop], mel, t, lo, hi)
            out[:, start * hop:end * hop] = e[:, (start - lo) * hop:(end - lo) * hop]
        return out

    return eps


def _steps(schedule: Schedule, x: torch.Tensor):
    """(n, alpha_n, alpha_{n-1}, beta_n, sigma_n, t_n as a batch tensor) for n = N..1."""
    alpha_prev = [1.0] + schedule.alpha[:-1].tolist()
    for n in reversed(range(schedule.steps)):
        t = torch.full((x.shape[0],), float(schedule.timesteps[n]), device=x.device)
        yield n, float(schedule.alpha[n]), alpha_prev[n], float(schedule.beta[n]), float(schedule.sigma[n]), t


Seeds = int | None | Sequence[int | None]


class Noise:
    """Gaussian noise drawn on the CPU from one generator per batch item: a sampler's draws, one per call of
    `draw` (x_N first, then each reverse step's injected noise).

    Each item's noise depends only on its own seed (never on its batch neighbours), and CPU draws
    make a seed give the same noise on every device. `model.streaming.NoiseTape` replays the same draws
    slice by slice.
    """

    def __init__(self, seeds: Seeds, batch: int) -> None:
        seeds = list(seeds) if isinstance(seeds, Sequence) else [seeds] * batch
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
        self.gens = []
        for s in seeds:
            g = torch.Generator("cpu")
            g.manual_seed(s) if s is not None else g.seed()
            self.gens.append(g)

    def draw(self, length: int, device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randn(length, generator=g) for g in self.gens]).to(device)


class NoiseSource(Protocol):
    def draw(self, length: int, device: torch.device | str) -> torch.Tensor: ...


@torch.inference_mode()
def ddpm(eps_fn: EpsFn, mel: torch.Tensor, schedule: Schedule, seed: Seeds = None, hop: int = 256,
         prior: Prior = Prior(), noise: NoiseSource | None = None) -> torch.Tensor:
    """Ancestral DDPM reverse process over `schedule`, in the prior's whitened coordinates (`model.prior`);
    mel (B, n_mels, F) -> audio (B, F * hop) in [-1, 1]. The noise is `seed`'s, unless a source of it is given
    (a streamed chunk's slice of the whole request's noise)."""
    eps_fn, length = prior.whitened(eps_fn), mel.shape[-1] * hop
    noise = noise or Noise(seed, mel.shape[0])
    x = noise.draw(length, mel.device)
    for n, alpha, _, beta, sigma, t in _steps(schedule, x):
        eps = eps_fn(x, mel, t)
        x = (x - beta / math.sqrt(1 - alpha**2) * eps) / math.sqrt(1 - beta)
        if n > 0:
            x = x + sigma * noise.draw(length, x.device)
    return prior.to_audio(x, mel)


@torch.inference_mode()
def ddim(eps_fn: EpsFn, mel: torch.Tensor, schedule: Schedule, seed: Seeds = None, hop: int = 256,
         prior: Prior = Prior(), noise: NoiseSource | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) over the levels of `schedule`; only x_N depends on the seed."""
    eps_fn = prior.whitened(eps_fn)
    x = (noise or Noise(seed, mel.shape[0])).draw(mel.shape[-1] * hop, mel.device)
    for _, alpha, alpha_prev, _, _, t in _steps(schedule, x):
        eps = eps_fn(x, mel, t)
        x0 = (x - math.sqrt(1 - alpha**2) * eps) / alpha
        x = alpha_prev * x0 + math.sqrt(1 - alpha_prev**2) * eps
    return prior.to_audio(x, mel)


def scaled_noise(eps_fn: EpsFn, mel: torch.Tensor, schedule: Schedule | None = None, seed: Seeds = None,
                 hop: int = 256, prior: Prior = Prior(), noise: NoiseSource | None = None) -> torch.Tensor:
    """Projection alone's start (`model.refine`): the seeded noise at `NOISE_SCALE`; no network, no step."""
    return NOISE_SCALE * (noise or Noise(seed, mel.shape[0])).draw(mel.shape[-1] * hop, mel.device)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "noise": scaled_noise}
