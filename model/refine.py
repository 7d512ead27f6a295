"""Mel-consistency refinement: make a waveform's own mel spectrogram agree with the mel it was made from.

A vocoder's output x has the contract's STFT X (`audio.stft`) and its own mel W|X|, which an under-trained
score net leaves far from the mel it was asked for. One projection moves it back:

    g = min(exp(mel) / W|X|, MAX_GAIN)      per band and frame: the gain that would make the band right
    X <- (S g) * X                          spread to linear bins by the column-normalised filterbank S
    x <- istft(X)                           the nearest waveform (least squares) to that spectrogram

It changes magnitudes only, so the output keeps the net's phase, which is what Griffin-Lim lacks. Iterating
is Griffin-Lim with the mel as the magnitude constraint; `momentum` is fast Griffin-Lim (Perraudin, Balazs and
Sondergaard 2013): t_k = c_k + momentum (c_k - c_{k-1}) on the consistent spectrograms c_k. Started from the
mel's coherent start (`model.phase`), with no net at all, it is projection alone: the method the net has to beat.

Each iteration reads each output sample's neighbourhood of a few frames (`reach_frames`), so a chunk of a longer
signal is exact once computed on the chunk widened by that many frames per iteration (`model.streaming`).

On a CPU the projections run as `model.projector`'s kernel (the same arithmetic, frame-major, near what its FFTs
cost); elsewhere (CUDA) as the torch code below, which is also the kernel's test oracle.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .audio import LOG_FLOOR, deemphasis, filterbank, istft, mel_spectrogram, preemphasis, stft
from .cancel import Check
from .contract import MelSpec, expand
from .projector import project_cpu

#: The most one projection raises a band: a band the net left near silence is raised in steps, not at once.
MAX_GAIN = 16.0
#: Fast Griffin-Lim's momentum: in an exploratory run on the tuning clips, 10 iterations with it matched 30 plain
#: ones after `small`'s balanced preset; tests/test_refine.py checks that it gets closer to the mel at equal count.
MOMENTUM = 0.99
#: Each preset's refinements after sampling, chosen on the tuning clips at matched CPU time (bench/results/refine.md)
#: and written with the presets by `model.train search`.
PRESET_REFINE = {"fast": 16, "balanced": 48, "quality": 128}
#: Each preset's projections of projection alone, after the coherent start (`model.phase`), written with the presets
#: by `model.train search`. On the tuning clips (bench/results/projection-tuning.md) PESQ-WB went 3.61 / 3.89 / 3.97 /
#: 4.02 at 8 / 32 / 64 / 128; balanced takes 64, within the time budget of a request (bench/results/projection.md).
PRESET_PROJECTIONS = {"fast": 8, "balanced": 64, "quality": 128}
#: The most iterations a request may ask for.
MAX_ITERATIONS = 512
#: A clipped scale's bottom (dB scaled to [-A, A] or [0, A], as Coqui and Rayhane send) says only "this loud or
#: quieter": projection, and the reading into the net's contract, aim such a band this far below it (a power ratio),
#: which gives the same mel back. On the tuning clips in Rayhane's contract it took the pauses' excess noise from
#: +25 to +6 dB and PESQ-WB from 2.29 to 2.65 (1e-1: +17 dB, 2.64); bench/results/contracts.md.
BELOW_CLIP = 1e-2


def reach_frames(spec: MelSpec, iterations: int) -> int:
    """Frames on each side of a chunk within which `iterations` projections can reach it: one reads the STFT
    frames covering a sample, which read samples up to n_fft - 1 away, so K of them reach K (n_fft - 1) samples.
    De-emphasis (an IIR) reaches further, by the samples its decay k^n takes to fall below float32's resolution."""
    reach = iterations * (spec.n_fft - 1)
    if spec.preemphasis and iterations:
        reach += math.ceil(math.log(1e-8) / math.log(spec.preemphasis))
    return -(-reach // spec.hop)


@lru_cache(maxsize=8)
def _spread(spec: MelSpec) -> np.ndarray:
    """S, (bins, n_mels): each linear bin's gain as the filterbank-weighted mean of its bands' gains. A bin no
    band covers (DC, and above fmax) holds the gain of the band whose centre is nearest, so nothing divides by
    zero and the top band's gain carries on above fmax; but a bin below a contract's fmin > 0 gets none (gain 0):
    holding the lowest band's gain there kept a rumble under 80 Hz that took ESPnet's PESQ-WB from 4.0 to 1.6."""
    fb = filterbank(spec).astype(np.float64)
    weight = fb.sum(axis=0)
    spread = np.zeros_like(fb.T)
    covered = weight > 0
    spread[covered] = fb.T[covered] / weight[covered, None]
    bins = np.arange(fb.shape[1])
    centres = (fb * bins).sum(axis=1) / fb.sum(axis=1)
    below_fmin = bins * spec.sample_rate / spec.n_fft < spec.fmin
    for b in bins[~covered & ~below_fmin]:
        spread[b, np.argmin(np.abs(centres - b))] = 1.0
    return spread.astype(np.float32)


def clipped(spec: MelSpec) -> bool:
    return spec.value_floor > spec.floor


def gain_floor(spec: MelSpec) -> float:
    """The filterbank output below which a band's own level is taken as this (`mel_gains`' clamp)."""
    return spec.value_floor * BELOW_CLIP if clipped(spec) else spec.floor


def target_of(mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """What projection aims the filterbank's output at: the mel `expand`ed, a clipped scale's bottom `BELOW_CLIP`
    lower."""
    target = expand(mel, spec)
    if not clipped(spec):
        return target
    return torch.where(target <= spec.value_floor * 1.001, target * BELOW_CLIP, target)


def linear_magnitude(mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """A linear magnitude (..., bins, F) that the mel (..., n_mels, F) stands for: each band's `expand`ed value over
    the band's response to a flat unit spectrum, spread to the bins as `_spread` spreads gains (with power 2, the
    root). The mel forgets the detail within a band; this is its smoothest reading, for a starting point."""
    fb = torch.from_numpy(filterbank(spec)).to(mel.device)
    per_band = target_of(mel.float(), spec) / fb.sum(dim=1)[:, None].clamp(min=1e-12)
    magnitude = torch.from_numpy(_spread(spec)).to(mel.device) @ per_band
    return magnitude if spec.power == 1 else magnitude.pow(1.0 / spec.power)


def _operators(spec: MelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    fb = filterbank(spec)
    return torch.from_numpy(fb).to(device), torch.from_numpy(_spread(spec)).to(device)


def mel_gains(frames: torch.Tensor, target: torch.Tensor, fb: torch.Tensor, spread: torch.Tensor,
              max_gain: float = MAX_GAIN, power: float = 1.0, floor: float = LOG_FLOOR) -> torch.Tensor:
    """Per-bin real gains (B, bins, F) that move a spectrogram's filterbank output fb |X|^power to `target`
    (B, n_mels, F, `expand`ed from the mel). The clamp at the contract's floor mirrors the mel's own: a band below
    it in both is left alone. With power 2 the band's gain on the magnitude is the root of the ratio."""
    if power == 1:
        return spread @ (target / (fb @ frames.abs()).clamp(min=floor)).clamp(max=max_gain)
    ratio = target / (fb @ frames.abs() ** power).clamp(min=floor)
    return spread @ ratio.pow(1.0 / power).clamp(max=max_gain)


@torch.inference_mode()
def project(audio: torch.Tensor, mel: torch.Tensor, spec: MelSpec, iterations: int, momentum: float = MOMENTUM,
            max_gain: float = MAX_GAIN, stop: Check | None = None, clamp: bool = True, threads: int = 1) -> torch.Tensor:
    """`iterations` projections of audio (B, F * hop) onto the mel (B, n_mels, F) in `spec`'s contract; fp32, clamped
    to [-1, 1] unless `clamp` is False. Zero iterations return the audio unchanged. A pre-emphasising contract's STFT
    sees the pre-emphasised signal, so the projections run on it and the result is de-emphasised. Centred frames:
    F * hop samples have F + 1 frames, the last past the mel's end, which the projection leaves out. `stop` is called
    before each projection (`model.cancel`). On a CPU the items run side by side on `threads` workers."""
    if iterations == 0:
        return audio
    samples, n = audio.shape[-1], mel.shape[-1]
    if samples != n * spec.hop:
        raise ValueError(f"{samples} samples do not match {n} mel frames of {spec.hop}")
    if audio.device.type == "cpu":
        return project_cpu(audio, target_of(mel.float(), spec), spec, iterations, momentum, max_gain, gain_floor(spec),
                           threads, stop, clamp)
    return project_torch(audio, mel, spec, iterations, momentum, max_gain, stop, clamp)


def project_torch(audio: torch.Tensor, mel: torch.Tensor, spec: MelSpec, iterations: int, momentum: float = MOMENTUM,
                  max_gain: float = MAX_GAIN, stop: Check | None = None, clamp: bool = True) -> torch.Tensor:
    """`project` as torch operations on any device: the spectra (B, bins, F), the dense filterbank."""
    if iterations == 0:
        return audio
    samples, n = audio.shape[-1], mel.shape[-1]
    audio, target = audio.float(), target_of(mel.float(), spec)
    if spec.preemphasis:
        audio = preemphasis(audio, spec.preemphasis)
    fb, spread = _operators(spec, audio.device)
    gains = lambda x: mel_gains(x, target, fb, spread, max_gain, spec.power, gain_floor(spec))  # noqa: E731
    frames, previous = stft(audio, spec)[..., :n], None
    for k in range(iterations):
        if stop is not None:
            stop()
        audio = istft(gains(frames) * frames, samples, spec)
        if k + 1 < iterations:
            consistent = stft(audio, spec)[..., :n]
            frames = consistent if previous is None else consistent + momentum * (consistent - previous)
            previous = consistent
    if spec.preemphasis:
        audio = deemphasis(audio, spec.preemphasis)
    return audio.clamp(-1.0, 1.0) if clamp else audio


def distance(audio: torch.Tensor, mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """Per item, the RMS of (own mel - mel) in the contract's values: what `project` makes small (a centred
    contract's extra last frame left out)."""
    return (mel_spectrogram(audio, spec)[..., :mel.shape[-1]] - mel).pow(2).mean(dim=(-2, -1)).sqrt()


def refine_iterations(k: int) -> int:
    """A refinement count as asked; outside 0..`MAX_ITERATIONS` is the caller's mistake."""
    if not 0 <= k <= MAX_ITERATIONS:
        raise ValueError(f"refine must be 0..{MAX_ITERATIONS}, not {k}")
    return k
