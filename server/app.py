"""The HTTP API: `create_app(settings)` builds a FastAPI app whose lifespan loads the vocoder once.

Routes stay thin: decode and validate the request (`codec`), hand the mel and the knobs to the vocode service
(`service`: plan, engine, disconnect), encode the answer. Every error is JSON {"error", "detail"} with a 4xx status for
anything the client sent, 503 (with Retry-After) when the server cannot serve right now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.audio import AudioError, load_audio, mel_spectrogram
from model.contract import MelSpec
from model.detect import WrongContract
from model.plan import Method, PlanError
from model.profiles import describe
from model.refine import MAX_ITERATIONS
from model.scheduling import canonical_rho
from model.vocoder import Vocoder

from . import codec, demo, formats
from .codec import ApiError
from .deps import engine_of, ready_engine, ready_service, reject_unknown_query, require_api_key, watching
from .engine import ClientGone, Engine, QueueFull, Unavailable
from .metrics import Metrics
from .schemas import MAX_SEED, ErrorOut, Health, ModelInfo, Preset, ScheduleList, ScheduleOut, ScheduleSummary
from .service import Planned, Service
from .settings import CONTRACT_VALUES, Settings, frames_in, load_contracts, load_vocoder

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("server.access")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 413, 415, 422, 429, 503)}


class RequestContext:
    """ASGI middleware: request id, in-flight gauge, latency histogram and one log line per request.

    Routes add fields (frames, steps, rho) to `request.state.log`; the payload is never logged. It is also
    the last resort: an exception no handler took becomes a JSON 500 that names the request id, is logged
    with its traceback and counted, and is not re-raised, so the server keeps the client's connection.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        fields: dict = {}
        start = time.perf_counter()
        scope.setdefault("state", {}).update(request_id=request_id, log=fields, started=start)
        status, started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if started:  # half an answer is out: nothing left to do but close the connection
                raise
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.unhandled.labels(route=route).inc()
            log.exception(json.dumps({"request_id": request_id, "route": route, "event": "unhandled exception"}))
            await error_response(500, "internal error", f"the server failed on this request (request id {request_id}); "
                                 "it was logged, and the server goes on serving")(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - start
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_duration.labels(route=route, status=str(status)).observe(duration)
            log.info(json.dumps({"request_id": request_id, "method": scope["method"], "route": route,
                                 "status": status, "duration_s": round(duration, 4), **fields}))


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.error, e.detail, e.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, e: QueueFull) -> JSONResponse:
        return error_response(429, "queue full", str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(PlanError)
    async def bad_plan(_: Request, e: PlanError) -> JSONResponse:
        return error_response(400, e.title, str(e))

    @app.exception_handler(WrongContract)
    async def wrong_contract(_: Request, e: WrongContract) -> JSONResponse:
        return error_response(422, "wrong mel contract", str(e))

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nobody is left to read it: a log line and a metric

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, e: Unavailable) -> JSONResponse:
        return error_response(503, "unavailable", str(e), {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        status = 400 if first["loc"][0] == "query" else 422  # bad rho/seed/format is a bad request
        return error_response(status, f"invalid {first['loc'][-1]}", f"{where}: {first['msg']}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail).lower(), f"{request.method} {request.url.path}: {e.detail}",
                              getattr(e, "headers", None))


Rho = Annotated[str | None, Query(description="threshold in (0, 1) or fast|balanced|quality; default from the weights")]
Refine = Annotated[int | None, Query(ge=0, le=MAX_ITERATIONS, description="mel-consistency refinements after "
                                     "sampling (model.refine); default: the preset's, or the default preset's")]
MethodQuery = Annotated[Method | None, Query(description="bddm: the score net on rho's schedule, then `refine` "
                                                     "projections; projection: `refine` projections of the mel's "
                                                     "coherent start (PGHI), no network (0 steps); default: bddm for "
                                                     "a numeric rho, else the device's (/v1/model's default_method)")]
Seed = Annotated[int | None, Query(ge=0, le=MAX_SEED, description="same seed, rho and device give the same bytes")]
MelFormat = Annotated[str | None, Query(max_length=64, description="the mel's contract: a profile (hifigan, "
                                        "tacotron2, espnet, coqui, rayhane, bigvgan-24k; GET /v1/model) or a "
                                        "registered name; default: the net's own. A JSON body may send an object")]

@dataclass(frozen=True)
class Knobs:
    """A vocode route's knobs from its query besides rho, the quality/speed knob itself, which each route names (a
    JSON body may bring rho, seed and refine instead)."""

    seed: int | None
    refine: int | None
    method: Method | None  # None: the weights' default method (`model.plan.resolve_method`)
    mel_format: str | None


def knobs(seed: Seed = None, refine: Refine = None, method: MethodQuery = None, mel_format: MelFormat = None) -> Knobs:
    """The query parameters /v1/vocode and its stream share, rho aside."""
    return Knobs(seed, refine, method, mel_format)


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key), Depends(reject_unknown_query)], responses=ERRORS)


BINARY = {"schema": {"type": "string", "format": "binary"}}
MEL_JSON = {"schema": {"type": "object", "required": ["mel"], "properties": {
    "mel": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "description": "(80, frames)"},
    "rho": {"type": ["number", "string"]}, "seed": {"type": "integer", "minimum": 0},
    "refine": {"type": "integer", "minimum": 0, "maximum": MAX_ITERATIONS},
    "mel_format": {"type": ["string", "object"], "description": "a profile's name or a contract object"}}}}


async def read_mel(request: Request, service: Service, rho: str | None,
                   asked: Knobs) -> tuple[np.ndarray, str | float | None, int | None, int | None, tuple[str, MelSpec]]:
    """The request's mel (a .npy or JSON body, validated against the limits in its contract) and its knobs: the
    query's, else the JSON body's. A .npy body names its contract in the query only (a name, not an object); a JSON
    body may hold up to `CONTRACT_VALUES` times the net's values per second, and its contract's limit follows."""
    settings: Settings = request.app.state.settings
    kind = codec.require_media_type(request, codec.NPY_TYPES | {codec.JSON_TYPE},
                                    "a .npy mel as application/x-npy, or application/json {\"mel\": [[...], ...]}")
    net, seed, refine = service.engine.vocoder.spec, asked.seed, asked.refine
    mel_format = asked.mel_format
    if kind == codec.JSON_TYPE:  # parsed off the event loop, as each decoder below
        n_values = CONTRACT_VALUES * net.n_mels
        limit = codec.json_limit(n_values, settings.max_frames, settings.max_body_bytes)
        body = await codec.read_body(request, limit, f"JSON body (a mel of {settings.max_frames} frames)")
        mel, parsed = await codec.off_loop(codec.decode_json, body, n_values * settings.max_frames)
        rho, seed = rho if rho is not None else parsed.rho, seed if seed is not None else parsed.seed
        refine = refine if refine is not None else parsed.refine
        contract = service.contract(mel_format if mel_format is not None else parsed.mel_format)
        mel = codec.json_mel(mel, contract[1].n_mels)
    else:
        contract = service.contract(mel_format)
        body = await codec.read_body(request, settings.max_body_bytes)
        mel = await codec.off_loop(codec.decode_npy, body, contract[1].n_mels)
    codec.check_frames(mel, frames_in(settings, net, contract[1]), contract[1])
    request.state.log.update(frames=mel.shape[-1], seeded=seed is not None, mel_format=contract[0])
    return mel, rho, seed, refine, contract


#: /v1's header for each of the plan's facts (`Planned.facts`).
HEADERS = {"method": "X-Method", "steps": "X-Diffusion-Steps", "rho": "X-Rho", "schedule_cache": "X-Schedule-Cache",
           "refine": "X-Refine-Iterations", "mel_format": "X-Mel-Format"}


def plan_headers(request: Request, planned: Planned, samples: int, sample_rate: int) -> dict[str, str]:
    """The X-* headers a vocode answer carries before any synthesis; the plan goes in the request's log line."""
    plan = planned.plan
    request.state.log.update(rho=plan.rho, steps=plan.steps, refine=plan.refine)
    facts = {k: f"{v:g}" if k == "rho" else str(v) for k, v in planned.facts().items()}
    return {**{HEADERS[k]: v for k, v in facts.items()}, "X-Audio-Seconds": f"{samples / sample_rate:.4f}"}


@v1.post("/vocode", response_class=Response, summary="mel (.npy or JSON) -> audio",
         responses={200: {"content": {"audio/wav": {}, "audio/flac": {}, "audio/ogg": {}}}},
         openapi_extra={"requestBody": {"required": True, "content": {
             "application/octet-stream": BINARY, "application/json": MEL_JSON}}},  # and application/x-npy
         description="Body: a .npy mel as application/x-npy or application/octet-stream, or JSON. The audio: "
                     "`format`, `encoding` and `sample_rate` (`server.formats`).")
async def vocode(request: Request, service: Annotated[Service, Depends(ready_service)],
                 output: Annotated[formats.Output, Depends(formats.vocode_output)],
                 asked: Annotated[Knobs, Depends(knobs)], rho: Rho = None) -> Response:
    mel, rho, seed, refine, contract = await read_mel(request, service, rho, asked)
    async with watching(request) as watcher:
        done = await service.vocode([mel], asked.method, rho, refine, seed, watcher, contract)
    (result,), rate = done.results, contract[1].sample_rate
    audio = await asyncio.to_thread(output.encode, result.audio, rate)
    request.state.log.update(batch=result.batch_size, synthesis_s=round(result.synthesis_seconds, 4))
    return Response(audio, media_type=output.media_type, headers={
        **plan_headers(request, done.planned, len(result.audio), rate),
        "X-Inference-Seconds": f"{result.synthesis_seconds:.4f}",
        "X-Batch-Size": str(result.batch_size),
    })


@v1.post("/vocode/stream", response_class=StreamingResponse, summary="mel (.npy or JSON) -> WAV, streamed",
         responses={200: {"content": {"audio/wav": {}}}},
         openapi_extra={"requestBody": {"required": True, "content": {
             "application/octet-stream": BINARY, "application/json": MEL_JSON}}},  # and application/x-npy
         description="The audio of /v1/vocode (for a seed, the same samples to 1 LSB) as a chunked WAV: the exact "
                     "header first, then 16-bit PCM or mu-law as each chunk is final (resampled with state at another "
                     "sample_rate), the first after about 1 s of audio. Bodies, limits and errors as /v1/vocode; "
                     "format=flac or ogg-opus is a 400 here.")
async def vocode_stream(request: Request, service: Annotated[Service, Depends(ready_service)],
                        output: Annotated[formats.Output, Depends(formats.stream_output)],
                        asked: Annotated[Knobs, Depends(knobs)], rho: Rho = None) -> StreamingResponse:
    mel, rho, seed, refine, contract = await read_mel(request, service, rho, asked)
    spec = contract[1]
    request.state.log.update(streamed=True)
    # the first chunk before the first byte: a refusal or failure is still a JSON error; from the first byte on, the
    # streaming response itself listens for the client leaving
    async with watching(request) as watcher:
        streamed = await service.stream(mel, asked.method, rho, refine, seed, watcher, contract)
    first_audio_s = time.perf_counter() - request.state.started
    service.engine.metrics.time_to_first_audio.labels(preset=streamed.planned.plan.preset).observe(first_audio_s)
    request.state.log.update(first_audio_s=round(first_audio_s, 4))
    samples = mel.shape[-1] * spec.hop

    async def body() -> AsyncIterator[bytes]:
        encoder = output.streamer(samples, spec.sample_rate)
        try:
            yield encoder.header() + encoder.feed(streamed.first.audio)
            async for result in streamed.rest:
                yield encoder.feed(result.audio)
            yield encoder.finish()
        finally:
            await streamed.rest.aclose()  # a client that went away stops the stream now, not when it is collected

    # X-Accel-Buffering: a proxy (nginx, deploy/nginx) passes each chunk on at once instead of buffering the answer
    return StreamingResponse(body(), media_type=output.media_type, headers={
        **plan_headers(request, streamed.planned, samples, spec.sample_rate), "X-Accel-Buffering": "no"})


@v1.post("/mel", response_class=Response, summary="audio (wav/flac) -> the .npy mel in a contract",
         responses={200: {"content": {codec.NPY_MEDIA: {}}}},
         openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}},
         description="Body: wav or flac bytes as audio/wav, audio/flac or application/octet-stream. `mel_format`: "
                     "the contract to compute it in (default: the net's), to check a TTS pipeline against ours.")
async def mel(request: Request, engine: Annotated[Engine, Depends(engine_of)], mel_format: MelFormat = None) -> Response:
    settings: Settings = request.app.state.settings
    codec.require_media_type(request, codec.AUDIO_TYPES, "audio/wav or audio/flac")
    spec = request.app.state.service.contract(mel_format)[1]
    body = bytes(await codec.read_body(request, settings.max_body_bytes))
    limit = frames_in(settings, engine.vocoder.spec, spec)
    declared = codec.audio_frames(body, spec.sample_rate, spec.hop)
    if declared is not None and declared > limit:
        raise ApiError(413, "audio too long", f"{declared} frames; the limit is {limit}")
    try:
        wav = await asyncio.to_thread(load_audio, body, spec.sample_rate)
    except AudioError as e:
        raise ApiError(422, "invalid audio", str(e)) from None
    if len(wav) < spec.hop:
        raise ApiError(422, "invalid audio", f"audio shorter than one frame ({spec.hop} samples)")
    if spec.frames(len(wav)) > limit:
        raise ApiError(413, "audio too long", f"{spec.frames(len(wav))} frames; the limit is {limit}")
    mel_ = await asyncio.to_thread(lambda: mel_spectrogram(wav, spec).numpy())
    request.state.log.update(frames=mel_.shape[-1])
    return Response(codec.encode_npy(mel_), media_type=codec.NPY_MEDIA, headers={"X-Frames": str(mel_.shape[-1])})


@v1.get("/schedules", response_model=ScheduleList | ScheduleOut, summary="one rho's schedule, or the cached ones")
async def schedules(request: Request, engine: Annotated[Engine, Depends(engine_of)],
                    rho: Rho = None) -> ScheduleList | ScheduleOut:
    if rho is not None:
        rho_used, schedule, hit = await request.app.state.service.schedule(rho)
        return ScheduleOut(rho=rho_used, steps=schedule.steps, beta=schedule.beta.tolist(),
                           alpha=schedule.alpha.tolist(), cached=hit)
    names: dict[float, list[str]] = {}
    for name, preset in engine.vocoder.presets.items():
        names.setdefault(canonical_rho(preset.rho), []).append(name)
    entries = sorted(engine.cache.entries().items())
    return ScheduleList(capacity=engine.settings.schedule_cache_size, schedules=[
        ScheduleSummary(rho=r, steps=s.steps, presets=sorted(names.get(r, []))) for r, s in entries])


@v1.get("/model", response_model=ModelInfo, summary="audio settings, weights id, default rho and presets")
async def model_info(request: Request, engine: Annotated[Engine, Depends(engine_of)]) -> ModelInfo:
    voc, spec = engine.vocoder, engine.vocoder.spec
    presets = {}
    for name, preset in voc.presets.items():
        schedule = engine.cache.pinned.get(canonical_rho(preset.rho))
        presets[name] = Preset(rho=canonical_rho(preset.rho), steps=schedule.steps if schedule else None,
                               refine=preset.refine, projections=preset.projections)
    return ModelInfo(weights=engine.weights_id, net=voc.net, chosen_because=voc.chosen_because, device=str(voc.device), dtype=str(voc.dtype).removeprefix("torch."),
                     compiled=voc.compiled, warm_up_seconds=engine.warm_up_seconds,
                     sample_rate=spec.sample_rate, hop=spec.hop,
                     n_mels=spec.n_mels, n_fft=spec.n_fft, fmin=spec.fmin, fmax=spec.fmax,
                     default_method=voc.default_method, method_because=voc.method_because,
                     default_preset=voc.default_preset,
                     default_rho=voc.default_rho, default_refine=voc.default_refine, max_refine=MAX_ITERATIONS,
                     presets=presets, max_frames=engine.settings.max_frames,
                     profiles=describe(request.app.state.service.contracts))


def grpc_front() -> ModuleType:
    """`server.grpc_v2`, imported only where VOCODER_GRPC_PORT asks for it: grpcio is the optional `grpc` extra."""
    try:
        from . import grpc_v2
    except ImportError as e:
        raise RuntimeError(f"VOCODER_GRPC_PORT needs the grpc extra (pip install 'bddm-vocoder[grpc]'): {e}") from None
    return grpc_v2


async def start_grpc(app: FastAPI, port: int) -> grpc.aio.Server:
    """The Open Inference Protocol v2 over gRPC on `port`; its bound port in app.state.grpc_port."""
    server, app.state.grpc_port = await grpc_front().serve(app, port)
    return server


def create_app(settings: Settings | None = None, vocoder: Vocoder | None = None,
               serve_when_ready: bool = False, contracts: dict | None = None) -> FastAPI:
    """The app; the vocoder (and VOCODER_CONTRACTS_DIR's contracts) are loaded in the lifespan unless passed
    (`python -m server` loads them first).
    `serve_when_ready`: the lifespan's start-up also waits for the warm-up, for a host that routes requests to an
    app as soon as it has started and has no readiness probe (Ray Serve, `server.ray_app`)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        voc = vocoder or await asyncio.to_thread(load_vocoder, settings)
        engine = app.state.engine = Engine(voc, settings, metrics)
        app.state.service = Service(engine, contracts if contracts is not None else load_contracts(settings))
        await engine.start()
        if serve_when_ready and not await engine.warmed_up():
            raise RuntimeError(engine.not_ready_reason)
        grpc_server = await start_grpc(app, settings.grpc_port) if settings.grpc_port is not None else None
        yield
        # both drain together: gRPC stops taking calls and lets its own finish while the engine empties its queue
        stopping = asyncio.ensure_future(grpc_server.stop(settings.shutdown_timeout_s)) if grpc_server else None
        await engine.close(settings.shutdown_timeout_s)
        if stopping:
            await stopping

    app = FastAPI(title="BDDM vocoder", version="1", lifespan=lifespan,
                  description="Mel spectrogram in, waveform out; `rho` trades quality for speed.")
    app.state.settings, app.state.metrics = settings, metrics
    app.add_middleware(RequestContext, metrics=metrics)
    install_error_handlers(app)
    app.include_router(v1)
    from .v2 import router as v2  # the Open Inference Protocol; it builds on this module's dependencies
    app.include_router(v2)
    app.include_router(demo.router)

    @app.get("/healthz", response_model=Health, summary="the process is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": ErrorOut}},
             summary="weights loaded and warmed up")
    async def readyz(request: Request) -> Health:
        ready_engine(request)
        return Health(status="ready")

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics_route(request: Request) -> Response:
        engine: Engine = request.app.state.engine
        metrics.queue_depth.set(engine.queue_depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
