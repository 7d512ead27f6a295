"""Noise-level network P_theta of "Noise Estimation for Generative Diffusion Models" (San-Roman, Nachmani, Wolf
2021): it reads a noisy waveform and estimates how much of it is noise.

In the paper's notation the level is alpha, the cumulative signal level prod (1 - beta); in this project's that
is alpha_n^2. The network predicts log(1 - alpha) directly (a negative number, via -softplus), and is trained
with the paper's loss ||log(1 - alpha) - log(1 - alpha_hat)||^2 on levels drawn across the whole training grid,
which weighs the nearly clean end (1 - alpha ~ 1e-4) as much as the noisy one.

It is trained on data alone, with no score network, in the whitened coordinates of the score net's prior
(`model.prior`), where the noise is N(0, I) whatever the prior: the level it estimates is the one the score
net's process is at. A strided conv encoder sees the waveform's local structure (speech against white noise),
the per-frame estimates are averaged over time: one level per waveform, as the sampler needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NENetParams:
    channels: int = 64
    layers: int = 4  # conv layers after the encoder, each halving the frame rate
    window: int = 32  # encoder kernel in samples, stride window // 2

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "tiny": NENetParams(8, 2, 16),  # tests
    "small": NENetParams(),  # the shipped estimator: ~60k parameters, trains in minutes on a CPU
}


class NENet(nn.Module):
    def __init__(self, params: NENetParams = NENetParams()) -> None:
        super().__init__()
        self.params = params
        c = params.channels
        self.encoder = nn.Conv1d(1, c, params.window, stride=params.window // 2)
        self.convs = nn.ModuleList(nn.Conv1d(c, c, 5, stride=2, padding=2) for _ in range(params.layers))
        self.head = nn.Conv1d(c, 1, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Whitened noisy audio (B, S) -> log(1 - alpha_hat) (B,), below 0."""
        h = F.gelu(self.encoder(y.unsqueeze(1)))
        for conv in self.convs:
            h = F.gelu(conv(h))
        return -F.softplus(self.head(h).float().mean(dim=(1, 2)))

    def alpha(self, y: torch.Tensor) -> torch.Tensor:
        """The estimated cumulative signal level alpha_hat (B,) in (0, 1) (this project's alpha_n^2)."""
        return 1 - torch.exp(self(y))


def mean_guess(diffusion) -> float:
    """log(1 - alpha) averaged over the training distribution of levels (step index uniform on the grid): the
    guess of an estimator that ignores its input."""
    t = np.linspace(0, diffusion.steps - 1, 100_001)
    return float(np.mean(np.log(1 - diffusion.alpha_at(t) ** 2)))


@torch.inference_mode()
def level_errors(net: NENet, audio: torch.Tensor, mel: torch.Tensor, diffusion, prior, steps, seed: int = 0) -> dict:
    """{t: (RMS error of the net's log(1 - alpha_hat), RMS error of `mean_guess`)} over clips (B, S) noised to the
    grid levels `steps`, in the prior's whitened coordinates."""
    gen, guess, out = torch.Generator("cpu").manual_seed(seed), mean_guess(diffusion), {}
    clean = prior.whiten(audio, mel)
    for t in steps:
        alpha = float(diffusion.alphas[t])
        y = alpha * clean + math.sqrt(1 - alpha**2) * torch.randn(audio.shape, generator=gen).to(audio.device)
        target = math.log(1 - alpha**2)
        out[t] = (float(torch.sqrt(torch.mean((net(y).double() - target) ** 2))), abs(guess - target))
    return out
