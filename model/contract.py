"""A mel contract as data: how a TTS stack turns audio into the mel it sends, field by field.

    audio -> pre-emphasis -> STFT (n_fft, hop, win, window, centred or not, padding) -> |X|^power
          -> filterbank (n_mels, fmin-fmax, Slaney or HTK scale and norm) -> compression (ln, log10, dB)
          -> normalisation (none, mean/std, [-A, A] or [0, A])

`MelSpec` is that chain's parameters; the net's own contract is stored with its weights (`config.json`'s "audio"),
whose old six fields still load. `compress` runs the last two stages and `expand` undoes them, back to the
filterbank's output, which is what projection (`model.refine`) aims at. The named stacks are `model.profiles`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

#: Bounds on a contract (a bad one is a ContractError, the server's 400).
MAX_N_FFT, MAX_N_MELS = 8192, 256
RATES = (8000, 48000)
WINDOWS = ("hann", "hamming")
PAD_MODES = ("reflect", "constant")
SCALES = ("slaney", "htk")
NORMS = ("slaney", "none")
COMPRESSIONS = ("ln", "log10", "db")
NORMALISATIONS = ("none", "meanstd", "symmetric", "unit")


class ContractError(ValueError):
    """A mel contract with a field out of its bounds or of the wrong type."""


@dataclass(frozen=True)
class MelSpec:
    """One mel contract. The defaults are HiFi-GAN's, the net's: 22050 Hz, n_fft 1024, Hann 1024, hop 256, 80
    Slaney bands over 0-8000 Hz of the magnitude, ln(max(x, 1e-5)), frames uncentred (reflect-padded by
    (n_fft - hop) / 2 on each side), so a clip of S samples gives S // hop frames."""

    sample_rate: int = 22050
    hop: int = 256
    n_fft: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    #: The window's length (None: n_fft), zero-padded to n_fft in its middle as librosa and torch do.
    win: int | None = None
    window: str = "hann"
    #: Centred frames (librosa `center=True`): frame f is centred on sample f hop, and S samples give 1 + S // hop
    #: frames. Uncentred (HiFi-GAN): frame f is centred on f hop + hop / 2.
    center: bool = False
    pad_mode: str = "reflect"
    #: y[n] = x[n] - preemphasis x[n-1] before the STFT (0: none).
    preemphasis: float = 0.0
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    #: The filterbank weighs |X|^power: 1 magnitude, 2 power.
    power: float = 1.0
    #: ln or log10 of max(x, floor), or dB: 20 log10(max(x, floor)) - ref_db.
    compression: str = "ln"
    floor: float = 1e-5
    ref_db: float = 0.0
    #: none; meanstd: (v - mean) / std with `mean`/`std` global (one number) or per band; symmetric: dB mapped from
    #: [min_db, 0] to [-max_abs, max_abs]; unit: to [0, max_abs]. `clip` clips those two to their range.
    normalize: str = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    min_db: float = -100.0
    max_abs: float = 4.0
    clip: bool = True

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # JSON gives lists; the contract is hashable (it keys the operators' caches)
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(float(v) for v in value))

    @property
    def win_length(self) -> int:
        return self.n_fft if self.win is None else self.win

    @property
    def pad(self) -> int:
        """Samples padded on each side before framing: n_fft / 2 centred, (n_fft - hop) / 2 HiFi-GAN's way."""
        return self.n_fft // 2 if self.center else (self.n_fft - self.hop) // 2

    @property
    def value_floor(self) -> float:
        """The filterbank output below which the contract cannot tell values apart: its log floor, or the level a
        clipped normalisation maps to its bottom (min_db + ref_db dB)."""
        if self.compression == "db" and self.normalize in ("symmetric", "unit") and self.clip:
            return max(self.floor, 10.0 ** ((self.min_db + self.ref_db) / 20.0))
        return self.floor

    @property
    def silence(self) -> np.ndarray:
        """The value each silent band takes in this contract, (n_mels, 1) (what pads a batch's shorter mels)."""
        return compress(torch.zeros(self.n_mels, 1, dtype=torch.float64), self).numpy()

    def frames(self, samples: int) -> int:
        """Frames of a clip of `samples` samples, as the stack that made the contract counts them."""
        return 1 + samples // self.hop if self.center else samples // self.hop

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "MelSpec":
        """A contract from JSON (a custom `mel_format`, a contracts directory's file, a config's "audio"), checked
        against the bounds; anything wrong is a ContractError naming the field."""
        if not isinstance(data, dict):
            raise ContractError(f"a mel contract is a JSON object, not {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ContractError(f"unknown contract field(s) {', '.join(map(repr, unknown[:5]))}; "
                                f"the fields are {', '.join(known)}")
        try:
            spec = cls(**data)
        except (TypeError, ValueError) as e:
            raise ContractError(f"bad mel contract: {e}") from None
        spec.check()
        return spec

    def check(self) -> None:
        """Raise ContractError unless every field is of its type and within its bounds."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ContractError(f"mel contract: {what}")

        for name in ("sample_rate", "hop", "n_fft", "n_mels"):
            need(_is_int(getattr(self, name)), f"{name} must be an integer")
        need(self.win is None or _is_int(self.win), "win must be an integer or null")
        for name in ("fmin", "fmax", "preemphasis", "power", "floor", "ref_db", "min_db", "max_abs"):
            need(_is_real(getattr(self, name)), f"{name} must be a finite number")
        for name in ("center", "clip"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        need(RATES[0] <= self.sample_rate <= RATES[1], f"sample_rate must be {RATES[0]}-{RATES[1]} Hz")
        need(16 <= self.n_fft <= MAX_N_FFT, f"n_fft must be 16-{MAX_N_FFT}")
        need(1 <= self.win_length <= self.n_fft, "win must be 1..n_fft")
        need(1 <= self.hop <= min(self.win_length, self.n_fft // 2), "hop must be 1..min(win, n_fft / 2): frames overlap")
        need(1 <= self.n_mels <= MAX_N_MELS, f"n_mels must be 1-{MAX_N_MELS}")
        need(0 <= self.fmin < self.fmax <= self.sample_rate / 2, "need 0 <= fmin < fmax <= sample_rate / 2")
        need(self.n_mels <= self.n_fft // 2 + 1, "n_mels must not exceed the STFT's n_fft / 2 + 1 bins")
        for name, allowed in (("window", WINDOWS), ("pad_mode", PAD_MODES), ("mel_scale", SCALES),
                              ("mel_norm", NORMS), ("compression", COMPRESSIONS), ("normalize", NORMALISATIONS)):
            need(getattr(self, name) in allowed, f"{name} must be one of {', '.join(allowed)}")
        need(0 <= self.preemphasis < 1, "preemphasis must be in [0, 1)")
        need(self.power in (1.0, 2.0), "power must be 1 (magnitude) or 2 (power)")
        need(1e-12 <= self.floor <= 1e-1, "floor must be in [1e-12, 0.1]")
        need(-200 <= self.min_db < 0 and 0 < self.max_abs <= 1000, "need -200 <= min_db < 0 and 0 < max_abs <= 1000")
        need(-200 <= self.ref_db <= 200, "ref_db must be in [-200, 200]")
        if self.normalize in ("symmetric", "unit"):
            need(self.compression == "db", f"normalize {self.normalize} scales dB: compression must be db")
        if self.normalize == "meanstd":
            for name in ("mean", "std"):
                v = getattr(self, name)
                need(v is not None and len(v) in (1, self.n_mels) and all(map(_is_real, v)),
                     f"normalize meanstd needs {name}: one number or n_mels ({self.n_mels}) numbers")
            need(all(s > 0 for s in self.std), "std must be positive")
        else:
            need(self.mean is None and self.std is None, "mean/std are for normalize meanstd only")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stats(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """Global (one number) or per-band stats, shaped to broadcast over (..., n_mels, F)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]


def compress(power_mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """The filterbank's output (..., n_mels, F) -> the values the contract sends."""
    x = power_mel.clamp(min=spec.floor)
    if spec.compression == "ln":
        return torch.log(x)
    v = torch.log10(x) if spec.compression == "log10" else 20.0 * torch.log10(x) - spec.ref_db
    if spec.normalize == "meanstd":
        return (v - _stats(spec.mean, v)) / _stats(spec.std, v)
    if spec.normalize in ("symmetric", "unit"):
        unit = (v - spec.min_db) / -spec.min_db
        v = 2 * spec.max_abs * unit - spec.max_abs if spec.normalize == "symmetric" else spec.max_abs * unit
        return v.clamp(-spec.max_abs if spec.normalize == "symmetric" else 0.0, spec.max_abs) if spec.clip else v
    return v


def expand(mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """`compress` undone: the contract's values (..., n_mels, F) -> the filterbank's output they stand for."""
    if spec.compression == "ln":
        return mel.exp()
    v = mel
    if spec.normalize == "meanstd":
        v = v * _stats(spec.std, v) + _stats(spec.mean, v)
    elif spec.normalize in ("symmetric", "unit"):
        unit = (v + spec.max_abs) / (2 * spec.max_abs) if spec.normalize == "symmetric" else v / spec.max_abs
        v = unit * -spec.min_db + spec.min_db
    if spec.compression == "log10":
        return torch.pow(10.0, v)
    return torch.pow(10.0, (v + spec.ref_db) / 20.0)
