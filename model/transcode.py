"""A caller's mel in the net's contract: the net was trained on one contract, the caller speaks another.

    mel_C -> linear magnitude in C's STFT (`refine.linear_magnitude`) -> C's pre-emphasis undone -> bins moved to
          N's frequencies, frames to N's times -> N's filterbank and compression -> mel_N

The net then samples from mel_N at its own rate and hop; `net_frames` says how many of its frames cover the
caller's audio. What the mel forgets (the detail within a band, what lies above C's fmax) the smooth reading
cannot restore; the projection in C's own STFT after it (`Vocoder.vocode`) makes the output agree with mel_C.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .audio import filterbank, window
from .contract import MelSpec, compress
from .refine import linear_magnitude


def net_frames(frames: int, caller: MelSpec, net: MelSpec) -> int:
    """The net's frames whose audio covers `frames` of the caller's (frames x hop samples at its rate)."""
    return max(1, math.ceil(frames * caller.hop * net.sample_rate / (caller.sample_rate * net.hop)))


def _centre_times(frames: int, spec: MelSpec) -> np.ndarray:
    """Each frame's centre in seconds: f hop when centred, f hop + hop / 2 HiFi-GAN's way."""
    offset = 0.0 if spec.center else spec.hop / 2
    return (np.arange(frames) * spec.hop + offset) / spec.sample_rate


def _coherent_gain(spec: MelSpec) -> float:
    """A sinusoid of amplitude A peaks at A sum(w) / 2 in the STFT: the scale between two contracts' magnitudes."""
    return float(window(spec, dtype=torch.float64).sum())


def to_net(mel: torch.Tensor, caller: MelSpec, net: MelSpec) -> torch.Tensor:
    """The caller's mel (n_mels_C, F) -> the net's (n_mels_N, `net_frames`), the same sound read in N's contract."""
    magnitude = linear_magnitude(mel, caller).double()  # (bins_C, F)
    freqs_c = np.linspace(0, caller.sample_rate / 2, caller.n_fft // 2 + 1)
    if caller.preemphasis:  # the caller's STFT saw x[n] - k x[n-1]: divide by that filter's response
        response = np.abs(1 - caller.preemphasis * np.exp(-2j * np.pi * freqs_c / caller.sample_rate))
        magnitude = magnitude / torch.from_numpy(response)[:, None]
    magnitude = magnitude * (_coherent_gain(net) / _coherent_gain(caller))
    freqs_n = np.linspace(0, net.sample_rate / 2, net.n_fft // 2 + 1)
    by_freq = _interpolate(magnitude, freqs_c, np.minimum(freqs_n, freqs_c[-1]), dim=0)
    frames = net_frames(mel.shape[-1], caller, net)
    by_time = _interpolate(by_freq, _centre_times(mel.shape[-1], caller), _centre_times(frames, net), dim=1)
    fb = torch.from_numpy(filterbank(net)).double()
    return compress(fb @ by_time.clamp(min=0) ** net.power, net).float()


def _interpolate(x: torch.Tensor, at: np.ndarray, to: np.ndarray, dim: int) -> torch.Tensor:
    """Linear interpolation of x along `dim` from positions `at` to `to` (held at the ends)."""
    idx = np.clip(np.searchsorted(at, to, side="right") - 1, 0, len(at) - 2) if len(at) > 1 else np.zeros(len(to), int)
    if len(at) == 1:
        return x.index_select(dim, torch.zeros(len(to), dtype=torch.long))
    frac = torch.from_numpy(np.clip((to - at[idx]) / (at[idx + 1] - at[idx]), 0.0, 1.0))
    lo = x.index_select(dim, torch.from_numpy(idx))
    hi = x.index_select(dim, torch.from_numpy(idx + 1))
    shape = [1, 1]
    shape[dim] = -1
    return lo + (hi - lo) * frac.reshape(shape)
