"""The Open Inference Protocol v2 over gRPC with real clients: Triton's `tritonclient.grpc`, and grpcio itself for the
malformed requests Triton's client will not send, against the app's gRPC listener (VOCODER_GRPC_PORT) beside uvicorn
on 127.0.0.1, on tiny weights.

Each answer is held to /v1/vocode's samples for the same seed, on the same server; a bad request gets its gRPC status
(never INTERNAL), and the server goes on serving.
"""

from __future__ import annotations

import io
import signal
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as triton
from google.rpc import error_details_pb2, status_pb2
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from bench.common import free_port, wait_ready
from conftest import serving
from model.audio import HOP, N_MELS, SAMPLE_RATE, pcm16
from model.profiles import PROFILES
from server import Settings, create_app
from server.grpc_v2 import SERVICE, message_limits, pb
from server.settings import CONTRACT_VALUES
from test_faults import start_server
from test_server_api import full_queue, gate_vocoder
from test_v2 import NPY, mel, npy, v1

MAX_FRAMES = 300  # small, so the message limit it sets is quick to cross


@pytest.fixture(scope="module")
def server(tiny_weights):
    app = create_app(Settings(weights=tiny_weights, device="cpu", grpc_port=0, max_frames=MAX_FRAMES))
    with serving(app) as url:
        yield url, f"127.0.0.1:{app.state.grpc_port}"


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    c = triton.InferenceServerClient(server[1])
    yield c
    c.close()


@pytest.fixture(scope="module")
def name(client) -> str:
    return client.get_model_metadata("weights", as_json=True)["name"]


def infer(client, name: str, mels: np.ndarray, **parameters) -> triton.InferResult:
    tensor = triton.InferInput("mel", list(mels.shape), "FP32")
    tensor.set_data_from_numpy(mels)  # raw_input_contents
    return client.infer(name, [tensor], parameters=parameters)


def raw_call(target: str, method: str, request, metadata=()) -> tuple[object, grpc.Call]:
    """One RPC by grpcio alone, with the module's own messages: (response, call), or raises grpc.RpcError."""
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=type(request).SerializeToString,
                                  response_deserializer=getattr(pb, f"{method}Response").FromString)
        return rpc.with_call(request, metadata=metadata, timeout=60)


def refused(target: str, request, metadata=()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        raw_call(target, "ModelInfer", request, metadata)
    return e.value


def retry_delay(error: grpc.RpcError) -> int:
    """The seconds of the google.rpc.RetryInfo in the status details, checked against the `retry-after` trailer."""
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.code == error.code().value[0] and status.details[0].Unpack(info)
    assert info.retry_delay.seconds == int(trailers["retry-after"]) >= 1
    return info.retry_delay.seconds


def test_health_and_metadata(client, name):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert name == "weights"  # the tiny weights' directory name, as /v2's
    assert client.get_server_metadata(as_json=True)["name"] == "bddm-vocoder"
    meta = client.get_model_metadata(name, as_json=True)
    assert meta["inputs"] == [{"name": "mel", "datatype": "FP32", "shape": [str(-1), str(N_MELS), str(-1)]}]
    assert meta["outputs"] == [{"name": "audio", "datatype": "FP32", "shape": [str(-1), str(-1)]}]
    for call in (client.get_model_metadata, client.is_model_ready):
        with pytest.raises(InferenceServerException, match="serves the model 'weights'") as e:
            call("nope")
        assert e.value.status() == "StatusCode.NOT_FOUND"


def test_infer_gives_v1s_samples_for_the_seed(server, client, name):
    m = mel(12, seed=1)
    expected = v1(server[0], m, rho="fast", seed=3, method="bddm")
    result = infer(client, name, m[None], rho="fast", seed=3, method="bddm")
    audio = result.as_numpy("audio")
    assert audio.dtype == np.float32 and audio.shape == (1, 12 * HOP)
    assert np.array_equal(np.frombuffer(pcm16(audio[0]), np.int16), expected)  # FP32, quantised as pcm16 is
    ints = infer(client, name, m[None], rho="fast", seed=3, method="bddm", audio_datatype="INT16").as_numpy("audio")
    assert ints.dtype == np.int16 and np.array_equal(ints[0], expected)
    answered = {k: v.WhichOneof("parameter_choice") and getattr(v, v.WhichOneof("parameter_choice"))
                for k, v in result.get_response().parameters.items()}
    assert answered["method"] == "bddm" and answered["refine"] >= 0 and answered["sample_rate"] == SAMPLE_RATE
    assert float(answered["rho"]) > 0  # a string: KServe's proto has no double


def test_a_batch_is_seed_plus_b_and_parameters_are_v1s(server, client, name):
    mels = np.stack([mel(10, seed=4), mel(10, seed=5)])
    audio = infer(client, name, mels, rho="fast", seed=7, audio_datatype="INT16").as_numpy("audio")
    assert audio.shape == (2, 10 * HOP)
    assert np.array_equal(audio[0], v1(server[0], mels[0], rho="fast", seed=7))
    assert np.array_equal(audio[1], v1(server[0], mels[1], rho="fast", seed=8))
    params = {"method": "projection", "refine": 3, "sample_rate": 16000}
    audio = infer(client, name, mels[:1], seed=2, audio_datatype="INT16", **params).as_numpy("audio")
    assert np.array_equal(audio[0], v1(server[0], mels[0], seed=2, **params))


def test_fp32_contents_are_raw_contents(server, client, name):
    m = mel(6, seed=9)
    tensor = pb.ModelInferRequest.InferInputTensor(name="mel", datatype="FP32", shape=[1, N_MELS, 6])
    tensor.contents.fp32_contents.extend(m.reshape(-1).tolist())
    request = pb.ModelInferRequest(model_name=name, inputs=[tensor],
                                   parameters={"seed": pb.InferParameter(int64_param=4),
                                               "audio_datatype": pb.InferParameter(string_param="INT16")})
    response, _ = raw_call(server[1], "ModelInfer", request)
    assert response.outputs[0].shape == [1, 6 * HOP]
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], "<i2"), v1(server[0], m, seed=4))


@pytest.mark.parametrize("profile", ["rayhane", "bigvgan-24k"])  # dB-scaled [-4, 4]; 100 bands at 24 kHz
def test_mel_format_is_v1s(server, client, name, profile):
    """A profile's mel, named by the string parameter mel_format: /v1's samples for the seed, at the profile's rate;
    an unknown name is INVALID_ARGUMENT."""
    from test_contract_api import clip_mel

    m, spec = clip_mel(profile, 0.3), PROFILES[profile].spec
    r = httpx.post(f"{server[0]}/v1/vocode", params={"mel_format": profile, "rho": "fast", "seed": 5},
                   content=npy(m), headers=NPY, timeout=120)
    assert r.status_code == 200, r.text
    expected, rate = sf.read(io.BytesIO(r.content), dtype="int16")
    result = infer(client, name, m[None], mel_format=profile, rho="fast", seed=5, audio_datatype="INT16")
    assert rate == spec.sample_rate and result.get_response().parameters["sample_rate"].int64_param == rate
    assert np.array_equal(result.as_numpy("audio")[0], expected)
    with pytest.raises(InferenceServerException, match="mel_format") as e:
        infer(client, name, m[None], mel_format="no-such-profile")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_wrong_contract_is_invalid_argument_naming_the_likely_one(client, name):
    from test_contract_api import TTS_MELS

    m = np.load(TTS_MELS / "ru-rayhane-2.npy")[:, :MAX_FRAMES]  # a TTS model's prediction, in Rayhane's dB scale
    with pytest.raises(InferenceServerException, match="wrong mel contract.*rayhane") as e:
        infer(client, name, m[None].astype(np.float32), rho="fast")  # sent as the net's own contract
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_bad_request_from_tritonclient_is_invalid_argument(client, name):
    m = mel(4)[None]
    for parameters, needle in (({"rho": "fastest"}, "rho"), ({"preset": "fast"}, "preset"),
                               ({"refine": 10**6}, "refine"), ({"method": "ddim"}, "projection")):
        with pytest.raises(InferenceServerException, match=needle) as e:
            infer(client, name, m, **parameters)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
    tensor = triton.InferInput("spectrogram", list(m.shape), "FP32")
    tensor.set_data_from_numpy(m)
    with pytest.raises(InferenceServerException, match="'mel'") as e:
        client.infer(name, [tensor])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()


def request(shape=(1, N_MELS, 2), raw: bytes | None = None, datatype="FP32", parameters=None, tensor_parameters=None):
    data = mel(shape[-1]).reshape(-1).tobytes() * shape[0] if raw is None else raw
    tensor = pb.ModelInferRequest.InferInputTensor(name="mel", datatype=datatype, shape=shape,
                                                   parameters=tensor_parameters)
    return pb.ModelInferRequest(model_name="weights", inputs=[tensor], raw_input_contents=[data], parameters=parameters)


def triton_double(value: float):
    """A parameter in Triton's double_param, a field KServe's proto has not (newer Triton clients send floats so)."""
    return pb.InferParameter.FromString(service_pb2.InferParameter(double_param=value).SerializeToString())


BAD = {  # name: (request, status, words in the message)
    "fp16": (request(datatype="FP16"), "INVALID_ARGUMENT", "FP32"),
    "rank-2": (request((N_MELS, 2)), "INVALID_ARGUMENT", "[B, 80, F]"),
    "wrong-mels": (request((1, 3, 2), raw=b"\0" * 24), "INVALID_ARGUMENT", "[B, 80, F]"),
    "short-raw": (request(raw=b"\0" * 100), "INVALID_ARGUMENT", "640 bytes"),
    "huge-shape": (request((1, N_MELS, 10**12), raw=b"\0" * 640), "INVALID_ARGUMENT", "bytes"),
    "nan": (request(raw=np.full((N_MELS, 2), np.nan, "<f4").tobytes()), "INVALID_ARGUMENT", "mel"),
    "too-long": (request((1, N_MELS, MAX_FRAMES + 1)), "INVALID_ARGUMENT", "frames"),
    "batch-over-queue": (request((33, N_MELS, 1)), "INVALID_ARGUMENT", "batch"),
    "double-parameter": (request(parameters={"rho": triton_double(0.3)}), "INVALID_ARGUMENT", "as a string"),
    "tensor-parameters": (request(tensor_parameters={"shared_memory_region": pb.InferParameter(string_param="x")}),
                          "INVALID_ARGUMENT", "no shared memory"),
    "unknown-model": (pb.ModelInferRequest(model_name="nope"), "NOT_FOUND", "serves the model 'weights'"),
    # over the message limit VOCODER_MAX_FRAMES sets: grpcio's own answer, before the service sees it
    "over-the-message-limit": (request((1, N_MELS, 3 * MAX_FRAMES)), "RESOURCE_EXHAUSTED", "larger than max"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_their_status_and_the_server_goes_on(server, client, case):
    req, code, needle = BAD[case]
    error = refused(server[1], req)
    assert error.code().name == code and needle in error.details(), (error.code(), error.details())
    assert client.is_server_ready()


def test_message_limits_follow_max_frames():
    receive, send = message_limits(MAX_FRAMES, N_MELS, HOP, SAMPLE_RATE)
    assert 4 * N_MELS * CONTRACT_VALUES * MAX_FRAMES < receive < 4 * N_MELS * 3 * MAX_FRAMES  # as REST's JSON bound
    assert send > 4 * (receive // (4 * N_MELS)) * HOP * 48000 / SAMPLE_RATE  # the longest answer, at 48 kHz in FP32


def test_full_queue_failures_and_api_key_are_v1s(tiny_weights, monkeypatch):
    app = create_app(Settings(weights=tiny_weights, device="cpu", grpc_port=0, queue_size=1, max_batch=1,
                              api_key="k3y"))
    with serving(app) as base:
        target = f"127.0.0.1:{app.state.grpc_port}"
        c = triton.InferenceServerClient(target)
        key = {"authorization": "Bearer k3y"}
        assert c.is_server_live() and c.is_server_ready()  # probes stay open, as /v2/health/* do
        with pytest.raises(InferenceServerException) as e:
            c.get_server_metadata()
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        assert c.get_server_metadata(headers={"x-api-key": "k3y"}).name == "bddm-vocoder"
        with pytest.raises(InferenceServerException, match="API key"):
            c.get_model_metadata("weights", headers={"x-api-key": "nope"})

        post_v1 = lambda: httpx.post(f"{base}/v1/vocode", content=npy(mel()), timeout=60,  # noqa: E731
                                     headers={**NPY, "Authorization": "Bearer k3y"})
        with full_queue(app.state.engine, monkeypatch, post_v1) as results:
            error = refused(target, request(), tuple(key.items()))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in error.details()
            assert retry_delay(error) >= 1
        assert [x.status_code for x in results] == [200, 200]
        tensor = triton.InferInput("mel", [1, N_MELS, 4], "FP32")
        tensor.set_data_from_numpy(mel(4)[None])
        assert c.infer("weights", [tensor], headers=key).as_numpy("audio").shape == (1, 4 * HOP)

        def failing(*args, **kwargs):
            raise RuntimeError("injected failure")

        monkeypatch.setattr(app.state.engine.vocoder, "vocode", failing)  # a failed batch: UNAVAILABLE, /v1's 503
        monkeypatch.setattr(app.state.engine.vocoder, "projection_alone", failing)
        error = refused(target, request(), tuple(key.items()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "inference failed" in error.details()
        assert retry_delay(error) >= 1
        c.close()
    with pytest.raises(grpc.RpcError) as e:  # the lifespan stopped the listener with the app
        raw_call(target, "ServerLive", pb.ServerLiveRequest())
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_gives_up_frees_its_queue_slot(tiny_weights, monkeypatch):
    """A deadline that passes (or a cancelled call) cancels the RPC's task, and the engine drops its queued job: the
    gRPC side of /v1's 499."""
    app = create_app(Settings(weights=tiny_weights, device="cpu", grpc_port=0, queue_size=2, max_batch=1))
    with serving(app) as base:
        engine, c = app.state.engine, triton.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        entered, release = gate_vocoder(engine, monkeypatch)
        busy = threading.Thread(target=lambda: v1(base, mel(2), seed=0))
        busy.start()  # holds the worker, so the gRPC request's job waits in the queue
        assert entered.wait(30)
        with pytest.raises(InferenceServerException) as e:
            tensor = triton.InferInput("mel", [1, N_MELS, 3], "FP32")
            tensor.set_data_from_numpy(mel(3)[None])
            c.infer("weights", [tensor], client_timeout=1.0)
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        deadline = time.monotonic() + 10
        while engine.queue_depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.queue_depth == 0, "the abandoned call's job still holds a queue slot"
        release.set()
        busy.join(30)
        assert infer(c, "weights", mel(3)[None], seed=0).as_numpy("audio").shape == (1, 3 * HOP)
        c.close()


def test_sigterm_drains_an_rpc_in_flight(tiny_weights, monkeypatch):
    """`python -m server` with VOCODER_GRPC_PORT: SIGTERM lets a ModelInfer under way finish, then it exits 0."""
    port, grpc_port = free_port(), free_port()
    monkeypatch.setenv("VOCODER_GRPC_PORT", str(grpc_port))
    url, proc = f"http://127.0.0.1:{port}", start_server(tiny_weights, port)
    try:
        wait_ready(proc, url, timeout=120)
        c, result = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}"), {}
        call = threading.Thread(target=lambda: result.update(  # the net's path: projection alone ends before SIGTERM
            audio=infer(c, "weights", mel(200)[None], seed=0, method="bddm")))
        call.start()
        deadline = time.monotonic() + 60
        while "vocoder_queue_wait_seconds_count 1.0" not in httpx.get(url + "/metrics", timeout=5).text:
            assert time.monotonic() < deadline and call.is_alive(), "the call never reached inference"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        call.join(120)
        assert result["audio"].as_numpy("audio").shape == (1, 200 * HOP)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in out, out
        assert out.index("Shutting down") < out.index('"route": "/inference.GRPCInferenceService/ModelInfer"'), out
        c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_no_grpc_port_no_listener(tiny_weights):
    app = create_app(Settings(weights=tiny_weights, device="cpu"))
    with serving(app, ready=False):
        assert not hasattr(app.state, "grpc_port")
