"""`mel_format` on the API: each profile vocoded at its hop and rate through /v1, its stream and v2 (one seed, one
answer), a custom contract as a JSON object, contracts registered from VOCODER_CONTRACTS_DIR, /v1/mel in any
profile, /v1/model's list, and wrong contracts refused with a 422 naming the likely one."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.http as triton
from conftest import SHARED_DATA, serving
from model.audio import load_audio, mel_spectrogram
from model.profiles import PROFILES
from server import Settings, create_app
from test_server_api import NPY, npy

REPO = Path(__file__).resolve().parent.parent
TTS_MELS = SHARED_DATA.parent / "tts-mels"


def clip_mel(name: str, seconds: float = 0.5) -> np.ndarray:
    spec = PROFILES[name].spec
    wav = load_audio(SHARED_DATA / "wavs" / "LJ003-0051.flac", spec.sample_rate)[:int(seconds * spec.sample_rate)]
    return mel_spectrogram(wav, spec).numpy()


@pytest.fixture(scope="module")
def url(tiny_weights, tmp_path_factory):
    registered = tmp_path_factory.mktemp("contracts")
    (registered / "espnet-ljs.json").write_text(json.dumps({**PROFILES["espnet"].spec.to_dict(), "stats": "ljs.stats.json"}))
    (registered / "ljs.stats.json").write_text(json.dumps({"mean": [-2.5], "std": [1.1]}))
    with serving(create_app(Settings(weights=tiny_weights, device="cpu", contracts_dir=registered))) as base:
        yield base


def post(url: str, body: bytes, json_body: bool = False, path: str = "/v1/vocode", **params) -> httpx.Response:
    kind = {"Content-Type": "application/json"} if json_body else NPY
    return httpx.post(f"{url}{path}", params=params, content=body, headers=kind, timeout=120)


def wav_of(r: httpx.Response) -> tuple[np.ndarray, int]:
    assert r.status_code == 200, r.text
    audio, rate = sf.read(io.BytesIO(r.content), dtype="int16")
    return audio, rate


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profile_gives_its_hops_at_its_rate_the_same_on_v1_its_stream_and_v2(url, name):
    spec, m = PROFILES[name].spec, clip_mel(name)
    whole, rate = wav_of(post(url, npy(m), mel_format=name, rho="fast", seed=4))
    assert (len(whole), rate) == (m.shape[-1] * spec.hop, spec.sample_rate)
    streamed, _ = wav_of(post(url, npy(m), path="/v1/vocode/stream", mel_format=name, rho="fast", seed=4))
    assert np.abs(streamed.astype(int) - whole).max() <= 1
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    tensor = triton.InferInput("mel", [1, *m.shape], "FP32")
    tensor.set_data_from_numpy(m[None], binary_data=True)
    model = client.get_server_metadata()["models"][0]
    result = client.infer(model, [tensor], parameters={"rho": "fast", "seed": 4, "audio_datatype": "INT16",
                                                       "mel_format": name})
    assert np.array_equal(result.as_numpy("audio")[0], whole)
    assert result.get_response()["parameters"]["sample_rate"] == spec.sample_rate


def test_a_custom_contract_object_in_the_json_body(url):
    m = clip_mel("espnet")
    custom = {k: v for k, v in PROFILES["espnet"].spec.to_dict().items() if v is not None}
    body = json.dumps({"mel": m.tolist(), "mel_format": custom, "rho": "fast", "seed": 1}).encode()
    r = post(url, body, json_body=True)
    assert r.headers["x-mel-format"] == "custom"
    assert np.array_equal(wav_of(r)[0], wav_of(post(url, npy(m), mel_format="espnet", rho="fast", seed=1))[0])


@pytest.mark.parametrize("mel_format, error", [
    ({"n_fft": 99999}, "n_fft"), ({"hop": "256"}, "hop"), ({"bogus": 1}, "bogus"), ("wavenet", "unknown"),
])
def test_a_bad_contract_is_a_400_naming_what_is_wrong(url, mel_format, error):
    body = json.dumps({"mel": clip_mel("hifigan").tolist(), "mel_format": mel_format}).encode()
    r = post(url, body, json_body=True)
    assert r.status_code == 400 and r.json()["error"] == "invalid mel_format" and error in r.json()["detail"]


def test_an_npy_body_takes_names_only(url):
    r = post(url, npy(clip_mel("espnet")), mel_format=json.dumps({"compression": "log10"}))
    assert r.status_code == 400 and "unknown mel_format" in r.json()["detail"]


def test_a_registered_contract_is_served_by_name_and_listed(url):
    m = clip_mel("espnet")
    normalised = (m + 2.5) / 1.1
    assert wav_of(post(url, npy(normalised), mel_format="espnet-ljs", rho="fast"))[1] == 22050
    profiles = httpx.get(f"{url}/v1/model").json()["profiles"]
    assert set(PROFILES) | {"espnet-ljs"} <= set(profiles)
    assert profiles["rayhane"]["contract"]["hop"] == 275 and "hparams.py" in profiles["rayhane"]["source"]


def test_rayhane_predictions_sent_without_mel_format_are_refused_naming_rayhane(url):
    m = np.load(TTS_MELS / "ru-rayhane-2.npy")
    r = post(url, npy(m), rho="fast")
    assert r.status_code == 422 and r.json()["error"] == "wrong mel contract" and "rayhane" in r.json()["detail"]
    assert wav_of(post(url, npy(m), rho="fast", mel_format="rayhane"))[1] == 22050
    assert post(url, npy(m.T.copy()), rho="fast", mel_format="rayhane").json()["detail"].count("transposed") == 1


def test_the_tests_random_mels_and_a_100_band_mel_in_its_profile_pass(url):
    random = np.random.default_rng(0).normal(-5, 2, (80, 20)).astype(np.float32)
    assert post(url, npy(random), rho="fast").status_code == 200
    assert post(url, npy(clip_mel("bigvgan-24k")), rho="fast").status_code == 422  # 100 bands, not the net's 80


def test_v1_mel_computes_any_profiles_mel(url):
    spec = PROFILES["rayhane"].spec
    wav = load_audio(SHARED_DATA / "wavs" / "LJ003-0051.flac", spec.sample_rate)[:spec.sample_rate]
    buf = io.BytesIO()
    sf.write(buf, wav, spec.sample_rate, format="WAV", subtype="FLOAT")
    r = httpx.post(f"{url}/v1/mel", params={"mel_format": "rayhane"}, content=buf.getvalue(),
                   headers={"Content-Type": "audio/wav"}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content))
    assert np.allclose(got, mel_spectrogram(wav, spec).numpy(), atol=1e-4)


def test_max_frames_is_seconds_at_the_contracts_hop(tiny_weights):
    with serving(create_app(Settings(weights=tiny_weights, device="cpu", max_frames=86))) as base:
        long_rayhane = np.full((80, 86 * 256 // 275 + 2), -4.0, np.float32)  # just over 1 s at hop 275
        assert post(base, npy(long_rayhane), mel_format="rayhane", rho="fast").status_code == 413
        assert post(base, npy(long_rayhane[:, :80]), mel_format="rayhane", rho="fast").status_code == 200


def test_a_bad_contracts_directory_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"n_fft": 99999}))
    for directory in (tmp_path, tmp_path / "missing"):
        proc = subprocess.run([sys.executable, "-m", "server", "--port", "0"], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={"VOCODER_CONTRACTS_DIR": str(directory), "PATH": ""})
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "VOCODER_CONTRACTS_DIR" in proc.stderr
