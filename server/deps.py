"""What every route needs before it runs, shared by /v1 (`server.app`) and the v2 protocol (`server.v2`): the engine,
readiness, the API key, the query's names, the client's disconnect, and a request's synthesis plan."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.dependencies.models import Dependant

from model.checkpoint import CheckpointError
from model.schedules import Schedule

from .codec import ApiError
from .engine import Engine, Plan
from .settings import Settings


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def ready_engine(request: Request) -> Engine:
    engine = engine_of(request)
    if not engine.ready:
        raise ApiError(503, "not ready", engine.not_ready_reason, {"Retry-After": "5"})
    return engine


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


async def schedule_for(engine: Engine, value: float | str | None) -> tuple[float, Schedule, bool]:
    """(canonical rho, schedule, cache hit) with the client's mistakes as 400s."""
    try:
        rho = engine.resolve_rho(value)
    except ValueError as e:
        raise ApiError(400, "invalid rho", str(e)) from None
    try:
        schedule, hit = await engine.cache.get(rho)
    except (CheckpointError, ValueError) as e:
        raise ApiError(400, "rho not available", f"cannot make a schedule for rho={rho:g}: {e}") from None
    return rho, schedule, hit


async def plan_for(engine: Engine, method: str, rho: float | str | None, refine: int | None) -> tuple[Plan, bool]:
    """(how to synthesise, schedule cache hit): rho's schedule and the refinements, or projection alone."""
    iterations = engine.resolve_refine(rho, refine)
    if method == "projection":
        return Plan(None, None, iterations), False
    rho_used, schedule, hit = await schedule_for(engine, rho)
    return Plan(rho_used, schedule, iterations), hit
