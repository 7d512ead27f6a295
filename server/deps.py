"""What every route needs before it runs, shared by /v1 (`server.app`) and the v2 protocol (`server.v2`): the engine
and the vocode service, readiness, the API key, the query's names, and the client's disconnect."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from fastapi.dependencies.models import Dependant

from .codec import ApiError
from .engine import Engine
from .service import Service
from .settings import Settings


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def ready_engine(request: Request) -> Engine:
    return require_ready(engine_of(request))


def require_ready(engine: Engine) -> Engine:
    if not engine.ready:
        raise ApiError(503, "not ready", engine.not_ready_reason, {"Retry-After": "5"})
    return engine


def ready_service(request: Request) -> Service:
    ready_engine(request)
    return request.app.state.service


def require_api_key(request: Request) -> None:
    """With VOCODER_API_KEY set, /v1 needs `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    settings: Settings = request.app.state.settings
    expected = settings.api_key.get_secret_value() if settings.api_key else ""
    if not expected:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key)",
                       {"WWW-Authenticate": "Bearer"})


def query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    return {p.alias for p in dependant.query_params} | {n for d in dependant.dependencies for n in query_names(d)}


def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a 400 that names it: `?preset=fast` would otherwise be ignored
    and the default served, so a typo would cost quality without a word."""
    known = query_names(request.scope["route"].dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(400, "unknown query parameter",
                       f"{request.url.path} does not take {', '.join(map(repr, unknown))}; "
                       f"it takes {', '.join(sorted(known)) or 'no query parameters'}")


async def disconnected(request: Request) -> None:
    """Resolves when the client goes away (the body has been read, so only http.disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@asynccontextmanager
async def watching(request: Request) -> AsyncIterator[asyncio.Future]:
    """A future that resolves when the client goes away, for the service's `disconnected`; stopped on exit."""
    watcher = asyncio.ensure_future(disconnected(request))
    try:
        yield watcher
    finally:
        watcher.cancel()
