"""Noise schedules as data, separate from any network.

Notation (BDDM): beta_n are the noise scales, alpha_n = sqrt(prod_{i<=n} (1 - beta_i)) is the noise
*level*, x_n = alpha_n x_0 + sqrt(1 - alpha_n^2) eps. Sampling runs n = N..1. The score network is
trained on a T-step grid; a schedule that lands between grid points conditions the network on the
continuous (interpolated) training-step index of its alpha.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Diffusion:
    """The training process: T steps with betas linear from beta_start to beta_end."""

    steps: int = 200
    beta_start: float = 1e-4
    beta_end: float = 0.02

    @property
    def betas(self) -> np.ndarray:
        return np.linspace(self.beta_start, self.beta_end, self.steps, dtype=np.float64)

    @property
    def alphas(self) -> np.ndarray:
        """alpha_t for the 0-based training index t = 0..T-1."""
        return np.sqrt(np.cumprod(1.0 - self.betas))

    def alpha_at(self, t: np.ndarray) -> np.ndarray:
        """Noise level at a continuous 0-based training index (linear interpolation on the grid)."""
        return np.interp(t, np.arange(self.steps), self.alphas)

    def timestep_of(self, alpha: np.ndarray) -> np.ndarray:
        """Continuous 0-based training index whose level is alpha (inverse of `alpha_at`)."""
        grid = self.alphas
        return np.interp(-np.asarray(alpha, dtype=np.float64), -grid, np.arange(self.steps))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def alphas_from_betas(betas: np.ndarray) -> np.ndarray:
    return np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))


def betas_from_alphas(alphas: np.ndarray) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64)
    prev = np.concatenate([[1.0], alphas[:-1]])
    return 1.0 - (alphas / prev) ** 2


def posterior_sigmas(betas: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """DDPM posterior std per step; the first is sqrt(beta_1) by DiffWave's convention (never used)."""
    prev = np.concatenate([[1.0], alphas[:-1]])
    var = (1.0 - prev**2) / (1.0 - alphas**2) * betas
    var[0] = betas[0]
    return np.sqrt(var)


@dataclass(frozen=True)
class Schedule:
    """A sampling schedule: N noise scales with their levels, posterior stds and network step indices."""

    beta: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    timesteps: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.beta)

    @classmethod
    def from_betas(cls, betas, diffusion: Diffusion = Diffusion(), name: str = "", **meta) -> "Schedule":
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("betas must be a non-empty 1-D array in (0, 1)")
        alphas = alphas_from_betas(betas)
        return cls(betas, alphas, posterior_sigmas(betas, alphas), diffusion.timestep_of(alphas), name, meta)

    @classmethod
    def from_alphas(cls, alphas, diffusion: Diffusion = Diffusion(), name: str = "", **meta) -> "Schedule":
        return cls.from_betas(betas_from_alphas(alphas), diffusion, name, **meta)

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "beta": self.beta.tolist(), "alpha": self.alpha.tolist(),
                "sigma": self.sigma.tolist(), "timesteps": self.timesteps.tolist(), **self.meta}

    @classmethod
    def from_dict(cls, d: dict, diffusion: Diffusion = Diffusion()) -> "Schedule":
        """From saved JSON; `timesteps` are recomputed from the betas so they always match `diffusion`."""
        known = {"name", "steps", "beta", "alpha", "sigma", "timesteps"}
        return cls.from_betas(d["beta"], diffusion, d.get("name", ""), **{k: v for k, v in d.items() if k not in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, diffusion: Diffusion = Diffusion()) -> "Schedule":
        d = json.loads(Path(path).read_text())
        d.setdefault("name", Path(path).stem)
        return cls.from_dict(d, diffusion)


def full(diffusion: Diffusion = Diffusion()) -> Schedule:
    """All T training steps: the quality ceiling."""
    return Schedule.from_betas(diffusion.betas, diffusion, f"ddpm-{diffusion.steps}")


def linear_subset(n: int, diffusion: Diffusion = Diffusion()) -> Schedule:
    """n training levels evenly spaced in index (DDIM's 'uniform' skip), from t = 0 to t = T - 1."""
    idx = np.round(np.linspace(0, diffusion.steps - 1, n)).astype(int)
    return Schedule.from_alphas(diffusion.alphas[idx], diffusion, f"linear-{n}")


DIFFWAVE_FAST_BETAS = (0.0001, 0.001, 0.01, 0.05, 0.2, 0.5)


def diffwave_fast(diffusion: Diffusion = Diffusion()) -> Schedule:
    """DiffWave's hand-picked 6-step fast inference schedule."""
    return Schedule.from_betas(DIFFWAVE_FAST_BETAS, diffusion, "diffwave-6")
