"""The coherent start (`model.phase`): PGHI's phase from a true magnitude is close to the recording's, the mel's
magnitude is the filterbank's least-squares inverse, blocks give a stream the whole request's audio, and the
seed keeps its meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, voiced_tone
from model.audio import MelSpec, load_audio, mel_filterbank, mel_spectrogram, stft
from model.phase import BLOCK, CoherentPhase, coherent_start, mel_magnitude, phase_steps, window_gamma
from model.profiles import PROFILES

SPEC = MelSpec()


def held_out(clip: str, seconds: float) -> np.ndarray:
    audio = load_audio(SHARED_DATA / "wavs" / f"{clip}.flac")[:int(seconds * SPEC.sample_rate)]
    return audio[:len(audio) // SPEC.hop * SPEC.hop]


def convergence(audio: torch.Tensor, reference: np.ndarray) -> float:
    """||(|X| - |R|)|| / ||R||: how far a waveform's STFT magnitude is from the reference's."""
    own, ref = (stft(torch.as_tensor(a).reshape(1, -1), SPEC).abs() for a in (audio, reference))
    return float((own - ref).norm() / ref.norm())


def with_magnitude(start: CoherentPhase, magnitude: np.ndarray) -> CoherentPhase:
    """The same heap on a given magnitude (the recording's own, not the mel's inverse)."""
    start.magnitude = magnitude
    start.d_time, start.d_freq, start.level = phase_steps(magnitude, SPEC.n_fft, SPEC.hop, window_gamma(SPEC))
    start.done = start.level < 0
    return start


def test_the_phase_steps_match_a_recordings_own_phase_where_it_is_loud(shared_data):
    audio = held_out("LJ003-0050", 3.0)
    spectrum = stft(torch.from_numpy(audio)[None], SPEC)[0].T.to(torch.complex128).numpy()
    magnitude, phase = np.abs(spectrum), np.angle(spectrum)
    d_time, d_freq, _ = phase_steps(magnitude, SPEC.n_fft, SPEC.hop, window_gamma(SPEC))
    loud = magnitude > 1e-2 * magnitude.max()
    along_time = np.angle(np.exp(1j * (np.diff(phase, axis=0) - 0.5 * (d_time[1:] + d_time[:-1]))))
    along_freq = np.angle(np.exp(1j * (np.diff(phase, axis=1) - 0.5 * (d_freq[:, 1:] + d_freq[:, :-1]))))
    flipped = np.angle(np.exp(1j * (np.diff(phase, axis=1) + 0.5 * (d_freq[:, 1:] + d_freq[:, :-1]))))
    rms = lambda e, mask: float(np.sqrt((e[mask] ** 2).mean()))  # noqa: E731
    # a uniformly random phase error has an RMS of pi / sqrt(3) = 1.81
    assert rms(along_time, loud[1:] & loud[:-1]) < 0.9
    assert rms(along_freq, loud[:, 1:] & loud[:, :-1]) < 0.9 < rms(flipped, loud[:, 1:] & loud[:, :-1])


def test_pghi_rebuilds_a_recordings_phase_from_its_magnitude(shared_data):
    audio = held_out("LJ003-0050", 3.0)
    magnitude = stft(torch.from_numpy(audio)[None], SPEC)[0].T.to(torch.complex128).numpy()
    magnitude = np.abs(magnitude)
    mel = mel_spectrogram(audio).numpy()
    for block in (None, BLOCK):
        rebuilt = with_magnitude(CoherentPhase(mel, SPEC, 0, block), magnitude).audio(0, mel.shape[-1])
        assert convergence(rebuilt, audio) < 0.12  # the paper's Table II: spectral convergence around -20 dB
    noise = torch.from_numpy(magnitude * np.exp(2j * np.pi * np.random.default_rng(0).random(magnitude.shape)))
    from model.audio import istft  # noqa: PLC0415
    random_phase = istft(noise.T[None].to(torch.complex64), audio.size, SPEC)
    assert convergence(random_phase, audio) > 0.5


def test_the_mels_magnitude_is_nearer_its_mel_than_the_spread_it_starts_from():
    mel = mel_spectrogram(voiced_tone(1.0)).numpy()
    fb, target = mel_filterbank().astype(np.float64), np.exp(mel.astype(np.float64))
    error = lambda s: np.linalg.norm(fb @ s.T - target) / np.linalg.norm(target)  # noqa: E731
    start, solved = mel_magnitude(mel, SPEC, 0), mel_magnitude(mel, SPEC)
    assert (solved >= 0).all() and error(solved) < 0.5 * error(start)


@pytest.mark.parametrize("spec", [PROFILES[name].spec for name in ("hifigan", "rayhane", "espnet")],
                         ids=["hifigan", "rayhane", "espnet"])
def test_a_stream_of_blocks_is_the_whole_requests_start(spec):
    audio = voiced_tone(2.5)
    mel = mel_spectrogram(audio[:len(audio) // spec.hop * spec.hop], spec).numpy()
    frames = mel.shape[-1]
    whole = coherent_start(mel, spec, seed=3)
    stream, pieces, at = CoherentPhase(mel, spec, 3), [], 0
    for size in (20, 50, 7, frames):
        pieces.append(stream.audio(at, min(frames, at + size)))
        at = min(frames, at + size)
    assert torch.allclose(torch.cat(pieces, dim=-1), whole, atol=1e-6)
    assert whole.shape == (1, frames * spec.hop)


def test_the_seed_keeps_its_meaning():
    mel = mel_spectrogram(voiced_tone(1.0)).numpy()
    assert torch.equal(coherent_start(mel, SPEC, 5), coherent_start(mel, SPEC, 5))
    assert not torch.equal(coherent_start(mel, SPEC, 5), coherent_start(mel, SPEC, 6))
    silence = np.full((SPEC.n_mels, 30), np.log(1e-5), np.float32)
    assert torch.isfinite(coherent_start(silence, SPEC, 0)).all()
