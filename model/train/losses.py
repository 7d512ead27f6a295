"""Training losses: DDPM noise prediction for eps_theta, BDDM's step loss for sigma_phi."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schedules import Diffusion


def alpha_at(t: torch.Tensor, diffusion: Diffusion) -> torch.Tensor:
    """Noise level at continuous 0-based training indices t (linear interpolation on the grid)."""
    grid = torch.as_tensor(diffusion.alphas, dtype=torch.float32, device=t.device)
    t = t.clamp(0, diffusion.steps - 1)
    lo = t.floor().long().clamp(max=diffusion.steps - 2)
    frac = t - lo
    return grid[lo] * (1 - frac) + grid[lo + 1] * frac


def score_loss(score_net, audio: torch.Tensor, mel: torch.Tensor, diffusion: Diffusion,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """L1 between eps and eps_theta(alpha_t x_0 + sqrt(1 - alpha_t^2) eps, mel, t).

    t is drawn uniformly from the *continuous* range [0, T - 1], so the network learns every noise
    level a searched schedule can land on, not only the T grid points.
    """
    b = audio.shape[0]
    t = torch.rand(b, device=audio.device, generator=generator) * (diffusion.steps - 1)
    alpha = alpha_at(t, diffusion)[:, None]
    eps = torch.randn(audio.shape, device=audio.device, generator=generator)
    x_t = alpha * audio + torch.sqrt(1 - alpha**2) * eps
    return F.l1_loss(score_net(x_t, mel, t).float(), eps)
