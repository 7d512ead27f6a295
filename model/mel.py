"""Mel arrays as the vocoder's input: validation of client `.npy` files, and the `model.mel` CLI.

    python -m model.mel IN.wav -o MEL.npy

writes the project's log-mel (see `model.audio`) of a recording as a float32 (80, frames) `.npy`,
the same input a TTS front end would send. `parse_mel_npy` / `validate_mel` are the one place where
untrusted mel input is checked (by `model.synth` and the server alike): the `.npy` header is parsed here,
strictly, so any malformed file is a `MelError` and nothing else; nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np

from .audio import N_MELS, SAMPLE_RATE, AudioError, load_audio, mel_spectrogram
from .detect import transposed

NPY_MAGIC = b"\x93NUMPY"
#: Dimensions a `.npy` header may declare (numpy's own limit is 64; a mel has 2 or 3).
MAX_DIMS = 8


class MelError(ValueError):
    """A mel input that is not a finite float (n_mels, frames) array."""


def validate_mel(array: np.ndarray, n_mels: int = N_MELS, max_frames: int | None = None) -> np.ndarray:
    """A finite float16/32/64 mel of shape (n_mels, F) or (1, n_mels, F), 1 <= F <= max_frames -> float32 (n_mels, F)."""
    if not isinstance(array, np.ndarray):
        raise MelError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype.kind != "f":
        raise MelError(f"mel must be float16, float32 or float64, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] != n_mels:
        turned = " (it looks transposed: send (n_mels, frames), e.g. Rayhane's saved (frames, 80) arrays .T)" \
            if transposed(array.shape, n_mels) else ""
        raise MelError(f"mel must have shape ({n_mels}, frames) or (1, {n_mels}, frames), got {array.shape}{turned}")
    if array.shape[1] == 0:
        raise MelError("mel has zero frames")
    if max_frames is not None and array.shape[1] > max_frames:
        raise MelError(f"mel has {array.shape[1]} frames; the limit is {max_frames}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes Inf, refused just below
        mel = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(mel)):
        raise MelError("mel contains NaN or Inf values (or values beyond float32 range)")
    return mel


#: The header dict numpy writes: exactly these three keys, in any order, with literal values only.
_HEADER_ITEM = re.compile(r"""\s*['"](descr|fortran_order|shape)['"]\s*:\s*(?:'([^'"]*)'|"([^'"]*)"|(True|False)|"""
                          r"""\(\s*((?:\d+\s*,\s*)*(?:\d+\s*)?)\))\s*(?:,|$)""")
_SIMPLE_DESCR = re.compile(r"^[<>|=]?[a-zA-Z]\d{0,2}$")


def _npy_header(data: bytes) -> tuple[np.dtype, bool, tuple[int, ...], int]:
    """(dtype, fortran_order, shape, data offset) of a `.npy` file, read strictly by this module.

    numpy's own reader hands the header to Python's tokenizer and `literal_eval`, which throw whatever a
    corrupt header provokes (TokenError, SyntaxError, MemoryError...). Here the header is bytes in, a
    `MelError` out: magic, version, length, then a dict of exactly descr, fortran_order and shape.
    """
    if len(data) < 10 or not data.startswith(NPY_MAGIC):
        raise MelError("not a .npy file (expected a numpy array saved with numpy.save)")
    major = data[6]
    if major not in (1, 2, 3) or data[7] != 0:
        raise MelError(f"unsupported .npy format version {major}.{data[7]}")
    size_bytes = 2 if major == 1 else 4
    start = 8 + size_bytes
    length = int.from_bytes(data[8:start], "little")
    if len(data) < start + length:
        raise MelError(f".npy header declares {length} bytes but the file ends first")
    try:
        text = data[start:start + length].decode("latin1" if major < 3 else "utf8").strip()
    except UnicodeDecodeError:
        raise MelError(".npy header is not text") from None
    if not (text.startswith("{") and text.endswith("}")):
        raise MelError(".npy header is not a dict")
    items, body = {}, text[1:-1].strip()
    while body:
        m = _HEADER_ITEM.match(body)
        if m is None or m.group(1) in items:
            raise MelError(f".npy header is not numpy's dict of descr, fortran_order and shape: {text[:80]!r}")
        key, value = m.group(1), m.group(2) or m.group(3) or m.group(4) or m.group(5)
        items[key] = m.group(5) if key == "shape" else value
        body = body[m.end():].strip()
    if set(items) != {"descr", "fortran_order", "shape"} or items["fortran_order"] not in ("True", "False") \
            or not isinstance(items["descr"], str) or not _SIMPLE_DESCR.match(items["descr"]):
        raise MelError(f".npy header has missing or malformed keys: {text[:80]!r}")
    try:
        dtype = np.dtype(items["descr"])
    except TypeError:
        raise MelError(f"unknown .npy dtype {items['descr']!r}") from None
    dims = items["shape"].replace(",", " ").split()
    if len(dims) > MAX_DIMS or any(len(n) > 18 for n in dims):  # int() stops at 4,300 digits, numpy at 64 dims
        raise MelError(f".npy header declares an impossible shape: {text[:80]!r}")
    return dtype, items["fortran_order"] == "True", tuple(map(int, dims)), start + length


def read_npy(data: bytes) -> np.ndarray:
    """The array of a `.npy` file's bytes, or a MelError; never unpickled, never allocated beyond the body."""
    dtype, fortran, shape, offset = _npy_header(data)
    if dtype.hasobject:
        raise MelError("object arrays are refused (nothing sent to this server is ever unpickled)")
    if math.prod(shape) * dtype.itemsize != len(data) - offset:
        raise MelError(f"header declares shape {shape} of {dtype} but {len(data) - offset} data bytes follow")
    array = np.frombuffer(data, dtype=dtype, offset=offset, count=math.prod(shape))
    try:
        array = array.reshape(shape, order="F" if fortran else "C")
    except ValueError:  # an empty array whose other dimensions pass numpy's size limit
        raise MelError(f"header declares an impossible shape {shape}") from None
    return array.copy()  # writable, and free of `data`


def parse_mel_npy(data: bytes, n_mels: int = N_MELS, max_frames: int | None = None) -> np.ndarray:
    """The bytes of a `.npy` file -> validated float32 (n_mels, F); any malformed input is a MelError."""
    return validate_mel(read_npy(data), n_mels, max_frames)


def read_mel_file(path: str | Path, n_mels: int = N_MELS) -> np.ndarray:
    """A `.npy` mel file from disk, validated; an unreadable path is a MelError too."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise MelError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_mel_npy(data, n_mels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.mel", description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path, help="audio file (wav/flac/...), resampled to 22050 Hz mono")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output .npy, float32 (80, frames)")
    args = ap.parse_args(argv)
    try:
        wav = load_audio(args.input)
    except AudioError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2
    mel = mel_spectrogram(wav).numpy().astype(np.float32)
    with open(args.output, "wb") as f:  # a file object, so numpy does not append ".npy" to the name
        np.save(f, mel, allow_pickle=False)
    print(f"{args.output}: mel {mel.shape[0]} x {mel.shape[1]} frames ({len(wav) / SAMPLE_RATE:.2f} s of audio)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
