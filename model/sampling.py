"""Samplers: short pure functions over (score net, mel, schedule).

`ddpm` and `ddim` run the reverse process n = N..1 of any `Schedule`; `step` is DDPM's reverse update, the one
place it is written (the BDDM schedule search and noise-estimation sampling take it too). A `Hook`, k-diffusion's
callback, sees each step's x and x0 estimate and may change either (GLA-Grad in `bench.refine` is one, the
server's cancellation check, `model.cancel`, another). The score network is applied through `windowed_eps`, which
splits long inputs into overlapping windows whose margins cover the network's receptive field: the result equals
one full pass, with memory bounded by the window size, so minutes of audio run without seams. It also keeps each window's conditioning (the upsampled mel
through every layer's projection), which is the same at every step, for the rest of the request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from .cancel import Check
from .prior import EpsFn, Prior
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
                 cache_bytes: int = CONDITIONING_CACHE_BYTES, stop: Check | None = None) -> EpsFn:
    """eps_theta(x, mel, t) computed window by window; exact when margins cover the receptive field.

    The first step of a request computes each window's conditioners (`ScoreNet.conditioners`) and the
    later steps reuse them, as long as they fit in `cache_bytes` (0 turns the cache off). A new mel
    tensor is a new request and starts a new cache. `stop` (`model.cancel`) is called before each window after
    the first, and by the CPU net before each of its layers (`CpuScoreNet`): one step on 20 s of audio is a second
    or more of work on a CPU.
    """
    hop = net.params.hop
    # The mel upsampler reaches ~1 frame each side; the dilated stack reaches receptive_field samples.
    margin_frames = max(margin_frames, 2 + math.ceil(net.receptive_field / hop))
    per_sample = 2 * net.params.residual_channels * net.params.residual_layers  # conditioner values per sample
    cache: dict = {"mel": None, "windows": {}, "left": 0}
    checks_layers = stop is not None and isinstance(net, CpuScoreNet)
    apply = (lambda *a: net(*a, stop=stop)) if checks_layers else net  # noqa: E731

    def window_eps(x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if cache["mel"] is not mel:
            cache.update(mel=mel, windows={}, left=cache_bytes)
        conditioners = cache["windows"].get((lo, hi))
        if conditioners is None:
            size = x.shape[0] * (hi - lo) * hop * per_sample * _element_size(x)
            if size > cache["left"]:
                return apply(x, mel[:, :, lo:hi], t, None)
            conditioners = cache["windows"][lo, hi] = net.conditioners(mel[:, :, lo:hi])
            cache["left"] -= size
        return apply(x, mel[:, :, lo:hi], t, conditioners)

    def eps(x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1]
        if frames <= window_frames + 2 * margin_frames:
            return window_eps(x, mel, t, 0, frames)
        out = torch.empty_like(x)
        for start in range(0, frames, window_frames):
            if start and stop is not None:
                stop()
            end = min(start + window_frames, frames)
            lo, hi = max(0, start - margin_frames), min(frames, end + margin_frames)
            e = window_eps(x[:, lo * hop:hi * hop], mel, t, lo, hi)
            out[:, start * hop:end * hop] = e[:, (start - lo) * hop:(end - lo) * hop]
        return out

    return eps


#: A level or scale: one float for the whole batch, or a float64 tensor (B,) with one per item.
Coefficient = float | torch.Tensor


def _operand(value: Coefficient, x: torch.Tensor) -> float | torch.Tensor:
    """A float64 coefficient as an operand of x: a float as it is, per-item values as a column in x's dtype."""
    return value if isinstance(value, float) else value.to(x.device, x.dtype)[:, None]


def step(x: torch.Tensor, eps: torch.Tensor, alpha_bar: Coefficient, beta: Coefficient,
         sigma: Coefficient = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's reverse step x_n -> x_{n-1} = (x_n - beta_n / sqrt(1 - alpha_bar_n) eps) / sqrt(1 - beta_n) + sigma_n z.

    alpha_bar_n is the cumulative level (this project's alpha_n^2), beta_n the step's scale, z the injected noise
    (None at the last step). The coefficients are computed in float64 before they meet x, as floats (one schedule
    for the batch) or per-item tensors (noise estimation's own schedule per item).
    """
    if isinstance(alpha_bar, float) and isinstance(beta, float):
        c_eps, c_x = beta / math.sqrt(1 - alpha_bar), math.sqrt(1 - beta)
    else:
        alpha_bar, beta = torch.as_tensor(alpha_bar, dtype=torch.float64), torch.as_tensor(beta, dtype=torch.float64)
        c_eps, c_x = beta / torch.sqrt(1 - alpha_bar), torch.sqrt(1 - beta)
    x = (x - _operand(c_eps, x) * eps) / _operand(c_x, x)
    return x if z is None else x + _operand(sigma, x) * z


@dataclass(frozen=True)
class State:
    """One reverse step as a hook sees it, in the prior's whitened coordinates: step n (N-1..0 from the noisiest),
    the level alpha_n, x_n and the net's eps; `x0` is the estimate they imply (computed only when asked)."""

    n: int
    alpha: float
    x: torch.Tensor
    eps: torch.Tensor

    @property
    def x0(self) -> torch.Tensor:
        return (self.x - math.sqrt(1 - self.alpha**2) * self.eps) / self.alpha

    def with_x0(self, x0: torch.Tensor) -> State:
        """This step going on from `x0` instead: eps re-derived from x = alpha x0 + sqrt(1 - alpha^2) eps."""
        return replace(self, eps=(self.x - self.alpha * x0) / math.sqrt(1 - self.alpha**2))


#: A per-step hook (k-diffusion's callback): called after the net at each step; returning a State changes x or
#: x0 (`State.with_x0`) and the step goes on from them, None changes nothing.
Hook = Callable[[State], State | None]


def _levels(schedule: Schedule, x: torch.Tensor):
    """(n, alpha_n, alpha_{n-1}, beta_n, sigma_n, t_n as a batch tensor) for n = N..1."""
    alpha_prev = [1.0] + schedule.alpha[:-1].tolist()
    for n in reversed(range(schedule.steps)):
        t = torch.full((x.shape[0],), float(schedule.timesteps[n]), device=x.device)
        yield n, float(schedule.alpha[n]), alpha_prev[n], float(schedule.beta[n]), float(schedule.sigma[n]), t


def _hooked(hook: Hook | None, n: int, alpha: float, x: torch.Tensor, eps: torch.Tensor):
    """(x, eps) after the hook, if any."""
    state = None if hook is None else hook(State(n, alpha, x, eps))
    return (x, eps) if state is None else (state.x, state.eps)


Seeds = int | None | Sequence[int | None]


def item_seeds(seeds: Seeds, batch: int) -> list[int | None]:
    """Each batch item's seed: one per item, or one for all."""
    seeds = list(seeds) if isinstance(seeds, Sequence) else [seeds] * batch
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    return seeds


class Noise:
    """Gaussian noise drawn on the CPU from one generator per batch item: a sampler's draws, one per call of
    `draw` (x_N first, then each reverse step's injected noise).

    Each item's noise depends only on its own seed (never on its batch neighbours), and CPU draws
    make a seed give the same noise on every device. `model.streaming.NoiseTape` replays the same draws
    slice by slice.
    """

    def __init__(self, seeds: Seeds, batch: int) -> None:
        self.gens = []
        for s in item_seeds(seeds, batch):
            g = torch.Generator("cpu")
            g.manual_seed(s) if s is not None else g.seed()
            self.gens.append(g)

    def draw(self, length: int, device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randn(length, generator=g) for g in self.gens]).to(device)


class NoiseSource(Protocol):
    def draw(self, length: int, device: torch.device | str) -> torch.Tensor: ...


@torch.inference_mode()
def ddpm(eps_fn: EpsFn, mel: torch.Tensor, schedule: Schedule, seed: Seeds = None, hop: int = 256,
         prior: Prior = Prior(), noise: NoiseSource | None = None, hook: Hook | None = None) -> torch.Tensor:
    """Ancestral DDPM reverse process over `schedule`, in the prior's whitened coordinates (`model.prior`);
    mel (B, n_mels, F) -> audio (B, F * hop) in [-1, 1]. The noise is `seed`'s, unless a source of it is given
    (a streamed chunk's slice of the whole request's noise)."""
    eps_fn, length = prior.whitened(eps_fn), mel.shape[-1] * hop
    noise = noise or Noise(seed, mel.shape[0])
    x = noise.draw(length, mel.device)
    for n, alpha, _, beta, sigma, t in _levels(schedule, x):
        x, eps = _hooked(hook, n, alpha, x, eps_fn(x, mel, t))
        x = step(x, eps, alpha**2, beta, sigma, noise.draw(length, x.device) if n > 0 else None)
    return prior.to_audio(x, mel)


@torch.inference_mode()
def ddim(eps_fn: EpsFn, mel: torch.Tensor, schedule: Schedule, seed: Seeds = None, hop: int = 256,
         prior: Prior = Prior(), noise: NoiseSource | None = None, hook: Hook | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) over the levels of `schedule`; only x_N depends on the seed."""
    eps_fn = prior.whitened(eps_fn)
    x = (noise or Noise(seed, mel.shape[0])).draw(mel.shape[-1] * hop, mel.device)
    for n, alpha, alpha_prev, _, _, t in _levels(schedule, x):
        x, eps = _hooked(hook, n, alpha, x, eps_fn(x, mel, t))
        x0 = (x - math.sqrt(1 - alpha**2) * eps) / alpha
        x = alpha_prev * x0 + math.sqrt(1 - alpha_prev**2) * eps
    return prior.to_audio(x, mel)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim}
