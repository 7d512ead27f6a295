"""The diffusion prior: the noise the forward process ends in, and so the noise every sampler starts from.

`standard` is DDPM's N(0, I): the same noise level everywhere, so in a pause the network has to remove
full-scale noise, and what it misses is heard as hiss. `energy` follows PriorGrad (Lee et al., ICLR 2022):
N(0, diag(s^2)) with s set per mel frame from the frame's energy E = sqrt(sum over bands of exp(ln-mel)),
normalised by the training set's range of E and floored at 0.1, then held for the frame's hop of samples. A
pause starts near silence, and an error of the network there is scaled down by s.

The score network predicts the *whitened* noise eps, with x_t = alpha x_0 + sqrt(1 - alpha^2) s eps, and is
trained on it (the loss measured in the whitened space). In the whitened coordinates y = x / s the process
is the standard one again, y_t = alpha (x_0 / s) + sqrt(1 - alpha^2) eps. So every sampler runs the standard
recursion on y, drawing N(0, I) as before, and scales by s only where audio comes out (`Prior.to_audio`);
BDDM's schedule network and its step loss read y too. With s = 1 every path reduces exactly to `standard`.
s depends on each frame alone, so a window of the mel gives the same s as the window of the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PRIORS = ("standard", "energy")
#: The prior of a new score net, chosen by the controlled comparison in bench/results/prior.md: at equal data,
#: steps and seeds, `energy` left 8.5-10.3 dB less noise in the recordings' quiet frames on every fixed schedule,
#: with higher STOI (0.66 against 0.57 at 7 steps). Old weights without the setting load as `standard`.
DEFAULT_PRIOR = "energy"
#: PriorGrad's floor on s: silence still gets a tenth of the standard noise.
FLOOR = 0.1

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def frame_energy(mel: torch.Tensor) -> torch.Tensor:
    """E per frame, sqrt(sum over bands of exp(ln-mel)): (..., n_mels, F) -> (..., F). The raw ln-mel, before
    any standardisation the network applies."""
    return mel.float().exp().sum(dim=-2).sqrt()


@dataclass(frozen=True)
class Prior:
    """The prior of one score network (`ScoreNetParams.prior*`); `Prior()` is the standard N(0, I)."""

    kind: str = "standard"
    energy: tuple[float, float] | None = None  # (min, max) of E over the training frames
    floor: float = FLOOR
    hop: int = 256

    def __post_init__(self) -> None:
        if self.kind not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, not {self.kind!r}")
        if self.kind == "energy":
            if self.energy is None or len(self.energy) != 2 or not 0 <= self.energy[0] < self.energy[1]:
                raise ValueError("the energy prior needs the training set's (min, max) frame energy, min < max")
            if not 0 < self.floor:
                raise ValueError("the prior's floor must be positive")

    @property
    def standard(self) -> bool:
        return self.kind == "standard"

    def std(self, mel: torch.Tensor) -> torch.Tensor | None:
        """s per audio sample, (B, n_mels, F) -> (B, F * hop); None for the standard prior (s = 1)."""
        if self.standard:
            return None
        lo, hi = self.energy
        s = ((frame_energy(mel) - lo) / (hi - lo)).clamp(min=self.floor)
        return s.repeat_interleave(self.hop, dim=-1)

    def whitened(self, eps_fn: EpsFn) -> EpsFn:
        """eps_theta over the whitened y = x / s: the network sees x = s y."""
        if self.standard:
            return eps_fn
        return lambda y, mel, t: eps_fn(self.std(mel) * y, mel, t)

    def whiten(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """x -> y = x / s."""
        return audio if self.standard else audio / self.std(mel)

    def to_audio(self, y: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """A sampler's final whitened y -> audio x = s y in [-1, 1]."""
        return (y if self.standard else self.std(mel) * y).clamp(-1.0, 1.0)

    def noise(self, eps: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Whitened N(0, I) noise -> the prior's noise s eps (training's forward process)."""
        return eps if self.standard else self.std(mel) * eps
