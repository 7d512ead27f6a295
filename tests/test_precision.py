"""Inference precision and compilation (VOCODER_DTYPE, VOCODER_COMPILE): bf16 autocast and the compiled step
follow fp32 eager, and on CUDA bf16 keeps the quality guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.vocoder import WEIGHTS_ROOT, Vocoder, resolve_compile, resolve_dtype


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
    """STOI within 0.01 and PESQ within 0.05 of fp32 on held-out clips, at the default rho (bench.precision)."""
    from bench import precision  # noqa: PLC0415

    result = precision.score(precision.vocode_clips(WEIGHTS_ROOT / "base", "cuda", shared_data, 4, 3.0))
    assert result["guard_holds"], result


def test_compiled_step_follows_eager(tiny_weights: Path):
    """VOCODER_COMPILE=on: one dynamic graph serves two batch sizes and lengths, and matches eager."""
    eager, compiled = Vocoder.load(tiny_weights, "cpu", compile="off"), Vocoder.load(tiny_weights, "cpu", compile="on")
    assert compiled.compiled and not eager.compiled
    schedule = eager.schedule(eager.default_rho)
    for batch, frames in ((1, 12), (3, 20)):
        mel = eager.reference_mel[None, :, :frames].repeat(batch, 1, 1)
        a, b = eager.vocode(mel, schedule, seed=list(range(batch))), compiled.vocode(mel, schedule, seed=list(range(batch)))
        assert b.shape == a.shape and np.abs(a - b).max() < 1e-4


def test_compile_setting_is_checked():
    assert resolve_compile("auto", torch.device("cuda")) and not resolve_compile("auto", torch.device("cpu"))
    with pytest.raises(CheckpointError):
        resolve_compile("yes", torch.device("cpu"))
