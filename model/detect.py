"""Which contract a mel's values look like: a wrong `mel_format` refused before it becomes confident noise.

A mel's compression leaves fingerprints that no other contract's values can show:

- dB scaled to [-A, A] (Coqui, Rayhane): nothing outside [-A, A], and a mass of values at exactly -A, where the
  normalisation clipped everything quieter than min_db (speech has pauses; 4-25 % of the Rayhane predictions);
  [0, A] likewise at 0;
- log10 (ESPnet, ParallelWaveGAN): digital silence at exactly log10(1e-10) = -10 (ParallelWaveGAN's floor on the
  band), or at log10(1e-5 x the band's filter area), about -6.3 (ESPnet2's floor on each bin's magnitude, before
  the filterbank), or speech's spread of values (std ~1, mean ~-2.7, nothing above ~1.5): ln's spread is ln 10 =
  2.3 times wider for the same sound;
- mean/std normalised: values centred on 0 with unit spread in every band, which no log of audio has;
- ln (HiFi-GAN and kin): values below the dB scale's -A, or a mass at ln(1e-5).

`check` refuses only on such a fingerprint of a contract other than the declared one; anything else (overshoot,
random test mels, silence, noise, tones, any level) passes. A transposed (frames, n_mels) array is named as such.
Its statistics are a handful of passes over the values: well under 1 ms for 10 s of audio.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .audio import N_MELS, filterbank
from .contract import MelSpec
from .profiles import PROFILES

LN_FLOOR, LOG10_FLOOR = math.log(1e-5), math.log10(1e-10)
#: A value "at" a clip or floor: within this of it.
AT = 0.02
#: The share of values at a clip or floor that makes a fingerprint (a TTS model clips its output too).
MASS = 0.01


class WrongContract(ValueError):
    """A mel whose values are far more likely another contract's than the declared one's; names the likely one."""


def family(spec: MelSpec) -> str:
    """The fingerprint family of a contract's values."""
    if spec.normalize == "meanstd":
        return "meanstd"
    if spec.compression == "db" and spec.normalize in ("symmetric", "unit"):
        return f"db-{spec.normalize}"
    return spec.compression if spec.normalize == "none" and spec.compression != "db" else "other"


#: What to call each family in a refusal: the profiles that send it.
NAMES = {"db-symmetric": "rayhane or coqui (dB scaled to [-4, 4])",
         "db-unit": "a dB mel scaled to [0, A] (a custom contract with normalize unit)",
         "log10": "espnet (log10)", "ln": "hifigan, tacotron2 or bigvgan-24k (ln)",
         "meanstd": "a mean/std-normalised mel (send its contract with mean and std, e.g. espnet's with stats)"}


def fingerprints(mel: np.ndarray, max_abs: float = 4.0) -> set[str]:
    """The families whose fingerprint the values (n_mels, F) show; empty when none is certain. Cheap first: the
    range decides which of the costlier statistics are worth a pass."""
    lo, hi = float(mel.min()), float(mel.max())
    found: set[str] = set()
    if hi - lo < 1.0:  # a flat mel (silence, a constant): any contract could have sent it
        return found
    if -max_abs - 0.15 <= lo and hi <= max_abs + 0.15 and _share(mel, -max_abs) >= MASS:
        found.add("db-symmetric")
    if -0.15 <= lo and hi <= max_abs + 0.15 and _share(mel, 0.0) >= MASS:
        found.add("db-unit")
    if lo < -max_abs - 0.5 and lo >= LN_FLOOR - AT and _share(mel, LN_FLOOR) >= MASS:
        found.add("ln")
    if lo >= LOG10_FLOOR - AT and hi <= 1.6:
        if _share(mel, LOG10_FLOOR) >= MASS or (len(mel) == N_MELS and _share(mel, _espnet_silence(), 1e-4) >= MASS):
            found.add("log10")
        elif not found and _spread(mel, -4.5, -1.5, 0.6, 1.6, 0.4):
            found.add("log10")
    if not found and lo < -2.0 and hi < 6.0 and _spread(mel, -2.0, 1.0, 0.6, 1.5, 0.5):
        found.add("meanstd")
    return found


@lru_cache(maxsize=1)
def _espnet_silence() -> np.ndarray:
    """(n_mels, 1): each band's value for digital silence in ESPnet2's LogMelFbank, which floors every bin's
    magnitude at 1e-5 before the `espnet` profile's filterbank: log10(1e-5 x the band's area), to float32 rounding
    (5e-7), so a fingerprint only within 1e-4 of it: an ln mel's quiet bands pass near it (1 % of an LJ clip's
    values at 4x its level within 0.02)."""
    return np.log10(1e-5 * filterbank(PROFILES["espnet"].spec).sum(axis=1, dtype=np.float64))[:, None]


def _share(mel: np.ndarray, value: float | np.ndarray, within: float = AT) -> float:
    return float(np.count_nonzero(np.abs(mel - value) < within)) / mel.size


def _spread(mel: np.ndarray, mean_lo: float, mean_hi: float, std_lo: float, std_hi: float, band_std: float) -> bool:
    """Mean and std of all values within bounds, and the median band's std over time above `band_std` (a steady
    noise is flat in time; speech is not)."""
    mean, std = float(mel.mean()), float(mel.std())
    return mean_lo < mean < mean_hi and std_lo < std < std_hi and float(np.median(mel.std(axis=1))) > band_std


def consistent(mel: np.ndarray, spec: MelSpec) -> str | None:
    """Why these values cannot be the declared contract's (None: they can): a clipped scale's range, or the
    log10 floor, exceeded."""
    declared, lo, hi = family(spec), float(mel.min()), float(mel.max())
    if declared == "db-symmetric" and spec.clip and (lo < -spec.max_abs - 0.5 or hi > spec.max_abs + 0.5):
        return f"values span [{lo:.2f}, {hi:.2f}], outside this contract's [-{spec.max_abs:g}, {spec.max_abs:g}]"
    if declared == "db-unit" and spec.clip and (lo < -0.5 or hi > spec.max_abs + 0.5):
        return f"values span [{lo:.2f}, {hi:.2f}], outside this contract's [0, {spec.max_abs:g}]"
    if declared == "log10" and lo < math.log10(spec.floor) - 0.5:
        return f"values reach {lo:.2f}, below this contract's floor log10({spec.floor:g})"
    return None


def check(mel: np.ndarray, spec: MelSpec) -> None:
    """Raise WrongContract naming the likely contract when the values cannot be the declared contract's, or carry
    another family's fingerprint and not the declared one's (a mean/std fingerprint only against ln: a normalised
    mel can fall anywhere in a scaled range, and a loud log10 mel spreads as one does)."""
    declared = family(spec)
    if declared == "other":
        return
    why = consistent(mel, spec)
    scale = spec.max_abs if declared.startswith("db-") else 4.0
    found = fingerprints(mel, scale)
    if why is not None:
        likely = " or ".join(NAMES[f] for f in sorted(found - {declared})) or NAMES["ln"]
        raise WrongContract(f"{why}: likely {likely}; set mel_format to the contract the mel was made in")
    others = found - {declared} - ({"meanstd"} if declared != "ln" else set())
    if others and declared not in found:
        likely = " or ".join(NAMES[f] for f in sorted(others))
        raise WrongContract(f"these values look like {likely}, not the declared {NAMES.get(declared, declared)}; "
                            "set mel_format to the contract the mel was made in")


def transposed(shape: tuple[int, ...], n_mels: int) -> bool:
    """A (frames, n_mels) array sent where (n_mels, frames) is expected."""
    dims = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    return len(dims) == 2 and dims[1] == n_mels and dims[0] != n_mels
