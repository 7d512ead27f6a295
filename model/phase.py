"""A coherent start for projection: the mel's magnitude and a phase built from it by Phase Gradient Heap
Integration (PGHI; Průša, Balazs and Søndergaard, IEEE/ACM TASLP 2017), with no iteration.

For a Gaussian window exp(-pi t^2 / gamma) the STFT's phase and log-magnitude s are tied: in the convention of
`audio.stft` (each frame's phase relative to its first sample, the window centred in its n_fft), frame m to m + 1
and bin k to k + 1 advance the phase by

    d_time(m, k) = 2 pi k hop / n_fft + (hop n_fft / gamma) ds/dk
    d_freq(m, k) = -pi - (gamma / (hop n_fft)) ds/dm

(the paper's eq. 31-32 in this framing; the -pi is the window's centre at n_fft / 2). A Hann window of L samples
is close to the Gaussian with gamma = 0.25645 L^2. The heap integrates these from the loudest coefficient outwards
(trapezoidal steps to each coefficient's not yet reached neighbours, loudest first), so every phase comes from the
louder of its neighbours. Coefficients more than `TOLERANCE` below the loudest are left out: they take seeded noise,
as does the first coefficient of every island the heap cannot reach, so `seed` keeps its meaning.

Block-wise, so a stream and the whole request get the same phase: frames are integrated in fixed blocks of `BLOCK`
frames, in order; each block's heap starts from the last frame of the block before (whose phases are final) and
may step only into its own block. Its phase depends on nothing after the block, so a stream computes blocks as
its chunks need them and the whole request is the same blocks in the same order. (`block=None` is the paper's
whole-request heap; bench/results/projection-tuning.md measures what blocks cost against it.)

The magnitude is the non-negative least-squares inverse of the filterbank, from a few multiplicative steps
(Lee and Seung 2001) started at the band magnitudes spread over their bins: each frame on its own.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .audio import deemphasis
from .contract import MelSpec
from .jit import njit
from .projector import bands, inverse_stft
from .refine import target_of

#: gamma / L^2 of the Gaussian closest to a window of L samples (the paper's Table I).
GAMMA = {"hann": 0.25645, "hamming": 0.29037}
#: Coefficients this far below the request's loudest (relative magnitude) take seeded noise, not integration: on the
#: tuning clips, after 32 projections, 1e-2 gave PESQ-WB 3.89 where the paper's 1e-5 gave 3.73 and seeded noise 3.67
#: (bench/results/projection-tuning.md).
TOLERANCE = 1e-2
#: Frames per block of the block-wise heap (~0.74 s at hop 256).
BLOCK = 64
#: Multiplicative NNLS steps from the mel to a magnitude.
NNLS_STEPS = 8
#: The heap's resolution: coefficients within this many nepers of each other are taken as equally loud.
PER_LEVEL = 0.05


def window_gamma(spec: MelSpec) -> float:
    """gamma (samples^2) of the Gaussian the contract's window (its kind, win samples) is taken for."""
    return GAMMA[spec.window] * spec.win_length**2


@njit
def _nnls(target, start, stop, weights, nearest, steps, floor):
    """`mel_magnitude` on the bands' nonzero ranges: target (F, n_mels) -> magnitude (F, bins)."""
    frames, n_mels = target.shape
    bins = nearest.size
    out = np.empty((frames, bins))
    numerator, denominator, image = np.empty(bins), np.empty(bins), np.empty(n_mels)
    covered = np.zeros(bins, np.bool_)
    for b in range(n_mels):
        covered[start[b]:stop[b]] = True
    area = weights.sum(axis=1)
    for f in range(frames):
        s = out[f]
        s[:] = 0.0
        numerator[:] = 0.0
        for b in range(n_mels):
            level = target[f, b] / area[b] if area[b] > 0 else 0.0
            for i in range(stop[b] - start[b]):
                numerator[start[b] + i] += weights[b, i] * target[f, b]
                s[start[b] + i] += weights[b, i] * level
        norm = np.zeros(bins)
        for b in range(n_mels):
            for i in range(stop[b] - start[b]):
                norm[start[b] + i] += weights[b, i]
        for k in range(bins):
            if covered[k]:
                s[k] = s[k] / norm[k] + floor
            elif nearest[k] >= 0:
                b = nearest[k]
                s[k] = (target[f, b] / area[b] if area[b] > 0 else 0.0) + floor
            else:  # below a contract's fmin: nothing there
                s[k] = floor
        for _ in range(steps):
            denominator[:] = 0.0
            for b in range(n_mels):
                acc = 0.0
                for i in range(stop[b] - start[b]):
                    acc += weights[b, i] * s[start[b] + i]
                image[b] = acc
            for b in range(n_mels):
                for i in range(stop[b] - start[b]):
                    denominator[start[b] + i] += weights[b, i] * image[b]
            for k in range(bins):
                if covered[k]:
                    s[k] *= numerator[k] / max(denominator[k], 1e-30)
    return out


def mel_magnitude(mel: np.ndarray, spec: MelSpec, steps: int = NNLS_STEPS) -> np.ndarray:
    """The magnitude (F, bins) of the non-negative s whose filterbank image W s is nearest the filterbank output m the
    mel (n_mels, F) stands for (`refine.target_of`; s is |X|^power): `steps` multiplicative updates
    s <- s W^T m / W^T W s, from each band's level spread over the bins it covers; a bin no band covers (DC, above
    fmax) keeps its nearest band's level, as projection's gains do."""
    start, stop, weights, nearest = bands(spec)
    target = target_of(torch.as_tensor(np.asarray(mel, dtype=np.float64)), spec).numpy().T.copy()
    s = _nnls(target, start, stop, weights, nearest, steps, spec.value_floor * 1e-3)
    return s if spec.power == 1 else np.sqrt(s)


def phase_steps(magnitude: np.ndarray, n_fft: int, hop: int, gamma: float, tolerance: float = TOLERANCE
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d_time, d_freq, level), (F, bins) each: the phase's advance to the next frame and to the next bin (the
    module's equations, on centred differences of the log-magnitude), and each coefficient's level: its
    log-magnitude above `tolerance` times the loudest, in steps of `PER_LEVEL` nepers (-1: quiet, left to noise)."""
    return _phase_steps(magnitude, hop, n_fft, gamma, tolerance, PER_LEVEL)


@njit
def _phase_steps(magnitude, hop, n_fft, gamma, tolerance, per_level):
    frames, bins = magnitude.shape
    s = np.log(np.maximum(magnitude, 1e-30))
    d_time, d_freq = np.empty_like(s), np.empty_like(s)
    level = np.empty(s.shape, np.int64)
    top, bottom = s.max(), np.log(tolerance)
    for m in range(frames):
        for k in range(bins):
            dk = (s[m, min(k + 1, bins - 1)] - s[m, max(k - 1, 0)]) / max(min(k + 1, bins - 1) - max(k - 1, 0), 1)
            dm = (s[min(m + 1, frames - 1), k] - s[max(m - 1, 0), k]) / max(min(m + 1, frames - 1) - max(m - 1, 0), 1)
            d_time[m, k] = 2 * np.pi * hop / n_fft * k + hop * n_fft / gamma * dk
            d_freq[m, k] = -np.pi - gamma / (hop * n_fft) * dm
            below = s[m, k] - top
            level[m, k] = -1 if below < bottom else int((below - bottom) / per_level)
    return d_time, d_freq, level


@njit
def _integrate(level, d_time, d_freq, phase, done, first, last, head, chain, order):
    """Heap integration of frames [first, last) in place. `phase` holds the final phases of the frames before
    `first` and seeded noise elsewhere; `done` marks the coefficients already set (the quiet ones among them).
    The heap is a bucket queue on `level` (loudest bucket first, last in first out within one), so a push and a
    pop cost O(1); `head`, `chain` and `order` are its scratch."""
    bins, levels = level.shape[1], head.size
    head[:] = -1
    top, size = -1, 0
    if first > 0:
        for k in range(bins):
            lv = level[first - 1, k]
            if lv >= 0:
                key = (first - 1) * bins + k
                chain[key], head[lv], top, size = head[lv], key, max(top, lv), size + 1
    # the block's coefficients, loudest bucket first: where islands start
    counts = np.zeros(levels + 1, np.int64)
    for m in range(first, last):
        for k in range(bins):
            if level[m, k] >= 0:
                counts[levels - 1 - level[m, k] + 1] += 1
    for i in range(levels):
        counts[i + 1] += counts[i]
    for m in range(first, last):
        for k in range(bins):
            lv = level[m, k]
            if lv >= 0:
                order[counts[levels - 1 - lv]] = m * bins + k
                counts[levels - 1 - lv] += 1
    total, cursor = counts[levels - 1], 0
    while True:
        while size > 0:
            while head[top] < 0:
                top -= 1
            key = head[top]
            head[top] = chain[key]
            size -= 1
            m, k = key // bins, key % bins
            for dm, dk in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                mm, kk = m + dm, k + dk
                if mm < first or mm >= last or kk < 0 or kk >= bins or done[mm, kk] or (dk != 0 and m < first):
                    continue
                if dm != 0:
                    value = phase[m, k] + dm * 0.5 * (d_time[m, k] + d_time[mm, k])
                else:
                    value = phase[m, k] + dk * 0.5 * (d_freq[m, k] + d_freq[m, kk])
                phase[mm, kk] = value - 2 * np.pi * np.floor(value / (2 * np.pi))  # kept in [0, 2 pi)
                done[mm, kk] = True
                lv, nk = level[mm, kk], mm * bins + kk
                chain[nk], head[lv], top, size = head[lv], nk, max(top, lv), size + 1
        while cursor < total and done[order[cursor] // bins, order[cursor] % bins]:
            cursor += 1
        if cursor == total:
            return
        key = order[cursor]  # an island the heap cannot reach: its loudest coefficient keeps its seeded phase
        m, k = key // bins, key % bins
        done[m, k] = True
        lv = level[m, k]
        chain[key], head[lv], top, size = head[lv], key, max(top, lv), 1


def _coefficients(magnitude: np.ndarray, phase: np.ndarray, first: int, last: int) -> np.ndarray:
    """magnitude e^(i phase) of frames [first, last), (frames, bins) complex64: the phases are in [0, 2 pi), so
    numpy's float32 sine and cosine (SIMD) are exact enough."""
    out, angle = np.empty((last - first, magnitude.shape[1]), np.complex64), phase[first:last].astype(np.float32)
    out.real = magnitude[first:last] * np.cos(angle)
    out.imag = magnitude[first:last] * np.sin(angle)
    return out


class CoherentPhase:
    """One request's block-wise PGHI: the magnitude of its whole mel, and phases made final block by block as far
    as they are asked for (`through`), so a stream and the whole request compute the same blocks in the same order."""

    def __init__(self, mel: np.ndarray | torch.Tensor, spec: MelSpec, seed: int | None, block: int | None = BLOCK,
                 tolerance: float = TOLERANCE, steps: int = NNLS_STEPS) -> None:
        self.spec = spec
        self.magnitude = mel_magnitude(np.asarray(mel, dtype=np.float32), spec, steps)
        frames, bins = self.magnitude.shape
        self.block = block or frames
        self.d_time, self.d_freq, self.level = phase_steps(self.magnitude, spec.n_fft, spec.hop, window_gamma(spec),
                                                           tolerance)
        self.phase = np.random.default_rng(seed).uniform(0.0, 2 * math.pi, (frames, bins))
        self.done = self.level < 0
        self.head = np.empty(int(-math.log(tolerance) / PER_LEVEL) + 1, np.int64)
        self.chain, self.order = np.empty(frames * bins, np.int64), np.empty(self.block * bins, np.int64)
        self.final = 0  # phases of frames [0, final) are final

    def through(self, frames: int) -> None:
        """Make the phases of frames [0, frames) final: the blocks that cover them, in order."""
        while self.final < min(frames, self.magnitude.shape[0]):
            last = min(self.final + self.block, self.magnitude.shape[0])
            _integrate(self.level, self.d_time, self.d_freq, self.phase, self.done, self.final, last, self.head,
                       self.chain, self.order)
            self.final = last

    def audio(self, lo: int, hi: int) -> torch.Tensor:
        """The start's audio of frames [lo, hi), (1, (hi - lo) * hop) float32: the inverse STFT of the magnitude with
        these phases over every frame that reaches those samples (de-emphasised where the contract pre-emphasises,
        from far enough back that the filter's memory has decayed below float32's resolution)."""
        spec, frames = self.spec, self.magnitude.shape[0]
        reach = -(-spec.n_fft // spec.hop)
        behind = reach + (-(-math.ceil(math.log(1e-8) / math.log(spec.preemphasis)) // spec.hop)
                          if spec.preemphasis else 0)
        a, b = max(0, lo - behind), min(frames, hi + reach)
        self.through(b)
        audio = torch.from_numpy(inverse_stft(_coefficients(self.magnitude, self.phase, a, b), spec))[None]
        if spec.preemphasis:
            audio = deemphasis(audio, spec.preemphasis)
        return audio[:, (lo - a) * spec.hop:(hi - a) * spec.hop]


def coherent_start(mel: np.ndarray | torch.Tensor, spec: MelSpec, seed: int | None, block: int | None = BLOCK) -> torch.Tensor:
    """The PGHI start of a whole request, (1, F * hop) float32: what a stream of it computes chunk by chunk."""
    mel = np.asarray(mel, dtype=np.float32)
    return CoherentPhase(mel, spec, seed, block).audio(0, mel.shape[-1])
