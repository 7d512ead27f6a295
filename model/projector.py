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

from functools import lru_cache

import numpy as np
import torch

from .audio import LOG_FLOOR, MelSpec
from .jit import njit
from .phase import bands


@lru_cache(maxsize=8)
def _operators(spec: MelSpec) -> tuple:
    """The filterbank by its nonzero ranges (`phase.bands`, float32), each covered bin's summed weight (the spread's
    column normalisation), the Hann window and the reciprocal overlap-added squared window of `frames` frames."""
    start, stop, weights, nearest = bands(spec)
    bins = spec.n_fft // 2 + 1
    norm = np.zeros(bins)
    for b in range(len(start)):
        norm[start[b]:stop[b]] += weights[b, :stop[b] - start[b]]
    window = torch.hann_window(spec.n_fft, dtype=torch.float64).numpy()
    return start, stop, weights.astype(np.float32), nearest, norm.astype(np.float32), window.astype(np.float32)


@njit
def _frame(audio, pad, hop, window, out):
    """out[f] = window * the padded audio's frame f: `audio.stft`'s framing (reflected, or zeros where the audio
    is no longer than the padding)."""
    samples, n, reflect = audio.size, window.size, audio.size > pad
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
def _apply_gains(spectrum, target, start, stop, weights, nearest, norm, max_gain, floor, scratch, gains):
    """spectrum *= the bins' gains: per band min(target / max(W |X|, floor), max_gain), spread to the bins it
    covers by its weights over their summed weight; a bin no band covers takes its nearest band's gain."""
    bins = spectrum.shape[1]
    for f in range(spectrum.shape[0]):
        for k in range(bins):
            scratch[k] = np.sqrt(spectrum[f, k].real ** 2 + spectrum[f, k].imag ** 2)
        for b in range(start.size):
            own = np.float32(0.0)
            for i in range(stop[b] - start[b]):
                own += weights[b, i] * scratch[start[b] + i]
            gains[b] = min(target[f, b] / max(own, floor), max_gain)
        scratch[:] = 0.0
        for b in range(start.size):
            for i in range(stop[b] - start[b]):
                scratch[start[b] + i] += weights[b, i] * gains[b]
        for k in range(bins):
            spectrum[f, k] *= scratch[k] / norm[k] if norm[k] > 0 else gains[nearest[k]]


@njit
def _momentum(spectrum, previous, momentum):
    """spectrum <- c + momentum (c - previous), previous <- c, where c is the consistent spectrum."""
    for f in range(spectrum.shape[0]):
        for k in range(spectrum.shape[1]):
            c = spectrum[f, k]
            spectrum[f, k] = c + momentum * (c - previous[f, k])
            previous[f, k] = c


class Projector:
    """Buffers for projecting audio of `frames` frames in one contract; `run` projects one item in place."""

    def __init__(self, spec: MelSpec, frames: int) -> None:
        self.spec, self.frames = spec, frames
        (self.start, self.stop, self.weights, self.nearest, self.norm, self.window) = _operators(spec)
        n, bins, self.pad = spec.n_fft, spec.n_fft // 2 + 1, (spec.n_fft - spec.hop) // 2
        self.buffer = torch.empty(frames, n)
        self.spectrum = torch.empty(frames, bins, dtype=torch.complex64)
        self.previous = np.empty((frames, bins), np.complex64)
        self.padded = np.empty((frames - 1) * spec.hop + n, np.float32)
        overlap = np.zeros(self.padded.size)
        for f in range(frames):
            overlap[f * spec.hop:f * spec.hop + n] += self.window.astype(np.float64) ** 2
        self.inverse_sum = (1.0 / np.maximum(overlap, 1e-8)).astype(np.float32)
        self.scratch, self.gains = np.empty(bins, np.float32), np.empty(len(self.start), np.float32)

    def _stft(self, audio: np.ndarray) -> None:
        _frame(audio, self.pad, self.spec.hop, self.window, self.buffer.numpy())
        torch.fft.rfft(self.buffer, out=self.spectrum)

    def run(self, audio: np.ndarray, target: np.ndarray, iterations: int, momentum: float, max_gain: float) -> None:
        """`iterations` projections of audio (frames * hop,) float32, in place, onto target = exp(mel).T
        (frames, n_mels) float32; not clamped."""
        spectrum, hop = self.spectrum.numpy(), self.spec.hop
        self._stft(audio)
        for k in range(iterations):
            _apply_gains(spectrum, target, self.start, self.stop, self.weights, self.nearest, self.norm,
                         np.float32(max_gain), np.float32(LOG_FLOOR), self.scratch, self.gains)
            torch.fft.irfft(self.spectrum, n=self.spec.n_fft, out=self.buffer)
            _overlap_add(self.buffer.numpy(), self.pad, hop, self.window, self.inverse_sum, self.padded, audio)
            if k + 1 < iterations:
                self._stft(audio)
                if k == 0:
                    self.previous[:] = spectrum
                else:
                    _momentum(spectrum, self.previous, np.float32(momentum))


def project_cpu(audio: torch.Tensor, mel: torch.Tensor, spec: MelSpec, iterations: int, momentum: float,
                max_gain: float) -> torch.Tensor:
    """`refine.project` of audio (B, F * hop) onto the log-mel (B, n_mels, F) on a CPU: the items one after
    another through one set of buffers (one item's spectra stay in cache; a batch's would not)."""
    out = audio.float().numpy().copy()
    targets = mel.float().exp().transpose(1, 2).contiguous().numpy()
    projector = Projector(spec, mel.shape[-1])
    for item, target in zip(out, targets):
        projector.run(item, target, iterations, momentum, max_gain)
    return torch.from_numpy(out).clamp_(-1.0, 1.0)
