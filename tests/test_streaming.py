"""Streaming: chunks that are exactly the whole request, the seeded noise replayed by slice, and the streaming route
(headers first, the same samples as /v1/vocode, errors before the first byte, backpressure, a client that leaves)."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from conftest import serving
from model.audio import HOP, N_MELS, load_audio, mel_spectrogram, pcm16
from model.checkpoint import CONFIG
from model.sampling import Noise
from model.streaming import RANDN_BLOCK, NoiseTape, StreamCancelled, chunk_plan, margin_frames
from model.vocoder import Vocoder
from server import Settings, create_app

NPY = {"Content-Type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def mel(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


def int16(audio: np.ndarray) -> np.ndarray:
    return np.frombuffer(pcm16(audio), np.int16)


@pytest.fixture(scope="module")
def voc(tiny_weights: Path) -> Vocoder:
    return Vocoder.load(tiny_weights, "cpu")


@pytest.fixture(scope="module")
def energy_voc(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Vocoder:
    """The same tiny net under the energy prior (`model.prior`)."""
    weights = Path(shutil.copytree(tiny_weights, tmp_path_factory.mktemp("energy") / "w"))
    config = json.loads((weights / CONFIG).read_text())
    config["score_net"].update(prior="energy", prior_energy=[0.0, 8.0])
    (weights / CONFIG).write_text(json.dumps(config))
    return Vocoder.load(weights, "cpu")


def test_chunk_plan_covers_the_mel_first_short_then_doubling_with_margins_inside_it():
    plan = chunk_plan(1000, margin=21, first=86, largest=688)
    assert [(c.start, c.end) for c in plan] == [(0, 86), (86, 258), (258, 602), (602, 1000)]
    assert [(c.lo, c.hi) for c in plan] == [(0, 107), (65, 279), (237, 623), (581, 1000)]
    assert [(c.start, c.end, c.lo, c.hi) for c in chunk_plan(5, 21)] == [(0, 5, 0, 5)]
    assert [c.end - c.start for c in chunk_plan(3000, 0, 10, 40)][:5] == [10, 20, 40, 40, 40]
    assert margin_frames(receptive_field=126, hop=256, steps=7) == 21  # small: 1 frame of reach + 2 per step


def test_randn_prefixes_in_blocks_of_16_are_the_start_of_a_longer_draw():
    """The torch behaviour the tape relies on (torch is pinned; this catches a change)."""
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    full = torch.randn(4096, generator=gen)
    for n in (RANDN_BLOCK, 160, 2048):
        gen.set_state(state)
        assert torch.equal(torch.randn(n, generator=gen), full[:n])


@pytest.mark.parametrize("seed", [0, 12345])
def test_the_tape_replays_the_samplers_draws_by_slice(seed):
    length, draws = 40 * HOP, 4
    noise = Noise(seed, 1)
    expected = [noise.draw(length, "cpu")[0] for _ in range(draws)]
    tape = NoiseTape(seed, length, draws)
    for lo, hi in ((0, length), (5, 77), (length - 33, length), (1000, 1001), (3 * HOP, 17 * HOP)):
        window = tape.window(lo, hi)
        for d in range(draws):
            assert torch.equal(window.draw(hi - lo, "cpu")[0], expected[d][lo:hi])


@pytest.mark.parametrize("frames, first, largest", [(5, 86, 688), (86, 86, 688), (50, 4, 8), (37, 3, 64)],
                         ids=["shorter-than-a-chunk", "one-chunk", "many-chunks", "uneven"])
@pytest.mark.parametrize("preset, refine", [("fast", 0), ("quality", 0), ("fast", 3), (None, 4)],
                         ids=["fast", "quality", "fast-refined", "projection-alone"])
def test_a_stream_is_the_whole_request_to_one_lsb_and_repeats_exactly(voc, frames, first, largest, preset, refine):
    m = torch.from_numpy(mel(frames))
    schedule = None if preset is None else voc.schedule(voc.presets[preset].rho)
    whole = voc.vocode(m, schedule, seed=7, refine=refine)
    streams = [voc.stream(m, schedule, seed=7, refine=refine, first=first, largest=largest) for _ in range(2)]
    parts = [np.concatenate([s.render(c) for c in s.plan]) for s in streams]
    assert parts[0].shape == whole.shape and np.array_equal(parts[0], parts[1])
    assert np.abs(parts[0] - whole).max() < 1e-5
    assert np.abs(int16(parts[0]).astype(int) - int16(whole)).max() <= 1


def test_a_stream_at_the_default_is_the_whole_request_to_one_lsb(voc, shared_data):
    """Projection alone at the default preset on 6 s of held-out speech, in the served chunk sizes: the coherent
    start block by block (`model.phase`), then the preset's projections on each chunk widened by their reach."""
    speech = load_audio(shared_data / "wavs" / "LJ003-0050.flac")[:6 * 22050]
    m = mel_spectrogram(speech[:len(speech) // HOP * HOP])
    iterations = voc.presets[voc.default_preset].projections
    whole = voc.vocode(m, None, seed=11, refine=iterations)
    stream = voc.stream(m, None, seed=11, refine=iterations)
    streamed = np.concatenate([stream.render(c) for c in stream.plan])
    assert len(stream.plan) >= 3 and streamed.shape == whole.shape
    assert np.abs(int16(streamed).astype(int) - int16(whole)).max() <= 1


def test_a_stream_under_the_energy_prior_is_the_whole_request(energy_voc):
    m, schedule = torch.from_numpy(mel(40)), energy_voc.schedule(energy_voc.presets["quality"].rho)
    stream = energy_voc.stream(m, schedule, seed=3, refine=2, first=5, largest=10)
    streamed = np.concatenate([stream.render(c) for c in stream.plan])
    whole = energy_voc.vocode(m, schedule, seed=3, refine=2)
    assert np.abs(int16(streamed).astype(int) - int16(whole)).max() <= 1


def test_a_cancelled_stream_runs_no_further_reverse_step(voc):
    calls = []
    hook = voc.score_net.step_embedding.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        stream = voc.stream(torch.from_numpy(mel(30)), voc.schedule(voc.presets["quality"].rho), seed=1, first=5)
        stream.render(stream.plan[0])
        done = len(calls)
        stream.cancel()
        with pytest.raises(StreamCancelled):
            stream.render(stream.plan[1])
        assert len(calls) == done > 0
    finally:
        hook.remove()


# --- the route ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_weights):
    with TestClient(create_app(Settings(weights=tiny_weights, device="cpu", batch_wait_ms=0))) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.05)
        yield c


def test_the_stream_route_answers_the_same_wav_as_vocode(client):
    body, params = npy(mel(300)), {"seed": 5, "rho": "quality", "refine": 3, "method": "bddm"}  # chunks: 86, 172, 42
    whole = client.post("/v1/vocode", content=body, headers=NPY, params=params)
    streamed = [client.post("/v1/vocode/stream", content=body, headers=NPY, params=params) for _ in range(2)]
    r = streamed[0]
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.headers["x-refine-iterations"] == "3"
    for h in ("x-diffusion-steps", "x-rho", "x-audio-seconds", "x-schedule-cache", "x-refine-iterations", "x-method"):
        assert r.headers[h] == whole.headers[h], h
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert r.headers["x-accel-buffering"] == "no"  # a proxy in front passes each chunk on at once
    assert r.content[:44] == whole.content[:44] and len(r.content) == len(whole.content) == 44 + 2 * 300 * HOP
    a, b = (np.frombuffer(x.content[44:], np.int16).astype(int) for x in (r, whole))
    assert np.abs(a - b).max() <= 1
    assert streamed[1].content == r.content  # seeded streams are bit-identical
    assert sf.read(io.BytesIO(r.content))[0].shape == (300 * HOP,)
    metrics = client.get("/metrics").text
    assert re.search(r'vocoder_time_to_first_audio_seconds_count\{preset="quality"\} [1-9]', metrics)


@pytest.mark.parametrize("params, body, status", [
    ({"format": "flac"}, npy(mel(8)), 400),
    ({"preset": "fast"}, npy(mel(8)), 400),
    ({"rho": "turbo"}, npy(mel(8)), 400),
    ({"seed": "-1"}, npy(mel(8)), 400),
    ({"refine": "-1"}, npy(mel(8)), 400),
    ({"refine": "100000"}, npy(mel(8)), 400),
    ({"method": "griffin-lim"}, npy(mel(8)), 400),
    ({}, npy(mel(8).astype(object)), 422),
    ({}, npy(np.full((N_MELS, 8), np.nan, np.float32)), 422),
    ({}, npy(mel(20_000)), 413),
], ids=["flac", "unknown-parameter", "bad-rho", "bad-seed", "negative-refine", "too-many-refinements", "bad-method",
        "object-array", "nan", "too-long"])
def test_bad_input_on_the_stream_route_is_a_json_error_before_any_audio(client, params, body, status):
    r = client.post("/v1/vocode/stream", content=body, headers=NPY, params=params)
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
    assert r.json()["error"] and r.json()["detail"]
    assert client.post("/v1/vocode/stream", content=npy(mel(4)), headers=NPY).status_code == 200


def test_a_full_queue_refuses_a_stream_with_429_before_the_first_byte(tiny_weights, monkeypatch):
    from test_server_api import full_queue  # noqa: PLC0415

    with TestClient(create_app(Settings(weights=tiny_weights, device="cpu", queue_size=1, max_batch=1))) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        post = lambda: client.post("/v1/vocode/stream", content=npy(mel(8)), headers=NPY,  # noqa: E731
                                   params={"method": "bddm"})
        with full_queue(client.app.state.engine, monkeypatch, post) as results:
            r = post()
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert [x.status_code for x in results] == [200, 200]


def metric(url: str, name: str) -> float:
    import httpx  # noqa: PLC0415

    text = httpx.get(f"{url}/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_a_client_that_leaves_mid_stream_costs_no_further_reverse_step(tiny_weights, monkeypatch):
    """Read the header and the first chunk, close the socket. The second chunk is held at its start until the server
    has seen the client go; then no score-net call of that request runs (counted, not timed), the rest of the
    stream is never computed, the gauges return to 0, and the next request is served at once."""
    import threading  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    app = create_app(Settings(weights=tiny_weights, device="cpu", batch_wait_ms=0))
    body = npy(mel(4000))  # ~46 s: 8 chunks
    with serving(app) as url:
        engine = app.state.engine
        calls, regions, proceed, real = [], [], threading.Event(), engine.vocoder.vocode
        engine.vocoder.score_net.step_embedding.register_forward_pre_hook(lambda *_: calls.append(1))

        def held(*args, **kwargs):
            regions.append(1)
            if len(regions) == 2:  # the stream's second chunk, before its first reverse step
                assert proceed.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(engine.vocoder, "vocode", held)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/vocode/stream?rho=quality&method=bddm HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy"
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            received = b""
            while len(received) < 16 * 1024:  # the headers, the WAV header and the first PCM
                received += sock.recv(65536)
            assert b"200 OK" in received.split(b"\r\n")[0]
        deadline = time.monotonic() + 30
        while metric(url, "vocoder_streams_cancelled_total") < 1:
            assert time.monotonic() < deadline, "the server never saw the client go"
            time.sleep(0.02)
        seen = len(calls)
        proceed.set()
        while metric(url, "vocoder_requests_in_flight") > 1:  # this /metrics request is the one left
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(f"{url}/v1/vocode", content=npy(mel(8)), headers=NPY, params={"rho": "fast", "method": "bddm"},
                       timeout=30)
        assert r.status_code == 200 and metric(url, "vocoder_queue_depth") == 0
        assert len(calls) == seen + int(r.headers["x-diffusion-steps"])  # only the next request's own steps
        assert len(regions) == 3  # the first chunk, the held one that stopped, the next request
