"""Mel-consistency refinement: make a waveform's own mel spectrogram agree with the mel it was made from.

A vocoder's output x has the contract's STFT X (`audio.stft`) and its own mel W|X|, which an under-trained
score net leaves far from the mel it was asked for. One projection moves it back:

    g = min(exp(mel) / W|X|, MAX_GAIN)      per band and frame: the gain that would make the band right
    X <- (S g) * X                          spread to linear bins by the column-normalised filterbank S
    x <- istft(X)                           the nearest waveform (least squares) to that spectrogram

It changes magnitudes only, so the output keeps the net's phase, which is what Griffin-Lim lacks. Iterating
is Griffin-Lim with the mel as the magnitude constraint; `momentum` is fast Griffin-Lim (Perraudin, Balazs and
Sondergaard 2013): t_k = c_k + momentum (c_k - c_{k-1}) on the consistent spectrograms c_k. Started from
noise, with no net at all, it is the baseline the net has to beat (`project_noise`).

Each iteration reads each output sample's neighbourhood of a few frames (`reach_frames`), so a chunk of a longer
signal is exact once computed on the chunk widened by that many frames per iteration (`model.streaming`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .audio import LOG_FLOOR, MelSpec, istft, mel_filterbank, mel_spectrogram, stft

#: The most one projection raises a band: a band the net left near silence is raised in steps, not at once.
MAX_GAIN = 16.0
#: Fast Griffin-Lim's momentum: in an exploratory run on the tuning clips, 10 iterations with it matched 30 plain
#: ones after `small`'s balanced preset; tests/test_refine.py checks that it gets closer to the mel at equal count.
MOMENTUM = 0.99
#: Each preset's refinements after sampling, chosen on the tuning clips at matched CPU time (bench/results/refine.md)
#: and written with the presets by `model.train search`.
PRESET_REFINE = {"fast": 16, "balanced": 48, "quality": 128}
#: The most iterations a request may ask for.
MAX_ITERATIONS = 512
#: The standard deviation of the seeded noise that projection alone starts from.
NOISE_SCALE = 0.1


def reach_frames(spec: MelSpec, iterations: int) -> int:
    """Frames on each side of a chunk within which `iterations` projections can reach it: one reads the STFT
    frames covering a sample, which read samples up to n_fft - 1 away, so K of them reach K (n_fft - 1) samples."""
    return -(-iterations * (spec.n_fft - 1) // spec.hop)


@lru_cache(maxsize=8)
def _spread(spec: MelSpec) -> np.ndarray:
    """S, (bins, n_mels): each linear bin's gain as the filterbank-weighted mean of its bands' gains. A bin no
    band covers (DC, and above fmax) holds the gain of the band whose centre is nearest, so nothing divides by
    zero and the top band's gain carries on above fmax."""
    fb = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax).astype(np.float64)
    weight = fb.sum(axis=0)
    spread = np.zeros_like(fb.T)
    covered = weight > 0
    spread[covered] = fb.T[covered] / weight[covered, None]
    bins = np.arange(fb.shape[1])
    centres = (fb * bins).sum(axis=1) / fb.sum(axis=1)
    for b in bins[~covered]:
        spread[b, np.argmin(np.abs(centres - b))] = 1.0
    return spread.astype(np.float32)


def _operators(spec: MelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    fb = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)
    return torch.from_numpy(fb).to(device), torch.from_numpy(_spread(spec)).to(device)


def mel_gains(frames: torch.Tensor, target: torch.Tensor, fb: torch.Tensor, spread: torch.Tensor,
              max_gain: float = MAX_GAIN) -> torch.Tensor:
    """Per-bin real gains (B, bins, F) that move a spectrogram's mel magnitudes to `target` = exp(ln-mel)
    (B, n_mels, F). The clamp at the log floor mirrors the mel's own: a band below it in both is left alone."""
    own = (fb @ frames.abs()).clamp(min=LOG_FLOOR)
    return spread @ (target / own).clamp(max=max_gain)


@torch.inference_mode()
def project(audio: torch.Tensor, mel: torch.Tensor, spec: MelSpec, iterations: int, momentum: float = MOMENTUM,
            max_gain: float = MAX_GAIN) -> torch.Tensor:
    """`iterations` projections of audio (B, F * hop) onto the log-mel (B, n_mels, F); fp32 in [-1, 1].
    Zero iterations return the audio unchanged."""
    if iterations == 0:
        return audio
    samples = audio.shape[-1]
    if samples != mel.shape[-1] * spec.hop:
        raise ValueError(f"{samples} samples do not match {mel.shape[-1]} mel frames of {spec.hop}")
    audio, target = audio.float(), mel.float().exp()
    fb, spread = _operators(spec, audio.device)
    frames, previous = stft(audio, spec), None
    for k in range(iterations):
        audio = istft(mel_gains(frames, target, fb, spread, max_gain) * frames, samples, spec)
        if k + 1 < iterations:
            consistent = stft(audio, spec)
            frames = consistent if previous is None else consistent + momentum * (consistent - previous)
            previous = consistent
    return audio.clamp(-1.0, 1.0)


def distance(audio: torch.Tensor, mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """Per item, the RMS of (own log-mel - mel): what `project` makes small."""
    return (mel_spectrogram(audio, spec) - mel).pow(2).mean(dim=(-2, -1)).sqrt()
