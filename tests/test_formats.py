"""Output formats: sample rates through soxr, WAV/FLAC/Ogg Opus, pcm16 and mu-law; streams whose chunks join exactly
after resampling and whose header is the whole file's; 400s that list what is allowed. Decoded with soundfile."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from model.audio import HOP, N_MELS, SAMPLE_RATE, Resampler, resample, resampled_length
from server import Settings, create_app
from server.formats import OPUS_RATES, RATES, output_for

NPY = {"Content-Type": "application/x-npy"}


def mel(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def speechy(samples: int, seed: int = 0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0, 0.3, samples), -1, 1).astype(np.float32)


def pieces(wav: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    edges = [0, *itertools.accumulate(sizes)]
    return [wav[a:b] for a, b in zip(edges, edges[1:])] + [wav[edges[-1]:]]


@pytest.fixture(scope="module")
def client(tiny_weights):
    with TestClient(create_app(Settings(weights=tiny_weights, device="cpu"))) as c:
        while c.get("/readyz").status_code != 200:
            pass
        yield c


@pytest.mark.parametrize("rate", RATES)
def test_a_resampled_stream_is_the_whole_signal_resampled(rate):
    wav = speechy(40 * HOP + 7)
    whole = resample(wav, SAMPLE_RATE, rate)
    assert len(whole) == resampled_length(len(wav), SAMPLE_RATE, rate)
    resampler = Resampler(SAMPLE_RATE, rate)
    parts = [resampler.feed(p) for p in pieces(wav, [86 * 2, 1, 4000, 333, 0])]  # stream-like and odd chunks
    streamed = np.concatenate([*parts, resampler.feed(np.zeros(0, np.float32), last=True)])
    assert np.array_equal(streamed, whole)


@pytest.mark.parametrize("encoding, rate", [("pcm16", 22050), ("pcm16", 16000), ("mulaw", 8000), ("mulaw", 44100)])
@pytest.mark.parametrize("samples", [20 * HOP, 20 * HOP + 1], ids=["even", "odd"])
def test_a_streamed_wav_is_byte_for_byte_the_whole_file(encoding, rate, samples):
    """For the same audio the header, the chunks, the resampler's tail and the RIFF pad byte are the whole file."""
    output, wav = output_for("wav", encoding, rate), speechy(samples, seed=samples)
    encoder = output.streamer(samples, SAMPLE_RATE)
    streamed = encoder.header() + b"".join(encoder.feed(p) for p in pieces(wav, [3 * HOP, 5 * HOP + 3])) \
        + encoder.finish()
    assert streamed == output.encode(wav, SAMPLE_RATE)
    assert len(encoder.header()) == (44 if encoding == "pcm16" else 58)


CASES = [("wav", "pcm16", r) for r in RATES] + [("wav", "mulaw", 8000), ("wav", "mulaw", 16000),
                                                ("flac", "pcm16", 16000), ("flac", "pcm16", 48000)] \
    + [("ogg-opus", "pcm16", r) for r in OPUS_RATES]


@pytest.mark.parametrize("fmt, encoding, rate", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_every_format_decodes_at_its_rate_and_length(client, fmt, encoding, rate):
    frames = 9
    r = client.post("/v1/vocode", content=npy(mel(frames)), headers=NPY,
                    params={"seed": 1, "format": fmt, "encoding": encoding, "sample_rate": rate})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith({"wav": "audio/wav", "flac": "audio/flac",
                                                  "ogg-opus": "audio/ogg"}[fmt])
    info = sf.info(io.BytesIO(r.content))
    subtype = {"pcm16": "PCM_16", "mulaw": "ULAW"}[encoding] if fmt != "ogg-opus" else "OPUS"
    assert (info.samplerate, info.subtype) == (rate, subtype)
    audio, sr = sf.read(io.BytesIO(r.content))
    assert sr == rate and len(audio) == round(frames * HOP * rate / SAMPLE_RATE)


def test_opus_defaults_to_48k_and_pcm16_at_22050_is_the_old_answer(client):
    r = client.post("/v1/vocode", content=npy(mel(6)), headers=NPY, params={"format": "ogg-opus"})
    assert sf.info(io.BytesIO(r.content)).samplerate == 48000
    plain = client.post("/v1/vocode", content=npy(mel(6)), headers=NPY, params={"seed": 2}).content
    same = client.post("/v1/vocode", content=npy(mel(6)), headers=NPY,
                       params={"seed": 2, "sample_rate": 22050, "encoding": "pcm16"}).content
    assert plain == same


@pytest.mark.parametrize("encoding, rate", [("mulaw", 8000), ("pcm16", 16000), ("pcm16", 48000)])
def test_the_stream_is_the_whole_answer(client, encoding, rate):
    """The header byte for byte, the length exactly, the samples to one quantisation step (the streamed synthesis
    differs from the whole by float rounding, `test_streaming`)."""
    m, params = mel(200, seed=3), {"seed": 4, "rho": "fast", "encoding": encoding, "sample_rate": rate}
    whole = client.post("/v1/vocode", content=npy(m), headers=NPY, params=params).content
    with client.stream("POST", "/v1/vocode/stream", content=npy(m), headers=NPY, params=params) as r:
        assert r.status_code == 200
        streamed = b"".join(r.iter_bytes())
    head = 44 if encoding == "pcm16" else 58
    assert len(streamed) == len(whole) and streamed[:head] == whole[:head]
    (a, _), (b, _) = (sf.read(io.BytesIO(x), dtype="int16") for x in (streamed, whole))
    assert len(a) == round(200 * HOP * rate / SAMPLE_RATE)
    if encoding == "pcm16":
        assert np.abs(a.astype(int) - b).max() <= 1
    else:  # mu-law: where a value sits on a decision boundary, one code apart
        assert np.mean(streamed[head:] != whole[head:]) < 0.01


BAD = [("/v1/vocode", {"format": "mp3"}, "wav, flac, ogg-opus"),
       ("/v1/vocode", {"encoding": "alaw"}, "pcm16, mulaw"),
       ("/v1/vocode", {"sample_rate": 11025}, "8000, 16000, 22050, 24000, 44100, 48000"),
       ("/v1/vocode", {"sample_rate": "fast"}, "sample_rate"),
       ("/v1/vocode", {"format": "flac", "encoding": "mulaw"}, "WAV"),
       ("/v1/vocode", {"format": "ogg-opus", "sample_rate": 22050}, "8000, 16000, 24000, 48000"),
       ("/v1/vocode/stream", {"format": "flac"}, "WAV"),
       ("/v1/vocode/stream", {"format": "ogg-opus"}, "WAV"),
       ("/v1/vocode/stream", {"sample_rate": 44000}, "44100")]


@pytest.mark.parametrize("route, params, listed", BAD, ids=[f"{r.split('/')[-1]}-{p}" for r, p, _ in BAD])
def test_bad_values_and_combinations_list_the_allowed_ones(client, route, params, listed):
    r = client.post(route, content=npy(mel(4)), headers=NPY, params=params)
    assert r.status_code == 400 and listed in r.json()["detail"], r.text
