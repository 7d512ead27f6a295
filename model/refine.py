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
#: which gives the same mel back. On the tuning clips in Rayhane's contract, projection alone at 64 projections (with
#: the bins above fmax held, `_held`): 1e-2 left the pauses 4.7 dB quieter than the recording's, PESQ-WB 3.15; 3e-2
#: matched them (+0.1 dB), 3.23; 1e-1 +5.4 dB, 3.24; 1 (none) +15 dB, 2.76 (bench/results/contracts.md).
BELOW_CLIP = 3e-2


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
    """S, (bins, n_mels): each linear bin's share of each band, the filterbank-weighted mean over its bands. A bin no
    band covers (DC, and above fmax) takes the band whose centre is nearest (`linear_magnitude` reads its level
    there, and projection holds it at that level: `_held`); but a bin below a contract's fmin > 0 takes none:
    holding the lowest band's level there kept a rumble under 80 Hz that took ESPnet's PESQ-WB from 4.0 to 1.6."""
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


@lru_cache(maxsize=8)
def _held(spec: MelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the spread on the covered bins, N, H): `_spread` split by whether a band covers the bin; N (bins, n_mels) is
    its rows for the bins none covers (their nearest band), H the same over each band's area (its response to a flat
    unit spectrum), so that H target is such a bin's |X|^power at its band's level. Projection gives these bins
    their band's gain held between 1 and the gain to that level (`mel_gains`), so a bin moves towards its band's
    level and never past it, and a recording's own mel still leaves it unchanged. Their energy never reaches the
    band's output, so the band's gain alone compounded over the iterations: it put 8-11 kHz 9 dB above the
    recording's in HiFi-GAN's contract, and in Rayhane's, whose bands stop at 7.6 kHz, made bursts that
    peak-normalising turned into output 3-8x too quiet (bench/results/contracts.md)."""
    fb = filterbank(spec).astype(np.float64)
    spread, covered = _spread(spec).astype(np.float64), fb.sum(axis=0) > 0
    nearest = np.where(covered[:, None], 0.0, spread)
    held = nearest / np.maximum(fb.sum(axis=1), 1e-12)[None, :]
    return tuple(m.astype(np.float32) for m in (np.where(covered[:, None], spread, 0.0), nearest, held))


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


def _operators(spec: MelSpec, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The filterbank, and the spread, nearest bands and levels of `_held`, on `device`."""
    return tuple(torch.from_numpy(m).to(device) for m in (filterbank(spec), *_held(spec)))


#: A held bin's own level is at least this (|X|^power), so a silent one takes at most the largest gain.
TINY = 1e-30


def mel_gains(frames: torch.Tensor, target: torch.Tensor, level: torch.Tensor, fb: torch.Tensor,
              spread: torch.Tensor, nearest: torch.Tensor, max_gain: float = MAX_GAIN, power: float = 1.0,
              floor: float = LOG_FLOOR) -> torch.Tensor:
    """Per-bin real gains (B, bins, F) that move a spectrogram's filterbank output fb |X|^power to `target`
    (B, n_mels, F, `expand`ed from the mel); a bin no band covers takes its band's gain held between 1 and the gain
    to its band's `level` (H target, `_held`: the same at every iteration). The clamp at the contract's floor mirrors
    the mel's own: a band below it in both is left alone. With power 2 the gain on the magnitude is the root of the
    ratio."""
    own = frames.abs() ** power
    band = (target / (fb @ own).clamp(min=floor)).pow(1.0 / power).clamp(max=max_gain)
    to_level = (level / own.clamp(min=TINY)).pow(1.0 / power)
    lowest, highest = to_level.clamp(max=1.0), to_level.clamp(min=1.0)
    return spread @ band + torch.minimum(torch.maximum(nearest @ band, lowest), highest)


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
    fb, spread, nearest, held = _operators(spec, audio.device)
    level, floor = held @ target, gain_floor(spec)
    gains = lambda x: mel_gains(x, target, level, fb, spread, nearest, max_gain, spec.power, floor)  # noqa: E731
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
