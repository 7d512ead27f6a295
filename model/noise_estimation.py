"""Noise estimation (San-Roman, Nachmani, Wolf 2021): a few-step schedule adjusted to each sample as it goes.

For N steps the schedule comes from a one-parameter family, beta_1..beta_N from clean to noisy (`FAMILIES`):
- linear: beta_i rises linearly from the training grid's beta_1 to beta_N = theta;
- fibonacci: beta_i = theta F_i with F = 1, 1, 2, 3, 5, ..., each scale the sum of the two cleaner ones.
At each reverse step, with n steps left, the noise-level network (`model.ne_net`) estimates the sample's level
alpha_hat (cumulative, the paper's alpha; this project's alpha_n^2). The family is re-fitted to it: theta such
that prod_{i <= n} (1 - beta_i) = alpha_hat, so the remaining n steps end exactly at clean audio from where
the sample really is. The step taken is that fit's beta_n, the score network conditioned on the continuous
training-step index of alpha_hat. Any score net works unchanged; the schedule follows each utterance, so
requests cannot share one (the server neither batches nor caches NE schedules with rho's).

All of it runs in the whitened coordinates of the score net's prior (`model.prior`), like every sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .ne_net import NENet
from .prior import EpsFn, Prior
from .sampling import Noise, NoiseSource, Seeds, step
from .schedules import Diffusion

#: Bisection steps of the fit (theta to ~1e-15 of its range).
FIT_ITERATIONS = 60


def fibonacci(n: int) -> np.ndarray:
    f = [1.0, 1.0]
    while len(f) < n:
        f.append(f[-1] + f[-2])
    return np.array(f[:n])


def linear_family(theta: float, n: int, diffusion: Diffusion) -> np.ndarray:
    """beta_1..beta_n rising linearly from the training grid's first scale to theta (one step: theta)."""
    return np.linspace(min(diffusion.beta_start, theta), theta, n) if n > 1 else np.array([theta])


def fibonacci_family(theta: float, n: int, diffusion: Diffusion) -> np.ndarray:
    """beta_i = theta F_i: each scale the sum of the two below it."""
    return theta * fibonacci(n)


FAMILIES: dict[str, Callable[[float, int, Diffusion], np.ndarray]] = {"linear": linear_family,
                                                                       "fibonacci": fibonacci_family}
#: The family `model.synth --method ne` uses unless told: the one that measured better over both shipped nets
#: (bench/results/quality-methods.md, 6 held-out clips): linear won 7 of the 12 (net, steps, STOI or PESQ-WB) cells and
#: left far less noise on `small` (6.4 dB over the recordings' floor at 7 steps, against 14.0); on `base`,
#: fibonacci was better at 7 and 12 steps (STOI 0.774 / 0.819 against 0.760 / 0.786).
DEFAULT_FAMILY = "linear"


def theta_limit(family: str, n: int) -> float:
    """The largest theta whose betas all stay below 1."""
    return 1.0 if family == "linear" else 1.0 / float(fibonacci(n)[-1])


def fit(family: str, n: int, alpha_bar: float, diffusion: Diffusion = Diffusion()) -> np.ndarray:
    """The n betas of `family` whose levels multiply to alpha_bar (in (0, 1)): theta by bisection on the
    monotone log prod (1 - beta_i)."""
    target, make = math.log(min(max(alpha_bar, 1e-12), 1 - 1e-12)), FAMILIES[family]
    lo, hi = 0.0, theta_limit(family, n) * (1 - 1e-9)
    for _ in range(FIT_ITERATIONS):
        mid = (lo + hi) / 2
        if np.log1p(-make(mid, n, diffusion)).sum() > target:  # not noisy enough yet
            lo = mid
        else:
            hi = mid
    return make((lo + hi) / 2, n, diffusion)


@torch.inference_mode()
def ne_ddpm(eps_fn: EpsFn, ne_net: NENet, mel: torch.Tensor, steps: int, seed: Seeds = None, hop: int = 256,
            prior: Prior = Prior(), family: str = DEFAULT_FAMILY, diffusion: Diffusion = Diffusion(),
            noise: NoiseSource | None = None, levels: list | None = None) -> torch.Tensor:
    """DDPM in `steps` steps whose scales are re-fitted to the estimated level before each one (module docstring);
    mel (B, n_mels, F) -> audio (B, F * hop) in [-1, 1]. Every item of a batch gets its own schedule; `levels`,
    when given, collects each step's (alpha_hat, beta) per item."""
    if steps < 1:
        raise ValueError("NE sampling needs at least one step")
    eps_fn, length = prior.whitened(eps_fn), mel.shape[-1] * hop
    noise = noise or Noise(seed, mel.shape[0])
    x = noise.draw(length, mel.device)
    for n in range(steps, 0, -1):
        alpha_bar = ne_net.alpha(x).double().cpu().numpy()
        beta = np.array([fit(family, n, float(a), diffusion)[-1] for a in alpha_bar])
        if levels is not None:
            levels.append(list(zip(alpha_bar.tolist(), beta.tolist())))
        alpha = np.sqrt(alpha_bar)
        t = torch.as_tensor(diffusion.timestep_of(alpha), dtype=torch.float32, device=x.device)
        eps = eps_fn(x, mel, t)
        sigma, z = torch.zeros(len(beta), dtype=torch.float64), None
        if n > 1:
            alpha_prev_sq = alpha_bar / (1 - beta)
            sigma, z = torch.from_numpy(np.sqrt((1 - alpha_prev_sq) / (1 - alpha_bar) * beta)), noise.draw(length, x.device)
        x = step(x, eps, torch.from_numpy(alpha_bar), torch.from_numpy(beta), sigma, z)
    return prior.to_audio(x, mel)
