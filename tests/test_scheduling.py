"""Schedule network, step loss, BDDM noise scheduling, grid search and presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.audio import mel_spectrogram
from model.checkpoint import read_config
from model.schedules import Diffusion, Schedule
from model.scheduling import (canonical_rho, choose_presets, cut_schedules, grid_candidates, grid_search,
                              load_reference_mel, noise_schedule, rho_for_steps, shorten)
from model.train.losses import step_loss
from model.vocoder import Vocoder

from conftest import tiny_nets, voiced_tone

DIFFUSION = Diffusion()


@pytest.fixture(scope="module")
def nets():
    return tiny_nets()


@pytest.fixture(scope="module")
def clip():
    wav = torch.from_numpy(voiced_tone(0.1))[: 8 * 256]
    return wav, mel_spectrogram(wav)


def test_schedule_net_gives_one_ratio_per_waveform(nets):
    _, schedule_net = nets
    r = schedule_net(torch.randn(3, 3000))  # a length that is no multiple of the encoder or segment size
    assert r.shape == (3,) and torch.all((r > 0) & (r < 1))
    beta = schedule_net.beta(torch.randn(2, 2048), torch.tensor([0.2, 0.01]), torch.tensor([0.05, 0.5]))
    assert torch.all(beta < torch.tensor([0.05, 0.01]))


def test_step_loss_is_finite_and_trains_only_the_schedule_net(nets, clip):
    score_net, schedule_net = nets
    wav, mel = clip
    audio, mels = torch.stack([wav, -wav]), torch.stack([mel, mel])
    schedule_net.zero_grad()
    loss = step_loss(score_net, schedule_net, audio, mels, DIFFUSION, tau=66,
                     generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in schedule_net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in score_net.parameters())
    schedule_net.zero_grad()


def test_smaller_rho_never_gives_fewer_steps(nets, clip):
    score_net, schedule_net = nets
    mel = clip[1]
    rhos = [0.5, 0.05, 0.005, 1e-4]
    schedules = [noise_schedule(score_net, schedule_net, mel, 0.6, 0.3, r, DIFFUSION, seed=0) for r in rhos]
    steps = [s.steps for s in schedules]
    assert steps == sorted(steps) and steps[-1] > steps[0] == 1
    longest = schedules[-1]
    for s, r in zip(schedules, rhos):
        assert s.meta["rho"] == r
        assert np.all(np.diff(s.alpha) < 0) and np.all((s.beta > 0) & (s.beta < 1))
        assert s.alpha[-1] == pytest.approx(0.6)  # starts at alpha_hat_N ...
        assert np.all(np.diff(s.beta[1:]) > -1e-12)  # ... and the predicted scales shrink along the way
        # the seeded trajectory is the same for every rho: a larger rho's schedule is a prefix of a smaller one's
        np.testing.assert_allclose(shorten(longest, r).beta, s.beta, rtol=1e-6)
    for n in range(1, longest.steps):
        assert shorten(longest, rho_for_steps(longest, n)).steps == n


def test_canonical_rho():
    assert canonical_rho(0.012345) == 0.0123
    assert canonical_rho(0.5) == 0.5
    assert canonical_rho("0.1") == 0.1
    for bad in (0, 1, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            canonical_rho(bad)


def test_grid_search_returns_a_pair_inside_the_grid(nets, clip):
    score_net, schedule_net = nets
    candidates = grid_candidates(DIFFUSION, 3)
    assert 0 < len(candidates) < 9 and all(a < math.sqrt(1 - b) for a, b in candidates)
    alpha_N, beta_N, score = grid_search(score_net, schedule_net, [clip], DIFFUSION, rho=0.05, grid=3)
    assert (alpha_N, beta_N) in candidates and math.isfinite(score) and score >= 0


def test_preset_objective_scores_the_cut_schedules(nets, clip):
    """--objective presets: the schedules are prefixes of one trajectory with the asked step counts, and the
    search's score is their geometric mean LS-MSE."""
    score_net, schedule_net = nets
    cuts = cut_schedules(score_net, schedule_net, clip[1], 0.6, 0.3, (1, 2, 3), DIFFUSION)
    full = noise_schedule(score_net, schedule_net, clip[1], 0.6, 0.3, 1e-4, DIFFUSION, seed=0)
    for cut in cuts:
        assert cut.steps <= 3
        np.testing.assert_allclose(cut.alpha[::-1], full.alpha[::-1][:cut.steps], rtol=1e-6)
    assert [c.steps for c in cuts] == sorted(c.steps for c in cuts)
    alpha_N, beta_N, score = grid_search(score_net, schedule_net, [clip], DIFFUSION, rho=0.05, grid=3, steps=(1, 3))
    assert (alpha_N, beta_N) in grid_candidates(DIFFUSION, 3) and math.isfinite(score) and score >= 0


def _with_steps(n: int) -> Schedule:
    return Schedule.from_betas(np.geomspace(1e-3, 0.3, n))


def test_choose_presets():
    schedules = {0.5: _with_steps(1), 0.1: _with_steps(3), 0.05: _with_steps(4), 0.02: _with_steps(7),
                 0.01: _with_steps(9), 0.003: _with_steps(11), 0.002: _with_steps(14)}
    assert choose_presets(schedules) == {"fast": 0.1, "balanced": 0.02, "quality": 0.003}
    assert choose_presets({0.01: _with_steps(5)}) == {"fast": 0.01, "balanced": 0.01, "quality": 0.01}


def test_tiny_weights_are_complete(tiny_weights):
    config = read_config(tiny_weights)
    search = config["search"]
    assert search["default_rho"] == search["presets"]["balanced"]["bddm"]["rho"]
    assert (search["alpha_hat_N"], search["beta_hat_N"]) in grid_candidates(DIFFUSION, 3)
    steps = {p: len(search["schedules"][str(v["bddm"]["rho"])]["beta"]) for p, v in search["presets"].items()}
    assert steps["fast"] <= steps["balanced"] <= steps["quality"] and steps["fast"] <= 3
    voc = Vocoder.load(tiny_weights, device="cpu")
    mel = load_reference_mel(tiny_weights)
    assert mel is not None and mel.shape[0] == 80
    stored = voc.schedule(voc.default_rho)
    # a rho that is not stored is scheduled now, on the same trajectory as the stored ones
    rho = canonical_rho(voc.default_rho * 1.01)
    assert rho not in voc.schedules
    new, longest = voc.schedule(rho), voc.schedules[min(voc.schedules)]
    assert new.steps <= longest.steps
    np.testing.assert_allclose(new.alpha[::-1], longest.alpha[::-1][:new.steps], rtol=1e-5)
    audio = voc.vocode(mel[:, :5], stored, seed=0)
    assert audio.shape == (5 * 256,) and np.all(np.isfinite(audio))


def test_no_reference_mel_without_search(tmp_path):
    assert load_reference_mel(tmp_path) is None
