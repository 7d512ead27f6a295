"""Objective quality of vocoded audio against the recording it was made from.

The vocoder returns exactly frames * 256 samples for a mel taken from a clip, so reference and
estimate are sample-aligned: every metric compares them frame by frame after trimming both to the
common length, with no dynamic time warping.

- LS-MSE: mean squared error of the project's log-mel spectrograms (BDDM's search criterion).
- MCD: mel cepstral distortion in dB, 10 / ln 10 * sqrt(2 * sum_{d=1..13} (c_d - c'_d)^2) averaged
  over frames, where c are the cepstra of the natural-log mel magnitude, log S = c0 + 2 sum_d c_d cos(.)
  (a DCT-II of the 80 bands divided by 2 * 80, so c has the scale of an SPTK mel-cepstrum); c0, the
  frame energy, is left out as usual. Being computed from the 80-band log-mel rather than an SPTK
  mel-cepstrum, absolute values are comparable within this project, only roughly across papers.
- STOI: pystoi (resamples to 10 kHz internally).
- Noise floor: the recording's quiet frames (256 samples, more than 45 dB below its loudest frame), the
  median level of the same frames in the output (dB re full scale), and that level over the recording's
  (dB above the recording's own floor). Hiss in pauses shows here first; STOI barely sees it.
- PESQ: ITU-T P.862.2 wideband (PESQ-WB) and P.862.1 narrow-band MOS-LQO (PESQ-NB) via the `pesq` package,
  after resampling to 16 kHz. Papers that quote "PESQ" for vocoders at 16 kHz (BDDM's 4.05 at 7 steps among
  them) mostly report *raw* narrow-band P.862 from `pypesq`; P.862.1 maps a raw score r to MOS-LQO
  0.999 + 4 / (1 + exp(-1.4945 r + 4.6607)), so raw 4.05 is about 4.20 here (`raw_to_lqo`).
- Pitch (Praat's autocorrelation tracker through `praat-parselmouth`, 10 ms frames, 65-600 Hz): the RMS pitch
  error in cents on frames voiced in both, the voiced/unvoiced F1 against the recording (voiced is positive),
  and the periodicity error, the RMS difference of the tracker's per-frame pitch strength (0 where unvoiced),
  as CARGAN's periodicity metric uses CREPE's confidence. A vocoder that whispers keeps STOI and loses F1.
- DNSMOS P.835 (`speechmos`, its ONNX models in the wheel): a non-intrusive MOS (signal, background, overall)
  of the output alone, at 16 kHz on 9 s windows; a shorter clip is looped to 9 s by the package itself.
"""

from __future__ import annotations

import math
import warnings
from math import gcd

import numpy as np
import torch
from pystoi import stoi as _stoi
from scipy.fft import dct
from scipy.signal import resample_poly
from scipy.stats import t as student_t

from .audio import SAMPLE_RATE, mel_spectrogram

MCD_COEFFS = 13
PESQ_RATE = 16000
FRAME = 256
#: A recording's frame is quiet more than this far below its loudest frame.
QUIET_DB = 45.0


def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float64 mono, trimmed to their common length."""
    ref, est = np.asarray(ref, dtype=np.float64).ravel(), np.asarray(est, dtype=np.float64).ravel()
    n = min(len(ref), len(est))
    if n == 0:
        raise ValueError("cannot compare empty signals")
    return ref[:n], est[:n]


def _log_mels(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, est = _pair(ref, est)
    mels = mel_spectrogram(torch.from_numpy(np.stack([ref, est]).astype(np.float32))).double().numpy()
    return mels[0], mels[1]


def ls_mse(ref: np.ndarray, est: np.ndarray) -> float:
    """Log-mel spectral MSE (lower is better; 0 for identical audio)."""
    a, b = _log_mels(ref, est)
    return float(np.mean((a - b) ** 2))


def mcd(ref: np.ndarray, est: np.ndarray, coeffs: int = MCD_COEFFS) -> float:
    """Mel cepstral distortion in dB over cepstra c1..c{coeffs}, frame-aligned (lower is better)."""
    a, b = _log_mels(ref, est)
    diff = dct(a - b, type=2, axis=0)[1:coeffs + 1] / (2 * a.shape[0])
    return float(np.mean(10.0 / math.log(10.0) * np.sqrt(2.0 * np.sum(diff**2, axis=0))))


def stoi(ref: np.ndarray, est: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Short-time objective intelligibility in [0, 1] (higher is better)."""
    a, b = _pair(ref, est)
    return float(_stoi(a, b, sr, extended=False))


def _pesq(ref: np.ndarray, est: np.ndarray, sr: int, mode: str) -> float:
    from pesq import NoUtterancesError, pesq  # noqa: PLC0415  (sdist only: the bare GPU image lacks it)

    a, b = _pair(ref, est)
    if sr != PESQ_RATE:
        g = gcd(sr, PESQ_RATE)
        a, b = resample_poly(a, PESQ_RATE // g, sr // g), resample_poly(b, PESQ_RATE // g, sr // g)
    try:
        return float(pesq(PESQ_RATE, a, b, mode))
    except NoUtterancesError:
        warnings.warn("PESQ found no utterances in the reference; returning NaN", RuntimeWarning, stacklevel=2)
        return math.nan


def pesq_wb(ref: np.ndarray, est: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Wideband PESQ MOS-LQO (P.862.2, about 1.0-4.64, higher is better); NaN if PESQ finds no speech in `ref`."""
    return _pesq(ref, est, sr, "wb")


def pesq_nb(ref: np.ndarray, est: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Narrow-band PESQ as MOS-LQO (P.862.1, about 1.0-4.55): the raw P.862 score many papers quote, mapped."""
    return _pesq(ref, est, sr, "nb")


def raw_to_lqo(raw: float) -> float:
    """P.862.1: a raw narrow-band P.862 score (pypesq's) as MOS-LQO, the scale of `pesq_nb`."""
    return 0.999 + 4.0 / (1.0 + math.exp(-1.4945 * raw + 4.6607))


#: Praat's pitch tracker settings: 10 ms frames, the pitch range of speech.
PITCH_STEP, PITCH_FLOOR, PITCH_CEILING = 0.01, 65.0, 600.0


def pitch_track(x: np.ndarray, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(f0 in Hz, 0 where unvoiced; pitch strength in [0, 1], 0 where unvoiced) per 10 ms frame."""
    import parselmouth  # noqa: PLC0415  (the test extra: the bare GPU image lacks it)

    pitch = parselmouth.Sound(np.asarray(x, dtype=np.float64), sr).to_pitch_ac(
        time_step=PITCH_STEP, pitch_floor=PITCH_FLOOR, pitch_ceiling=PITCH_CEILING)
    chosen = pitch.selected_array
    f0 = chosen["frequency"]
    return f0, np.where(f0 > 0, chosen["strength"], 0.0)


def pitch_errors(ref: np.ndarray, est: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """{"pitch_cents": RMS f0 error on frames voiced in both (NaN if none), "vuv_f1": voiced/unvoiced F1 against
    `ref`, "periodicity": RMS error of the pitch strength}."""
    (f_ref, s_ref), (f_est, s_est) = (pitch_track(x, sr) for x in _pair(ref, est))
    n = min(len(f_ref), len(f_est))
    f_ref, f_est, s_ref, s_est = f_ref[:n], f_est[:n], s_ref[:n], s_est[:n]
    v_ref, v_est = f_ref > 0, f_est > 0
    both = v_ref & v_est
    cents = 1200 * np.log2(f_est[both] / f_ref[both])
    hits = int(both.sum())
    f1 = 2 * hits / (int(v_ref.sum()) + int(v_est.sum())) if v_ref.any() or v_est.any() else 1.0
    return {"pitch_cents": float(np.sqrt(np.mean(cents**2))) if hits else math.nan, "vuv_f1": float(f1),
            "periodicity": float(np.sqrt(np.mean((s_ref - s_est) ** 2)))}


#: DNSMOS runs at 16 kHz.
DNSMOS_RATE = 16000


def dnsmos(x: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """DNSMOS P.835 of `x` alone: {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"} (1-5, higher is better)."""
    from speechmos import dnsmos as model  # noqa: PLC0415  (the test extra)

    x = np.asarray(x, dtype=np.float64).ravel()
    if sr != DNSMOS_RATE:
        g = gcd(sr, DNSMOS_RATE)
        x = resample_poly(x, DNSMOS_RATE // g, sr // g)
    scores = model.run(np.clip(x, -1.0, 1.0).astype(np.float32), sr=DNSMOS_RATE)
    return {f"dnsmos_{k}": float(scores[f"{k}_mos"]) for k in ("sig", "bak", "ovrl")}


def frame_levels_db(x: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """RMS level in dB re full scale of each whole `frame`-sample frame."""
    x = np.asarray(x, dtype=np.float64).ravel()
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)


def quiet_frames(ref: np.ndarray, est: np.ndarray, below_db: float = QUIET_DB) -> tuple[np.ndarray, np.ndarray]:
    """(output levels, recording levels) in dB of the recording's quiet frames: more than `below_db` under its
    loudest frame. Both empty when the recording has none."""
    ref_levels, est_levels = (frame_levels_db(x) for x in _pair(ref, est))
    quiet = ref_levels < ref_levels.max() - below_db
    return est_levels[quiet], ref_levels[quiet]


def noise_floor(ref: np.ndarray, est: np.ndarray) -> tuple[float, float]:
    """(median output level of the recording's quiet frames in dB re full scale, its excess over the recording's
    median level on the same frames in dB); NaN where the recording has no quiet frame."""
    est_q, ref_q = quiet_frames(ref, est)
    if not est_q.size:
        return math.nan, math.nan
    return float(np.median(est_q)), float(np.median(est_q) - np.median(ref_q))


def evaluate(ref: np.ndarray, est: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, float]:
    """Every metric; ref and est at `sr` (LS-MSE and MCD assume the project's 22050 Hz mel)."""
    quiet_db, floor_db = noise_floor(ref, est)
    return {"ls_mse": ls_mse(ref, est), "mcd": mcd(ref, est), "stoi": stoi(ref, est, sr), "pesq": pesq_wb(ref, est, sr),
            "pesq_nb": pesq_nb(ref, est, sr), "quiet_db": quiet_db, "floor_db": floor_db}


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of its two-sided 95% Student-t confidence interval (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    half = student_t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)
