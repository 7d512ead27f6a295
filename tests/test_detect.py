"""Wrong-contract refusal (`model.detect`): no false refusal on any LJ clip in its own profile (at its level, 12 dB
louder and 40 dB quieter), silence, noise, tones, the predicted TTS mels and random normal(-5, 2) mels; the
Rayhane predictions sent as hifigan are refused naming rayhane; each example of the issue is refused. What the
check costs is measured by bench.contracts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from model.audio import list_audio, load_audio, mel_spectrogram
from model.detect import WrongContract, check, transposed
from model.profiles import PROFILES

TTS_MELS = SHARED_DATA.parent / "tts-mels"
RATES = sorted({p.spec.sample_rate for p in PROFILES.values()})


def own_profile(stem: str) -> str:
    return "rayhane" if "rayhane" in stem else "tacotron2" if stem[-1] in "cde" and "tacotron" in stem else "hifigan"


@pytest.fixture(scope="module")
def clips() -> list[Path]:
    if not (SHARED_DATA / "wavs").is_dir():
        pytest.skip("shared data not found")
    return list_audio(SHARED_DATA / "wavs")


def test_no_lj_clip_is_refused_in_its_own_profile_at_any_level(clips):
    refused = []
    for path in clips:
        for rate in RATES:
            wav = load_audio(path, rate)
            for name, profile in PROFILES.items():
                if profile.spec.sample_rate != rate:
                    continue
                for gain in (1.0, 4.0, 0.01):
                    try:
                        check(mel_spectrogram(np.clip(wav * gain, -1, 1), profile.spec).numpy(), profile.spec)
                    except WrongContract as e:
                        refused.append(f"{path.stem} x{gain} {name}: {e}")
    assert not refused, refused[:5]


def synthetic() -> dict[str, np.ndarray]:
    rng, t = np.random.default_rng(0), np.arange(44100) / 22050
    out = {"silence": np.zeros(44100), "uniform": rng.uniform(-1, 1, 44100)}
    out.update({f"noise {s}": np.clip(s * rng.standard_normal(44100), -1, 1) for s in (0.001, 0.01, 0.1, 0.5)})
    out.update({f"tone {hz} Hz x{a}": a * np.sin(2 * np.pi * hz * t) for hz in (55, 440, 3000, 7000, 10000)
                for a in (0.001, 0.5, 1.0)})
    return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize("name", list(PROFILES))
def test_silence_noise_and_tones_pass_in_every_profile(name):
    spec = PROFILES[name].spec
    for wav in synthetic().values():
        check(mel_spectrogram(wav, spec).numpy(), spec)


def test_the_predicted_mels_pass_in_their_own_profile_and_rayhanes_are_refused_as_hifigan():
    for path in sorted(TTS_MELS.glob("*.npy")):
        mel = np.load(path)
        check(mel, PROFILES[own_profile(path.stem)].spec)
        if "rayhane" in path.stem:
            with pytest.raises(WrongContract, match="rayhane"):
                check(mel, PROFILES["hifigan"].spec)


def test_random_normal_test_mels_pass():
    rng = np.random.default_rng(1)
    for frames in (1, 5, 50, 500):
        check(rng.normal(-5, 2, (80, frames)).astype(np.float32), PROFILES["hifigan"].spec)


@pytest.mark.parametrize("sent, declared, named", [
    ("rayhane", "hifigan", "rayhane"), ("coqui", "hifigan", "coqui"), ("espnet", "hifigan", "espnet"),
    ("hifigan", "rayhane", "hifigan"), ("hifigan", "espnet", "hifigan"),
])
def test_a_mel_in_another_contract_is_refused_naming_it(sent, declared, named):
    wav = load_audio(SHARED_DATA / "wavs" / "LJ003-0043.flac")
    with pytest.raises(WrongContract, match=named):
        check(mel_spectrogram(wav, PROFILES[sent].spec).numpy(), PROFILES[declared].spec)


def test_a_normalised_mel_is_refused_as_ln():
    mel = mel_spectrogram(load_audio(SHARED_DATA / "wavs" / "LJ003-0043.flac"), PROFILES["espnet"].spec).numpy()
    normalised = (mel - mel.mean(axis=1, keepdims=True)) / mel.std(axis=1, keepdims=True)
    with pytest.raises(WrongContract, match="mean/std"):
        check(normalised, PROFILES["hifigan"].spec)


def test_a_transposed_array_is_named():
    assert transposed((300, 80), 80) and transposed((1, 300, 80), 80)
    assert not transposed((80, 300), 80) and not transposed((80, 80), 80)
