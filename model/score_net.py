"""Score network eps_theta(x_t, mel, t): the DiffWave architecture.

Dilated residual conv layers with a gated tanh x sigmoid unit, the mel upsampled x256 by two
transposed 2-D convs, and a sinusoidal step embedding. The step index t is continuous (a float
0-based index on the training grid), because BDDM schedules land between training steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ScoreNetParams:
    residual_channels: int = 64
    residual_layers: int = 30
    dilation_cycle: int = 10
    n_mels: int = 80
    hop: int = 256  # the upsampler is two x16 transposed convs

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    # name: (residual_channels, residual_layers, dilation_cycle)
    "tiny": ScoreNetParams(16, 6, 3),
    "small": ScoreNetParams(32, 12, 6),  # the shipped default: trainable and real-time-ish on a CPU
    "medium": ScoreNetParams(48, 16, 8),
    "base": ScoreNetParams(64, 30, 10),
    "large": ScoreNetParams(128, 30, 10),
}


def step_embedding(t: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """Sinusoidal embedding of a continuous step index, DiffWave's frequencies (10^(4 i / 63))."""
    half = dim // 2
    freqs = 10.0 ** (torch.arange(half, device=t.device, dtype=torch.float32) * 4.0 / (half - 1))
    arg = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class StepEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj1 = nn.Linear(128, 512)
        self.proj2 = nn.Linear(512, 512)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.silu(self.proj2(F.silu(self.proj1(step_embedding(t)))))


class MelUpsampler(nn.Module):
    """x256 in time: two ConvTranspose2d(kernel [3, 32], stride [1, 16]) with leaky ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(1, 1, [3, 32], stride=[1, 16], padding=[1, 8])
        self.conv2 = nn.ConvTranspose2d(1, 1, [3, 32], stride=[1, 16], padding=[1, 8])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(mel.unsqueeze(1)), 0.4)
        x = F.leaky_relu(self.conv2(x), 0.4)
        return x.squeeze(1)


class ResidualBlock(nn.Module):
    def __init__(self, n_mels: int, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.step_proj = nn.Linear(512, channels)
        self.cond_proj = nn.Conv1d(n_mels, 2 * channels, 1)
        self.out_proj = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.dilated_conv(x + self.step_proj(emb).unsqueeze(-1)) + self.cond_proj(cond)
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.out_proj(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class ScoreNet(nn.Module):
    def __init__(self, params: ScoreNetParams = ScoreNetParams()) -> None:
        super().__init__()
        self.params = params
        c = params.residual_channels
        self.input_proj = nn.Conv1d(1, c, 1)
        self.step_embedding = StepEmbedding()
        self.upsampler = MelUpsampler()
        self.layers = nn.ModuleList(
            ResidualBlock(params.n_mels, c, 2 ** (i % params.dilation_cycle)) for i in range(params.residual_layers)
        )
        self.skip_proj = nn.Conv1d(c, c, 1)
        self.output_proj = nn.Conv1d(c, 1, 1)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    @property
    def receptive_field(self) -> int:
        """Samples of context on each side that can reach one output sample (the dilated convs)."""
        return sum(2 ** (i % self.params.dilation_cycle) for i in range(self.params.residual_layers))

    def forward(self, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, S) noisy audio, mel: (B, n_mels, S / hop), t: (B,) continuous step index -> eps (B, S)."""
        h = F.relu(self.input_proj(x.unsqueeze(1)))
        emb = self.step_embedding(t)
        cond = self.upsampler(mel)
        skip = torch.zeros_like(h)
        for layer in self.layers:
            h, s = layer(h, cond, emb)
            skip = skip + s
        h = F.relu(self.skip_proj(skip / math.sqrt(len(self.layers))))
        return self.output_proj(h).squeeze(1)
