"""Training losses: DDPM noise prediction for eps_theta, BDDM's step loss for sigma_phi, and the noise-level
network's loss (San-Roman et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prior import Prior
from ..schedules import Diffusion


def alpha_at(t: torch.Tensor, diffusion: Diffusion) -> torch.Tensor:
    """Noise level at continuous 0-based training indices t (linear interpolation on the grid)."""
    grid = torch.as_tensor(diffusion.alphas, dtype=torch.float32, device=t.device)
    t = t.clamp(0, diffusion.steps - 1)
    lo = t.floor().long().clamp(max=diffusion.steps - 2)
    frac = t - lo
    return grid[lo] * (1 - frac) + grid[lo + 1] * frac


def score_loss(score_net, audio: torch.Tensor, mel: torch.Tensor, diffusion: Diffusion,
               generator: torch.Generator | None = None, prior: Prior = Prior()) -> torch.Tensor:
    """L1 between eps and eps_theta(alpha_t x_0 + sqrt(1 - alpha_t^2) s eps, mel, t): the noise drawn from the
    prior N(0, s^2) (`model.prior`; s = 1 for the standard one), the loss on the whitened eps.

    t is drawn uniformly from the *continuous* range [0, T - 1], so the network learns every noise
    level a searched schedule can land on, not only the T grid points.
    """
    b = audio.shape[0]
    t = torch.rand(b, device=audio.device, generator=generator) * (diffusion.steps - 1)
    alpha = alpha_at(t, diffusion)[:, None]
    eps = torch.randn(audio.shape, device=audio.device, generator=generator)
    x_t = alpha * audio + torch.sqrt(1 - alpha**2) * prior.noise(eps, mel)
    return F.l1_loss(score_net(x_t, mel, t).float(), eps)


def step_loss(score_net, schedule_net, audio: torch.Tensor, mel: torch.Tensor, diffusion: Diffusion,
              tau: int = 66, generator: torch.Generator | None = None, prior: Prior = Prior()) -> torch.Tensor:
    """BDDM's step loss for sigma_phi (Eq. 14), eps_theta frozen; returned per audio sample.

    At a level alpha_t (t continuous in [tau, T - 1 - tau]) the schedule net proposes
    beta_hat = r * min(beta_nxt, delta^2), with beta_nxt the scale that jumps tau grid steps and
    delta^2 = 1 - alpha_t^2. The loss is the KL between the forward posterior and the reverse step
    that beta_hat implies; the sum over the D samples is divided by D (Adam does not mind the scale).
    All of it in the prior's whitened coordinates (`model.prior`), where the process is the standard one.
    """
    b = audio.shape[0]
    t = tau + torch.rand(b, device=audio.device, generator=generator) * (diffusion.steps - 1 - 2 * tau)
    alpha_cur, alpha_nxt = alpha_at(t, diffusion)[:, None], alpha_at(t + tau, diffusion)[:, None]
    beta_nxt = 1 - (alpha_nxt / alpha_cur) ** 2
    delta_sq = 1 - alpha_cur**2
    eps = torch.randn(audio.shape, device=audio.device, generator=generator)
    x_t = alpha_cur * prior.whiten(audio, mel) + delta_sq.sqrt() * eps
    with torch.no_grad():
        eps_theta = prior.whitened(score_net)(x_t, mel, t).float()
    beta_hat = schedule_net(x_t).float()[:, None] * torch.minimum(beta_nxt, delta_sq)  # as ScheduleNet.beta
    ratio = beta_hat / delta_sq
    kl = (delta_sq / (2 * (delta_sq - beta_hat)) * (eps - ratio * eps_theta) ** 2).mean(dim=1, keepdim=True)
    return (kl + torch.log(1 / ratio) / 4 + (ratio - 1) / 2).mean()


def ne_loss(ne_net, audio: torch.Tensor, mel: torch.Tensor, diffusion: Diffusion,
            generator: torch.Generator | None = None, prior: Prior = Prior()) -> torch.Tensor:
    """(log(1 - alpha) - log(1 - alpha_hat))^2 of the noise-level network (`model.ne_net`), alpha the cumulative
    level alpha_t^2 at a continuous step index drawn uniformly over the grid, on the whitened noisy clip
    (`model.prior`): y_t = alpha_t x_0 / s + sqrt(1 - alpha_t^2) eps."""
    b = audio.shape[0]
    t = torch.rand(b, device=audio.device, generator=generator) * (diffusion.steps - 1)
    alpha = alpha_at(t, diffusion)[:, None]
    eps = torch.randn(audio.shape, device=audio.device, generator=generator)
    y_t = alpha * prior.whiten(audio, mel) + torch.sqrt(1 - alpha**2) * eps
    return F.mse_loss(ne_net(y_t).float(), torch.log(1 - alpha[:, 0] ** 2))
