"""Request bodies in, bytes out: capped body reads, mel decoding by content type, npy/audio encoding.

Mel validation itself lives in `model.mel` (shared with the offline CLI), JSON reading in `server.jsonparse`; this
module maps their errors, and the body-size and frame limits, onto HTTP statuses. The decoders are plain functions
that routes run off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
from fastapi import Request
from pydantic import ValidationError

from model.contract import MelSpec
from model.mel import MelError, parse_mel_npy, validate_mel

from . import jsonparse
from .jsonparse import JsonError
from .schemas import VocodeBody

NPY_TYPES = frozenset({"application/x-npy", "application/octet-stream"})
JSON_TYPE = "application/json"
AUDIO_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac",
                         "application/octet-stream"})
NPY_MEDIA = "application/x-npy"
#: Bytes one mel value may take in a JSON body: "-1.2345678901234567e-05" (23), its comma, a newline and an indent.
JSON_BYTES_PER_VALUE = 32
#: Bytes of a JSON body besides its values: brackets, keys, knobs, v2's tensor description.
JSON_OVERHEAD = 64 * 1024


class ApiError(Exception):
    """An error the client can act on: rendered as {"error": ..., "detail": ...} with `status`."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_media_type(request: Request, accepted: frozenset[str], hint: str) -> str:
    kind = media_type(request)
    if kind not in accepted:
        raise ApiError(415, "unsupported media type",
                       f"Content-Type {kind or '(none)'!r} is not accepted here; send {hint}")
    return kind


#: One thread parses bodies, one at a time: parsers in parallel would only take turns at the GIL, and each one more
#: makes the event loop (and /healthz) wait longer for it.
_parser = ThreadPoolExecutor(1, thread_name_prefix="parse-body")


async def off_loop(decode, *args):
    """`decode(*args)` on the body-parsing thread."""
    return await asyncio.get_running_loop().run_in_executor(_parser, decode, *args)


def json_limit(n_mels: int, max_frames: int, max_body: int) -> int:
    """The largest JSON body: a mel of `max_frames` frames however it is formatted (and never more than `max_body`)."""
    return min(max_body, n_mels * max_frames * JSON_BYTES_PER_VALUE + JSON_OVERHEAD)


async def read_body(request: Request, limit: int, what: str = "request body") -> bytearray:
    """The body, refused with 413 before reading when Content-Length says it is too big, and cut off past `limit`."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "payload too large", f"the {what} exceeds the {limit}-byte limit")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
            raise ApiError(400, "bad request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_big
    body = bytearray()  # grown in place: never the chunks and their join at once
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise too_big
        body += chunk
    return body


def check_frames(mel: np.ndarray, max_frames: int, spec: MelSpec = MelSpec()) -> np.ndarray:
    if mel.shape[-1] > max_frames:
        raise ApiError(413, "mel too long", f"the mel has {mel.shape[-1]} frames; this server accepts at most "
                       f"{max_frames} (~{max_frames * spec.hop / spec.sample_rate:.0f} s of audio)")
    return mel


def audio_frames(body: bytes, sample_rate: int, hop: int) -> int | None:
    """Mel frames the audio would give at `sample_rate`, from its header alone (None when unreadable).

    Checked before decoding: resampling multiplies a low-rate file's length (a 60 kB WAV at 1 Hz is 6.6e8
    samples at 22050 Hz), so a small body must not buy minutes of CPU and gigabytes of memory."""
    try:
        info = sf.info(io.BytesIO(body))
    except Exception:  # noqa: BLE001  untrusted bytes; `load_audio` then says what is wrong with them
        return None
    return int(info.frames * sample_rate / info.samplerate) // hop if info.samplerate > 0 else None


def decode_npy(body: bytes | bytearray, n_mels: int) -> np.ndarray:
    try:
        return parse_mel_npy(body, n_mels)
    except MelError as e:
        raise ApiError(422, "invalid mel", str(e)) from None


def parse_json(body: bytes | bytearray, max_values: int):
    """A JSON body (`jsonparse.loads`: numbers as float32, piece by piece) of at most `max_values` numbers, counted
    before parsing so that memory follows the mel, not the text; more is a 413, malformed JSON a JsonError."""
    if body.count(b",") > max_values + 1024:
        raise ApiError(413, "mel too long", f"the JSON body holds more than the {max_values} values of the longest mel "
                       "this server accepts")
    return jsonparse.loads(body)


def decode_json(body: bytes | bytearray, max_values: int) -> tuple[np.ndarray, VocodeBody]:
    """A JSON {"mel": [[...], ...], "rho": ..., "seed": ..., "refine": ..., "mel_format": ...} of at most
    `max_values` numbers -> (its mel as float32, still to be checked in its contract by `json_mel`; its knobs)."""
    try:
        doc = parse_json(body, max_values)
    except JsonError as e:
        raise ApiError(422, "invalid JSON body", str(e)) from None
    if not isinstance(doc, dict) or "mel" not in doc:
        raise ApiError(422, "invalid JSON body", 'the body is an object {"mel": [[...], ...]} (and rho, seed, refine, '
                       'mel_format)')
    try:
        mel = jsonparse.numbers(doc.pop("mel"), "mel")
    except JsonError as e:
        raise ApiError(422, "invalid mel", str(e)) from None
    try:
        parsed = VocodeBody.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["loc"] and first["loc"][0] in ("rho", "seed", "refine", "mel_format"):  # a bad knob: 400
            raise ApiError(400, f"invalid {first['loc'][0]}", f"{where}: {first['msg']}") from None
        raise ApiError(422, "invalid JSON body", f"{where}: {first['msg']}") from None
    return mel, parsed


def json_mel(mel: np.ndarray, n_mels: int) -> np.ndarray:
    """A JSON body's mel checked as float32 (n_mels, F) in its contract."""
    try:
        return validate_mel(mel, n_mels)
    except MelError as e:
        raise ApiError(422, "invalid mel", str(e)) from None


def encode_npy(mel: np.ndarray) -> bytes:
    """The project's mel file format: float32 (n_mels, frames), never pickled."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(mel, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
