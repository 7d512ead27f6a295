"""Samplers: seeded determinism, per-item seeds, output contract, and the exact bounded-memory windowed pass."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_nets
from model.sampling import SAMPLERS, ddpm, windowed_eps
from model.schedules import Schedule, diffwave_fast
from model.score_net import ScoreNet

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 6


@pytest.fixture(scope="module")
def net() -> ScoreNet:
    return tiny_nets()[0]


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    return torch.randn(2, 80, FRAMES, generator=torch.Generator().manual_seed(1)) - 5.0


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_same_audio_different_seed_different(net, mel, sampler):
    run = SAMPLERS[sampler]
    a, b, c = (run(net, mel[:1], diffwave_fast(), seed=s) for s in (3, 3, 4))
    assert a.shape == (1, FRAMES * 256)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_item_noise_is_independent_of_batch_neighbours(net, mel, sampler):
    run = SAMPLERS[sampler]
    pair = run(net, mel, diffwave_fast(), seed=[7, 8])
    alone = run(net, mel[1:], diffwave_fast(), seed=8)
    swapped = run(net, mel, diffwave_fast(), seed=[9, 8])
    torch.testing.assert_close(pair[1:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped[1], pair[1], atol=1e-5, rtol=0)


def test_seed_count_must_match_batch(net, mel):
    with pytest.raises(ValueError):
        SAMPLERS["ddpm"](net, mel, diffwave_fast(), seed=[1, 2, 3])


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_output_is_frames_times_hop_in_range(net, mel, sampler):
    audio = SAMPLERS[sampler](net, mel, Schedule.from_betas([1e-4, 0.05, 0.5]), seed=0)
    assert audio.shape == (2, FRAMES * 256) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0


def test_ddim_is_deterministic_given_the_start_noise(net, mel):
    """DDIM with eta = 0 adds no noise after x_N, so one step equals the closed form from x_N."""
    s = Schedule.from_betas([0.5])
    x = SAMPLERS["ddim"](net, mel[:1], s, seed=5)
    x_n = torch.randn(FRAMES * 256, generator=torch.Generator().manual_seed(5))[None]
    with torch.inference_mode():
        eps = net(x_n, mel[:1], torch.tensor([float(s.timesteps[0])]))
    a = float(s.alpha[0])
    torch.testing.assert_close(x, ((x_n - (1 - a**2) ** 0.5 * eps) / a).clamp(-1, 1), atol=1e-5, rtol=0)


def test_windowed_eps_equals_a_full_pass(net):
    g = torch.Generator().manual_seed(2)
    frames = 70
    mel = torch.randn(2, 80, frames, generator=g) - 5
    x = torch.randn(2, frames * 256, generator=g)
    t = torch.tensor([3.5, 120.0])
    with torch.inference_mode():
        full = net(x, mel, t)
        windowed = windowed_eps(net, window_frames=16)(x, mel, t)
    assert full.abs().max() > 1e-3
    torch.testing.assert_close(windowed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_bytes", [0, 200_000, 10**9])  # off, some windows, all windows
def test_cached_conditioning_gives_the_same_audio(net, cache_bytes):
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(2, 80, 40, generator=g) - 5
    schedule = Schedule.from_betas([1e-3, 0.05, 0.3])
    reference = ddpm(windowed_eps(net, window_frames=12, cache_bytes=0), mel, schedule, seed=[1, 2])
    torch.testing.assert_close(ddpm(windowed_eps(net, window_frames=12, cache_bytes=cache_bytes), mel, schedule,
                                    seed=[1, 2]), reference, atol=1e-6, rtol=0)


def test_conditioning_is_computed_once_per_window_per_request(net, monkeypatch):
    calls = []
    original = net.conditioners
    monkeypatch.setattr(net, "conditioners", lambda mel: calls.append(mel.shape[-1]) or original(mel))
    eps_fn = windowed_eps(net, window_frames=16)
    schedule = Schedule.from_betas([1e-3, 0.05, 0.3, 0.5])
    mel = torch.randn(1, 80, 40) - 5
    ddpm(eps_fn, mel, schedule, seed=0)
    assert len(calls) == 3  # three windows, four steps
    ddpm(eps_fn, mel.clone(), schedule, seed=0)  # a new request: its own conditioning
    assert len(calls) == 6


MEMORY_PROBE = """
import json, sys, torch
from torch import nn
from model.sampling import ddpm, windowed_eps
from model.schedules import Schedule
from model.score_net import ScoreNet, ScoreNetParams

def status_mb(field):
    # VmHWM belongs to this address space (reset by exec); ru_maxrss would inherit the parent's peak.
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024

torch.manual_seed(0)
net = ScoreNet(ScoreNetParams(2, 1, 1)).eval()  # minimal: memory is dominated by the x256 mel upsampling
nn.init.normal_(net.output_proj.weight, std=0.1)
seconds, windowed = int(sys.argv[1]), sys.argv[2] == "windowed"
frames = seconds * 22050 // 256
mel = torch.randn(1, 80, frames) - 5
eps_fn = windowed_eps(net) if windowed else net
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: the peak from here on, not the imports'
before = status_mb("VmRSS")
audio = ddpm(eps_fn, mel, Schedule.from_betas([0.5]), seed=0)
print(json.dumps({"samples": audio.shape[-1], "finite": bool(torch.isfinite(audio).all()),
                  "growth_mb": status_mb("VmHWM") - before}))
"""


def _peak(seconds: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(seconds), mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_minute_of_audio_runs_in_bounded_memory():
    """60 s windowed grows the process far less than one unwindowed pass over just 30 s (each in a fresh process,
    its peak counted from just before the sampler: the imports' own peak, which varies by a hundred MB from run to
    run, is left out)."""
    windowed, single = _peak(60, "windowed"), _peak(30, "single")
    assert windowed["samples"] == 60 * 22050 // 256 * 256 and windowed["finite"]
    assert 2 * windowed["growth_mb"] < single["growth_mb"], (windowed, single)
