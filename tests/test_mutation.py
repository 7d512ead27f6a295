"""Mutation fuzzing: valid bodies with bytes flipped, set, inserted and deleted (headers included), sent to a
real server over ONE keep-alive connection, and to the CLIs.

Every answer must be a 2xx or a 4xx with a JSON message, never a 5xx, and the connection must survive every
bad request (a server that drops it breaks the client's next request). The CLIs must exit 0 or 2 with one
line on stderr. 2,300 HTTP cases in all, derandomized so CI is stable.
"""

from __future__ import annotations

import http.client
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.common import mutate, npy_bytes
from conftest import serving
from model import mel as mel_cli
from model import synth
from model.audio import N_MELS, SAMPLE_RATE, encode_audio
from server.app import create_app
from server.settings import Settings

MAX_FRAMES = 64
MEL = np.random.default_rng(0).normal(-5, 2, (N_MELS, 4)).astype(np.float32)
NPY = npy_bytes(MEL)
JSON = json.dumps({"mel": MEL[:, :2].round(2).tolist(), "rho": "fast", "seed": 1}).encode()
WAV = encode_audio((0.3 * np.sin(np.arange(1200) / 7)).astype(np.float32), SAMPLE_RATE, "wav")


edits = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]), st.integers(0, 2**20),
                           st.integers(0, 255), st.booleans()), min_size=1, max_size=8)


def fuzz(cases: int):
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class KeepAlive:
    """One HTTP/1.1 connection for a whole test; `post` fails if the server closed it or sent a 5xx."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.connect()
        self.sock = self.conn.sock
        self.sent = 0

    def post(self, path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        r = self.conn.getresponse()
        data = r.read()
        self.sent += 1
        assert r.status < 500, (r.status, data[:300])
        if r.status >= 400:
            message = json.loads(data)
            assert message["error"] and message["detail"], message
        assert self.conn.sock is self.sock, f"the server closed the connection after a {r.status}"
        return r.status, data

    def still_serving(self, every: int = 50) -> None:
        if self.sent % every == 0:
            status, data = self.post("/v1/vocode?seed=1", NPY, "application/x-npy")
            assert status == 200 and data[:4] == b"RIFF"


@pytest.fixture(scope="module")
def port(tiny_weights: Path):
    """A real uvicorn server (the protocol layer is what drops connections) on tiny weights."""
    app = create_app(Settings(weights=tiny_weights, device="cpu", max_frames=MAX_FRAMES, batch_wait_ms=0))
    with serving(app) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def conn(port: int) -> KeepAlive:
    return KeepAlive(port)


def test_the_corrupt_header_repro_is_a_422_on_a_kept_connection(conn: KeepAlive):
    b = io.BytesIO()
    np.save(b, np.zeros((80, 20), np.float32))
    b = bytearray(b.getvalue())
    b[10] = 0x92  # the '{' that opens the header dict
    status, data = conn.post("/v1/vocode", bytes(b), "application/x-npy")
    assert status == 422 and "header" in json.loads(data)["detail"]
    conn.still_serving(every=1)


@fuzz(1000)
@given(ops=edits)
def test_mutated_npy(conn: KeepAlive, ops):
    conn.post("/v1/vocode", mutate(NPY, ops), "application/x-npy")
    conn.still_serving()


@fuzz(500)
@given(ops=edits)
def test_mutated_json(conn: KeepAlive, ops):
    conn.post("/v1/vocode", mutate(JSON, ops, head=len(JSON)), "application/json")
    conn.still_serving()


@fuzz(300)
@given(ops=edits)
def test_mutated_npy_streamed(conn: KeepAlive, ops):
    """The streaming route: a chunked WAV whose header matches its PCM, or a JSON 4xx before any audio."""
    status, data = conn.post("/v1/vocode/stream", mutate(NPY, ops), "application/x-npy")
    if status == 200:
        assert data[:4] == b"RIFF" and int.from_bytes(data[40:44], "little") == len(data) - 44
    conn.still_serving()


@fuzz(500)
@given(ops=edits)
def test_mutated_wav(conn: KeepAlive, ops):
    status, data = conn.post("/v1/mel", mutate(WAV, ops, head=44), "audio/wav")
    if status == 200:
        assert np.load(io.BytesIO(data), allow_pickle=False).shape[0] == N_MELS
    conn.still_serving()


def test_a_route_that_crashes_answers_json_500_and_keeps_the_connection(tiny_weights: Path):
    """The last-resort handler: an unexpected exception is a JSON 500 with the request id, counted, and the
    connection stays usable."""
    app = create_app(Settings(weights=tiny_weights, device="cpu"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with serving(app, ready=False) as url:
        c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        c.request("GET", "/boom", headers={"X-Request-Id": "req-42"})
        r = c.getresponse()
        body = json.loads(r.read())
        assert r.status == 500 and body["error"] == "internal error" and "req-42" in body["detail"]
        sock = c.sock
        c.request("GET", "/healthz")
        r = c.getresponse()
        assert r.status == 200 and r.read() and c.sock is sock
        c.request("GET", "/metrics")
        assert 'vocoder_unhandled_exceptions_total{route="/boom"} 1.0' in c.getresponse().read().decode()


# --- the CLIs share the decoder: exit 0 or 2, one line on stderr -------------------------------------

def one_line_or_success(code: int, capsys: pytest.CaptureFixture) -> None:
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err


@fuzz(150)
@given(ops=edits)
def test_synth_cli_mutated_npy(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture, ops):
    src = tmp_path / "mel.npy"
    src.write_bytes(mutate(NPY, ops))
    code = synth.main([str(src), "-o", str(tmp_path / "out.wav"), "--weights", str(tiny_weights), "--device", "cpu",
                       "--seed", "0"])
    one_line_or_success(code, capsys)


@fuzz(150)
@given(ops=edits)
def test_mel_cli_mutated_wav(tmp_path: Path, capsys: pytest.CaptureFixture, ops):
    src = tmp_path / "in.wav"
    src.write_bytes(mutate(WAV, ops, head=44))
    one_line_or_success(mel_cli.main([str(src), "-o", str(tmp_path / "out.npy")]), capsys)


def test_synth_cli_repro(tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    data = bytearray(npy_bytes(np.zeros((80, 20), np.float32)))
    data[10] = 0x92
    (tmp_path / "bad.npy").write_bytes(bytes(data))
    code = synth.main([str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o.wav"), "--weights", str(tiny_weights)])
    assert code == 2
    one_line_or_success(code, capsys)
