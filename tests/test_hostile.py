"""Hostile input (issue 34): every parse of client bytes is a 4xx, types are strict, and a mutated npy header, v2
header or JSON body never gets a 5xx (a hypothesis property test, bounded so the file runs in well under a minute)."""

from __future__ import annotations

import io
import json
import struct
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.audio import N_MELS
from model.mel import MelError, parse_mel_npy
from server.app import create_app
from server.settings import Settings

MAX_FRAMES = 64
NPY = {"Content-Type": "application/x-npy"}
JSON = {"Content-Type": "application/json"}
KEY = {"X-API-Key": "k3y"}
MUTATIONS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def with_header(data: bytes, header: str) -> bytes:
    """`data` (a v1.0 .npy) with its header dict replaced by `header`, as a v2.0 file (4-byte header length)."""
    start = 10 + struct.unpack("<H", data[8:10])[0]
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header.encode("latin1") + data[start:]


def mel(frames: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


def v2_doc(shape=(1, N_MELS, 2), data=None, **parameters) -> dict:
    values = mel(shape[-1]).reshape(-1).tolist() if data is None else data
    return {"inputs": [{"name": "mel", "shape": list(shape), "datatype": "FP32", "data": values}],
            "parameters": parameters}


@pytest.fixture(scope="module")
def client(tiny_weights):
    app = create_app(Settings(weights=tiny_weights, device="cpu", max_frames=MAX_FRAMES, api_key="k3y"))
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "app never became ready"
            time.sleep(0.05)
        c.headers.update(KEY)
        yield c


@pytest.fixture(scope="module")
def infer(client):
    return f"/v2/models/{client.get('/v2').json()['models'][0]}/infer"


def refused(r, status: int | None = None) -> None:
    assert 400 <= r.status_code < 500 and (status is None or r.status_code == status), (r.status_code, r.text[:300])
    assert r.json()


# --- the reproductions of the issue --------------------------------------------------------------

@pytest.mark.parametrize("length", [b"\xb2", b"1" * 5000, b"-1", b" 2", "\u0663".encode(), b"0x10", b""])
def test_v2_header_length_that_is_not_a_byte_count(client, infer, length):
    header = json.dumps(v2_doc()).encode()
    r = client.post(infer, content=header, headers={"Content-Type": "application/octet-stream",
                                                    "Inference-Header-Content-Length": length})
    refused(r, 400)
    assert "Inference-Header-Content-Length" in r.json()["error"]


@pytest.mark.parametrize("shape", ["(" + "9" * 5000 + ", 80)", "(" + "1, " * 64 + "240)", "(0, 4611686018427387904)",
                                   "(0, " + "9" * 30 + ")", "(80, 3, 0, 0, 0)"])
def test_npy_headers_that_int_or_reshape_would_throw_on(client, shape):
    """A dimension past int()'s 4,300 digits, more than numpy's 64 dimensions, an impossible empty array."""
    data = with_header(npy(mel(3)), f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}")
    if "0, " in shape[:4]:
        data = data[:-mel(3).nbytes]  # an empty array: the size check passes
    with pytest.raises(MelError):
        parse_mel_npy(data)
    for path in ("/v1/vocode", "/v1/vocode/stream"):
        refused(client.post(path, content=data, headers=NPY), 422)


LOOSE_V1 = {"seed-string": {"seed": "7"}, "refine-string": {"refine": "16"}, "seed-true": {"seed": True},
            "seed-float": {"seed": 7.0}, "refine-false": {"refine": False}, "rho-true": {"rho": True}}


@pytest.mark.parametrize("case", list(LOOSE_V1))
def test_v1_json_knobs_are_strictly_typed(client, case):
    r = client.post("/v1/vocode", content=json.dumps({"mel": mel(2).tolist(), **LOOSE_V1[case]}), headers=JSON)
    refused(r, 400)


@pytest.mark.parametrize("body", [
    '{"mel": [[true, 1.0]]}', '{"mel": [["1.0", 1.0]]}', '{"mel": [[null]]}', '{"mel": [[1, [2]]]}',
    '{"mel": [[1.0]], "mel": [[2.0]]}', '{"mel": [[1,,2]]}', '{"mel": [[1,2,]]}', '{"mel": [[01]]}',
    '{"mel": [[1e5000000000]]}', '{"mel": [[' + "1" * 5000 + "]]}", '{"mel": [[NaN]]}', '{"mel": [[Infinity]]}',
    '{"mel": [[1.0]]} x', '{"mel": [[1.0]]', '{"mel": [[.5]]}', '{"mel": [[+1]]}', '{"mel": [[1.]]}',
    '{"mel": [[1e]]}', '{"mel": [[-]]}', '{"mel": [[1 2]]}', '{"mel": [[1], [2]], "rho": [[0.1]]}'])
def test_v1_json_mel_values_are_numbers_once(client, body):
    refused(client.post("/v1/vocode", content=body, headers=JSON))


def test_v1_json_still_takes_what_it_took(client):
    m = mel(3)
    ok = client.post("/v1/vocode", content=json.dumps({"mel": m.tolist(), "seed": 3, "refine": 0, "rho": "fast"}),
                     headers=JSON)
    npy_ = client.post("/v1/vocode", content=npy(m), headers=NPY, params={"seed": 3, "refine": 0, "rho": "fast"})
    assert ok.status_code == npy_.status_code == 200 and ok.content == npy_.content
    pretty = json.dumps({"rho": 0.5, "mel": [[int(v) for v in row] for row in m]}, indent=4)  # ints are numbers
    assert client.post("/v1/vocode", content=pretty, headers=JSON).status_code == 200


LOOSE_V2 = {"shape-true": dict(shape=[True, N_MELS, 2]), "shape-float": dict(shape=[1.0, N_MELS, 2]),
            "binary-yes": dict(binary_data_output="yes"), "rate-string": dict(sample_rate="8000.0"),
            "seed-string": dict(seed="7"), "refine-true": dict(refine=True), "values-true": dict(data=[True] * 160),
            "values-strings": dict(data=["1.0"] * 160)}


@pytest.mark.parametrize("case", list(LOOSE_V2))
def test_v2_json_is_strictly_typed(client, infer, case):
    kwargs = dict(LOOSE_V2[case])
    doc = v2_doc(kwargs.pop("shape", (1, N_MELS, 2)), kwargs.pop("data", None), **kwargs)
    refused(client.post(infer, content=json.dumps(doc)), 400)


def test_v2_checks_the_key_before_the_query(client, infer):
    r = client.post(infer, params={"bogus": 1}, content=json.dumps(v2_doc()), headers={"X-API-Key": "wrong"})
    assert r.status_code == 401, r.text
    assert client.get("/v2/health/live", params={"bogus": 1}, headers={"X-API-Key": ""}).status_code == 400


# --- the property test: mutated npy headers, v2 headers and JSON bodies --------------------------

def mutate(data: bytes, draw) -> bytes:
    """A few byte-level edits: overwrite, insert, delete or duplicate a span."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "insert", "delete", "repeat"]))
        chunk = draw(st.binary(min_size=1, max_size=6) | st.sampled_from(
            [b"9" * 5000, b"\xb2", b", 1", b"True", b"-", b"e999", b"[", b"]", b'"', b"{", b"}", b"null", b"\x00"]))
        if kind == "set":
            data[at:at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            data[at:at] = data[max(0, at - 8):at] * draw(st.integers(1, 50))
    return bytes(data)


@MUTATIONS
@given(st.data())
def test_mutated_npy_headers_json_bodies_and_v2_headers_never_get_a_5xx(client, infer, data):
    target = data.draw(st.sampled_from(["npy", "v1-json", "v2-json", "v2-binary", "v2-length"]))
    frames = data.draw(st.integers(1, 4))
    m = mel(frames)
    headers = {}
    if target == "npy":
        body, path, headers = npy(m), "/v1/vocode", NPY
        split = 10 + struct.unpack("<H", body[8:10])[0]
        body = mutate(body[:split], data.draw) + body[split:]
    elif target == "v1-json":
        doc = {"mel": m.tolist(), "seed": 1, "refine": 0}
        body, path, headers = mutate(json.dumps(doc).encode(), data.draw), "/v1/vocode", JSON
    elif target == "v2-json":
        body, path = mutate(json.dumps(v2_doc((1, N_MELS, frames), seed=1, refine=0)).encode(), data.draw), infer
    else:
        header = json.dumps({"inputs": [{"name": "mel", "shape": [1, N_MELS, frames], "datatype": "FP32",
                                         "parameters": {"binary_data_size": m.nbytes}}],
                             "parameters": {"refine": 0}}).encode()
        length = str(len(header)).encode()
        if target == "v2-binary":
            header = mutate(header, data.draw)
            length = str(len(header)).encode()
        else:
            length = mutate(length, data.draw)
        body, path = header + m.tobytes(), infer
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length}
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (target, r.status_code, r.text[:300])
    if r.status_code != 200:
        assert r.json()
