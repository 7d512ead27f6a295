"""Faults and limits: failing inference, vanishing clients, SIGTERM, bad weights, secrets and logs.

In-process tests drive the app through TestClient (its lifespan runs the real engine on tiny weights);
the process-level ones start `python -m server` on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from bench.common import free_port, wait_ready
from model.audio import HOP, LOG_FLOOR, N_MELS
from model.checkpoint import SCORE_NET
from server import __main__ as server_main
from server import deps as server_deps
from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NPY = {"Content-Type": "application/x-npy"}


def npy(mel: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, mel, allow_pickle=False)
    return buf.getvalue()


def mel(frames: int = 2, value: float | None = None) -> np.ndarray:
    if value is not None:
        return np.full((N_MELS, frames), value, np.float32)
    return np.random.default_rng(frames).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


def vocode(client, frames: int = 2, **params):
    return client.post("/v1/vocode", content=npy(mel(frames)), headers=NPY, params=params)


def assert_ok(r, frames: int = 2) -> None:
    assert r.status_code == 200, r.text
    audio, _ = sf.read(io.BytesIO(r.content))
    assert audio.shape == (frames * HOP,)


@pytest.fixture
def make_client(tiny_weights):
    """TestClient factory over a fresh app with overridden settings; lifespans are closed at teardown."""
    stack = []

    def make(**overrides) -> TestClient:
        settings = Settings(weights=tiny_weights, device="cpu", **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        stack.append(client.__enter__())
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "app never became ready"
            time.sleep(0.05)
        return client

    yield make
    for client in reversed(stack):
        client.__exit__(None, None, None)


def engine(client):
    return client.app.state.engine


class Gate:
    """Replaces the vocoder's vocode so a test decides when inference may proceed (the worker blocks)."""

    def __init__(self, vocoder) -> None:
        self.real, self.entered, self.release = vocoder.vocode, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(30), "gate never released"
        return self.real(*args, **kwargs)


# --- inference failures -------------------------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("injected failure"),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")])
def test_inference_failure_is_503_once(make_client, monkeypatch, error):
    client = make_client()
    voc = engine(client).vocoder
    real, calls = voc.vocode, []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(voc, "vocode", fail_once)
    r = vocode(client, seed=3, method="bddm")
    assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.headers)
    assert r.json()["detail"]
    assert_ok(vocode(client, seed=3, method="bddm"))
    assert client.get("/readyz").status_code == 200
    assert engine(client).queue_depth == 0


def out_of_memory_total(client) -> float:
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith("vocoder_out_of_memory_total"))
    return float(line.split()[-1])


@pytest.mark.parametrize("case", ["halves-fit", "one-item-never-fits"])
def test_out_of_memory_on_a_batch_of_4_retries_its_halves(make_client, monkeypatch, case):
    """A batch of 4 that runs out of memory is run as two halves (split again as they must); every item answers 200
    or, if it does not fit alone, 503 with Retry-After; each out-of-memory event is counted."""
    client = make_client(batch_wait_ms=5000, max_batch=4)  # the 4 requests below make one batch
    voc = engine(client).vocoder
    real, batches = voc.vocode, []
    lengths = (2, 3, 4, 5)  # item i has `lengths[i]` frames: the 5-frame one is too big in the second case

    def vocode_or_oom(mel, *args, **kwargs):
        frames = sorted(int((m != np.float32(math.log(LOG_FLOOR))).any(axis=0).sum()) for m in mel)  # unpadded
        batches.append(frames)
        if (len(mel) > 2) if case == "halves-fit" else (5 in frames):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(mel)} GiB")
        return real(mel, *args, **kwargs)

    monkeypatch.setattr(voc, "vocode", vocode_or_oom)
    before = out_of_memory_total(client)
    answers: dict[int, httpx.Response] = {}
    threads = [threading.Thread(target=lambda f=f: answers.update({f: vocode(client, f, method="bddm")}))
               for f in lengths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(batches[0]) == 4, batches  # one batch of 4, then its halves
    for frames, r in answers.items():
        if case == "halves-fit" or frames != 5:
            assert_ok(r, frames)
        else:
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (r.status_code, r.headers)
            assert "OutOfMemoryError" in r.json()["detail"]
    assert len(answers) == 4
    sizes = [len(b) for b in batches]
    if case == "halves-fit":
        assert sizes == [4, 2, 2] and out_of_memory_total(client) == before + 1
    else:  # 4 -> 2 + 2; the half with the 5-frame item fails -> 1 + 1, and it fails alone: three events
        assert sorted(sizes) == [1, 1, 2, 2, 4] and [5] in batches and out_of_memory_total(client) == before + 3
    assert_ok(vocode(client, 3), 3)  # and the server goes on


# --- clients that go away -----------------------------------------------------------------------

async def post_then_disconnect(app, body: bytes, queued) -> list[dict]:
    """Raw ASGI POST /v1/vocode whose client disconnects once `queued()` says its job is waiting."""
    gone, sent = asyncio.Event(), []
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/vocode", "raw_path": b"/v1/vocode", "query_string": b"seed=1", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/x-npy"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    task = asyncio.ensure_future(app(scope, receive, send))
    for _ in range(1000):
        if queued():
            break
        await asyncio.sleep(0.01)
    assert queued(), "the job never reached the queue"
    gone.set()
    await asyncio.wait_for(task, 30)
    return sent


def test_disconnected_client_frees_its_slot(make_client, monkeypatch):
    client = make_client(queue_size=2, max_batch=1)
    eng = engine(client)
    gate = Gate(eng.vocoder)
    monkeypatch.setattr(eng.vocoder, "vocode", gate)
    busy = threading.Thread(target=lambda: assert_ok(vocode(client, 2, seed=0, method="bddm")))
    busy.start()  # occupies the worker, so the next job waits in the queue
    assert gate.entered.wait(30)
    sent = client.portal.call(post_then_disconnect, client.app, npy(mel(3)), lambda: eng.queue_depth == 1)
    assert eng.queue_depth == 0, "a disconnected client's job still holds a queue slot"
    assert not any(m.get("status") == 200 for m in sent)
    gate.release.set()
    busy.join(30)
    assert_ok(vocode(client, 2, seed=0))
    metrics = client.get("/metrics").text
    assert "vocoder_queue_depth 0.0" in metrics


# --- limits (body, frames and queue-full are in test_server_api.py) ------------------------------

def test_schedule_cache_stays_bounded(make_client):
    client = make_client(schedule_cache_size=3)
    eng = engine(client)
    rhos = [round(0.11 + 0.037 * i, 3) for i in range(20)]
    for rho in rhos:
        r = client.get("/v1/schedules", params={"rho": rho})
        assert r.status_code == 200, r.text
    assert len(eng.cache.lru) <= 3
    listed = client.get("/v1/schedules").json()
    assert listed["capacity"] == 3 and len(listed["schedules"]) <= 3 + len(eng.cache.pinned)
    assert not eng.cache.pending


# --- secrets and logs ---------------------------------------------------------------------------

def test_api_key_compared_in_constant_time(make_client, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_deps.hmac, "compare_digest", spy)
    client = make_client(api_key="s3cret-key")
    assert vocode(client).status_code == 401
    assert client.post("/v1/vocode", content=npy(mel()), headers={**NPY, "X-API-Key": "s3cret-kez"}).status_code == 401
    r = client.post("/v1/vocode", content=npy(mel()), headers={**NPY, "Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["detail"]
    assert_ok(client.post("/v1/vocode", content=npy(mel()), headers={**NPY, "Authorization": "Bearer s3cret-key"}))
    assert_ok(client.post("/v1/vocode", content=npy(mel()), headers={**NPY, "X-API-Key": "s3cret-key"}))
    assert len(calls) == 5 and all(b"s3cret-key" in pair for pair in calls)
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_logs_carry_request_id_never_payload(make_client, caplog):
    client = make_client()
    pattern = 1.2345678
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"mel": mel(3, pattern).tolist(), "seed": 7})
    r = client.post("/v1/vocode", content=body, headers={"Content-Type": "application/json",
                                                         "X-Request-ID": "soak-req-4242"})
    assert_ok(r, 3)
    assert r.headers["x-request-id"] == "soak-req-4242"
    r = client.post("/v1/vocode", content=npy(mel(3, pattern)), headers={**NPY, "X-Request-ID": "soak-req-4243"})
    assert_ok(r, 3)
    bad = client.post("/v1/vocode", content=json.dumps({"mel": [[pattern] * 3] * 79}),
                      headers={"Content-Type": "application/json", "X-Request-ID": "soak-req-4244"})
    assert bad.status_code == 422
    text = caplog.text + "".join(str(rec.__dict__) for rec in caplog.records)
    for rid in ("soak-req-4242", "soak-req-4243", "soak-req-4244"):
        assert rid in text
    assert "1.234" not in text and "2345678" not in text
    assert npy(mel(3, pattern))[128:160].hex() not in text


# --- the real process ---------------------------------------------------------------------------

def start_server(weights: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VOCODER_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--weights", str(weights), "--device", "cpu"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_drains_in_flight_request(tiny_weights):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tiny_weights, port)
    try:
        wait_ready(proc, url, timeout=120)
        deadline = time.monotonic() + 60
        frames = 200  # long enough to still be running when SIGTERM lands
        result = {}

        def request():
            result["r"] = httpx.post(url + "/v1/vocode", content=npy(mel(frames)), headers=NPY,
                                     params={"seed": 0, "method": "bddm"}, timeout=120)  # projection ends first

        t = threading.Thread(target=request)
        t.start()
        while "vocoder_queue_wait_seconds_count 1.0" not in httpx.get(url + "/metrics", timeout=5).text:
            assert time.monotonic() < deadline and t.is_alive(), "request never reached inference"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert_ok(result["r"], frames)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        # the request was answered after shutdown began: drained, not raced
        assert out.index("Shutting down") < out.index('"route": "/v1/vocode"'), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def broken_weights(tiny_weights: Path, tmp_path: Path, how: str) -> Path:
    d = tmp_path / "weights"
    shutil.copytree(tiny_weights, d)
    if how == "truncated":
        data = (d / SCORE_NET).read_bytes()
        (d / SCORE_NET).write_bytes(data[: len(data) // 2])
    elif how == "mismatched config":
        config = json.loads((d / "config.json").read_text())
        config["score_net"]["residual_channels"] *= 2
        (d / "config.json").write_text(json.dumps(config))
    elif how == "missing":
        shutil.rmtree(d)
    return d


@pytest.mark.parametrize("how", ["missing", "truncated", "mismatched config"])
def test_refuses_to_start_on_bad_weights(tiny_weights, tmp_path, capsys, how):
    """`python -m server`'s main: exit code 2 and one line on stderr, before any socket is opened."""
    weights = broken_weights(tiny_weights, tmp_path, how)
    assert server_main.main(["--port", str(free_port()), "--weights", str(weights), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and not out, err
    assert str(weights) in lines[0], lines[0]


def test_refusal_as_a_process(tiny_weights, tmp_path):
    """The same refusal end to end: non-zero exit status, one line, no traceback."""
    proc = start_server(broken_weights(tiny_weights, tmp_path, "truncated"), free_port())
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out, out
