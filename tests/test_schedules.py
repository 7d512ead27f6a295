"""Schedule arithmetic: betas, noise levels, posterior stds and continuous network step indices."""

import json
from pathlib import Path

import numpy as np
import pytest

from model.schedules import (Diffusion, Schedule, alphas_from_betas, betas_from_alphas, diffwave_fast, full,
                             linear_subset)


def test_betas_alphas_round_trip():
    rng = np.random.default_rng(0)
    for betas in (Diffusion().betas, rng.uniform(1e-5, 0.6, 12), np.array([0.3])):
        np.testing.assert_allclose(betas_from_alphas(alphas_from_betas(betas)), betas, rtol=1e-9, atol=1e-12)


def test_training_grid_timesteps_are_the_indices():
    d = Diffusion()
    s = full(d)
    assert s.steps == 200
    np.testing.assert_allclose(s.timesteps, np.arange(200), atol=1e-6)
    np.testing.assert_allclose(s.alpha, d.alphas, rtol=1e-12)
    t = np.array([0.0, 0.25, 17.5, 123.9, 199.0])
    np.testing.assert_allclose(d.timestep_of(d.alpha_at(t)), t, atol=1e-6)


def test_alpha_is_a_decreasing_noise_level():
    a = Diffusion().alphas
    assert a[0] == pytest.approx(np.sqrt(1 - 1e-4)) and np.all(np.diff(a) < 0)
    assert a[-1] == pytest.approx(np.sqrt(np.prod(1 - np.linspace(1e-4, 0.02, 200))))  # ~0.36: T=200 stops short of pure noise


@pytest.mark.parametrize("steps", [7, 12])
def test_official_bddm_schedule_reproduced_from_its_betas(shared_data: Path, steps):
    path = shared_data.parent / "reference-schedules" / f"bddm-official-ljspeech-{steps}steps.json"
    if not path.exists():
        pytest.skip(f"{path} not available")
    ref = json.loads(path.read_text())
    s = Schedule.from_betas(ref["beta"])
    assert s.steps == steps
    np.testing.assert_allclose(s.timesteps, ref["timesteps"], atol=1e-3)
    np.testing.assert_allclose(s.sigma, ref["sigma"], atol=1e-3)
    np.testing.assert_allclose(s.alpha, ref["alpha"], atol=1e-6)
    assert Schedule.load(path).steps == steps  # extra keys ("source", "reported_pesq") are kept as meta


def test_posterior_sigma_formula():
    s = diffwave_fast()
    prev = np.concatenate([[1.0], s.alpha[:-1]])
    expected = np.sqrt((1 - prev**2) / (1 - s.alpha**2) * s.beta)
    np.testing.assert_allclose(s.sigma[1:], expected[1:], rtol=1e-12)
    assert s.sigma[0] == pytest.approx(np.sqrt(s.beta[0]))


def test_linear_subset_spans_the_grid():
    s = linear_subset(6)
    assert s.steps == 6
    np.testing.assert_allclose(s.timesteps[[0, -1]], [0, 199], atol=1e-6)
    assert np.all(np.diff(s.timesteps) > 0)


def test_save_load_round_trip(tmp_path):
    s = Schedule.from_betas([1e-4, 0.01, 0.2, 0.5], name="mine", rho=0.3)
    s.save(tmp_path / "s.json")
    back = Schedule.load(tmp_path / "s.json")
    assert back.name == "mine" and back.meta == {"rho": 0.3}
    for key in ("beta", "alpha", "sigma", "timesteps"):
        np.testing.assert_allclose(getattr(back, key), getattr(s, key), rtol=1e-12)


@pytest.mark.parametrize("betas", [[], [0.0, 0.1], [0.1, 1.0], [[0.1, 0.2]], [-0.1]])
def test_invalid_betas_are_rejected(betas):
    with pytest.raises(ValueError):
        Schedule.from_betas(betas)
