"""The HTTP API through FastAPI's TestClient: the app's lifespan runs the real engine on tiny weights."""

from __future__ import annotations

import io
import json
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from model.audio import HOP, N_MELS, SAMPLE_RATE, encode_audio, load_audio, mel_spectrogram
from server import Settings, create_app

NPY = {"Content-Type": "application/x-npy"}


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def mel(frames: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


def started(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings)).__enter__()
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "app never became ready"
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def client(tiny_weights):
    c = started(Settings(weights=tiny_weights, device="cpu"))
    yield c
    c.__exit__(None, None, None)


@pytest.fixture
def make_client(tiny_weights):
    clients = []

    def make(**overrides) -> TestClient:
        clients.append(started(Settings(weights=tiny_weights, device="cpu", **overrides)))
        return clients[-1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def vocode(client: TestClient, m: np.ndarray | None = None, **params):
    return client.post("/v1/vocode", content=npy(mel() if m is None else m), headers=NPY, params=params)


def audio_of(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    audio, sr = sf.read(io.BytesIO(r.content), dtype="int16")
    assert sr == SAMPLE_RATE
    return audio


# --- vocoding -----------------------------------------------------------------------------------

def gate_vocoder(engine, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold the inference worker inside vocode (or projection alone): `entered` is set once it is there, `release`
    lets it go on."""
    entered, release = threading.Event(), threading.Event()

    def gate(real):
        def gated(*args, **kwargs):
            entered.set()
            assert release.wait(30)
            return real(*args, **kwargs)
        return gated

    for name in ("vocode", "projection_alone"):
        monkeypatch.setattr(engine.vocoder, name, gate(getattr(engine.vocoder, name)))
    return entered, release


@contextmanager
def full_queue(engine, monkeypatch, send: Callable[[], object]) -> Iterator[list]:
    """An engine with queue_size=1 made full: `send` twice from threads, the first held inside the worker and the
    second waiting in the queue; on exit the worker goes on and the list holds both answers."""
    entered, release = gate_vocoder(engine, monkeypatch)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(send())) for _ in range(2)]
    threads[0].start()
    assert entered.wait(30)  # the worker is busy with the first request
    threads[1].start()
    while engine.queue_depth < 1:  # the second one waits in the queue
        time.sleep(0.01)
    try:
        yield results
    finally:
        release.set()
        for t in threads:
            t.join(30)


def test_vocode_npy_returns_16bit_wav_and_headers(client):
    r = vocode(client, mel(20), seed=1, method="bddm")
    assert r.headers["content-type"] == "audio/wav"
    assert sf.info(io.BytesIO(r.content)).subtype == "PCM_16"
    assert audio_of(r).shape == (20 * HOP,)
    model = client.get("/v1/model").json()
    assert model["dtype"] == "float32" and model["compiled"] is False  # auto on the CPU: fp32, eager
    assert model["warm_up_seconds"] > 0
    assert float(r.headers["x-rho"]) == model["default_rho"]
    assert int(r.headers["x-diffusion-steps"]) >= 1
    assert r.headers["x-schedule-cache"] in ("hit", "miss")
    assert float(r.headers["x-audio-seconds"]) == pytest.approx(20 * HOP / SAMPLE_RATE, abs=1e-4)
    assert float(r.headers["x-inference-seconds"]) > 0
    assert len(r.headers["x-request-id"]) >= 8


@pytest.mark.parametrize("array", [mel(5).astype(np.float16), mel(5).astype(np.float64), mel(5)[None]],
                         ids=["float16", "float64", "rank3"])
def test_vocode_accepts_float_dtypes_and_a_batch_of_one(client, array):
    assert audio_of(vocode(client, array)).shape == (5 * HOP,)


def test_json_body_equals_npy_and_flac_equals_wav(client):
    m = mel(12)
    wav = audio_of(vocode(client, m, rho="fast", seed=5))
    r = client.post("/v1/vocode", json={"mel": m.tolist(), "rho": "fast", "seed": 5})
    assert np.array_equal(audio_of(r), wav)
    r = client.post("/v1/vocode?format=flac", json={"mel": m.tolist(), "rho": "fast", "seed": 5})
    assert r.headers["content-type"] == "audio/flac"
    flac = audio_of(r).astype(int)
    assert np.abs(flac - wav).max() <= 1  # libsndfile rounds float -> 16 bit slightly differently for FLAC
    r = client.post("/v1/vocode?seed=6", json={"mel": m.tolist(), "rho": "fast", "seed": 5})  # the query wins
    assert not np.array_equal(audio_of(r), wav)


def test_same_seed_same_bytes_and_no_seed_differs(client):
    m = mel(10)
    a, b = vocode(client, m, seed=42), vocode(client, m, seed=42)
    assert a.content == b.content
    assert vocode(client, m, seed=43).content != a.content
    assert vocode(client, m).content != vocode(client, m).content


def test_presets_match_model_and_steps_fall_as_rho_rises(client):
    presets = client.get("/v1/model").json()["presets"]
    assert set(presets) == {"fast", "balanced", "quality"}
    for name, p in presets.items():
        r = vocode(client, rho=name, method="bddm")
        assert float(r.headers["x-rho"]) == p["rho"] and int(r.headers["x-diffusion-steps"]) == p["steps"]
        assert r.headers["x-schedule-cache"] == "hit"  # generated at start-up
        r = vocode(client, rho=name, method="projection")  # a preset holds both methods
        assert (r.headers["x-method"], r.headers["x-diffusion-steps"]) == ("projection", "0")
        assert int(r.headers["x-refine-iterations"]) == p["projections"] and "x-rho" not in r.headers
    assert presets["fast"]["steps"] <= presets["balanced"]["steps"] <= presets["quality"]["steps"]
    steps = [client.get("/v1/schedules", params={"rho": rho}).json()["steps"] for rho in (1e-3, 0.01, 0.1, 0.5, 0.9)]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]


def test_schedule_cache_miss_then_hit_canonical_rho(client):
    def hits() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("vocoder_schedule_cache_hits_total"):
                return float(line.split()[1])
        raise AssertionError("no cache hit counter")

    r = vocode(client, rho="0.04371")  # on the grid of 2 significant digits (model.plan.on_grid)
    assert r.headers["x-schedule-cache"] == "miss" and r.headers["x-rho"] == "0.044"
    before = hits()
    r = vocode(client, rho="0.0437")
    assert r.headers["x-schedule-cache"] == "hit" and hits() == before + 1


def test_schedules_endpoint(client):
    first = client.get("/v1/schedules?rho=0.0777").json()
    assert first["rho"] == 0.078 and first["cached"] is False
    assert len(first["beta"]) == len(first["alpha"]) == first["steps"]
    assert np.all(np.diff(first["alpha"]) < 0)  # levels fall from x_1 to x_N
    assert client.get("/v1/schedules?rho=0.0777").json()["cached"] is True
    listed = client.get("/v1/schedules").json()
    by_rho = {s["rho"]: s for s in listed["schedules"]}
    assert 0.078 in by_rho
    presets = client.get("/v1/model").json()["presets"]
    for name, p in presets.items():
        assert name in by_rho[p["rho"]]["presets"]


def test_model_endpoint(client):
    info = client.get("/v1/model").json()
    assert (info["sample_rate"], info["hop"], info["n_mels"]) == (SAMPLE_RATE, HOP, N_MELS)
    assert "@" in info["weights"] and info["device"] == "cpu"
    assert 0 < info["default_rho"] < 1 and info["max_frames"] > 0


def test_mel_endpoint_round_trips(client):
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    wav = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t))).astype(np.float32)
    for fmt in ("wav", "flac"):
        data = encode_audio(wav, SAMPLE_RATE, fmt)
        r = client.post("/v1/mel", content=data, headers={"Content-Type": f"audio/{fmt}"})
        assert r.status_code == 200, r.text
        m = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert m.dtype == np.float32 and m.shape == (N_MELS, len(wav) // HOP)
        np.testing.assert_allclose(m, mel_spectrogram(load_audio(data)).numpy(), atol=1e-5)  # the project's log-mel
        assert audio_of(client.post("/v1/vocode", content=r.content, headers=NPY)).shape == (m.shape[1] * HOP,)
    r = client.post("/v1/mel", content=b"RIFF....WAVEjunk", headers={"Content-Type": "audio/wav"})
    assert r.status_code == 422 and r.json()["detail"]


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    vocode(client)
    text = client.get("/metrics").text
    for name in ("vocoder_request_duration_seconds_bucket", "vocoder_synthesis_duration_seconds_bucket",
                 "vocoder_real_time_factor_bucket", "vocoder_queue_wait_seconds_bucket", "vocoder_batch_size_bucket",
                 "vocoder_schedule_cache_hits_total", "vocoder_schedule_cache_misses_total",
                 "vocoder_requests_in_flight", "vocoder_queue_depth"):
        assert name in text, name
    assert 'route="/v1/vocode",status="200"' in text and 'le="60.0"' in text and 'le="0.005"' in text


# --- bad input ----------------------------------------------------------------------------------

def object_array() -> bytes:
    return npy(np.array([{"x": 1}, None], dtype=object), allow_pickle=True)


m8 = mel(8)
BAD_INPUTS = {
    "no content type": (415, npy(m8), {}, {}),
    "text/plain": (415, npy(m8), {"Content-Type": "text/plain"}, {}),
    "not an array": (422, b"hello, vocoder", NPY, {}),
    "pickle": (422, pickle.dumps(m8), NPY, {}),
    "object array": (422, object_array(), NPY, {}),
    "truncated npy": (422, npy(m8)[:200], NPY, {}),
    "int dtype": (422, npy(m8.astype(np.int32)), NPY, {}),
    "rank 1": (422, npy(m8[0]), NPY, {}),
    "40 mels": (422, npy(m8[:40]), NPY, {}),
    "transposed": (422, npy(m8.T.copy()), NPY, {}),
    "NaN": (422, npy(np.where(np.arange(8) == 3, np.nan, m8)), NPY, {}),
    "Inf": (422, npy(np.where(np.arange(8) == 3, -np.inf, m8)), NPY, {}),
    "zero frames": (422, npy(m8[:, :0]), NPY, {}),
    "malformed JSON": (422, b'{"mel": [[1, 2', {"Content-Type": "application/json"}, {}),
    "JSON without mel": (422, b'{"rho": 0.1}', {"Content-Type": "application/json"}, {}),
    "JSON ragged mel": (422, json.dumps({"mel": [[1.0] * 8] * 79 + [[1.0] * 7]}).encode(),
                        {"Content-Type": "application/json"}, {}),
    "JSON NaN": (422, json.dumps({"mel": np.where(np.arange(8) == 3, np.nan, m8).tolist()}).encode(),
                 {"Content-Type": "application/json"}, {}),
    "JSON strings": (422, json.dumps({"mel": [["a"] * 8] * 80}).encode(), {"Content-Type": "application/json"}, {}),
    "rho 0": (400, npy(m8), NPY, {"rho": "0"}),
    "rho 1": (400, npy(m8), NPY, {"rho": "1"}),
    "rho nan": (400, npy(m8), NPY, {"rho": "nan"}),
    "rho unknown preset": (400, npy(m8), NPY, {"rho": "turbo"}),
    "seed negative": (400, npy(m8), NPY, {"seed": "-1"}),
    "seed not int": (400, npy(m8), NPY, {"seed": "1.5"}),
    "format mp3": (400, npy(m8), NPY, {"format": "mp3"}),
    "unknown query parameter": (400, npy(m8), NPY, {"preset": "fast"}),
    "JSON bad seed": (400, json.dumps({"mel": m8.tolist(), "seed": "x"}).encode(),
                      {"Content-Type": "application/json"}, {}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_4xx_and_the_server_carries_on(client, case):
    status, body, headers, params = BAD_INPUTS[case]
    r = client.post("/v1/vocode", content=body, headers=headers, params=params)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] and len(err["detail"]) > 10
    assert audio_of(vocode(client, mel(3))).shape == (3 * HOP,)


def test_unknown_query_parameters_are_named_on_every_v1_route(client):
    r = client.post("/v1/vocode", content=npy(mel()), headers=NPY, params={"preset": "fast"})
    assert r.status_code == 400 and r.json()["error"] == "unknown query parameter"
    takes = r.json()["detail"].split("it takes ")[1].split(", ")
    assert "'preset'" in r.json()["detail"]
    assert {"encoding", "format", "method", "refine", "rho", "sample_rate", "seed"} <= set(takes)
    for method, path, params in (("GET", "/v1/model", {"verbose": "1"}), ("GET", "/v1/schedules", {"rho": "fast",
                                 "steps": "3"}), ("POST", "/v1/mel", {"rho": "fast"})):
        r = client.request(method, path, params=params)
        assert r.status_code == 400 and r.json()["error"] == "unknown query parameter", (path, r.text)
    assert "'steps'" in client.get("/v1/schedules", params={"steps": "3"}).json()["detail"]
    assert "no query parameters" in client.get("/v1/model", params={"x": "1"}).json()["detail"]
    assert client.get("/v1/schedules", params={"rho": "fast"}).status_code == 200


def test_limits_queue_full_and_api_key(make_client, monkeypatch):
    client = make_client(max_body_bytes=30_000, max_frames=50, queue_size=1, max_batch=1, api_key="k3y")
    key = {"X-API-Key": "k3y"}
    assert vocode(client).status_code == 401
    assert client.post("/v1/vocode", content=npy(mel()), headers={**NPY, "Authorization": "Bearer nope"}
                       ).status_code == 401
    for open_route in ("/healthz", "/readyz", "/metrics"):
        assert client.get(open_route).status_code == 200
    r = client.post("/v1/vocode", content=npy(mel(51)), headers={**NPY, **key})
    assert r.status_code == 413 and "50" in r.json()["detail"]
    r = client.post("/v1/vocode", content=b"\0" * 30_001, headers={**NPY, **key})
    assert r.status_code == 413

    post = lambda: client.post("/v1/vocode", content=npy(mel()), headers={**NPY, **key})  # noqa: E731
    with full_queue(client.app.state.engine, monkeypatch, post) as results:
        r = post()
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and r.json()["detail"]
    assert [x.status_code for x in results] == [200, 200]
    assert post().status_code == 200


def test_a_cpu_engine_batches_only_when_told_to(make_client):
    """On a CPU the fast path runs a batch's items in turn, so batching by default would only delay first replies."""
    assert make_client().app.state.engine.batch_wait_ms == 0
    assert make_client(batch_wait_ms=7).app.state.engine.batch_wait_ms == 7


def run_held(client, monkeypatch, jobs: dict) -> dict:
    """Post each job (mel, params) from its own thread while the worker is held inside the first one, so the rest
    queue up together; the answers by name."""
    engine = client.app.state.engine
    entered, release = gate_vocoder(engine, monkeypatch)
    results: dict = {}

    def post(name):
        m, params = jobs[name]
        results[name] = vocode(client, m, **params)

    threads = {name: threading.Thread(target=post, args=(name,)) for name in jobs}
    first = next(iter(jobs))
    threads[first].start()
    assert entered.wait(30)
    for name in list(jobs)[1:]:
        threads[name].start()
    while engine.queue_depth < len(jobs) - 1:
        time.sleep(0.01)
    release.set()
    for t in threads.values():
        t.join(60)
    return results


def test_concurrent_unseeded_requests_micro_batch_and_seeded_ones_keep_their_bytes(make_client, monkeypatch):
    client = make_client(batch_wait_ms=50, max_batch=8)
    bddm = {"method": "bddm"}
    same = [mel(6, seed=i) for i in range(3)]
    solo = [vocode(client, m, seed=i, **bddm).content for i, m in enumerate(same)]
    results = run_held(client, monkeypatch, {
        "blocker": (mel(4), {"rho": "fast", **bddm}), **{f"seeded{i}": (m, {"seed": i, **bddm}) for i, m in enumerate(same)},
        "short": (mel(3), bddm), "same": (mel(6), bddm), "long": (mel(9), bddm)})
    for i in range(3):  # seeded: alone, so the bytes never depend on the load
        assert results[f"seeded{i}"].headers["x-batch-size"] == "1"
        assert results[f"seeded{i}"].content == solo[i]
    for name, frames in (("short", 3), ("same", 6), ("long", 9)):  # unseeded: padded together, trimmed back
        assert results[name].headers["x-batch-size"] == "3"
        assert audio_of(results[name]).shape == (frames * HOP,)


def test_projection_alone_batches_across_requests_with_each_items_own_bytes(make_client, monkeypatch):
    """On a CPU, with batching off (its default), projection alone's queued requests still run together, seeded or
    not, each at its own length on its own pool thread: each answer is the one it gets alone."""
    client = make_client()
    jobs = {"blocker": (mel(4), {"seed": 9}), **{f"seeded{i}": (mel(5 + 3 * i, seed=i), {"seed": i}) for i in range(3)}}
    solo = {name: vocode(client, m, **params).content for name, (m, params) in jobs.items()}
    results = run_held(client, monkeypatch, jobs)
    assert [results[f"seeded{i}"].headers["x-batch-size"] for i in range(3)] == ["3"] * 3
    for name, r in results.items():
        assert r.headers["x-method"] == "projection" and r.content == solo[name]
