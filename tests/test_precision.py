"""Inference precision and compilation (VOCODER_DTYPE, VOCODER_COMPILE): bf16 (the CPU fast path's GEMMs, CUDA's
autocast) and the compiled step follow fp32 eager, on CUDA bf16 keeps the quality guard, and on a CPU auto serves
bf16 only where the guard held on its ISA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.score_net_cpu import CpuScoreNet
from model.runtime import CPU_BF16_RECORD, WEIGHTS_ROOT, cpu_bf16_isa, cpu_bf16_serves, resolve_compile, resolve_dtype
from model.vocoder import Vocoder


def test_auto_is_bf16_on_cuda_and_fp32_on_a_cpu_without_a_record():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("fp32", torch.device("cuda")) == torch.float32


def test_cpu_bf16_needs_the_isa_the_guard_and_the_speed(tmp_path: Path):
    """VOCODER_DTYPE=auto on a CPU: bf16 only where the record beside the weights says the guard held on this ISA
    and bf16 was faster there; no record, another ISA, a failed guard or a slower bf16 keep fp32."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_isa(cpuinfo) == "amx_bf16"
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_bf16_isa(cpuinfo) == "avx512_bf16"
    cpuinfo.write_text("Features\t: fp asimd\n")  # ARM
    assert cpu_bf16_isa(cpuinfo) is None
    assert not cpu_bf16_serves(tmp_path, "amx_bf16")  # no record
    record = {"amx_bf16": {"guard_holds": True, "speedup": 1.4}, "avx512_bf16": {"guard_holds": True, "speedup": 0.9}}
    (tmp_path / CPU_BF16_RECORD).write_text(json.dumps(record))
    assert cpu_bf16_serves(tmp_path, "amx_bf16") and not cpu_bf16_serves(tmp_path, "avx512_bf16")
    record["amx_bf16"]["guard_holds"] = False
    (tmp_path / CPU_BF16_RECORD).write_text(json.dumps(record))
    assert not cpu_bf16_serves(tmp_path, "amx_bf16") and not cpu_bf16_serves(None, "amx_bf16")


def test_bf16_on_the_cpu_fast_path_follows_fp32(tiny_weights: Path):
    fp32, bf16 = Vocoder.load(tiny_weights, "cpu", "fp32"), Vocoder.load(tiny_weights, "cpu", "bf16")
    assert isinstance(bf16.step_net, CpuScoreNet) and bf16.step_net.dtype == torch.bfloat16
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
