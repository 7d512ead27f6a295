"""Quality metrics: identity is perfect, added noise degrades every metric, and the CI helper is a t-interval."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from model.audio import SAMPLE_RATE, load_audio
from model.metrics import (dnsmos, evaluate, ls_mse, mcd, mean_ci95, noise_floor, pesq_nb, pesq_wb, pitch_errors,
                           pitch_track, raw_to_lqo, stoi)


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> np.ndarray:
    return load_audio(shared_data / "wavs" / "LJ001-0001.flac")[: 3 * SAMPLE_RATE]


def noisy(x: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    return np.clip(x + level * np.random.default_rng(seed).standard_normal(len(x)), -1, 1).astype(np.float32)


def test_identical_audio_is_perfect(speech):
    m = evaluate(speech, speech)
    assert set(m) == {"ls_mse", "mcd", "stoi", "pesq", "pesq_nb", "quiet_db", "floor_db"}
    assert m["floor_db"] == 0.0
    assert m["ls_mse"] == 0.0 and m["mcd"] == 0.0
    assert m["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert m["pesq"] > 4.0 and m["pesq_nb"] > 4.0


def test_noise_degrades_every_metric(speech):
    clean, light, heavy = (evaluate(speech, noisy(speech, s)) for s in (0.0, 0.003, 0.03))
    for key in ("ls_mse", "mcd"):
        assert clean[key] < light[key] < heavy[key], key
    for key in ("stoi", "pesq", "pesq_nb"):
        assert clean[key] > light[key] > heavy[key], key
    assert heavy["pesq"] < 2.0 and heavy["stoi"] < 0.95


def test_signals_are_trimmed_to_the_common_length(speech):
    longer = np.concatenate([speech, np.ones(1000, np.float32) * 0.5])
    assert ls_mse(speech, longer) == 0.0 and mcd(longer, speech) == 0.0
    assert stoi(speech, longer) == pytest.approx(1.0, abs=1e-6)


def test_mcd_ignores_gain_which_ls_mse_sees(speech):
    """A gain shifts every log-mel band equally: only c0 changes, and MCD leaves c0 out."""
    assert mcd(speech, 0.5 * speech) < 0.05
    assert ls_mse(speech, 0.5 * speech) == pytest.approx(math.log(2) ** 2, rel=0.05)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # pesq normalises 0 / 0 itself
def test_pesq_without_speech_is_nan_with_a_warning():
    silence = np.zeros(SAMPLE_RATE, np.float32)
    with pytest.warns(RuntimeWarning, match="no utterances"):
        assert math.isnan(pesq_wb(silence, silence))


def test_pesq_nb_is_mos_lqo_the_p862_1_mapping_of_the_raw_score(speech):
    """BDDM's raw narrow-band 4.05 is about 4.20 as MOS-LQO; the mapping is monotone."""
    assert raw_to_lqo(4.05) == pytest.approx(4.20, abs=0.01)
    assert raw_to_lqo(2.0) < raw_to_lqo(3.0) < raw_to_lqo(4.5) < 4.6
    degraded = noisy(speech, 0.01)
    assert 1.0 < pesq_nb(speech, degraded) < 4.6 and pesq_nb(speech, degraded) != pesq_wb(speech, degraded)


def test_noise_floor_is_the_outputs_level_in_the_recordings_quiet_frames():
    """Quiet frames are chosen on the recording; hiss added there shows as dB above its floor."""
    rng = np.random.default_rng(0)
    ref = np.concatenate([1e-4 * rng.standard_normal(2560), 0.3 * np.sin(np.arange(2560) / 5.0)])  # -80 / -13 dB
    quiet_db, floor_db = noise_floor(ref, ref)
    assert quiet_db == pytest.approx(-80, abs=1) and floor_db == 0.0
    hiss = ref + 1e-3 * rng.standard_normal(len(ref))  # -60 dB everywhere: 20 dB above the quiet frames
    quiet_db, floor_db = noise_floor(ref, hiss)
    assert quiet_db == pytest.approx(-60, abs=1) and floor_db == pytest.approx(20, abs=1)
    assert all(math.isnan(v) for v in noise_floor(ref[2560:], hiss[2560:]))  # a tone has no quiet frame


def test_mean_ci95_is_the_student_t_interval():
    values = [3.1, 2.7, 3.9, 3.3, 2.8, 3.6]
    mean, half = mean_ci95(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((hi - lo) / 2)
    assert mean_ci95(values + [math.nan]) == (mean, half)
    assert mean_ci95([2.0])[0] == 2.0 and math.isnan(mean_ci95([2.0])[1])
    assert all(math.isnan(v) for v in mean_ci95([]))


def harmonic_tone(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))


@pytest.mark.parametrize("f0", [110.0, 220.0])
def test_a_harmonic_tone_is_voiced_at_its_pitch_and_white_noise_is_not(f0):
    tone = harmonic_tone(f0)
    pitch, strength = pitch_track(tone)
    assert (pitch > 0).mean() > 0.9 and abs(np.median(pitch[pitch > 0]) - f0) < 1.0
    assert strength[pitch > 0].min() > 0.5
    noise = np.random.default_rng(0).normal(0, 0.1, len(tone))
    assert (pitch_track(noise)[0] > 0).mean() < 0.05
    a_semitone_up = harmonic_tone(f0 * 2 ** (1 / 12))
    errors = pitch_errors(tone, a_semitone_up)
    assert errors["pitch_cents"] == pytest.approx(100, abs=5) and errors["vuv_f1"] > 0.95
    whispered = pitch_errors(tone, noise)
    assert whispered["vuv_f1"] < 0.1 and whispered["periodicity"] > 0.5
    assert pitch_errors(tone, tone) == {"pitch_cents": 0.0, "vuv_f1": 1.0, "periodicity": 0.0}


def test_dnsmos_ranks_a_clean_clip_above_it_with_white_noise_at_0_db(speech):
    clean = speech  # 3 s: the package loops it to its 9 s window
    noisy = clean + np.random.default_rng(1).normal(0, np.sqrt(np.mean(clean**2)), len(clean))
    a, b = dnsmos(clean), dnsmos(noisy)
    assert set(a) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}
    assert a["dnsmos_ovrl"] > b["dnsmos_ovrl"] + 0.5 and a["dnsmos_bak"] > b["dnsmos_bak"] + 1.0
