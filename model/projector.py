"""`refine.project` on a CPU, near what its FFTs cost: the same projections, computed frame-major.

A projection is one STFT, one inverse STFT and two filterbank products. Here:

- frames are rows (frames, n_fft), so every FFT runs along contiguous memory (torch's CPU FFT along a strided
  axis, as `audio.stft`'s (bins, frames) layout asks, was 70x slower than along rows on the AMD EPYC);
- real FFTs into and out of buffers made once per call (`Projector`), so an iteration allocates nothing;
- the filterbank products run over each band's nonzero bins only (about 2% of the dense matrix at 80 bands of
  513 bins), fused with the magnitude, the gains and their application in one pass over the spectrum;
- framing (reflect padding, the window) and overlap-add are plain loops over the frames;
- fast Griffin-Lim's momentum updates the spectrum in place.

It computes what `refine.project` computes, to float32 rounding (tests/test_projector.py holds it to that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

from .audio import deemphasis, filterbank, preemphasis, window
from .cancel import Check
from .contract import MelSpec
from .jit import njit
from .score_net_cpu import workers

T, R = TypeVar("T"), TypeVar("R")
#: A held bin's own level is at least this (|X|^power), so a silent one takes at most the largest gain.
TINY = np.float32(1e-30)


@lru_cache(maxsize=8)
def bands(spec: MelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank by its nonzero ranges: (first bin, stop bin) per band, the weights (n_mels, widest) from each
    band's first bin, and for each bin the band whose centre is nearest (a bin no band covers takes its level; -1
    below a contract's fmin > 0, which takes none, as `refine._spread` says why)."""
    fb = filterbank(spec)
    nonzero = [np.flatnonzero(row) for row in fb]
    start = np.array([n[0] if n.size else 0 for n in nonzero], np.int64)
    stop = np.array([n[-1] + 1 if n.size else 0 for n in nonzero], np.int64)
    weights = np.zeros((len(fb), max(1, int((stop - start).max()))))
    for b, row in enumerate(fb):
        weights[b, :stop[b] - start[b]] = row[start[b]:stop[b]]
    centres = (fb * np.arange(fb.shape[1])).sum(axis=1) / np.maximum(fb.sum(axis=1), 1e-12)
    nearest = np.abs(centres[None, :] - np.arange(fb.shape[1])[:, None]).argmin(axis=1)
    nearest[np.arange(fb.shape[1]) * spec.sample_rate / spec.n_fft < spec.fmin] = -1
    return start, stop, weights, nearest


@lru_cache(maxsize=8)
def _operators(spec: MelSpec) -> tuple:
    """The filterbank by its nonzero ranges (`bands`, float32), each covered bin's summed weight (the spread's
    column normalisation), each band's area (its response to a flat unit spectrum) and the contract's window
    (`audio.window`)."""
    start, stop, weights, nearest = bands(spec)
    bins = spec.n_fft // 2 + 1
    norm = np.zeros(bins)
    for b in range(len(start)):
        norm[start[b]:stop[b]] += weights[b, :stop[b] - start[b]]
    area = np.maximum(weights.sum(axis=1), 1e-12)
    return (start, stop, weights.astype(np.float32), nearest, norm.astype(np.float32), area.astype(np.float32),
            window(spec).numpy())


@njit
def _frame(audio, pad, hop, window, reflect, out):
    """out[f] = window * the padded audio's frame f: `audio.stft`'s framing (reflected, or zeros where the contract
    pads so or the audio is no longer than the padding)."""
    samples, n, reflect = audio.size, window.size, reflect and audio.size > pad
    for f in range(out.shape[0]):
        first = f * hop - pad
        if 0 <= first and first + n <= samples:
            for i in range(n):
                out[f, i] = audio[first + i] * window[i]
            continue
        for i in range(n):
            j = first + i
            if 0 <= j < samples:
                out[f, i] = audio[j] * window[i]
            elif reflect:
                out[f, i] = audio[-j if j < 0 else 2 * (samples - 1) - j] * window[i]
            else:
                out[f, i] = 0.0


@njit
def _overlap_add(frames, pad, hop, window, inverse_sum, padded, out):
    """out = the overlap-added windowed frames divided by the summed squared window, cut to the audio."""
    padded[:] = 0.0
    for f in range(frames.shape[0]):
        row, at = frames[f], padded[f * hop:f * hop + window.size]
        for i in range(window.size):
            at[i] += row[i] * window[i]
    for j in range(out.size):
        out[j] = padded[j + pad] * inverse_sum[j + pad]


@njit
def _apply_gains(spectrum, target, start, stop, weights, nearest, norm, area, max_gain, floor, power, scratch, gains):
    """spectrum *= the bins' gains: per band min((target / max(W |X|^power, floor))^(1 / power), max_gain), spread
    to the bins it covers by its weights over their summed weight. A bin no band covers takes its nearest band's gain
    held between 1 and the gain to that band's level, (target / the band's area)^(1 / power) (none, -1: below a
    contract's fmin): its own energy never reaches the band's output, so the band's gain alone would compound over
    the iterations (`refine._held`)."""
    bins = spectrum.shape[1]
    for f in range(spectrum.shape[0]):
        for k in range(bins):
            energy = spectrum[f, k].real ** 2 + spectrum[f, k].imag ** 2
            scratch[k] = np.sqrt(energy) if power == 1 else energy
        for b in range(start.size):
            own = np.float32(0.0)
            for i in range(stop[b] - start[b]):
                own += weights[b, i] * scratch[start[b] + i]
            ratio = target[f, b] / max(own, floor)
            gains[b] = min(ratio if power == 1 else np.sqrt(ratio), max_gain)
        scratch[:] = 0.0
        for b in range(start.size):
            for i in range(stop[b] - start[b]):
                scratch[start[b] + i] += weights[b, i] * gains[b]
        for k in range(bins):
            if norm[k] > 0:
                spectrum[f, k] *= scratch[k] / norm[k]
            elif nearest[k] >= 0:
                energy = spectrum[f, k].real ** 2 + spectrum[f, k].imag ** 2
                ratio = target[f, nearest[k]] / area[nearest[k]] / max(energy if power != 1 else np.sqrt(energy), TINY)
                to_level = ratio if power == 1 else np.sqrt(ratio)
                spectrum[f, k] *= min(max(gains[nearest[k]], min(to_level, 1.0)), max(to_level, 1.0))
            else:
                spectrum[f, k] = 0


@njit
def _momentum(spectrum, previous, momentum):
    """spectrum <- c + momentum (c - previous), previous <- c, where c is the consistent spectrum."""
    for f in range(spectrum.shape[0]):
        for k in range(spectrum.shape[1]):
            c = spectrum[f, k]
            spectrum[f, k] = c + momentum * (c - previous[f, k])
            previous[f, k] = c


@njit
def _overlap(window, hop, frames):
    out = np.zeros((frames - 1) * hop + window.size)
    for f in range(frames):
        for i in range(window.size):
            out[f * hop + i] += window[i] * window[i]
    return out


@lru_cache(maxsize=16)
def _inverse_window_sum(spec: MelSpec, frames: int) -> np.ndarray:
    """1 / the overlap-added squared window of `frames` frames (floored where no frame covers a sample, as
    `audio.istft`'s), once per length: a request's projections, and a stream's chunks of one size, share it."""
    return (1.0 / np.maximum(_overlap(window(spec).double().numpy(), spec.hop, frames), 1e-8)).astype(np.float32)


class Projector:
    """Buffers for projecting audio of `frames` frames in one contract; `run` projects one item in place."""

    def __init__(self, spec: MelSpec, frames: int) -> None:
        self.spec, self.frames = spec, frames
        (self.start, self.stop, self.weights, self.nearest, self.norm, self.area, self.window) = _operators(spec)
        n, bins, self.pad, self.reflect = spec.n_fft, spec.n_fft // 2 + 1, spec.pad, spec.pad_mode == "reflect"
        self.buffer = torch.empty(frames, n)
        self.spectrum = torch.empty(frames, bins, dtype=torch.complex64)
        self.previous = np.empty((frames, bins), np.complex64)
        self.padded = np.empty((frames - 1) * spec.hop + n, np.float32)
        self.inverse_sum = _inverse_window_sum(spec, frames)
        self.scratch, self.gains = np.empty(bins, np.float32), np.empty(len(self.start), np.float32)

    def inverse(self, audio: np.ndarray) -> None:
        """audio <- the inverse STFT of `spectrum` (`audio.istft`)."""
        torch.fft.irfft(self.spectrum, n=self.spec.n_fft, out=self.buffer)
        _overlap_add(self.buffer.numpy(), self.pad, self.spec.hop, self.window, self.inverse_sum, self.padded, audio)

    def _stft(self, audio: np.ndarray) -> None:
        _frame(audio, self.pad, self.spec.hop, self.window, self.reflect, self.buffer.numpy())
        torch.fft.rfft(self.buffer, out=self.spectrum)

    def run(self, audio: np.ndarray, target: np.ndarray, iterations: int, momentum: float, max_gain: float,
            floor: float, stop: Check | None = None) -> None:
        """`iterations` projections of audio (frames * hop,) float32, in place, onto target (frames, n_mels) float32,
        what the filterbank's output is aimed at (`refine.target_of`), a band's own level floored at `floor`; not
        clamped. `stop` is called before each projection (`model.cancel`)."""
        spectrum = self.spectrum.numpy()
        self._stft(audio)
        for k in range(iterations):
            if stop is not None:
                stop()
            _apply_gains(spectrum, target, self.start, self.stop, self.weights, self.nearest, self.norm, self.area,
                         np.float32(max_gain), np.float32(floor), int(self.spec.power), self.scratch, self.gains)
            self.inverse(audio)
            if k + 1 < iterations:
                self._stft(audio)
                if k == 0:
                    self.previous[:] = spectrum
                else:
                    _momentum(spectrum, self.previous, np.float32(momentum))


def inverse_stft(coefficients: np.ndarray, spec: MelSpec) -> np.ndarray:
    """`audio.istft` of frame-major coefficients (F, bins) complex64 -> (F * hop,) float32."""
    projector = Projector(spec, coefficients.shape[0])
    projector.spectrum.numpy()[:] = coefficients
    audio = np.empty(coefficients.shape[0] * spec.hop, np.float32)
    projector.inverse(audio)
    return audio


def project_item(audio: np.ndarray, target: np.ndarray, spec: MelSpec, iterations: int, momentum: float,
                 max_gain: float, floor: float, stop: Check | None = None, clamp: bool = True) -> np.ndarray:
    """`refine.project` of one item, audio (F * hop,) onto target (n_mels, F) (`refine.target_of` its mel), on the
    calling thread, in any contract (pre-emphasised around the projections where it pre-emphasises); float32,
    clamped to [-1, 1] unless `clamp` is False."""
    wav = torch.as_tensor(audio, dtype=torch.float32)[None]
    out = (preemphasis(wav, spec.preemphasis) if spec.preemphasis else wav)[0].numpy().copy()
    Projector(spec, target.shape[-1]).run(out, np.ascontiguousarray(np.asarray(target, np.float32).T), iterations,
                                          momentum, max_gain, floor, stop)
    result = torch.from_numpy(out)[None]
    result = deemphasis(result, spec.preemphasis) if spec.preemphasis else result
    return (result.clamp_(-1.0, 1.0) if clamp else result)[0].numpy()


def project_cpu(audio: torch.Tensor, target: torch.Tensor, spec: MelSpec, iterations: int, momentum: float,
                max_gain: float, floor: float, threads: int = 1, stop: Check | None = None,
                clamp: bool = True) -> torch.Tensor:
    """`refine.project` of audio (B, F * hop) onto target (B, n_mels, F) on a CPU: each item on its own
    (`project_item`), side by side on `threads` of the CPU pool's single-threaded workers (`in_pool`), so an item's
    result is the same in any batch."""
    items = in_pool(lambda b: project_item(audio[b].float().numpy(), target[b].numpy(), spec, iterations, momentum,
                                           max_gain, floor, stop, clamp), range(audio.shape[0]), threads)
    return torch.from_numpy(np.stack(items))


def in_pool(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """fn over items on `threads` of the fast path's pool (`score_net_cpu.workers`), whose threads run torch with one
    OpenMP thread each: on a busy host an OpenMP team of two waits for its second thread at every FFT (100 ms where
    one thread takes 1 ms, measured beside other work), and items in parallel use the cores better anyway."""
    return list(workers(threads).map(fn, items))
