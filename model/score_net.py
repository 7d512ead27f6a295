"""Score network eps_theta(x_t, mel, t): the DiffWave architecture.

Dilated residual conv layers with a gated tanh x sigmoid unit, the mel upsampled x256 by two
transposed 2-D convs, and a sinusoidal step embedding. The step index t is continuous (a float
0-based index on the training grid), because BDDM schedules land between training steps.

A new net standardises its mel input with per-band statistics of the training mels (stored in the
config), its upsampler starts as linear interpolation, its other convs from Kaiming init as in lmnt's
DiffWave, and its step embedding is smooth over the continuous index. The raw ln-mel (mean about -5.7)
made the conditioning a faint pattern the net did not learn to read, so it ignored its mel
(`bench/results/conditioning.md`). Weights made before this have neither statistics nor an embedding
kind in their config, and keep the raw ln-mel input and DiffWave embedding they were trained with.

Training and serving run the same maths as lmnt's DiffWave, on the same weights (`tests/test_score_net_fast.py`
pins it to the plain layers), computed faster where measured faster on a CPU (2-core EPYC, 1 thread, busy
beside training runs; the `small` net on 1 s of audio, best of 3-7 interleaved runs against the old code):
- the upsampler in polyphase form (`polyphase`): 18 -> 4 ms forward, fwd + bwd 3.4x faster;
- one 1x1 conv for every layer's conditioner projection (`ScoreNet.conditioners`, once per request): 135 -> 101 ms.
  A forward without conditioners keeps one projection per layer: batched, a training step was 11% slower, and a
  window the sampler does not cache would hold all layers' projections at once.
A forward without the cache went 392 -> 336 ms, a balanced 7-step synthesis 2.05 -> 1.69 s, and a training step
(8 x 8,192 samples) 2.42 -> 2.19 s. Not kept, as no faster here: 1x1 convs as matmuls (equal), and (B, T, C)
activations with the dilated conv as one matmul over shifted copies (a cached step 40% slower than mkldnn's convs,
as whole-length passes). Tiled so that each layer's passes stay in cache, with the biases folded, that layout is
2-5x faster than this module (bench/results/speed-cpu-*.md): inference on a CPU runs it (`model.score_net_cpu`),
and this module is its oracle.
On CUDA, `python -m bench.train` times the training step against the reference's in one run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .prior import FLOOR, Prior


#: Decades spanned by the step-embedding frequencies 10^(d i / 63) rad per step, i = 0..63. DiffWave's
#: (1 to 10^4) suit integer steps; on a continuous index all but the lowest turn by radians within a
#: hundredth of a step and read as noise. "smooth" (1 down to 10^-2.5) varies smoothly across the index,
#: its slowest pair monotone over all T = 200 steps.
STEP_FREQUENCIES = {"diffwave": 4.0, "smooth": -2.5}


@dataclass(frozen=True)
class ScoreNetParams:
    residual_channels: int = 64
    residual_layers: int = 30
    dilation_cycle: int = 10
    n_mels: int = 80
    hop: int = 256  # the upsampler is two x16 transposed convs
    # Per-band mean and std of the training log-mels; None: the raw ln-mel goes in (older weights).
    mel_mean: tuple[float, ...] | None = None
    mel_std: tuple[float, ...] | None = None
    step_embedding: str = "diffwave"  # frequencies of the step embedding, `STEP_FREQUENCIES`
    # The diffusion prior the net was trained under (`model.prior`); weights made before it are "standard".
    prior: str = "standard"
    prior_energy: tuple[float, float] | None = None  # the training frames' (min, max) energy, for "energy"
    prior_floor: float = FLOOR

    def __post_init__(self) -> None:
        if self.prior_energy is not None:
            object.__setattr__(self, "prior_energy", tuple(float(v) for v in self.prior_energy))
        Prior(self.prior, self.prior_energy, self.prior_floor, self.hop)  # ValueError on bad prior settings
        if self.step_embedding not in STEP_FREQUENCIES:
            raise ValueError(f"step_embedding must be one of {sorted(STEP_FREQUENCIES)}")
        if (self.mel_mean is None) != (self.mel_std is None):
            raise ValueError("mel_mean and mel_std come together")
        for name in ("mel_mean", "mel_std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != self.n_mels or not all(math.isfinite(v) for v in value):
                    raise ValueError(f"{name} needs {self.n_mels} finite values")
                object.__setattr__(self, name, value)  # JSON lists become tuples: the params stay hashable
        if self.mel_std is not None and min(self.mel_std) <= 0:
            raise ValueError("mel_std must be positive")

    @property
    def normalized(self) -> bool:
        return self.mel_mean is not None

    @property
    def diffusion_prior(self) -> Prior:
        return Prior(self.prior, self.prior_energy, self.prior_floor, self.hop)

    def with_mel_stats(self, mean, std) -> "ScoreNetParams":
        return replace(self, mel_mean=tuple(mean), mel_std=tuple(std))

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


def step_embedding(t: torch.Tensor, kind: str = "diffwave", dim: int = 128) -> torch.Tensor:
    """Sinusoidal embedding of a continuous step index (`STEP_FREQUENCIES`)."""
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) * STEP_FREQUENCIES[kind] / (half - 1)
    arg = t.float()[:, None] * (10.0 ** exponent)[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class StepEmbedding(nn.Module):
    def __init__(self, kind: str = "diffwave") -> None:
        super().__init__()
        self.kind = kind
        self.proj1 = nn.Linear(128, 512)
        self.proj2 = nn.Linear(512, 512)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.silu(self.proj2(F.silu(self.proj1(step_embedding(t, self.kind)))))


#: Time stride of each upsampler conv: two make the hop of 256.
STRIDE = 16


def polyphase(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x.unsqueeze(1)).squeeze(1)` for the upsampler's ConvTranspose2d([3, 32], stride [1, 16], padding
    [1, 8]): x (B, bands, F) -> (B, bands, 16 F), computed as its 16 output phases from the same weights.

    Output sample 16 j + p of band h is b + sum over d, e in {-1, 0, 1} of x[h + d, j + e] w[1 - d, p + 8 - 16 e]
    (a kernel index outside [0, 32) adds nothing), so each phase is a 3 x 3 filter over bands and frames. The
    kernel padded to 48 = 3 x 16 taps and read as (bands, frames, phases), flipped, holds all 16 filters; one
    matmul of each input neighbourhood with them writes the phases side by side, already in time order.
    A transposed conv scatters where this gathers: cuDNN runs it as a grouped data-gradient kernel.
    """
    batch, bands, frames = x.shape
    phases = F.pad(conv.weight[0, 0], (STRIDE // 2, STRIDE // 2)).view(3, 3, STRIDE).flip(0, 1).reshape(9, STRIDE)
    padded = F.pad(x, (1, 1, 1, 1))
    taps = torch.stack([padded[:, i:i + bands, j:j + frames] for i in range(3) for j in range(3)], dim=-1)
    return F.linear(taps, phases.t(), conv.bias.expand(STRIDE)).reshape(batch, bands, STRIDE * frames)


class MelUpsampler(nn.Module):
    """x256 in time: two ConvTranspose2d(kernel [3, 32], stride [1, 16]) with leaky ReLU, run in polyphase form.

    Each conv starts as linear interpolation in time (a triangle kernel, whose overlapping taps sum to
    one) and the identity across bands, with no bias: a new net reads the standardised mel itself at unit
    scale, not the faint, partly mel-independent pattern that PyTorch's default init makes of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(1, 1, [3, 2 * STRIDE], stride=[1, STRIDE], padding=[1, STRIDE // 2])
        self.conv2 = nn.ConvTranspose2d(1, 1, [3, 2 * STRIDE], stride=[1, STRIDE], padding=[1, STRIDE // 2])
        triangle = 1 - (torch.arange(2 * STRIDE, dtype=torch.float32) - (STRIDE - 0.5)).abs() / STRIDE
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.zero_()
                conv.weight[0, 0, 1] = triangle
                conv.bias.zero_()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(polyphase(self.conv1, mel), 0.4)
        return F.leaky_relu(polyphase(self.conv2, x), 0.4)


class ResidualBlock(nn.Module):
    def __init__(self, n_mels: int, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.step_proj = nn.Linear(512, channels)
        self.cond_proj = nn.Conv1d(n_mels, 2 * channels, 1)
        self.out_proj = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, conditioner: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`conditioner` is this layer's projection of the conditioning, `cond_proj(ScoreNet.condition(mel))`."""
        y = self.dilated_conv(x + self.step_proj(emb).unsqueeze(-1)) + conditioner
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.out_proj(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class ScoreNet(nn.Module):
    def __init__(self, params: ScoreNetParams = ScoreNetParams()) -> None:
        super().__init__()
        self.params = params
        c = params.residual_channels
        self.input_proj = nn.Conv1d(1, c, 1)
        self.step_embedding = StepEmbedding(params.step_embedding)
        self.upsampler = MelUpsampler()
        self.layers = nn.ModuleList(
            ResidualBlock(params.n_mels, c, 2 ** (i % params.dilation_cycle)) for i in range(params.residual_layers)
        )
        self.skip_proj = nn.Conv1d(c, c, 1)
        self.output_proj = nn.Conv1d(c, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)
        # Not in the state dict: the statistics live in the config, so older weight files still load.
        mean, std = (params.mel_mean, params.mel_std) if params.normalized else ((0.0,) * params.n_mels,
                                                                                  (1.0,) * params.n_mels)
        self.register_buffer("mel_mean", torch.tensor(mean).view(1, -1, 1), persistent=False)
        self.register_buffer("mel_std", torch.tensor(std).view(1, -1, 1), persistent=False)

    @property
    def prior(self) -> Prior:
        """The noise this net was trained to remove (`model.prior`): every sampler draws through it."""
        return self.params.diffusion_prior

    @property
    def receptive_field(self) -> int:
        """Samples of context on each side that can reach one output sample (the dilated convs)."""
        return sum(2 ** (i % self.params.dilation_cycle) for i in range(self.params.residual_layers))

    def condition(self, mel: torch.Tensor) -> torch.Tensor:
        """The conditioning every layer reads: the standardised ln-mel (B, n_mels, F) upsampled to (B, n_mels, S)."""
        return self.upsampler((mel - self.mel_mean) / self.mel_std)

    def conditioners(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's projection of the conditioning, (B, 2C, S) each. They do not depend on x or t, so a
        sampler computes them once per request instead of at every step (`sampling.windowed_eps`). They all read
        the same input, so one 1x1 conv with the layers' weights stacked computes them together."""
        weight = torch.cat([layer.cond_proj.weight for layer in self.layers])
        bias = torch.cat([layer.cond_proj.bias for layer in self.layers])
        return list(F.conv1d(self.condition(mel), weight, bias).chunk(len(self.layers), dim=1))

    def forward(self, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor,
                conditioners: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, S) noisy audio, mel: (B, n_mels, S / hop), t: (B,) continuous step index -> eps (B, S).
        `conditioners`, when given, are `self.conditioners(mel)` computed earlier."""
        h = F.relu(self.input_proj(x.unsqueeze(1)))
        emb = self.step_embedding(t)
        cond = self.condition(mel) if conditioners is None else None
        skip = torch.zeros_like(h)
        for i, layer in enumerate(self.layers):
            h, s = layer(h, layer.cond_proj(cond) if conditioners is None else conditioners[i], emb)
            skip = skip + s
        h = F.relu(self.skip_proj(skip / math.sqrt(len(self.layers))))
        return self.output_proj(h).squeeze(1)
