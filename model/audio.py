"""Mel front end: audio I/O, and a mel contract's (`model.contract.MelSpec`) filterbank, STFT and its inverse.

The net's own contract is HiFi-GAN / Tacotron 2 log-mel: 22050 Hz mono, n_fft 1024, Hann 1024, hop 256, 80 Slaney
mel bands over 0-8000 Hz, magnitude spectrogram, natural log of max(x, 1e-5). Frames are taken HiFi-GAN style
(reflect-pad (n_fft - hop) / 2 on each side, no centring), so a clip of S samples gives S // 256 frames and the
vocoder returns exactly frames * 256 samples. Every other contract runs through the same functions.
"""

from __future__ import annotations

import io
import math
import struct
from functools import lru_cache
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from scipy.signal import lfilter, resample_poly

from .contract import MelSpec, compress

#: The net's contract's numbers, for the code that speaks only it.
SAMPLE_RATE, HOP, N_FFT, N_MELS = MelSpec.sample_rate, MelSpec.hop, MelSpec.n_fft, MelSpec.n_mels
FMIN, FMAX, LOG_FLOOR = MelSpec.fmin, MelSpec.fmax, MelSpec.floor
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")
#: Sample rates accepted for resampling. A header is the client's to write, and the polyphase filter grows
#: with the terms of the rate ratio: a coprime rate near 2^31 Hz asked one decode for 19 GB.
MIN_RATE, MAX_RATE = 1000, 768000
#: Largest denominator of the resampling ratio (an approximation below 1e-7 for odd rates; exact for 8-192 kHz).
RATIO_TERMS = 4096
#: Output containers and sample encodings (`encode_audio`): libsndfile's (format, subtype) for each.
CONTAINERS = {"wav": "WAV", "flac": "FLAC", "ogg-opus": "OGG"}
ENCODINGS = {"pcm16": "PCM_16", "mulaw": "ULAW"}


class AudioError(ValueError):
    """Audio that cannot be read or is unusable (empty, wrong sample rate where resampling is off)."""


def _hz_to_mel(hz: np.ndarray, htk: bool = False) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above; or HTK's 2595 log10(1 + hz / 700)."""
    hz = np.asanyarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray, htk: bool = False) -> np.ndarray:
    mel = np.asanyarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=16)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
                   fmax: float = FMAX, htk: bool = False, norm: str = "slaney") -> np.ndarray:
    """Triangular filters, shape (n_mels, n_fft // 2 + 1), each scaled to unit area (Slaney's norm) unless norm is
    "none"; equals librosa's `filters.mel` with the same htk and norm."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin, htk), _hz_to_mel(fmax, htk), n_mels + 2), htk)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def filterbank(spec: MelSpec) -> np.ndarray:
    """The contract's filterbank, (n_mels, n_fft // 2 + 1)."""
    return mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax,
                          spec.mel_scale == "htk", spec.mel_norm)


def window(spec: MelSpec, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The contract's analysis window, win samples long, zero-padded to n_fft in its middle (as torch.stft and
    librosa pad a shorter window)."""
    make = torch.hann_window if spec.window == "hann" else torch.hamming_window
    w = make(spec.win_length, device=device, dtype=dtype)
    left = (spec.n_fft - spec.win_length) // 2
    return torch.nn.functional.pad(w, (left, spec.n_fft - spec.win_length - left)) if spec.win_length < spec.n_fft else w


def preemphasis(wav: torch.Tensor, k: float) -> torch.Tensor:
    """y[n] = x[n] - k x[n-1] along the last axis (y[0] = x[0]), as the stacks that pre-emphasise do."""
    return torch.cat([wav[..., :1], wav[..., 1:] - k * wav[..., :-1]], dim=-1)


def deemphasis(wav: torch.Tensor, k: float) -> torch.Tensor:
    """`preemphasis` undone: x[n] = y[n] + k x[n-1] (an IIR, run in float64 by scipy)."""
    out = lfilter([1.0], [1.0, -k], wav.detach().cpu().double().numpy(), axis=-1)
    return torch.from_numpy(out).to(device=wav.device, dtype=wav.dtype)


def stft(wav: torch.Tensor, spec: MelSpec = MelSpec()) -> torch.Tensor:
    """The contract's complex STFT, (B, samples) -> (B, n_fft // 2 + 1, spec.frames(samples)): padded by
    `spec.pad` on each side (reflect, or zeros), so frame f covers samples [f hop - pad, f hop - pad + n_fft).
    HiFi-GAN's (n_fft - hop) / 2 gives samples // hop frames; centred frames (n_fft / 2) give one more."""
    pad = spec.pad
    mode = spec.pad_mode if wav.shape[-1] > pad else "constant"
    wav = torch.nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
    return torch.stft(wav, spec.n_fft, spec.hop, spec.n_fft, window(spec, wav.device, wav.dtype), center=False,
                      return_complex=True)


def istft(frames: torch.Tensor, samples: int, spec: MelSpec = MelSpec()) -> torch.Tensor:
    """The least-squares inverse of `stft` (Griffin and Lim 1984): each frame's inverse FFT windowed again,
    overlap-added and divided by the summed squared window; (B, bins, F) -> (B, samples). `torch.istft` refuses
    this framing, since the padded signal's first sample sees only a zero of the window."""
    pad, n = spec.pad, frames.shape[-1]
    w = window(spec, frames.device, frames.real.dtype)
    fold = _fold(n, spec.n_fft, spec.hop)
    parts = torch.fft.irfft(frames, n=spec.n_fft, dim=1) * w[:, None]
    wav = torch.nn.functional.fold(parts, **fold)[:, 0, 0]
    return (wav / _window_sum(n, spec, w.device, w.dtype))[:, pad:pad + samples]


def _fold(frames: int, n_fft: int, hop: int) -> dict:
    return dict(output_size=(1, (frames - 1) * hop + n_fft), kernel_size=(1, n_fft), stride=(1, hop))


@lru_cache(maxsize=8)
def _window_sum(frames: int, spec: MelSpec, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The overlap-added squared window `istft` divides by (floored where no frame covers a sample), once per
    length and contract: a refinement's iterations all invert the same length."""
    w = window(spec, device, dtype)
    return torch.nn.functional.fold((w**2)[None, :, None].expand(1, -1, frames),
                                    **_fold(frames, spec.n_fft, spec.hop))[0, 0, 0].clamp(min=1e-8)


def mel_spectrogram(wav: torch.Tensor | np.ndarray, spec: MelSpec = MelSpec()) -> torch.Tensor:
    """The contract's mel of a waveform (samples,) or (batch, samples) -> (..., n_mels, spec.frames(samples)):
    pre-emphasis, STFT, |X|^power, filterbank, then `compress` (log and normalisation)."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    squeeze = wav.dim() == 1
    wav = wav.reshape(-1, wav.shape[-1])
    if spec.preemphasis:
        wav = preemphasis(wav, spec.preemphasis)
    magnitude = stft(wav, spec).abs()
    fb = torch.from_numpy(filterbank(spec)).to(wav.device)
    mel = compress(fb @ (magnitude if spec.power == 1 else magnitude**spec.power), spec)
    return mel[0] if squeeze else mel


def _to_mono_at(data: np.ndarray, sr: int, target_sr: int, resample: bool) -> np.ndarray:
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size == 0:
        raise AudioError("audio has no samples")
    if sr != target_sr:
        if not resample:
            raise AudioError(f"audio is {sr} Hz; this model needs {target_sr} Hz")
        if not MIN_RATE <= sr <= MAX_RATE:
            raise AudioError(f"sample rate {sr} Hz is outside the {MIN_RATE}-{MAX_RATE} Hz this server resamples")
        ratio = Fraction(target_sr, sr).limit_denominator(RATIO_TERMS)
        data = resample_poly(data, ratio.numerator, ratio.denominator)
    if not np.all(np.isfinite(data)):
        raise AudioError("audio contains NaN or Inf samples")
    return np.clip(data, -1.0, 1.0).astype(np.float32)


def load_audio(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE, resample: bool = True) -> np.ndarray:
    """Read a wav/flac file (path or bytes) as float32 mono at `sample_rate`, resampling if needed."""
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                           dtype="float32", always_2d=False)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  untrusted bytes: whatever the decoder throws is the file's fault
        raise AudioError(f"cannot read audio: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return _to_mono_at(data, sr, sample_rate, resample)


def encode_audio(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, fmt: str = "wav", encoding: str = "pcm16") -> bytes:
    """WAV (16-bit PCM or mu-law), FLAC (16-bit) or Ogg Opus bytes of a float waveform in [-1, 1]."""
    buf = io.BytesIO()
    subtype = "OPUS" if fmt == "ogg-opus" else ENCODINGS[encoding]
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format=CONTAINERS[fmt], subtype=subtype)
    return buf.getvalue()


def raw_samples(wav: np.ndarray, encoding: str = "pcm16") -> bytes:
    """Headerless samples of a float waveform (16-bit PCM or 8-bit mu-law), quantised exactly as `encode_audio`
    does (libsndfile), so a stream of them is the whole file's data."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, format="RAW", subtype=ENCODINGS[encoding])
    return buf.getvalue()


def pcm16(wav: np.ndarray) -> bytes:
    """Headerless 16-bit PCM of a float waveform, quantised exactly as `encode_audio` does (libsndfile)."""
    return raw_samples(wav, "pcm16")


def wav_header(samples: int, sample_rate: int = SAMPLE_RATE, encoding: str = "pcm16") -> bytes:
    """The header libsndfile writes for a mono WAV of `samples` samples, for a stream that sends it before the
    audio exists: 44 bytes for 16-bit PCM; 58 for mu-law, whose `fmt ` chunk is 18 bytes and which carries a `fact`
    chunk (the sample count). An odd-length mu-law data chunk is followed by one pad byte (`wav_padding`), which
    the RIFF size counts."""
    if encoding == "pcm16":
        data = 2 * samples
        return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16) + b"data" + struct.pack("<I", data))
    if encoding != "mulaw":
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    return (b"RIFF" + struct.pack("<I", 50 + samples + len(wav_padding(samples, encoding))) + b"WAVEfmt "
            + struct.pack("<IHHIIHHH", 18, 7, 1, sample_rate, sample_rate, 1, 8, 0) + b"fact" + struct.pack("<II", 4, samples)
            + b"data" + struct.pack("<I", samples))


def wav_padding(samples: int, encoding: str = "pcm16") -> bytes:
    """The pad byte RIFF puts after an odd-length data chunk (a mu-law WAV of an odd sample count)."""
    return b"\0" if encoding == "mulaw" and samples % 2 else b""


def resampled_length(samples: int, from_rate: int, to_rate: int) -> int:
    """Samples of `samples` resampled by `Resampler`: the nearest integer (halves up) to samples * to / from."""
    return math.floor(Fraction(samples * to_rate, from_rate) + Fraction(1, 2))


class Resampler:
    """A waveform resampled piece by piece (soxr's high-quality filter, which keeps its state between pieces): the
    pieces fed in order give exactly the samples of the whole waveform resampled at once, so a stream of chunks
    has no seams and equals the whole answer."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.stream = None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")

    def feed(self, wav: np.ndarray, last: bool = False) -> np.ndarray:
        """The output samples that `wav` completes (`last`: and the filter's tail)."""
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        return wav if self.stream is None else self.stream.resample_chunk(wav, last=last)


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """A whole float waveform at another rate (`Resampler` in one piece), `resampled_length` samples long."""
    return Resampler(from_rate, to_rate).feed(wav, last=True)


def list_audio(directory: str | Path, ids: list[str] | None = None) -> list[Path]:
    """Audio files in a directory (recursively), optionally only those whose stem is in `ids`."""
    files = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if ids is not None:
        wanted = set(ids)
        files = [p for p in files if p.stem in wanted]
    return files


def read_id_list(path: str | Path) -> list[str]:
    """Utterance ids, one per line (an LJ Speech style `train.txt`); text after '|' is ignored."""
    return [ln.split("|")[0].strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
