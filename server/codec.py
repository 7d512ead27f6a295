"""Request bodies in, bytes out: capped body reads, mel decoding by content type, npy/audio encoding.

Mel validation itself lives in `model.mel` (shared with the offline CLI); this module only maps its
errors, and the body-size and frame limits, onto HTTP statuses.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from fastapi import Request
from pydantic import ValidationError

from model.mel import MelError, parse_mel_npy, validate_mel

from .schemas import VocodeBody

NPY_TYPES = frozenset({"application/x-npy", "application/octet-stream"})
JSON_TYPE = "application/json"
AUDIO_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac",
                         "application/octet-stream"})
NPY_MEDIA = "application/x-npy"


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


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 before reading when Content-Length says it is too big, and cut off past `limit`."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "payload too large", f"the request body exceeds the {limit}-byte limit")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def check_frames(mel: np.ndarray, max_frames: int) -> np.ndarray:
    if mel.shape[-1] > max_frames:
        raise ApiError(413, "mel too long", f"the mel has {mel.shape[-1]} frames; this server accepts at most "
                       f"{max_frames} (~{max_frames * 256 / 22050:.0f} s of audio)")
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


def decode_npy(body: bytes, n_mels: int) -> np.ndarray:
    try:
        return parse_mel_npy(body, n_mels)
    except MelError as e:
        raise ApiError(422, "invalid mel", str(e)) from None


def decode_json(body: bytes, n_mels: int) -> tuple[np.ndarray, VocodeBody]:
    """A JSON {"mel": [[...], ...], "rho": ..., "seed": ...} -> (float32 mel, the parsed body)."""
    try:
        parsed = VocodeBody.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["loc"] and first["loc"][0] in ("rho", "seed", "refine"):  # a bad knob, as in the query: 400
            raise ApiError(400, f"invalid {first['loc'][0]}", f"{where}: {first['msg']}") from None
        raise ApiError(422, "invalid JSON body", f"{where}: {first['msg']}") from None
    try:
        return validate_mel(np.asarray(parsed.mel, dtype=np.float64), n_mels), parsed
    except (MelError, ValueError) as e:  # ValueError: ragged rows
        raise ApiError(422, "invalid mel", str(e).split("\n")[0]) from None


def encode_npy(mel: np.ndarray) -> bytes:
    """The project's mel file format: float32 (n_mels, frames), never pickled."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(mel, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
