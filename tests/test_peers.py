"""The profiles against the peers' own code: held-out LJ clips' mels made by Coqui TTS's `AudioProcessor` (coqui-tts,
installed without its dependencies by `make install-test`: its audio front end needs only librosa, coqpit-config
and the trainer's config class) equal ours and vocode with `mel_format=coqui`; an ESPnet-style normalised contract
whose stats come from the train clips, as a recipe makes them, registered by name.

parallel_wavegan (its sdist does not build here) and ESPnet (hundreds of MB) do not install in reasonable time: the
`espnet` profile is written from parallel_wavegan's `logmelfilterbank` formula and checked against it with librosa
in tests/test_contracts.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import SHARED_DATA, serving
from model.audio import list_audio, load_audio, mel_spectrogram, read_id_list
from model.profiles import PROFILES
from server import Settings, create_app
from test_server_api import NPY, npy


def coqui_audio_processor():
    """Coqui's AudioProcessor with BaseAudioConfig's defaults, imported without running `TTS/__init__.py` (which
    demands torchaudio and torchcodec for the models, not for the audio front end)."""
    found = importlib.util.find_spec("TTS")
    if found is None or found.origin is None:
        pytest.skip("coqui-tts is not installed (make install-test installs it)")
    if "TTS" not in sys.modules:
        package = types.ModuleType("TTS")
        package.__path__ = [str(Path(found.origin).parent)]
        sys.modules["TTS"] = package
    from TTS.config.shared_configs import BaseAudioConfig  # noqa: PLC0415
    from TTS.utils.audio.processor import AudioProcessor  # noqa: PLC0415

    return AudioProcessor(BaseAudioConfig())


def held_out(count: int = 3, seconds: float = 1.0) -> list[np.ndarray]:
    ids = read_id_list(SHARED_DATA / "valid.txt")[8:8 + count]
    return [load_audio(p)[:int(seconds * 22050)] for p in list_audio(SHARED_DATA / "wavs", ids)]


@pytest.fixture(scope="module")
def url(tiny_weights, tmp_path_factory):
    """A server with an `espnet-ljs` contract registered: the espnet profile normalised per band by the mean and
    std of the train clips' mels."""
    registered = tmp_path_factory.mktemp("contracts")
    train = list_audio(SHARED_DATA / "wavs", read_id_list(SHARED_DATA / "train.txt")[::10])
    mels = np.concatenate([mel_spectrogram(load_audio(p), PROFILES["espnet"].spec).numpy() for p in train], axis=1)
    np.save(registered / "ljs_stats.npy", np.stack([mels.mean(axis=1), mels.std(axis=1)]))
    contract = {k: v for k, v in PROFILES["espnet"].spec.to_dict().items() if v is not None}
    (registered / "espnet-ljs.json").write_text(json.dumps({**contract, "stats": "ljs_stats.npy"}))
    with serving(create_app(Settings(weights=tiny_weights, device="cpu", contracts_dir=registered))) as base:
        base_stats = np.load(registered / "ljs_stats.npy")
        yield base, base_stats


def test_coquis_own_mels_equal_the_coqui_profile_and_vocode_with_it(url):
    base, _ = url
    processor = coqui_audio_processor()
    spec = PROFILES["coqui"].spec
    for wav in held_out():
        theirs = processor.melspectrogram(wav).astype(np.float32)
        assert np.abs(theirs - mel_spectrogram(wav, spec).numpy()).max() < 1e-3
        r = httpx.post(f"{base}/v1/vocode", params={"mel_format": "coqui", "rho": "fast"}, content=npy(theirs),
                       headers=NPY, timeout=120)
        assert r.status_code == 200, r.text
        assert len(np.frombuffer(r.content[44:], np.int16)) == theirs.shape[-1] * spec.hop
        refused = httpx.post(f"{base}/v1/vocode", params={"rho": "fast"}, content=npy(theirs), headers=NPY,
                             timeout=120)
        assert refused.status_code == 422 and "coqui" in refused.json()["detail"]


def test_an_espnet_recipes_normalised_mels_vocode_by_their_registered_name(url):
    base, stats = url
    for wav in held_out():
        mel = mel_spectrogram(wav, PROFILES["espnet"].spec).numpy()
        normalised = ((mel - stats[0][:, None]) / stats[1][:, None]).astype(np.float32)
        r = httpx.post(f"{base}/v1/vocode", params={"mel_format": "espnet-ljs", "rho": "fast"},
                       content=npy(normalised), headers=NPY, timeout=120)
        assert r.status_code == 200, r.text
        refused = httpx.post(f"{base}/v1/vocode", params={"rho": "fast"}, content=npy(normalised), headers=NPY,
                             timeout=120)
        assert refused.status_code == 422 and "mean/std" in refused.json()["detail"]
    assert "espnet-ljs" in httpx.get(f"{base}/v1/model").json()["profiles"]
