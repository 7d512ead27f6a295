"""Property tests on untrusted input: the mel parser, /v1/vocode and /v1/mel, and the OpenAPI schema.

Every malformed input must be refused with a 4xx and a JSON message (never a 5xx, never unpickled,
never a big allocation from a small body), and the server must keep serving valid requests after it.
Bounded and derandomized so CI is stable and the file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import time

import numpy as np
import pytest
import schemathesis
import soundfile as sf
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from model.audio import N_MELS, SAMPLE_RATE, encode_audio
from model.mel import MelError, parse_mel_npy
from server.app import create_app
from server.settings import Settings

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_BODY = 64 * 1024
MAX_FRAMES = 64
NPY = {"Content-Type": "application/x-npy"}


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def with_header(data: bytes, header: str) -> bytes:
    """`data` (a v1.0 .npy) with its header dict replaced by `header`, padded as numpy pads it."""
    start = 10 + struct.unpack("<H", data[8:10])[0]
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return data[:8] + struct.pack("<H", len(header)) + header.encode("latin1") + data[start:]


def mel(frames: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


# --- the parser alone ---------------------------------------------------------------------------

any_dtype = st.sampled_from(["<f2", "<f4", "<f8", ">f4", "<i4", "|u1", "|b1", "<c8", "<U3", "<M8[s]",
                             np.dtype([("a", "<f4"), ("b", "<i2")])])
#: Mostly near misses of (80, F) and (1, 80, F), plus any small shape.
any_shape = (hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3)
             | st.tuples(st.sampled_from([79, 80, 81]), st.integers(0, 5))
             | st.tuples(st.integers(0, 2), st.sampled_from([80, 3]), st.integers(0, 4)))


@FUZZ
@given(st.binary(max_size=4096) | st.binary(max_size=4096).map(lambda b: b"\x93NUMPY" + b))
def test_parser_random_bytes(data):
    try:
        out = parse_mel_npy(data)
    except MelError:
        return
    assert out.dtype == np.float32 and out.shape[0] == N_MELS and np.isfinite(out).all()


@FUZZ
@given(hnp.arrays(any_dtype, any_shape))
def test_parser_arrays_of_any_dtype_and_shape(array):
    """Only a finite float (80, F>0) or (1, 80, F>0) is accepted, and then exactly as sent."""
    data = npy(array)
    square = array.reshape(array.shape[1:]) if array.ndim == 3 and array.shape[0] == 1 else array
    valid = (array.dtype.kind == "f" and square.ndim == 2 and square.shape[0] == N_MELS and square.shape[1] > 0
             and np.isfinite(square.astype(np.float32)).all())
    if valid:
        np.testing.assert_array_equal(parse_mel_npy(data), square.astype(np.float32))
    else:
        with pytest.raises(MelError):
            parse_mel_npy(data)


@FUZZ
@given(st.integers(0, 3), st.data())
def test_parser_truncated(frames_seed, data):
    full = npy(mel(5, frames_seed))
    cut = data.draw(st.integers(0, len(full) - 1))
    with pytest.raises(MelError):
        parse_mel_npy(full[:cut])


@FUZZ
@given(st.lists(st.integers(-2, 2**70), min_size=0, max_size=4), st.sampled_from(["<f4", "<f8", "|O", "<V8"]),
       st.booleans())
def test_parser_lying_headers(shape, descr, fortran):
    """A header declaring any shape/dtype over a small body: refused without allocating the declared size."""
    body = npy(mel(4))
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}"
    data = with_header(body, header)
    try:
        out = parse_mel_npy(data)
    except MelError:
        return
    assert out.shape == (N_MELS, 4)  # only the header that tells the truth may pass


def test_parser_refuses_pickles():
    obj = np.empty((N_MELS, 2), dtype=object)
    obj[:] = 1.0
    for data in (npy(obj, allow_pickle=True), pickle.dumps(mel()), pickle.dumps(obj),
                 npy(np.zeros((N_MELS, 2), dtype=[("x", "O")]), allow_pickle=True)):
        with pytest.raises(MelError):
            parse_mel_npy(data)


@FUZZ
@given(st.sampled_from([np.nan, np.inf, -np.inf, 1e39]), st.integers(0, N_MELS * 3 - 1),
       st.sampled_from(["<f2", "<f4", "<f8"]))
def test_parser_non_finite(value, index, dtype):
    array = mel(3).astype(dtype if value != 1e39 else "<f8")
    array.flat[index] = value
    with pytest.raises(MelError):
        parse_mel_npy(npy(array))


# --- the HTTP API -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tiny_weights):
    return create_app(Settings(weights=tiny_weights, device="cpu", max_body_bytes=MAX_BODY, max_frames=MAX_FRAMES))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "app never became ready"
            time.sleep(0.05)
        yield c


served = [0]


def assert_refused(r) -> None:
    """A 4xx whose body is JSON with a human-readable message."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict) and any(isinstance(v, str) and v for v in body.values()), body


def assert_still_serving(client, every: int = 1) -> None:
    """A valid request succeeds; with `every` > 1 only on every n-th call (inference is the slow part)."""
    served[0] += 1
    if served[0] % every:
        return
    r = client.post("/v1/vocode", content=npy(mel(2)), headers=NPY, params={"seed": 1})
    assert r.status_code == 200, r.text[:300]
    audio, sr = sf.read(io.BytesIO(r.content))
    assert sr == SAMPLE_RATE and audio.shape == (2 * 256,)


@FUZZ
@given(body=st.binary(max_size=2048) | st.binary(max_size=2048).map(lambda b: b"\x93NUMPY\x01\x00" + b),
       ctype=st.sampled_from(["application/x-npy", "application/octet-stream"]))
def test_vocode_random_npy_bodies(client, body, ctype):
    r = client.post("/v1/vocode", content=body, headers={"Content-Type": ctype})
    assert_refused(r)
    assert_still_serving(client, every=8)


@FUZZ
@given(shape=st.lists(st.integers(0, 2**62), min_size=0, max_size=3), descr=st.sampled_from(["<f4", "|O", "<f8"]))
def test_vocode_huge_declared_shapes(client, shape, descr):
    data = with_header(npy(mel(4)), f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}")
    r = client.post("/v1/vocode", content=data, headers=NPY)
    if tuple(shape) == (N_MELS, 4) and descr == "<f4":
        assert r.status_code == 200
    else:
        assert_refused(r)
    assert_still_serving(client, every=8)


@FUZZ
@given(array=hnp.arrays(any_dtype, any_shape))
def test_vocode_any_dtype_and_shape(client, array):
    r = client.post("/v1/vocode", content=npy(array), headers=NPY)
    if r.status_code != 200:  # a valid mel among them is served
        assert_refused(r)
    assert_still_serving(client, every=8)


def test_vocode_pickles_and_non_finite(client):
    obj = np.full((N_MELS, 2), 1.0, dtype=object)
    nan, inf = mel(3), mel(3)
    nan[5, 1], inf[0, 0] = np.nan, -np.inf
    for body in (npy(obj, allow_pickle=True), pickle.dumps(mel()), npy(nan), npy(inf), npy(mel(0)),
                 npy(mel(3)[None, None]), npy(mel(3)[:40])):
        r = client.post("/v1/vocode", content=body, headers=NPY)
        assert r.status_code == 422, (r.status_code, r.text)
        assert_refused(r)
    assert_still_serving(client)


def test_vocode_oversized(client):
    assert client.post("/v1/vocode", content=npy(mel(MAX_FRAMES + 1)), headers=NPY).status_code == 413
    big = npy(np.zeros((N_MELS, MAX_BODY // (4 * N_MELS) + 10), np.float32))
    r = client.post("/v1/vocode", content=big, headers=NPY)
    assert r.status_code == 413 and r.json()
    # a chunked body without Content-Length is cut off at the limit too
    r = client.post("/v1/vocode", content=iter([big[:1000], big[1000:]]), headers=NPY)
    assert r.status_code == 413
    assert_still_serving(client)


json_leaf = st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c,
                                                                                          max_size=4), max_leaves=30)


@FUZZ
@given(doc=st.fixed_dictionaries({"mel": json_value}, optional={"rho": json_value, "seed": json_value}) | json_value)
def test_vocode_random_json(client, doc):
    r = client.post("/v1/vocode", content=json.dumps(doc), headers={"Content-Type": "application/json"})
    assert_refused(r)
    assert_still_serving(client, every=8)


def test_vocode_pathological_json(client):
    deep = "[" * 30_000 + "]" * 30_000  # under the body limit
    wide = json.dumps({"mel": [[0.0] * 100_000] * 2})[: MAX_BODY - 10]
    for body in (deep, '{"mel": ' + deep + "}", wide, '{"mel": [[1e999]]}', '{"mel": [[NaN]]}', '{"mel": "x"}',
                 '{"mel": [[1, 2], [3]]}', '{"mel": []}', "{" * 50, '{"mel": [[0.5]], "rho": "turbo"}',
                 '{"mel": [[0.5]], "seed": -1}', "\xff\xfe"):
        r = client.post("/v1/vocode", content=body.encode("utf-8", "surrogatepass"),
                        headers={"Content-Type": "application/json"})
        assert_refused(r)
    assert_still_serving(client)


@FUZZ
@given(ctype=st.sampled_from(["text/plain", "image/png", "multipart/form-data; boundary=x", "", "application/xml",
                              "application/x-www-form-urlencoded", "audio/wav", "application/x-npy-not"]))
def test_vocode_wrong_content_type(client, ctype):
    r = client.post("/v1/vocode", content=npy(mel(2)), headers={"Content-Type": ctype} if ctype else {})
    assert r.status_code == 415, (ctype, r.status_code)
    assert_refused(r)


@FUZZ
@given(rho=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
       seed=st.one_of(st.none(), st.text(max_size=6), st.integers(-2**70, 2**70)),
       fmt=st.one_of(st.none(), st.text(max_size=5)))
def test_vocode_random_query(client, rho, seed, fmt):
    params = {"rho": str(rho), **({"seed": str(seed)} if seed is not None else {}),
              **({"format": fmt} if fmt is not None else {})}
    r = client.post("/v1/vocode", content=npy(mel(2)), headers=NPY, params=params)
    if r.status_code != 200:
        assert_refused(r)
    assert_still_serving(client, every=8)


def wav_bytes(seconds: float = 0.3) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return encode_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SAMPLE_RATE, "wav")


def test_mel_endpoint_lying_audio(client):
    wav = wav_bytes()
    flac = encode_audio(np.zeros(SAMPLE_RATE // 3, np.float32), SAMPLE_RATE, "flac")
    liar = bytearray(wav)  # the RIFF and data chunk sizes claim 100x more than is there
    liar[4:8] = struct.pack("<I", 100 * len(wav))
    liar[40:44] = struct.pack("<I", 100 * (len(wav) - 44))
    for body, ctype in ((wav[:30], "audio/wav"), (bytes(liar[:-1]), "audio/wav"), (flac[:len(flac) // 2], "audio/flac"),
                        (flac[:50], "audio/flac"), (b"RIFF" + b"\0" * 40, "audio/wav"), (b"", "audio/wav"),
                        (npy(mel()), "audio/wav")):
        r = client.post("/v1/mel", content=body, headers={"Content-Type": ctype})
        if r.status_code == 200:  # libsndfile may recover the frames that are there; then the mel must match them
            m = np.load(io.BytesIO(r.content), allow_pickle=False)
            assert m.dtype == np.float32 and m.shape[0] == N_MELS and np.isfinite(m).all()
        else:
            assert_refused(r)
    assert client.post("/v1/mel", content=wav, headers={"Content-Type": "text/plain"}).status_code == 415
    r = client.post("/v1/mel", content=wav, headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200 and np.load(io.BytesIO(r.content)).shape == (N_MELS, len(sf.read(io.BytesIO(wav))[0])
                                                                             // 256)
    assert_still_serving(client)


@pytest.mark.parametrize("rate", [1, 8, 100])
def test_mel_endpoint_refuses_low_rate_audio_before_resampling(client, rate):
    """A small WAV at a tiny sample rate would resample to hours of audio: 413 from its header, at once."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros(30_000, np.float32), rate, format="WAV", subtype="PCM_16")
    start = time.monotonic()
    r = client.post("/v1/mel", content=buf.getvalue(), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 413 and r.json()["detail"]
    assert time.monotonic() - start < 10  # 160 s of resampling before the header check existed


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([b"", b"RIFF", b"fLaC", b"RIFF\xff\xff\xff\x7fWAVEfmt "]))
def test_mel_endpoint_random_bytes(client, body, prefix):
    r = client.post("/v1/mel", content=prefix + body, headers={"Content-Type": "audio/wav"})
    if r.status_code != 200:
        assert_refused(r)


# --- the OpenAPI schema, generatively ------------------------------------------------------------

@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_no_server_errors(client, mode):
    """schemathesis cases for every operation of the app's own schema, sent through the running app."""
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())

    @settings(max_examples=50, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(mode))
    def check(case):
        kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
        kwargs.pop("cookies", None)  # the API uses none; per-request cookies are deprecated in the test client
        response = client.request(**kwargs)
        case.validate_response(response, checks=[not_a_server_error], transport_kwargs=kwargs)

    check()
    assert_still_serving(client)


# --- mel_format: names, contract objects, and the odd contracts they make ---------------------------

CONTRACT_FIELDS = ["sample_rate", "hop", "n_fft", "n_mels", "fmin", "fmax", "win", "window", "center", "pad_mode",
                   "preemphasis", "mel_scale", "mel_norm", "power", "compression", "floor", "ref_db", "normalize",
                   "mean", "std", "min_db", "max_abs", "clip", "stats", "bogus"]


@FUZZ
@given(mel_format=json_value | st.dictionaries(st.sampled_from(CONTRACT_FIELDS), json_value, max_size=6))
def test_vocode_random_mel_format_in_the_body(client, mel_format):
    doc = {"mel": mel(2).tolist(), "mel_format": mel_format}
    r = client.post("/v1/vocode", content=json.dumps(doc), headers={"Content-Type": "application/json"},
                    params={"method": "projection", "refine": 1})
    if r.status_code != 200:
        assert_refused(r)
    assert_still_serving(client, every=8)


@FUZZ
@given(name=st.text(max_size=70))
def test_vocode_and_mel_random_mel_format_names(client, name):
    r = client.post("/v1/vocode", content=npy(mel(2)), headers=NPY, params={"mel_format": name, "refine": 1})
    if r.status_code != 200:
        assert_refused(r)
    r = client.post("/v1/mel", content=wav_bytes(0.1), headers={"Content-Type": "audio/wav"}, params={"mel_format": name})
    if r.status_code != 200:
        assert_refused(r)
    assert_still_serving(client, every=8)


contracts = st.fixed_dictionaries({}, optional={
    "sample_rate": st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000, 7999, 48001]),
    "hop": st.integers(-1, 1200), "n_fft": st.sampled_from([16, 64, 256, 512, 1024, 2048, 8192, 8193]),
    "win": st.none() | st.integers(0, 2048), "n_mels": st.integers(0, 260), "fmin": st.floats(-10, 9000),
    "fmax": st.floats(0, 25000), "center": st.booleans(), "pad_mode": st.sampled_from(["reflect", "constant"]),
    "preemphasis": st.floats(-0.5, 1.0), "power": st.sampled_from([1, 2, 1.5]),
    "compression": st.sampled_from(["ln", "log10", "db"]),
    "normalize": st.sampled_from(["none", "symmetric", "unit", "meanstd"]),
    "mel_scale": st.sampled_from(["slaney", "htk"]), "mel_norm": st.sampled_from(["slaney", "none"]),
    "floor": st.floats(1e-13, 0.2)})


@settings(FUZZ, max_examples=40)
@given(contract=contracts, frames=st.integers(1, 6), level=st.floats(-12, 4))
def test_vocode_random_custom_contracts(client, contract, frames, level):
    """Any contract object: a 400 naming the field, a 422 for a mel it cannot be, or audio of frames x its hop."""
    n_mels = contract.get("n_mels", 80) if isinstance(contract.get("n_mels", 80), int) else 80
    body = {"mel": np.full((max(n_mels, 1), frames), level).tolist(), "mel_format": contract}
    r = client.post("/v1/vocode", content=json.dumps(body), headers={"Content-Type": "application/json"},
                    params={"method": "projection", "refine": 2})
    if r.status_code == 200:
        audio, sr = sf.read(io.BytesIO(r.content))
        assert sr == contract.get("sample_rate", SAMPLE_RATE) and len(audio) == frames * contract.get("hop", 256)
    else:
        assert_refused(r)
    assert_still_serving(client, every=8)
