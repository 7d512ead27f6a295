"""What a vocode answer is encoded as: sample rate, container and sample encoding, checked once per request.

The net makes audio at its own rate (22050 Hz); other rates are resampled (`model.audio.Resampler`, soxr) before
encoding. A stream resamples chunk by chunk with the filter's state kept, so its samples are the whole answer's
and its header, sent first, has the exact length. Bad values and combinations are 400s that list the allowed ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Query

from model.audio import (Resampler, encode_audio, raw_samples, resample, resampled_length, wav_header,
                         wav_padding)

from .codec import ApiError

RATES = (8000, 16000, 22050, 24000, 44100, 48000)
#: libsndfile writes Opus only at 8, 12, 16, 24 or 48 kHz: of `RATES`, these.
OPUS_RATES = (8000, 16000, 24000, 48000)
OPUS_DEFAULT_RATE = 48000
FORMATS = ("wav", "flac", "ogg-opus")
ENCODINGS = ("pcm16", "mulaw")
MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "ogg-opus": "audio/ogg; codecs=opus"}


def _listing(values: Iterable[object]) -> str:
    return ", ".join(map(str, values))


def check_rate(rate: int | None, allowed: tuple[int, ...] = RATES, why: str = "") -> int | None:
    """The asked output rate (None: the net's own), or a 400 naming the allowed ones."""
    if rate is not None and rate not in allowed:
        raise ApiError(400, "invalid sample_rate", f"sample_rate {rate} is not offered{why}; choose one of "
                                                   f"{_listing(allowed)}")
    return rate


def fit(wav: np.ndarray, samples: int) -> np.ndarray:
    """`wav` cut or zero-padded to exactly `samples`: the length a header promised."""
    return wav[:samples] if len(wav) >= samples else np.pad(wav, (0, samples - len(wav)))


def resample_exact(wav: np.ndarray, native: int, rate: int) -> np.ndarray:
    """A whole waveform at `rate`, exactly `resampled_length` samples (what a stream of it sends)."""
    return fit(resample(wav, native, rate), resampled_length(len(wav), native, rate))


@dataclass(frozen=True)
class Output:
    format: str
    encoding: str
    sample_rate: int | None  # None: the net's own rate (22050 Hz); ogg-opus resolves it to 48000

    @property
    def media_type(self) -> str:
        return MEDIA[self.format]

    def rate(self, native: int) -> int:
        return self.sample_rate or native

    def encode(self, wav: np.ndarray, native: int) -> bytes:
        """The whole answer's bytes."""
        rate = self.rate(native)
        return encode_audio(resample_exact(wav, native, rate), rate, self.format, self.encoding)

    def streamer(self, samples: int, native: int) -> StreamEncoder:
        return StreamEncoder(self, samples, native)


class StreamEncoder:
    """A streamed WAV's bytes: its exact header first, then each chunk's samples as the chunk arrives (resampled
    with state, so the chunks join exactly), then the filter's tail and any RIFF pad byte."""

    def __init__(self, output: Output, samples: int, native: int) -> None:
        self.encoding, self.rate = output.encoding, output.rate(native)
        self.total, self.sent = resampled_length(samples, native, self.rate), 0
        self.resampler = Resampler(native, self.rate)

    def header(self) -> bytes:
        return wav_header(self.total, self.rate, self.encoding)

    def feed(self, wav: np.ndarray) -> bytes:
        return self._send(self.resampler.feed(wav))

    def finish(self) -> bytes:
        tail = self.resampler.feed(np.zeros(0, np.float32), last=True)
        return self._send(fit(tail, self.total - self.sent)) + wav_padding(self.total, self.encoding)

    def _send(self, wav: np.ndarray) -> bytes:
        wav = wav[:self.total - self.sent]
        self.sent += len(wav)
        return raw_samples(wav, self.encoding)


def output_for(format: str, encoding: str, sample_rate: int | None, stream: bool = False) -> Output:
    """The request's output, or a 400 that says which values and combinations are allowed."""
    if format not in FORMATS:
        raise ApiError(400, "invalid format", f"format {format!r} is not offered; choose one of {_listing(FORMATS)}")
    if encoding not in ENCODINGS:
        raise ApiError(400, "invalid encoding", f"encoding {encoding!r} is not offered; choose one of "
                                                f"{_listing(ENCODINGS)}")
    if stream and format != "wav":
        raise ApiError(400, "invalid format", "a stream is a WAV (pcm16 or mulaw): its header is exact up front and "
                                              f"samples follow; ask /v1/vocode for {format}")
    if encoding == "mulaw" and format != "wav":
        raise ApiError(400, "invalid encoding", f"mulaw is a WAV encoding; with format={format} use encoding=pcm16")
    if format == "ogg-opus":
        return Output(format, encoding, check_rate(sample_rate or OPUS_DEFAULT_RATE, OPUS_RATES,
                                                   " for ogg-opus (libsndfile's Opus rates)"))
    return Output(format, encoding, check_rate(sample_rate))


FormatQuery = Annotated[str, Query(description=f"audio container: {' | '.join(FORMATS)}")]
EncodingQuery = Annotated[str, Query(description="samples: pcm16 (16-bit PCM) or mulaw (8-bit G.711 mu-law, WAV "
                                                 "only; telephony)")]
RateQuery = Annotated[int | None, Query(description=f"output sample rate, one of {_listing(RATES)}; default the "
                                                    f"net's (22050), or 48000 for ogg-opus "
                                                    f"({_listing(OPUS_RATES)} only)")]


def vocode_output(format: FormatQuery = "wav", encoding: EncodingQuery = "pcm16",
                  sample_rate: RateQuery = None) -> Output:
    """/v1/vocode's output query parameters (a FastAPI dependency)."""
    return output_for(format, encoding, sample_rate)


def stream_output(format: FormatQuery = "wav", encoding: EncodingQuery = "pcm16",
                  sample_rate: RateQuery = None) -> Output:
    """/v1/vocode/stream's: a WAV, pcm16 or mulaw."""
    return output_for(format, encoding, sample_rate, stream=True)
