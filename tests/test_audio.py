"""The mel front end is the contract with TTS front ends: it must equal the HiFi-GAN / librosa convention."""

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from model.audio import (HOP, LOG_FLOOR, N_FFT, SAMPLE_RATE, AudioError, encode_audio, load_audio,
                         mel_filterbank, mel_spectrogram)


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> np.ndarray:
    return load_audio(shared_data / "wavs" / "LJ001-0001.flac")[: 2 * SAMPLE_RATE + 123]  # not a multiple of the hop


def librosa_log_mel(wav: np.ndarray, center: bool) -> np.ndarray:
    """The reference convention, computed independently with librosa."""
    pad = (N_FFT - HOP) // 2
    x = wav if center else np.pad(wav, (pad, pad), mode="reflect")
    spec = np.abs(librosa.stft(x, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window="hann", center=center,
                               pad_mode="reflect"))
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=80, fmin=0, fmax=8000)
    return np.log(np.maximum(fb @ spec, LOG_FLOOR))


def test_filterbank_equals_librosa():
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    ours = mel_filterbank()
    assert ours.shape == (80, 513)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_mel_equals_librosa_hifigan_convention(clip):
    ours = mel_spectrogram(clip).numpy()
    ref = librosa_log_mel(clip, center=False)
    assert ours.shape == ref.shape == (80, len(clip) // HOP)
    # float32 STFTs differ by rounding; the log amplifies it only where the energy is tiny.
    loud = ref > -6
    np.testing.assert_allclose(ours[loud], ref[loud], atol=1e-3)
    np.testing.assert_allclose(ours, ref, atol=2e-2)


def test_tacotron_center_true_has_one_frame_more(clip):
    """Tacotron 2 / librosa's default center=True pads n_fft // 2 and yields samples // hop + 1 frames;
    a mel made that way must drop its last frame before vocoding to get exactly frames * hop samples."""
    assert librosa_log_mel(clip, center=True).shape[1] == mel_spectrogram(clip).shape[1] + 1


@pytest.mark.parametrize("samples", [256, 257, 1000, 256 * 7 - 1, 256 * 40])
def test_frames_are_samples_div_hop(samples):
    wav = torch.randn(samples) * 0.1
    assert mel_spectrogram(wav).shape == (80, samples // HOP)
    assert mel_spectrogram(wav[None].repeat(3, 1)).shape == (3, 80, samples // HOP)


def test_silence_sits_at_the_log_floor():
    assert torch.allclose(mel_spectrogram(torch.zeros(2048)), torch.full((80, 8), float(np.log(LOG_FLOOR))))


def test_encode_load_round_trip_and_resampling():
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    wav = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    back = load_audio(encode_audio(wav))
    np.testing.assert_allclose(back, wav, atol=1 / 32768 + 1e-6)
    resampled = load_audio(encode_audio(wav, 16000), sample_rate=SAMPLE_RATE)
    assert abs(len(resampled) - round(len(wav) * SAMPLE_RATE / 16000)) <= 1
    with pytest.raises(AudioError):
        load_audio(encode_audio(wav, 16000), resample=False)


@pytest.mark.parametrize("data", [b"", b"not audio at all", b"RIFF\x00\x00"])
def test_unreadable_audio_is_an_audio_error(data):
    with pytest.raises(AudioError):
        load_audio(data)


@pytest.mark.parametrize("rate", [2_000_000_011, 999, 7919])
def test_resampling_is_bounded_whatever_rate_the_header_claims(rate):
    """A coprime rate near 2^31 once made one small WAV allocate 19 GB in the polyphase filter."""
    wav = bytearray(encode_audio(np.zeros(2205, np.float32), SAMPLE_RATE))
    wav[24:28], wav[28:32] = rate.to_bytes(4, "little"), (2 * rate % 2**32).to_bytes(4, "little")
    if rate > 768_000 or rate < 1000:
        with pytest.raises(AudioError, match="sample rate"):
            load_audio(bytes(wav))
    else:  # an odd rate inside the range resamples through a bounded rational approximation
        assert abs(len(load_audio(bytes(wav))) - 2205 * SAMPLE_RATE / rate) <= 1
