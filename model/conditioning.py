"""Conditioning health: does the score network follow its mel?

A DiffWave that ignores its mel still reaches a low noise-prediction loss and outputs noise, so the
loss cannot tell. Two measurements can, and the trainer, the quality benchmark and the model card all
use these same definitions:

- **Conditioning gain** at a noise level t: noise a real clip to x_t with fixed noise, let the network
  estimate x0_hat = (x_t - sqrt(1 - alpha_t^2) eps_theta) / alpha_t once with the true mel and once with
  a silence mel, and divide the RMS x0 error with the silence mel by the one with the true mel. A net
  that ignores the mel scores 1.0; a net that uses it scores above 1.
- **Silence gap**: vocode the mel with one second of silence mel on each side and report the RMS of the
  audio over the speech span against the RMS over the padding, in dB. Silence in must give silence out.
- **Noise floor** (the trainer's probe): in the same vocoding, the level of the recording's own quiet frames
  over the recording's level there (`metrics.noise_floor`): hiss in real pauses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .audio import LOG_FLOOR
from .metrics import quiet_frames
from .sampling import ddpm, windowed_eps
from .schedules import Diffusion, diffwave_fast

#: Noise levels (0-based training indices) of the conditioning gain.
GAIN_STEPS = (20, 60, 100)
#: Seconds of silence mel on each side of the speech for the silence gap.
PAD_SECONDS = 1.0

SILENCE = math.log(LOG_FLOOR)


def silence_mel(like: torch.Tensor) -> torch.Tensor:
    """A mel of the same shape that says 'silence' in every band (the log floor)."""
    return torch.full_like(like, SILENCE)


@torch.inference_mode()
def conditioning_gain(net: torch.nn.Module, audio: torch.Tensor, mel: torch.Tensor,
                      diffusion: Diffusion = Diffusion(), steps: Sequence[int] = GAIN_STEPS,
                      seed: int = 0) -> dict[int, float]:
    """{t: RMS x0 error with a silence mel / RMS x0 error with the true mel}, on audio (B, S), mel (B, n_mels, F)."""
    eps_fn, prior = windowed_eps(net), net.prior
    silent = silence_mel(mel)
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for t in steps:
        alpha = float(diffusion.alphas[t])
        noise_std = math.sqrt(1 - alpha**2)
        eps = torch.randn(audio.shape, generator=gen).to(audio.device)
        x_t = alpha * audio + noise_std * prior.noise(eps, mel)
        level = torch.full((audio.shape[0],), float(t), device=audio.device)

        def x0_error(m: torch.Tensor) -> float:
            """x0 from the net's whitened noise given mel `m`, scaled by the prior x_t was drawn from: only the
            network's own use of its mel can move it (an energy prior's s would otherwise follow the silence)."""
            x0 = (x_t - noise_std * prior.noise(eps_fn(x_t, m, level).float(), mel)) / alpha
            return float(torch.sqrt(torch.mean((x0 - audio) ** 2)))

        out[t] = x0_error(silent) / max(x0_error(mel), 1e-12)
    return out


def pad_with_silence(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """The mel (..., n_mels, F) with `frames` frames of silence mel before and after it."""
    pad = torch.full((*mel.shape[:-1], frames), SILENCE, dtype=mel.dtype, device=mel.device)
    return torch.cat([pad, mel, pad], dim=-1)


def vocode_padded(vocode: Callable[[torch.Tensor], torch.Tensor | np.ndarray], mel: torch.Tensor, hop: int = 256,
                  sample_rate: int = 22050, pad_seconds: float = PAD_SECONDS) -> tuple[torch.Tensor, torch.Tensor]:
    """`vocode` (mel (B, n_mels, F) -> audio (B, F * hop)) on the mel with silence mel on each side:
    (the speech span (B, F * hop), the padding's audio (B, 2 * pad))."""
    frames = round(pad_seconds * sample_rate / hop)
    audio = torch.as_tensor(vocode(pad_with_silence(mel, frames))).float()
    pad = frames * hop
    return audio[..., pad:audio.shape[-1] - pad], torch.cat([audio[..., :pad], audio[..., audio.shape[-1] - pad:]], -1)


def gap_db(speech: torch.Tensor, silence: torch.Tensor) -> float:
    rms = lambda x: float(torch.sqrt(torch.mean(x.double() ** 2)))  # noqa: E731
    return 20 * math.log10(max(rms(speech), 1e-12) / max(rms(silence), 1e-12))


def silence_gap(vocode: Callable[[torch.Tensor], torch.Tensor | np.ndarray], mel: torch.Tensor, hop: int = 256,
                sample_rate: int = 22050, pad_seconds: float = PAD_SECONDS) -> float:
    """Speech/silence RMS ratio in dB of `vocode` (mel (B, n_mels, F) -> audio (B, F * hop)) on a silence-padded mel."""
    return gap_db(*vocode_padded(vocode, mel, hop, sample_rate, pad_seconds))


def pooled_floor(audio: torch.Tensor, vocoded: torch.Tensor) -> float | None:
    """The noise floor (`metrics.noise_floor`, dB above the recording's own) over the quiet frames of all the
    clips (B, S) together; None when the recordings have none."""
    pairs = [quiet_frames(a, v) for a, v in zip(audio.cpu().numpy(), vocoded.cpu().numpy())]
    est, ref = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    return float(np.median(est) - np.median(ref)) if est.size else None


def health(net: torch.nn.Module, audio: torch.Tensor, mel: torch.Tensor, diffusion: Diffusion = Diffusion(),
           seed: int = 0) -> dict:
    """The measurements on fixed clips, with the sampler the trainer can run before any schedule net exists:
    DDPM on DiffWave's 6-step schedule. One vocoding of the silence-padded mels gives both the silence gap and,
    from its speech span, the noise floor in the recordings' quiet frames.
    {"gain": {t: ratio}, "silence_gap_db": dB, "floor_db": dB or None}."""
    eps_fn = windowed_eps(net)
    sample = lambda m: ddpm(eps_fn, m, diffwave_fast(diffusion), seed, net.params.hop, net.prior)  # noqa: E731
    speech, silence = vocode_padded(sample, mel, net.params.hop)
    return {"gain": conditioning_gain(net, audio, mel, diffusion, seed=seed), "silence_gap_db": gap_db(speech, silence),
            "floor_db": pooled_floor(audio, speech)}


def describe(h: dict) -> str:
    """One log line: 'gain@20/60/100 1.02/1.10/1.05, silence gap 3.1 dB, floor +14.2 dB'."""
    gains, floor = h["gain"], h.get("floor_db")
    return (f"gain@{'/'.join(str(t) for t in gains)} {'/'.join(f'{g:.2f}' for g in gains.values())}, "
            f"silence gap {h['silence_gap_db']:.1f} dB, floor {'n/a' if floor is None else f'{floor:+.1f} dB'}")
