"""Schedule network sigma_phi: a GALR net that reads a noisy waveform and predicts one ratio r in (0, 1).

BDDM turns the ratio into the next noise scale, beta_hat_{n-1} = r * min(beta_hat_n, 1 - alpha_hat_{n-1}^2):
the bound keeps the schedule decreasing and the step valid, so the network only has to judge *how much*
noise is left in x_n. As in the official BDDM code, the network sees the waveform alone; the bound is
applied outside it (`ScheduleNet.beta`).

GALR (Lam et al., 2021): a strided conv encoder, frames cut into segments, then blocks that alternate a
BiLSTM *within* each segment (local structure) with self-attention *across* segments at each position
inside a segment (global structure), each with a residual connection and LayerNorm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ScheduleNetParams:
    channels: int = 128  # encoder / feature dimension
    hidden: int = 128  # BiLSTM hidden size per direction
    blocks: int = 2
    heads: int = 8
    window: int = 8  # encoder kernel in samples, stride window // 2
    segment: int = 64  # frames per segment (segments do not overlap)

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "tiny": ScheduleNetParams(16, 16, 1, 2),  # tests
    "small": ScheduleNetParams(64, 64, 2, 4, window=16),  # ~1.8x cheaper per step on a CPU
    "paper": ScheduleNetParams(),  # BDDM's sigma_phi: the shipped default
}


class GALRBlock(nn.Module):
    def __init__(self, p: ScheduleNetParams) -> None:
        super().__init__()
        self.lstm = nn.LSTM(p.channels, p.hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * p.hidden, p.channels)
        self.local_norm = nn.LayerNorm(p.channels)
        self.attn = nn.MultiheadAttention(p.channels, p.heads, batch_first=True)
        self.global_norm = nn.LayerNorm(p.channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, S segments, K frames, D) -> same shape."""
        b, s, k, d = h.shape
        local = h.reshape(b * s, k, d)
        local = self.local_norm(local + self.proj(self.lstm(local)[0]))
        glob = local.reshape(b, s, k, d).transpose(1, 2).reshape(b * k, s, d)  # a sequence over segments
        glob = self.global_norm(glob + self.attn(glob, glob, glob, need_weights=False)[0])
        return glob.reshape(b, k, s, d).transpose(1, 2)


class ScheduleNet(nn.Module):
    def __init__(self, params: ScheduleNetParams = ScheduleNetParams()) -> None:
        super().__init__()
        self.params = params
        c = params.channels
        self.encoder = nn.Conv1d(1, c, params.window, stride=params.window // 2, bias=False)
        self.bottleneck = nn.Conv1d(c, c, 1, bias=False)
        self.blocks = nn.ModuleList(GALRBlock(params) for _ in range(params.blocks))
        self.gate = nn.Sequential(nn.PReLU(), nn.Linear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Noisy audio (B, S) -> ratio r (B,) in (0, 1)."""
        p = self.params
        h = self.bottleneck(F.relu(self.encoder(x.unsqueeze(1))))  # (B, D, L)
        h = F.pad(h, (0, -h.shape[-1] % p.segment))
        b, d, frames = h.shape
        h = h.reshape(b, d, frames // p.segment, p.segment).permute(0, 2, 3, 1)  # (B, S, K, D)
        for block in self.blocks:
            h = block(h)
        return torch.sigmoid(self.gate(h).float().mean(dim=(1, 2, 3)))

    def beta(self, x: torch.Tensor, beta_next: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """beta_hat = r(x) * min(beta_next, delta^2): the next noise scale, never above either bound."""
        return self(x) * torch.minimum(beta_next, delta_sq)
