"""The audition page: `GET /` serves one self-contained HTML page (no build step, no CDN) that calls the API.

Upload a WAV/FLAC (sent to `/v1/mel`) or a `.npy` mel, or load a bundled example mel; pick rho with the
presets or a log slider (the step count comes from `/v1/schedules`); hear and see each result beside
the input mel, and fast / balanced / quality side by side.

The examples are mels, not audio: the first seconds of three held-out LJ Speech clips (valid.txt), made
with `python -m model.mel` and stored as float16 `.npy` in `server/static/examples/`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from .codec import ApiError, NPY_MEDIA

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLES = STATIC / "examples"

router = APIRouter(include_in_schema=False)


@cache
def page() -> str:
    return (STATIC / "audition.html").read_text()


def examples() -> dict[str, Path]:
    return {p.stem: p for p in sorted(EXAMPLES.glob("*.npy"))}


@router.get("/", response_class=HTMLResponse)
async def audition() -> HTMLResponse:
    return HTMLResponse(page())


@router.get("/demo/examples")
async def example_list() -> list[str]:
    return list(examples())


@router.get("/demo/examples/{name}")
async def example(name: str) -> Response:
    path = examples().get(name)  # looked up by name among the bundled files: no path ever comes from the client
    if path is None:
        raise ApiError(404, "not found", f"no example mel {name!r}; see /demo/examples")
    return Response(path.read_bytes(), media_type=NPY_MEDIA)
