"""The Open Inference Protocol v2 over gRPC: KServe's `grpc_predict_v2.proto` (`third_party/kserve/`, Apache-2.0,
vendored with its licence), the `inference.GRPCInferenceService` that Triton's gRPC clients call, on the same engine,
limits and API key as `/v1` and `/v2` (`server.v2` holds the model's signature and checks; this is the transport).

With VOCODER_GRPC_PORT set, the app's lifespan starts a `grpc.aio` server on the app's event loop (`serve`) and stops
it with the engine's drain. The messages are built when this module is imported: protoc (grpcio-tools) compiles the
vendored .proto into a descriptor set, loaded into a private descriptor pool, so nothing generated is committed
(nothing to drift from the .proto, no gencode/runtime version pin) and Triton's client, whose own
`grpc_service.proto` defines the same `inference.*` names in protobuf's default pool, can share the process.

Tensors travel as raw little-endian bytes (`raw_input_contents`, `raw_output_contents`) or, for the input, as
`contents.fp32_contents`. The API key is the metadata `authorization: Bearer KEY` or `x-api-key: KEY`; errors are gRPC
status codes (`STATUS`), a full queue's and an unavailable engine's with google.rpc.RetryInfo and a `retry-after`
trailer, never INTERNAL for anything a client sent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_tools import protoc
from pydantic import ValidationError

from model.contract import MelSpec
from model.detect import WrongContract
from model.plan import PlanError

from . import formats
from .codec import ApiError
from .deps import require_ready
from .engine import Engine, QueueFull, Unavailable
from .service import Service
from .settings import CONTRACT_VALUES, frames_in
from .v2 import INPUT, OUTPUT, audio_tensor, check_mels, check_model, check_signature, model_name
from .v2_schemas import InferInput, InferParameters, InferRequest, RequestedOutput

log = logging.getLogger("server.access")

PROTO = Path(__file__).parent / "third_party" / "kserve" / "grpc_predict_v2.proto"
SERVICE = "inference.GRPCInferenceService"
#: A request's or an answer's bytes besides its tensor: names, shape, parameters.
ENVELOPE = 64 * 2**10
#: The /v1 and /v2 statuses as gRPC codes. 413 (a mel over VOCODER_MAX_FRAMES, a batch over the queue) is the client's
#: to fix, not to retry, so INVALID_ARGUMENT: RESOURCE_EXHAUSTED is a full queue's, which a client retries.
STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.INVALID_ARGUMENT, 415: grpc.StatusCode.INVALID_ARGUMENT,
          422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE}
#: Seconds a client waits before retrying an engine that failed, is not ready or shuts down (REST's Retry-After).
UNAVAILABLE_RETRY_S = 5


def load_messages(proto: Path = PROTO) -> SimpleNamespace:
    """The .proto's message classes by name, compiled by protoc into a private descriptor pool."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.pb"
        if protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name]) != 0:
            raise RuntimeError(f"protoc could not compile {proto}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    (file,) = files.file
    return SimpleNamespace(**{m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}."
                                                                                                  f"{m.name}"))
                              for m in file.message_type})


pb = load_messages()


class Refusal(Exception):
    """An RPC's answer as a gRPC status: the code, the message and, for what a client may retry, seconds to wait."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def refusal(e: Exception) -> Refusal | None:
    """The status for the errors /v1 and /v2 answer with a 4xx or 503 (None: a bug)."""
    if isinstance(e, ApiError):
        retry = e.headers.get("Retry-After")
        return Refusal(STATUS[e.status], f"{e.error}: {e.detail}", int(retry) if retry else None)
    if isinstance(e, PlanError):  # the request's knobs: rho, refine, method, mel_format
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{e.title}: {e}")
    if isinstance(e, WrongContract):  # REST's 422
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"wrong mel contract: {e}")
    if isinstance(e, QueueFull):
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), e.retry_after)
    if isinstance(e, Unavailable):
        return Refusal(grpc.StatusCode.UNAVAILABLE, str(e), UNAVAILABLE_RETRY_S)
    return None


def trailers(r: Refusal) -> tuple[tuple[str, str | bytes], ...]:
    """google.rpc.Status with RetryInfo (`grpc-status-details-bin`, what gRPC's retry-aware clients read) and a
    plain `retry-after` trailer (what a Triton client's exception shows)."""
    if r.retry_after is None:
        return ()
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=r.retry_after))
    status = status_pb2.Status(code=getattr(code_pb2, r.code.name), message=r.message)
    status.details.add().Pack(info)
    return ("grpc-status-details-bin", status.SerializeToString()), ("retry-after", str(r.retry_after))


def check_api_key(expected: str, metadata: tuple[tuple[str, str | bytes], ...] | None) -> None:
    """With VOCODER_API_KEY set, an RPC's metadata carries `authorization: Bearer KEY` or `x-api-key: KEY`."""
    if not expected:
        return
    sent = {k: v for k, v in metadata or () if isinstance(v, str)}
    auth = sent.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else sent.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong API key (send the metadata authorization: Bearer KEY "
                                            "or x-api-key: KEY)")


def parameters_of(params: Any) -> dict[str, bool | int | str]:
    """A protobuf parameters map as plain values. A value in a field this proto has not (Triton's double_param,
    uint64_param) is refused, never dropped: a float goes as a string."""
    out = {}
    for name, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is None:
            raise ApiError(400, "invalid parameter", f"{name!r} is not a bool, int64 or string parameter (KServe's "
                                                     f"v2 proto has no double: send a number such as rho as a string)")
        out[name] = getattr(value, kind)
    return out


def infer_parameter(value: bool | int | float | str) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=f"{value:g}" if isinstance(value, float) else value)


def read_infer(request: Any, contract_of: Callable[[Any], tuple[str, MelSpec]], frames_of: Callable[[MelSpec], int],
               max_items: int) -> tuple[InferRequest, np.ndarray, tuple[str, MelSpec]]:
    """A ModelInferRequest as `/v2`'s typed request, its mels [B, n_mels, F] and their contract (`mel_format`'s, a
    name here; `contract_of`), with /v2's checks in that contract's mel count and frame limit (`frames_of`)."""
    try:
        parsed = InferRequest(
            id=request.id or None, parameters=InferParameters.model_validate(parameters_of(request.parameters)),
            inputs=[InferInput(name=t.name, shape=list(t.shape), datatype=t.datatype) for t in request.inputs],
            outputs=[RequestedOutput(name=o.name) for o in request.outputs] or None)
    except ValidationError as e:
        first = e.errors()[0]
        raise ApiError(400, "invalid inference request",
                       f"{'.'.join(map(str, first['loc'])) or 'request'}: {first['msg']}") from None
    if any(t.parameters for t in request.inputs) or any(o.parameters for o in request.outputs):
        raise ApiError(400, "invalid parameters", "tensors take no parameters here (no shared memory, no "
                                                  "classification): the data goes in raw_input_contents")
    contract = contract_of(parsed.parameters.mel_format)
    n_mels, max_frames = contract[1].n_mels, frames_of(contract[1])
    shape = check_signature(parsed, n_mels, max_items)
    tensor, raw = request.inputs[0], request.raw_input_contents
    if raw:
        if len(raw) != 1 or tensor.HasField("contents") or len(raw[0]) != 4 * math.prod(shape):
            raise ApiError(400, "invalid raw contents", f"{INPUT} {shape} FP32 is one raw_input_contents of "
                           f"{4 * math.prod(shape)} bytes, and no contents ({[len(r) for r in raw]} bytes sent)")
        values = np.frombuffer(raw[0], "<f4")
    else:
        values = np.asarray(tensor.contents.fp32_contents, np.float32)
    return parsed, check_mels(parsed, values, n_mels, max_frames), contract


class Inference:
    """The RPCs over the app's engine, vocode service (`server.service`) and settings; `handler` wraps them in auth,
    statuses and logs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def engine(self) -> Engine:
        return self.app.state.engine

    @property
    def service(self) -> Service:
        return self.app.state.service

    async def server_live(self, request: Any, fields: dict) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, fields: dict) -> Any:
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def model_ready(self, request: Any, fields: dict) -> Any:
        return pb.ModelReadyResponse(ready=check_model(self.engine, request.name).ready)

    async def server_metadata(self, request: Any, fields: dict) -> Any:
        return pb.ServerMetadataResponse(name="bddm-vocoder", version=self.app.version)

    async def model_metadata(self, request: Any, fields: dict) -> Any:
        engine = check_model(self.engine, request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model_name(engine), platform="pytorch",
            inputs=[tensor(name=INPUT, datatype="FP32", shape=[-1, engine.vocoder.spec.n_mels, -1])],
            outputs=[tensor(name=OUTPUT, datatype="FP32", shape=[-1, -1])])

    async def model_infer(self, request: Any, fields: dict) -> Any:
        """`/v2/models/{name}/infer`: each item an engine job, seeded seed + b; `fields` go to the log line."""
        engine = require_ready(check_model(self.engine, request.model_name))
        settings, service = self.app.state.settings, self.service
        parsed, mels, contract = read_infer(request, service.contract,
                                            lambda spec: frames_in(settings, engine.vocoder.spec, spec),
                                            settings.queue_size)
        params = parsed.parameters
        rate = formats.check_rate(params.sample_rate) or contract[1].sample_rate
        fields.update(frames=mels.shape[-1], batch_items=len(mels), seeded=params.seed is not None)
        # no disconnect future: the client going away cancels this task, and the engine drops its queued jobs
        done = await service.vocode(mels, params.method, params.rho, params.refine, params.seed, None, contract)
        plan = done.planned.plan
        fields.update(rho=plan.rho, steps=plan.steps, refine=plan.refine)
        audio = await asyncio.to_thread(audio_tensor, done.results, contract[1].sample_rate, rate,
                                        params.audio_datatype)
        return pb.ModelInferResponse(
            model_name=model_name(engine), id=request.id,
            parameters={k: infer_parameter(v) for k, v in {**done.planned.facts(), "sample_rate": rate}.items()},
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype=params.audio_datatype,
                                                             shape=list(audio.shape))],
            raw_output_contents=[audio.astype(audio.dtype.newbyteorder("<")).tobytes()])


Rpc = Callable[[Any, dict], Awaitable[Any]]  # (request, fields for the log line) -> response


def handler(app: Any) -> grpc.GenericRpcHandler:
    """The service's methods, each answering its refusals as gRPC statuses, timed in /metrics and logged as one JSON
    line (as `server.app.RequestContext` does for HTTP); the health probes need no API key, as /v2/health/* do."""
    service, metrics = Inference(app), app.state.metrics
    key = app.state.settings.api_key.get_secret_value() if app.state.settings.api_key else ""

    def method(name: str, rpc: Rpc, keyed: bool = True) -> grpc.RpcMethodHandler:
        route = f"/{SERVICE}/{name}"

        async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id, start, code = uuid.uuid4().hex, time.perf_counter(), grpc.StatusCode.OK
            fields: dict = {}
            metrics.in_flight.inc()
            try:
                if keyed:
                    check_api_key(key, context.invocation_metadata())
                return await rpc(request, fields)
            except Exception as e:  # noqa: BLE001 -- every error becomes a status; a bug's is INTERNAL, logged
                r = refusal(e)
                if r is None:
                    metrics.unhandled.labels(route=route).inc()
                    log.exception(json.dumps({"request_id": request_id, "route": route,
                                              "event": "unhandled exception"}))
                    r = Refusal(grpc.StatusCode.INTERNAL, f"the server failed on this request (request id "
                                f"{request_id}); it was logged, and the server goes on serving")
                code = r.code
                await context.abort(r.code, r.message, trailers(r))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                duration = time.perf_counter() - start
                metrics.in_flight.dec()
                metrics.request_duration.labels(route=route, status=code.name).observe(duration)
                log.info(json.dumps({"request_id": request_id, "method": "gRPC", "route": route, "status": code.name,
                                     "duration_s": round(duration, 4), **fields}))

        types = getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response")
        return grpc.unary_unary_rpc_method_handler(answer, request_deserializer=types[0].FromString,
                                                   response_serializer=types[1].SerializeToString)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerLive": method("ServerLive", service.server_live, keyed=False),
        "ServerReady": method("ServerReady", service.server_ready, keyed=False),
        "ModelReady": method("ModelReady", service.model_ready),
        "ServerMetadata": method("ServerMetadata", service.server_metadata),
        "ModelMetadata": method("ModelMetadata", service.model_metadata),
        "ModelInfer": method("ModelInfer", service.model_infer)})


def message_limits(max_frames: int, n_mels: int, hop: int, native_rate: int) -> tuple[int, int]:
    """(receive, send) bytes: a request holds at most CONTRACT_VALUES times the values of one VOCODER_MAX_FRAMES mel
    in FP32 (REST's JSON bound: room for a contract with more bands or frames per second; a batch shares it), and an
    answer the audio of that many of the net's frames in FP32 at the highest output rate; each with ENVELOPE."""
    frames = CONTRACT_VALUES * max_frames + ENVELOPE // (4 * n_mels)  # what the receive limit lets through
    return (4 * CONTRACT_VALUES * n_mels * max_frames + ENVELOPE,
            4 * math.ceil(frames * hop * max(formats.RATES) / native_rate) + ENVELOPE)


async def serve(app: Any, port: int) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server on the app's host and `port` (0: a free one) on this event loop, and its port."""
    settings, spec = app.state.settings, app.state.engine.vocoder.spec
    receive, send = message_limits(settings.max_frames, spec.n_mels, spec.hop, spec.sample_rate)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", receive),
                                      ("grpc.max_send_message_length", send)])
    server.add_generic_rpc_handlers((handler(app),))
    bound = server.add_insecure_port(f"{settings.host}:{port}")
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) on %s:%d, messages up to %d bytes in, %d out", settings.host, bound,
             receive, send)
    return server, bound
