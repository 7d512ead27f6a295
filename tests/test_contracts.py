"""Mel contracts as data (`model.contract`, `model.profiles`): each profile's mel equals its stack's formula computed
independently with librosa; compression round-trips; bad contracts are refused naming the field; old configs load;
projection runs in every profile's STFT and leaves a recording of that contract where it is."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import scipy.signal
import torch
from conftest import SHARED_DATA
from model.audio import filterbank, load_audio, mel_spectrogram
from model.contract import ContractError, MelSpec, compress, expand
from model.profiles import PROFILES, contract, load_directory
from model.refine import distance, linear_magnitude, project

CLIP = "LJ003-0041"


def recording(spec: MelSpec, seconds: float = 1.5) -> np.ndarray:
    wav = load_audio(SHARED_DATA / "wavs" / f"{CLIP}.flac", spec.sample_rate)
    return wav[:int(seconds * spec.sample_rate)]


def librosa_mel(wav: np.ndarray, spec: MelSpec) -> np.ndarray:
    """The stacks' own recipe, written with librosa and numpy (Rayhane's audio.py, Coqui's AudioProcessor,
    parallel_wavegan's logmelfilterbank, HiFi-GAN's meldataset) from the contract's fields."""
    x = scipy.signal.lfilter([1, -spec.preemphasis], [1], wav) if spec.preemphasis else wav.astype(np.float64)
    if not spec.center:
        x = np.pad(x, (spec.pad, spec.pad), mode=spec.pad_mode)
    mag = np.abs(librosa.stft(x, n_fft=spec.n_fft, hop_length=spec.hop, win_length=spec.win_length, window="hann",
                              center=spec.center, pad_mode=spec.pad_mode)) ** spec.power
    fb = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax)
    mel = np.maximum(fb @ mag, spec.floor)
    if spec.compression == "ln":
        return np.log(mel)
    if spec.compression == "log10":
        return np.log10(mel)
    db = 20 * np.log10(mel) - spec.ref_db
    return np.clip(2 * spec.max_abs * (db - spec.min_db) / -spec.min_db - spec.max_abs, -spec.max_abs, spec.max_abs)


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profiles_mel_is_its_stacks_formula(name):
    spec = PROFILES[name].spec
    wav = recording(spec)
    ours, ref = mel_spectrogram(wav, spec).numpy(), librosa_mel(wav, spec)
    assert ours.shape == ref.shape == (spec.n_mels, spec.frames(len(wav)))
    loud = ref > np.percentile(ref, 20)  # float32 STFTs differ by rounding, which a log magnifies only near the floor
    assert np.abs(ours - ref)[loud].max() < 2e-3 * max(1.0, np.abs(ref).max() / 10)


@pytest.mark.parametrize("name", list(PROFILES))
def test_compression_round_trips_above_the_floor(name):
    spec = PROFILES[name].spec
    power_mel = torch.logspace(-3, 1, 50)[None].expand(spec.n_mels, -1)
    assert torch.allclose(expand(compress(power_mel, spec), spec), power_mel, rtol=1e-4)


def test_a_normalised_custom_contract_round_trips_with_per_band_stats():
    spec = MelSpec.from_dict({"compression": "log10", "floor": 1e-10, "normalize": "meanstd",
                              "mean": list(np.linspace(-3, -1, 80)), "std": [0.5]})
    power_mel = torch.rand(80, 7) + 0.01
    assert torch.allclose(expand(compress(power_mel, spec), spec), power_mel, rtol=1e-4)


@pytest.mark.parametrize("bad, field", [
    ({"n_fft": 16384}, "n_fft"), ({"n_mels": 300}, "n_mels"), ({"sample_rate": 96000}, "sample_rate"),
    ({"fmax": 20000.0}, "fmax"), ({"hop": 0}, "hop"), ({"win": 2048}, "win"), ({"window": "kaiser"}, "window"),
    ({"compression": "cube"}, "compression"), ({"normalize": "symmetric"}, "compression"),
    ({"normalize": "meanstd", "mean": [0.0] * 3, "std": [1.0]}, "mean"), ({"power": 3}, "power"),
    ({"preemphasis": 1.5}, "preemphasis"), ({"hop": "256"}, "hop"), ({"center": 1}, "center"),
    ({"fmin": float("nan")}, "fmin"), ({"nfft": 1024}, "nfft"), ({"mean": [0.0]}, "mean"),
])
def test_a_bad_contract_is_refused_naming_its_field(bad, field):
    with pytest.raises(ContractError, match=field):
        MelSpec.from_dict(bad)


def test_an_old_configs_six_fields_load_as_the_hifigan_contract():
    old = {"sample_rate": 22050, "hop": 256, "n_fft": 1024, "n_mels": 80, "fmin": 0.0, "fmax": 8000.0}
    assert MelSpec(**old) == MelSpec.from_dict(old) == PROFILES["hifigan"].spec == contract(None)
    assert MelSpec.from_dict(json.loads(json.dumps(MelSpec().to_dict()))) == MelSpec()


def test_names_resolve_and_unknown_names_are_refused():
    assert contract("rayhane").hop == 275
    with pytest.raises(ContractError, match="unknown mel_format"):
        contract("wavenet")


def test_a_contracts_directory_registers_by_name_with_a_stats_file(tmp_path):
    np.save(tmp_path / "ljs_stats.npy", np.stack([np.full(80, -2.0), np.full(80, 0.8)]))
    (tmp_path / "espnet-ljs.json").write_text(json.dumps({"fmin": 80.0, "fmax": 7600.0, "center": True,
                                                          "compression": "log10", "stats": "ljs_stats.npy"}))
    registered = load_directory(tmp_path)
    assert contract("espnet-ljs", registered).mean == (-2.0,) * 80
    (tmp_path / "hifigan.json").write_text("{}")
    with pytest.raises(ContractError, match="built-in"):
        load_directory(tmp_path)
    with pytest.raises(ContractError, match="does not exist"):
        load_directory(tmp_path / "nope")


def test_an_espnet_recipes_feats_stats_npz_registers_as_its_global_mvn_reads_it(tmp_path):
    """collect_stats' sums over frames (tests/test_peers.py makes one with ESPnet itself): mean = sum / count,
    std = sqrt(sum_square / count - mean^2)."""
    feats = np.random.default_rng(0).normal(-2.0, 0.7, (500, 80)).astype(np.float32)
    np.savez(tmp_path / "feats_stats.npz", count=len(feats), sum=feats.sum(0), sum_square=(feats**2).sum(0))
    (tmp_path / "espnet-recipe.json").write_text(json.dumps({"fmin": 80.0, "fmax": 7600.0, "center": True,
                                                             "compression": "log10", "stats": "feats_stats.npz"}))
    spec = contract("espnet-recipe", load_directory(tmp_path))
    assert np.allclose(spec.mean, feats.mean(0), atol=1e-5) and np.allclose(spec.std, feats.std(0), atol=1e-5)
    np.savez(tmp_path / "feats_stats.npz", count=len(feats), sum=feats.sum(0))
    with pytest.raises(ContractError, match="unreadable stats"):
        load_directory(tmp_path)


@pytest.mark.parametrize("name", list(PROFILES))
def test_projection_in_each_contract_keeps_a_recording_and_pulls_noise_toward_the_mel(name):
    spec = PROFILES[name].spec
    wav = recording(spec, 1.0)
    frames = len(wav) // spec.hop
    audio = torch.from_numpy(wav[:frames * spec.hop])[None]
    mel = mel_spectrogram(audio, spec)[..., :frames]
    kept = project(audio, mel, spec, 2)
    assert (kept - audio).abs().max() < 0.03  # what lies below a contract's fmin > 0 is not kept
    noise = 0.1 * torch.randn(1, frames * spec.hop, generator=torch.Generator().manual_seed(0))
    assert distance(project(noise, mel, spec, 16), mel, spec) < 0.5 * distance(noise, mel, spec)


@pytest.mark.parametrize("name", ["hifigan", "rayhane"])
def test_the_linear_magnitude_of_a_mel_gives_that_mel_back(name):
    spec = PROFILES[name].spec
    mel = mel_spectrogram(torch.from_numpy(recording(spec, 1.0)), spec)
    magnitude = linear_magnitude(mel, spec)
    assert magnitude.shape == (spec.n_fft // 2 + 1, mel.shape[-1])
    fb = torch.from_numpy(filterbank(spec))
    again = compress(fb @ magnitude**spec.power, spec)
    assert (again - mel).abs().median() < 0.05 * (mel.max() - mel.min())  # a smooth reading, band by band
