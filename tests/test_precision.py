"""Inference precision (VOCODER_DTYPE): bf16 autocast follows fp32, and on CUDA keeps the quality guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import metrics
from model.audio import mel_spectrogram
from model.vocoder import DEFAULT_WEIGHTS, Vocoder, resolve_dtype


def test_auto_is_bf16_on_cuda_only():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("fp32", torch.device("cuda")) == torch.float32


def test_bf16_autocast_follows_fp32(tiny_weights: Path):
    fp32, bf16 = Vocoder.load(tiny_weights, "cpu", "fp32"), Vocoder.load(tiny_weights, "cpu", "bf16")
    mel, schedule = fp32.reference_mel[:, :20], fp32.schedule(fp32.default_rho)
    a, b = fp32.vocode(mel, schedule, seed=0), bf16.vocode(mel, schedule, seed=0)
    assert b.dtype == np.float32 and b.shape == a.shape and not np.array_equal(a, b)  # it did run in bf16
    assert np.corrcoef(a, b)[0, 1] > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the quality guard runs where CUDA is present")
def test_bf16_quality_guard_on_cuda(shared_data: Path):
    """STOI within 0.01 and PESQ within 0.05 of fp32 on held-out clips, at the default rho."""
    fp32, bf16 = Vocoder.load(DEFAULT_WEIGHTS, "cuda", "fp32"), Vocoder.load(DEFAULT_WEIGHTS, "cuda", "bf16")
    from bench.common import validation_clips  # noqa: PLC0415

    scores = {"fp32": [], "bf16": []}
    for i, clip in enumerate(validation_clips(shared_data, 4, 3.0)):
        mel = mel_spectrogram(clip.audio)
        for name, voc in (("fp32", fp32), ("bf16", bf16)):
            audio = voc.vocode(mel, voc.schedule(voc.default_rho), seed=i)
            scores[name].append((metrics.stoi(clip.audio, audio), metrics.pesq_wb(clip.audio, audio)))
    (stoi32, pesq32), (stoi16, pesq16) = (np.nanmean(scores[k], axis=0) for k in ("fp32", "bf16"))
    assert abs(stoi16 - stoi32) <= 0.01 and abs(pesq16 - pesq32) <= 0.05
