"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP API) on the same app, engine and limits as `/v1`.

One model, named after the served weights: input `mel` FP32 [B, n_mels, F], output `audio` [B, S], FP32 by default
or INT16 (quantised as `/v1`'s pcm16). Tensors come as JSON or in Triton's binary extension (a JSON header of
`Inference-Header-Content-Length` bytes, the raw tensors after it). Each item of a batch is one engine job, item b
seeded with seed + b, so it is the answer of `/v1/vocode` with that seed. Errors are the protocol's {"error": ...}
with `/v1`'s statuses (429 and 503 with Retry-After), and `/v1`'s API key guards everything but the health probes.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from model.audio import pcm16
from model.contract import MelSpec
from model.mel import MelError, validate_mel

from . import codec, formats, jsonparse
from .codec import ApiError
from .deps import ready_engine, reject_unknown_query, require_api_key, watching
from .engine import Engine, Result
from .jsonparse import JsonError
from .schemas import MAX_SEED
from .service import Service
from .settings import CONTRACT_VALUES, frames_in
from .v2_schemas import (InferOutput, InferParameters, InferRequest, InferResponse, ModelMetadata, ServerMetadata,
                         TensorMetadata, V2Error)

HEADER_LENGTH = "inference-header-content-length"
BINARY_EXTENSION = "binary_tensor_data"
INPUT, OUTPUT = "mel", "audio"
BYTE_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes "²", which int() then refuses


class V2Route(APIRoute):
    """A /v2 route answers its errors in the protocol's {"error": "..."}: the app's own handlers decide status and
    headers (429/503 Retry-After, 401 WWW-Authenticate), and their {"error", "detail"} becomes one message."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as e:
                app_handler = next((request.app.exception_handlers[t] for t in type(e).__mro__
                                    if t in request.app.exception_handlers), None)
                if app_handler is None:
                    raise
                answer = await app_handler(request, e)
                if not answer.body:  # a 499: nobody is left to read an error
                    return answer
                body = json.loads(answer.body)
                headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}
                return JSONResponse({"error": f"{body['error']}: {body['detail']}"}, answer.status_code, headers)

        return route


router = APIRouter(prefix="/v2", route_class=V2Route,
                   responses={code: {"model": V2Error} for code in (400, 401, 404, 413, 422, 429, 503)})
#: The key before the query's names, as on /v1: a caller without the key learns nothing of the routes' parameters.
keyed = [Depends(require_api_key), Depends(reject_unknown_query)]
probe = [Depends(reject_unknown_query)]


def model_name(engine: Engine) -> str:
    """The served net's name: its weights directory (`weights_id` without the hash)."""
    return engine.weights_id.partition("@")[0]


def served_engine(request: Request, name: str) -> Engine:
    """The engine, when `name` is the model it serves (else 404)."""
    return check_model(request.app.state.engine, name)


def check_model(engine: Engine, name: str) -> Engine:
    if name != model_name(engine):
        raise ApiError(404, "unknown model", f"this server serves the model {model_name(engine)!r}, not {name!r}")
    return engine


@router.get("", response_model=ServerMetadata, dependencies=keyed, summary="server metadata")
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="bddm-vocoder", version=request.app.version, extensions=[BINARY_EXTENSION],
                          models=[model_name(request.app.state.engine)])


@router.get("/health/live", response_class=Response, dependencies=probe,
            summary="the process is alive (a probe: no key needed)")
async def live() -> Response:
    return Response()


@router.get("/health/ready", response_class=Response, dependencies=probe,
            summary="weights loaded and warmed up (a probe: no key needed)")
async def ready(_: Annotated[Engine, Depends(ready_engine)]) -> Response:
    return Response()


@router.get("/models/{name}", response_model=ModelMetadata, dependencies=keyed, summary="model metadata")
async def model_metadata(engine: Annotated[Engine, Depends(served_engine)]) -> ModelMetadata:
    n_mels = engine.vocoder.spec.n_mels
    return ModelMetadata(name=model_name(engine), platform="pytorch",
                         inputs=[TensorMetadata(name=INPUT, datatype="FP32", shape=[-1, n_mels, -1])],
                         outputs=[TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, -1])])


@router.get("/models/{name}/ready", response_class=Response, dependencies=keyed, summary="the model can infer")
async def model_ready(request: Request, _: Annotated[Engine, Depends(served_engine)]) -> Response:
    ready_engine(request)
    return Response()


@dataclass
class Call:
    """A parsed infer request: the mels and the knobs, checked against the limits."""

    request: InferRequest
    mels: np.ndarray  # float32 [B, n_mels, F]
    binary: bool  # answer with the binary extension
    contract: tuple[str, MelSpec] | None = None  # the mels' (name, contract) where `mel_format` was resolved


def check_signature(request: InferRequest, n_mels: int, max_items: int) -> list[int]:
    """The request's input and outputs are the model's (`mel` FP32 [B, n_mels, F], `audio`), B within the queue: the
    shape, else a 400 (413 for the batch). Any transport's request, before its tensor's values are read."""
    if [i.name for i in request.inputs] != [INPUT]:
        raise ApiError(400, "invalid inputs", f"the model takes one input, {INPUT!r}, not {[i.name for i in request.inputs]}")
    if request.outputs is not None and [o.name for o in request.outputs] not in ([], [OUTPUT]):
        raise ApiError(400, "invalid outputs", f"the model has one output, {OUTPUT!r}")
    (tensor,) = request.inputs
    if tensor.datatype != "FP32":
        raise ApiError(400, "invalid datatype", f"{INPUT} is FP32, not {tensor.datatype!r}")
    shape = tensor.shape
    if len(shape) != 3 or shape[1] != n_mels or min(shape) < 1:
        raise ApiError(400, "invalid shape", f"{INPUT} is [B, {n_mels}, F] with B, F >= 1, not {shape}")
    if shape[0] > max_items:  # never admitted whole: each item is a job in the engine's queue
        raise ApiError(413, "batch too large", f"a batch of {shape[0]} is more than the {max_items} jobs the queue holds")
    return shape


def check_mels(request: InferRequest, values: np.ndarray, n_mels: int, max_frames: int) -> np.ndarray:
    """The input's flat values as float32 mels [B, n_mels, F], checked as /v1 checks a mel (422, 413), and the
    seeds B items take within range (400)."""
    shape = request.inputs[0].shape
    count = math.prod(shape)
    if values.size != count:
        raise ApiError(400, "invalid data", f"{INPUT} has {values.size} values; its shape {shape} needs {count}")
    try:
        mels = np.stack([validate_mel(m, n_mels) for m in values.reshape(shape)])
    except MelError as e:
        raise ApiError(422, "invalid mel", str(e)) from None
    codec.check_frames(mels, max_frames)
    seed = request.parameters.seed
    if seed is not None and seed + shape[0] - 1 > MAX_SEED:
        raise ApiError(400, "invalid seed", f"seed + B - 1 must be at most {MAX_SEED}")
    return mels


def parse_infer(body: bytes | bytearray, header_length: str | None, n_mels: int, max_frames: int, max_items: int,
                contract_of: Callable[[Any], tuple[str, MelSpec]] | None = None,
                frames_of: Callable[[MelSpec], int] | None = None) -> Call:
    """The JSON header (all of `body` without the binary extension) and the `mel` tensor, as 400s when wrong. With
    `contract_of`, the parameters' `mel_format` names the contract whose n_mels and frame limit (`frames_of`) the
    tensor is checked in; `n_mels` x `max_frames` then only bounds the JSON's values."""
    json_part, binary_part = body, b""
    if header_length is not None:
        if not (BYTE_COUNT.fullmatch(header_length) and int(header_length) <= len(body)):
            raise ApiError(400, "invalid Inference-Header-Content-Length",
                           f"{header_length[:40]!r} is not a byte count within the {len(body)}-byte body")
        json_part, binary_part = body[:int(header_length)], body[int(header_length):]
    try:
        request = InferRequest.model_validate(codec.parse_json(json_part, n_mels * max_frames))
    except (JsonError, ValidationError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
        raise ApiError(400, "invalid inference request",
                       f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}") from None
    contract = None if contract_of is None else contract_of(request.parameters.mel_format)
    if contract is not None:
        n_mels, max_frames = contract[1].n_mels, frames_of(contract[1])
    shape = check_signature(request, n_mels, max_items)
    (tensor,) = request.inputs
    count = math.prod(shape)
    size = tensor.parameters.binary_data_size
    if size is not None:
        if tensor.data is not None or size != 4 * count or len(binary_part) != size:
            raise ApiError(400, "invalid binary data", f"{INPUT} {shape} FP32 is {4 * count} bytes after the JSON "
                           f"header (binary_data_size {size}, {len(binary_part)} bytes sent, and no `data`)")
        values = np.frombuffer(binary_part, "<f4")
    elif tensor.data is None or binary_part:
        raise ApiError(400, "invalid inputs", f"{INPUT} needs `data`, or binary_data_size with the binary extension")
    else:
        try:
            values = jsonparse.numbers(tensor.data, f"{INPUT}'s data").reshape(-1)
        except JsonError as e:  # strings, booleans, ragged rows
            raise ApiError(400, "invalid data", str(e)) from None
    mels = check_mels(request, values, n_mels, max_frames)
    params = request.parameters
    binary = params.binary_data_output or any(o.parameters.binary_data for o in request.outputs or [])
    return Call(request, mels, binary, contract)


def audio_tensor(results: list[Result], native: int, rate: int, datatype: str) -> np.ndarray:
    """[B, S] audio at `rate`: float32, or int16 quantised as /v1's pcm16."""
    audio = np.stack([formats.resample_exact(r.audio, native, rate) for r in results])
    return audio if datatype == "FP32" else np.frombuffer(pcm16(audio.reshape(-1)), np.int16).reshape(audio.shape)


def infer_response(name: str, call: Call, audio: np.ndarray, parameters: dict[str, float | int | str]) -> Response:
    """The protocol's answer: JSON, or (binary extension) the JSON header then the tensor's raw bytes."""
    datatype = call.request.parameters.audio_datatype
    out = InferOutput(name=OUTPUT, datatype=datatype, shape=list(audio.shape))
    if call.binary:
        out.parameters = {"binary_data_size": audio.nbytes}
    else:
        out.data = audio.reshape(-1).tolist()
    header = InferResponse(model_name=name, id=call.request.id, parameters=parameters,
                           outputs=[out]).model_dump_json(exclude_none=True).encode()
    if not call.binary:
        return Response(header, media_type="application/json")
    return Response(header + audio.astype(audio.dtype.newbyteorder("<")).tobytes(), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its $defs put in place of their $refs: an OpenAPI body or response given by hand
    (the route reads the raw body) has no components section to point into."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return walk(defs[node["$ref"].rsplit("/", 1)[-1]]) if "$ref" in node else {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inlined(InferRequest.model_json_schema())},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/models/{name}/infer", response_class=Response, dependencies=keyed, summary="mel -> audio",
             responses={200: {"content": {"application/json": {"schema": inlined(InferResponse.model_json_schema())},
                                          "application/octet-stream": {}}}}, openapi_extra=INFER_BODY,
             description="JSON tensors, or Triton's binary tensor extension: the JSON header is the first "
                         "`Inference-Header-Content-Length` bytes, the tensors' raw little-endian bytes follow.")
async def infer(request: Request, engine: Annotated[Engine, Depends(served_engine)], name: str) -> Response:
    ready_engine(request)
    settings = request.app.state.settings
    header_length, n_mels = request.headers.get(HEADER_LENGTH), engine.vocoder.spec.n_mels
    if header_length is None:  # all JSON: at most one longest mel's text, however it is batched
        limit = codec.json_limit(CONTRACT_VALUES * n_mels, settings.max_frames, settings.max_body_bytes)
        body = await codec.read_body(request, limit, f"JSON body (a mel of {settings.max_frames} frames in all)")
    else:
        body = await codec.read_body(request, settings.max_body_bytes)
    service: Service = request.app.state.service
    call = await codec.off_loop(parse_infer, body, header_length, CONTRACT_VALUES * n_mels, settings.max_frames,
                                settings.queue_size, service.contract,
                                lambda spec: frames_in(settings, engine.vocoder.spec, spec))
    params: InferParameters = call.request.parameters
    native = call.contract[1].sample_rate
    rate = formats.check_rate(params.sample_rate) or native
    request.state.log.update(frames=call.mels.shape[-1], batch_items=len(call.mels), seeded=params.seed is not None)
    async with watching(request) as watcher:
        done = await service.vocode(call.mels, params.method, params.rho, params.refine, params.seed, watcher,
                                    call.contract)
    plan = done.planned.plan
    request.state.log.update(rho=plan.rho, steps=plan.steps, refine=plan.refine)
    audio = await asyncio.to_thread(audio_tensor, done.results, native, rate, params.audio_datatype)
    return infer_response(name, call, audio, {**done.planned.facts(), "sample_rate": rate})
