"""The CPU projection kernel (`model.projector`) computes what `refine.project`'s torch path computes, to float32
rounding, in any STFT and at any length."""

from __future__ import annotations

import pytest
import torch
from conftest import voiced_tone
from model.audio import MelSpec, mel_spectrogram
from model.profiles import PROFILES
from model.projector import project_cpu
from model.refine import MOMENTUM, gain_floor, target_of
from model.refine import project_torch as project

CONTRACTS = [PROFILES[name].spec for name in ("hifigan", "rayhane", "espnet", "coqui")]


@pytest.mark.parametrize("spec", CONTRACTS, ids=["hifigan", "rayhane", "espnet", "coqui"])
@pytest.mark.parametrize("iterations", [1, 3, 8])
def test_the_kernel_is_the_torch_projection_to_rounding(spec, iterations):
    frames = 60
    tone = torch.from_numpy(voiced_tone((frames + 1) * spec.hop / spec.sample_rate, f0=180.0))[:frames * spec.hop]
    mel = mel_spectrogram(torch.stack([tone, 0.5 * tone.roll(999)]), spec)
    start = 0.1 * torch.randn(2, frames * spec.hop, generator=torch.Generator().manual_seed(0))
    expected = project(start, mel, spec, iterations)
    got = project_cpu(start, target_of(mel, spec), spec, iterations, MOMENTUM, 16.0, gain_floor(spec))
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() < 2e-6 * iterations * max(1.0, float(expected.abs().max()) * 10)


def test_audio_no_longer_than_the_padding_is_framed_with_zeros_as_the_torch_stft_does():
    spec = MelSpec()
    mel = mel_spectrogram(voiced_tone(0.05)[:spec.hop], spec)[None]
    start = 0.1 * torch.randn(1, spec.hop, generator=torch.Generator().manual_seed(1))
    got = project_cpu(start, target_of(mel, spec), spec, 4, MOMENTUM, 16.0, gain_floor(spec))
    assert torch.allclose(got, project(start, mel, spec, 4), atol=1e-6)
