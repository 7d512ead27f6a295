"""Client JSON, parsed strictly and in small pieces: runs of numbers straight into float32, everything else as JSON.

Why not `json.loads` or pydantic's `model_validate_json` on the whole body: one C call holds the GIL for the whole
document (a maximal mel is ~26 MB of text), so even from another thread it stalls the event loop and /healthz; it
builds a 32-byte Python float per value (a 32 MiB body of zeros cost +1.15 GB); and a duplicate key silently takes its
last value. Here objects, keys and nesting are walked in Python, and each run of plain numbers (a mel's row, a v2
tensor's flat `data`) is read in pieces of at most `PIECE` bytes into float32: the GIL is free between pieces, memory
is 4 bytes a value, and JSON's grammar is kept (no NaN, no trailing commas, no duplicate keys, `true` is not a number).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
from pydantic_core import from_json

#: Bytes of a run of numbers parsed in one call (~0.2 ms): the longest this thread holds the GIL.
PIECE = 1 << 16
#: A shorter array of numbers stays a list of Python ints and floats (a v2 `shape`), read item by item.
SHORT = 256
#: Nesting deeper than any valid body (a v2 tensor's nested `data` is 3 deep, inside 3 levels of the request).
MAX_DEPTH = 12
#: Items of an array that is not a run of numbers (a mel's rows, v2's inputs): more is no valid body.
MAX_ITEMS = 4096
#: Longest string or number token: keys, preset names and ids are short, and int() stops at 4,300 digits.
MAX_TOKEN = 1024

_WS = re.compile(rb"[ \t\n\r]*")
_NUMBER_CHARS = re.compile(rb"[-+0-9.eE, \t\n\r]*")
_NUMBER_START = re.compile(rb"[-0-9]")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,%d}"' % MAX_TOKEN)
_LITERALS = ((b"true", True), (b"false", False), (b"null", None))


class JsonError(ValueError):
    """Bytes that are not the JSON this server reads."""


def loads(data: bytes) -> Any:
    """A JSON document; each array of plain numbers becomes a float32 1-D numpy array, the rest is what `json` gives."""
    reader = _Reader(data)
    value = reader.value(0)
    reader.skip_ws()
    if reader.pos != len(data):
        raise JsonError(f"unexpected data after the JSON value at byte {reader.pos}")
    return value


def numbers(value: Any, what: str) -> np.ndarray:
    """A parsed JSON array of numbers, nested or flat (`loads` made each innermost run one array) -> float32 ndarray."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list):
        parts = [numbers(v, what) for v in value]
        if len({p.shape for p in parts}) > 1:
            raise JsonError(f"{what} is not an array of numbers: its rows have different lengths")
        return np.stack(parts) if parts else np.zeros(0, np.float32)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _float32([value])[0]
    raise JsonError(f"{what} is not an array of numbers ({type(value).__name__} in it)")


def _float32(values: list[int | float]) -> np.ndarray:
    """JSON numbers as float32; past its range Inf (as JSON's 1e999 is), which the mel's check then refuses."""
    with np.errstate(over="ignore"):
        try:
            return np.array(values, np.float32)
        except OverflowError:  # an int past float64's range
            return np.array([v if abs(v) < 1e308 else math.inf if v > 0 else -math.inf for v in values], np.float32)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def skip_ws(self) -> None:
        self.pos = _WS.match(self.data, self.pos).end()

    def fail(self, what: str) -> JsonError:
        return JsonError(f"{what} at byte {self.pos}")

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(f"JSON nested more than {MAX_DEPTH} deep")
        self.skip_ws()
        first = self.data[self.pos:self.pos + 1]
        if first == b"{":
            return self.object(depth + 1)
        if first == b"[":
            return self.array(depth + 1)
        if first == b'"':
            return self.string()
        for literal, value in _LITERALS:
            if self.data.startswith(literal, self.pos):
                self.pos += len(literal)
                return value
        match = _NUMBER.match(self.data, self.pos, self.pos + MAX_TOKEN + 1)
        if match is None or match.end() - match.start() > MAX_TOKEN:
            raise self.fail("not a JSON value" if match is None else "number too long")
        self.pos = match.end()
        return json.loads(match.group())

    def string(self) -> str:
        match = _STRING.match(self.data, self.pos)
        if match is None:
            raise self.fail(f"not a JSON string (or longer than {MAX_TOKEN} characters)")
        self.pos = match.end()
        try:
            text = json.loads(match.group())
            text.encode()  # a lone surrogate ("\\ud800") could not be written back in an answer
        except ValueError:  # invalid UTF-8, a lone surrogate (UnicodeEncodeError)
            raise self.fail("not a valid string") from None
        return text

    def object(self, depth: int) -> dict[str, Any]:
        self.pos += 1
        out: dict[str, Any] = {}
        self.skip_ws()
        if self.data.startswith(b"}", self.pos):
            self.pos += 1
            return out
        while True:
            self.skip_ws()
            key = self.string()
            if key in out:
                raise self.fail(f"duplicate key {key!r}")
            self.skip_ws()
            if not self.data.startswith(b":", self.pos):
                raise self.fail("expected ':'")
            self.pos += 1
            out[key] = self.value(depth)
            if self.separator(b"}"):
                return out

    def separator(self, close: bytes) -> bool:
        """After an item: True at the closing bracket, False at a comma (consumed either way)."""
        self.skip_ws()
        mark = self.data[self.pos:self.pos + 1]
        if mark not in (b",", close):
            raise self.fail(f"expected ',' or {close.decode()!r}")
        self.pos += 1
        return mark == close

    def array(self, depth: int) -> list[Any] | np.ndarray:
        self.pos += 1
        self.skip_ws()
        if self.data.startswith(b"]", self.pos):
            self.pos += 1
            return []
        run = self.number_run()
        if run is not None:
            return run
        out: list[Any] = []
        while True:
            if len(out) == MAX_ITEMS:
                raise self.fail(f"an array of more than {MAX_ITEMS} items that are not all numbers")
            out.append(self.value(depth))
            if self.separator(b"]"):
                return out

    def number_run(self) -> np.ndarray | None:
        """The rest of an array when it is numbers only (pos just inside '['), read piece by piece; else None."""
        end = self.data.find(b"]", self.pos)
        if end - self.pos <= SHORT or not _NUMBER_START.match(self.data, self.pos):
            return None
        pieces, start = [], self.pos
        while start < end:
            cut = end if end - start <= PIECE else self.data.find(b",", start + PIECE, end)
            cut = end if cut < 0 else cut
            if cut - start > PIECE + MAX_TOKEN:
                raise self.fail("number too long")
            chunk = self.data[start:cut]
            if _NUMBER_CHARS.fullmatch(chunk) is None:
                return None  # not a run of numbers after all: the caller reads the array item by item
            try:  # only number characters: JSON's grammar refuses "1,,2", "1,]", "01", ".5", "1e"
                values = from_json(b"[" + chunk + b"]", allow_inf_nan=False)  # pydantic's parser: 6x json's speed
            except ValueError as e:
                self.pos = start
                raise self.fail(f"malformed number ({str(e).split(':')[0]})") from None
            if not values:
                raise self.fail("an empty item in an array of numbers")
            pieces.append(_float32(values))
            start = cut + 1
        self.pos = end + 1
        return np.concatenate(pieces)
