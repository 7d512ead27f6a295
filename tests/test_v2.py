"""The Open Inference Protocol v2 with a real client: tritonclient[http] against uvicorn on 127.0.0.1, on tiny weights.

Each answer is held to /v1/vocode's samples for the same seed; bad bodies get the protocol's {"error": ...} with a 4xx,
and the server goes on serving.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import serving
from model.audio import HOP, N_MELS, SAMPLE_RATE, pcm16
from server import Settings, create_app
from test_server_api import full_queue

NPY = {"Content-Type": "application/x-npy"}


def mel(frames: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture(scope="module")
def url(tiny_weights):
    with serving(create_app(Settings(weights=tiny_weights, device="cpu"))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> triton.InferenceServerClient:
    c = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def name(client) -> str:
    return client.get_server_metadata()["models"][0]


def v1(url: str, m: np.ndarray, **params) -> np.ndarray:
    r = httpx.post(f"{url}/v1/vocode", params=params, content=npy(m), headers=NPY, timeout=120)
    assert r.status_code == 200, r.text
    audio, _ = sf.read(io.BytesIO(r.content), dtype="int16")
    return audio


def infer(client, name: str, mels: np.ndarray, binary: bool, **parameters) -> np.ndarray:
    tensor = triton.InferInput("mel", list(mels.shape), "FP32")
    tensor.set_data_from_numpy(mels, binary_data=binary)
    out = triton.InferRequestedOutput("audio", binary_data=binary)
    return client.infer(name, [tensor], outputs=[out], parameters=parameters).as_numpy("audio")


def test_health_and_metadata(client, name):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    server = client.get_server_metadata()
    assert server["name"] == "bddm-vocoder" and "binary_tensor_data" in server["extensions"]
    assert name == "weights"  # the tiny weights' directory name
    meta = client.get_model_metadata(name)
    assert meta["inputs"] == [{"name": "mel", "datatype": "FP32", "shape": [-1, N_MELS, -1]}]
    assert meta["outputs"] == [{"name": "audio", "datatype": "FP32", "shape": [-1, -1]}]
    with pytest.raises(InferenceServerException, match="serves the model 'weights'") as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_gives_v1s_samples_for_the_seed(url, client, name, binary):
    m = mel(12, seed=1)
    expected = v1(url, m, rho="fast", seed=3)
    audio = infer(client, name, m[None], binary, rho="fast", seed=3)
    assert audio.dtype == np.float32 and audio.shape == (1, 12 * HOP)
    assert np.array_equal(np.frombuffer(pcm16(audio[0]), np.int16), expected)  # FP32, quantised as pcm16 is
    ints = infer(client, name, m[None], binary, rho="fast", seed=3, audio_datatype="INT16")
    assert ints.dtype == np.int16 and np.array_equal(ints[0], expected)


def test_a_batch_of_two_is_seed_and_seed_plus_one(url, client, name):
    mels = np.stack([mel(10, seed=4), mel(10, seed=5)])
    audio = infer(client, name, mels, True, rho="fast", seed=7, audio_datatype="INT16")
    assert audio.shape == (2, 10 * HOP)
    assert np.array_equal(audio[0], v1(url, mels[0], rho="fast", seed=7))
    assert np.array_equal(audio[1], v1(url, mels[1], rho="fast", seed=8))
    unseeded = infer(client, name, mels, True, rho="fast")  # through the engine's micro-batching
    assert unseeded.shape == (2, 10 * HOP) and np.isfinite(unseeded).all() and np.abs(unseeded).max() <= 1


def test_refine_and_method_are_v1s(url, client, name):
    m = mel(10, seed=6)
    tensor = triton.InferInput("mel", [1, N_MELS, 10], "FP32")
    tensor.set_data_from_numpy(m[None])
    for params in ({"rho": "fast", "refine": 2, "method": "bddm"}, {"method": "projection", "refine": 3}):
        result = client.infer(name, [tensor], parameters={**params, "seed": 2, "audio_datatype": "INT16"})
        assert np.array_equal(result.as_numpy("audio")[0], v1(url, m, seed=2, **params))
        answered = result.get_response()["parameters"]
        assert answered["refine"] == params["refine"] and answered["method"] == params["method"]
        assert ("rho" in answered) == ("rho" in params)  # projection alone has no rho, as /v1's X-Rho says


def test_sample_rate_is_v1s(url, client, name):
    m = mel(9, seed=2)
    audio = infer(client, name, m[None], True, rho="fast", seed=1, sample_rate=16000, audio_datatype="INT16")
    expected = v1(url, m, rho="fast", seed=1, sample_rate=16000)
    assert audio.shape == (1, len(expected)) and len(expected) == round(9 * HOP * 16000 / SAMPLE_RATE)
    assert np.array_equal(audio[0], expected)


def post(url: str, name: str, doc: dict | bytes, headers: dict | None = None) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return httpx.post(f"{url}/v2/models/{name}/infer", content=body, headers=headers or {}, timeout=60)


def request(shape=(1, N_MELS, 2), **parameters) -> dict:
    data = mel(shape[2]).reshape(-1).tolist() * shape[0] if len(shape) == 3 else [0.0]
    return {"inputs": [{"name": "mel", "shape": list(shape), "datatype": "FP32", "data": data}],
            "parameters": parameters}


BAD = {
    "not-json": (b"{", None, 400, "invalid inference request"),
    "no-inputs": ({"inputs": []}, None, 400, "inputs"),
    "wrong-input": ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, None, 400, "'mel'"),
    "rank-2": (request((N_MELS, 2)), None, 400, "[B, 80, F]"),
    "wrong-mels": ({"inputs": [{"name": "mel", "shape": [1, 3, 2], "datatype": "FP32", "data": [0] * 6}]}, None,
                   400, "[B, 80, F]"),
    "fp16": ({"inputs": [{**request()["inputs"][0], "datatype": "FP16"}]}, None, 400, "FP32"),
    "short-data": ({"inputs": [{**request()["inputs"][0], "data": [0.0] * 5}]}, None, 400, "needs 160"),
    "strings": ({"inputs": [{**request()["inputs"][0], "data": ["a"] * 160}]}, None, 400, "numbers"),
    "booleans": ({"inputs": [{**request()["inputs"][0], "data": [True] * 160}]}, None, 400, "numbers"),
    "ragged": ({"inputs": [{**request()["inputs"][0], "data": [[1.0, 2.0]] * 79 + [[1.0]]}]}, None, 400, "numbers"),
    "nan": ({"inputs": [{**request()["inputs"][0], "data": [0.0] * 159 + [1e39]}]}, None, 422, "mel"),
    "huge-shape": ({"inputs": [{**request()["inputs"][0], "shape": [1, N_MELS, 10**12]}]}, None, 400, "values"),
    "unknown-parameter": (request(preset="fast"), None, 400, "preset"),
    "bad-rho": (request(rho="fastest"), None, 400, "rho"),
    "bad-rate": (request(sample_rate=11025), None, 400, "8000, 16000, 22050, 24000, 44100, 48000"),
    "bad-datatype": (request(audio_datatype="FP64"), None, 400, "INT16"),
    "refine-too-many": (request(refine=10**6), None, 400, "refine"),
    "bad-method": (request(method="ddim"), None, 400, "projection"),
    "seed-overflow": (request((2, N_MELS, 2), seed=2**63 - 1), None, 400, "seed"),
    "batch-over-queue": (request((33, N_MELS, 2)), None, 413, "batch"),
    "bad-output": ({**request(), "outputs": [{"name": "wave"}]}, None, 400, "'audio'"),
    "classification": ({**request(), "outputs": [{"name": "audio", "parameters": {"classification": 3}}]}, None,
                       400, "classification"),
    "header-too-long": (json.dumps(request()).encode(), {"Inference-Header-Content-Length": "99999"}, 400,
                        "Inference-Header-Content-Length"),
    "binary-size-lies": (None, None, 400, "binary"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_bodies_get_the_protocols_error_and_the_server_goes_on(url, client, name, case):
    doc, headers, status, needle = BAD[case]
    if case == "binary-size-lies":
        header = json.dumps({"inputs": [{"name": "mel", "shape": [1, N_MELS, 2], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 640}}]}).encode()
        doc, headers = header + b"\0" * 100, {"Inference-Header-Content-Length": str(len(header))}
    r = post(url, name, doc, headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and needle in body["error"], body
    assert client.is_server_ready()
    assert post(url, "nope", request()).status_code == 404


def test_queue_full_failures_and_api_key_are_v1s(tiny_weights, monkeypatch):
    settings = Settings(weights=tiny_weights, device="cpu", queue_size=1, max_batch=1, api_key="k3y")
    app = create_app(settings)
    with serving(app) as base:
        c = triton.InferenceServerClient(base.removeprefix("http://"), network_timeout=120)
        key = {"Authorization": "Bearer k3y"}
        assert c.is_server_live() and c.is_server_ready()  # probes stay open, as /healthz and /readyz do
        with pytest.raises(InferenceServerException) as e:
            c.get_server_metadata()
        assert e.value.status() == "401"
        name = c.get_server_metadata(headers=key)["models"][0]
        with pytest.raises(InferenceServerException):
            c.get_model_metadata(name, headers={"X-API-Key": "nope"})

        post_v1 = lambda: httpx.post(f"{base}/v1/vocode", content=npy(mel()), headers={**NPY, **key},  # noqa: E731
                                     timeout=60)
        with full_queue(app.state.engine, monkeypatch, post_v1) as results:
            r = post(base, name, request(), key)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and set(r.json()) == {"error"}
        assert [x.status_code for x in results] == [200, 200]
        tensor = triton.InferInput("mel", [1, N_MELS, 4], "FP32")
        tensor.set_data_from_numpy(mel(4)[None])
        assert c.infer(name, [tensor], headers=dict(key)).as_numpy("audio").shape == (1, 4 * HOP)  # it adds to headers

        def failing(*args, **kwargs):
            raise RuntimeError("CUDA out of memory")

        monkeypatch.setattr(app.state.engine.vocoder, "vocode", failing)  # a failed batch: 503, as on /v1
        monkeypatch.setattr(app.state.engine.vocoder, "projection_alone", failing)
        r = post(base, name, request(), key)
        assert r.status_code == 503 and r.headers["retry-after"] and "inference failed" in r.json()["error"]
        c.close()
