"""Mel arrays as the vocoder's input: validation of client `.npy` files, and the `model.mel` CLI.

    python -m model.mel IN.wav -o MEL.npy

writes the project's log-mel (see `model.audio`) of a recording as a float32 (80, frames) `.npy`,
the same input a TTS front end would send. `parse_mel_npy` / `validate_mel` are the one place where
untrusted mel input is checked (by `model.synth` and the server alike); nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

import numpy as np

from .audio import N_MELS, SAMPLE_RATE, AudioError, load_audio, mel_spectrogram

NPY_MAGIC = b"\x93NUMPY"


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
        raise MelError(f"mel must have shape ({n_mels}, frames) or (1, {n_mels}, frames), got {array.shape}")
    if array.shape[1] == 0:
        raise MelError("mel has zero frames")
    if max_frames is not None and array.shape[1] > max_frames:
        raise MelError(f"mel has {array.shape[1]} frames; the limit is {max_frames}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes Inf, refused just below
        mel = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(mel)):
        raise MelError("mel contains NaN or Inf values (or values beyond float32 range)")
    return mel


def _check_npy_size(data: bytes) -> None:
    """The header must declare exactly the bytes that follow it, checked before numpy allocates anything:
    a small body declaring a huge shape would otherwise be a MemoryError (or a large allocation)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if not dtype.hasobject and math.prod(shape) * dtype.itemsize != len(data) - f.tell():
        raise ValueError(f"header declares shape {shape} of {dtype} but {len(data) - f.tell()} data bytes follow")


def parse_mel_npy(data: bytes, n_mels: int = N_MELS, max_frames: int | None = None) -> np.ndarray:
    """The bytes of a `.npy` file -> validated float32 (n_mels, F); pickled/object data is refused."""
    if not data.startswith(NPY_MAGIC):
        raise MelError("not a .npy file (expected a numpy array saved with numpy.save)")
    try:
        _check_npy_size(data)
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise MelError(f"cannot read .npy data: {e}") from None
    return validate_mel(array, n_mels, max_frames)


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
