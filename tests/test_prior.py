"""The diffusion prior: s from the mel, every noise path drawn through it, and s = 1 exactly today's results."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from conftest import tiny_nets, voiced_tone
from model.audio import LOG_FLOOR, mel_spectrogram
from model.conditioning import conditioning_gain, health
from model.prior import Prior, frame_energy
from model.sampling import ddim, ddpm, windowed_eps
from model.schedules import Diffusion, Schedule, diffwave_fast
from model.scheduling import noise_schedule
from model.score_net import ScoreNet
from model.train.losses import score_loss, step_loss

HOP = 256
AUDIO = torch.from_numpy(voiced_tone(0.2))[: 16 * HOP][None]
MEL = mel_spectrogram(AUDIO)


def with_prior(net: ScoreNet, **prior) -> ScoreNet:
    """The same weights under another prior."""
    other = ScoreNet(replace(net.params, **prior)).eval()
    other.load_state_dict(net.state_dict())
    return other


@pytest.fixture(scope="module")
def nets():
    score_net, schedule_net = tiny_nets()
    # An energy prior whose s is exactly 1 everywhere: the floor is 1 and no frame's energy reaches the range's top.
    unit = with_prior(score_net, prior="energy", prior_energy=(0.0, 1e9), prior_floor=1.0)
    return score_net, unit, schedule_net


def test_s_is_per_frame_energy_normalised_floored_and_held_for_a_hop():
    prior = Prior("energy", (0.5, 4.5), 0.1, HOP)
    mel = torch.full((1, 80, 3), math.log(LOG_FLOOR))
    mel[0, :, 1] = math.log(1.0 / 8)  # 80 bands of 1/8: E = sqrt(10)
    mel[0, :, 2] = math.log(5.0**2 / 80)  # E = 5, above the training range: not capped
    s = prior.std(mel)
    assert s.shape == (1, 3 * HOP)
    assert torch.all(s[0, :HOP] == 0.1)  # silence sits at the floor
    assert s[0, HOP:2 * HOP].unique().tolist() == pytest.approx([(math.sqrt(10) - 0.5) / 4.0])
    assert s[0, 2 * HOP:].unique().tolist() == pytest.approx([1.125])
    assert torch.allclose(frame_energy(mel)[0, 1], torch.tensor(math.sqrt(10)))
    window = prior.std(mel[..., 1:])  # a window of the mel gives the window of s: windowed passes stay exact
    assert torch.equal(window, s[:, HOP:])
    assert Prior().std(mel) is None


@pytest.mark.parametrize("bad", [dict(kind="laplace"), dict(kind="energy"), dict(kind="energy", energy=(2.0, 1.0)),
                                 dict(kind="energy", energy=(0.0, 1.0), floor=0.0)])
def test_bad_prior_settings_are_refused(bad):
    with pytest.raises(ValueError):
        Prior(**bad)


def test_s_equal_to_one_reduces_every_path_exactly_to_the_standard_prior(nets):
    standard, unit, schedule_net = nets
    assert unit.prior.std(MEL).eq(1.0).all() and standard.prior.standard
    for sampler in (ddpm, ddim):
        a = sampler(windowed_eps(standard), MEL, diffwave_fast(), 3, HOP, standard.prior)
        b = sampler(windowed_eps(unit), MEL, diffwave_fast(), 3, HOP, unit.prior)
        assert torch.equal(a, b), sampler.__name__
    a, b = (noise_schedule(n, schedule_net, MEL[0], 0.5, 0.3, 0.01, seed=0) for n in (standard, unit))
    assert a.beta.tolist() == b.beta.tolist()
    losses = [(score_loss(n, AUDIO, MEL, Diffusion(), torch.Generator().manual_seed(0), n.prior),
               step_loss(n, schedule_net, AUDIO, MEL, Diffusion(), 66, torch.Generator().manual_seed(0), n.prior))
              for n in (standard, unit)]
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])
    assert conditioning_gain(standard, AUDIO, MEL) == conditioning_gain(unit, AUDIO, MEL)
    assert health(standard, AUDIO, MEL) == health(unit, AUDIO, MEL)


def test_the_standard_prior_is_the_ddpm_recursion_as_it_was(nets):
    """The standard path is today's code: the reverse recursion on x itself, clamped at the end."""
    net = nets[0]
    schedule, eps_fn = diffwave_fast(), windowed_eps(net)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(MEL.shape[-1] * HOP, generator=gen)[None]
    for n in reversed(range(schedule.steps)):
        alpha, beta, sigma = float(schedule.alpha[n]), float(schedule.beta[n]), float(schedule.sigma[n])
        eps = eps_fn(x, MEL, torch.full((1,), float(schedule.timesteps[n])))
        x = (x - beta / math.sqrt(1 - alpha**2) * eps) / math.sqrt(1 - beta)
        if n > 0:
            x = x + sigma * torch.randn(x.shape[-1], generator=gen)[None]
    assert torch.equal(ddpm(eps_fn, MEL, schedule, 5, HOP, net.prior), x.clamp(-1, 1))


def test_the_energy_prior_starts_a_silent_mel_at_the_floor_and_scales_the_output():
    """With eps_theta = 0, one DDPM step of beta 0.5 only rescales the drawn noise by sqrt(2): the output is the
    prior's noise, s = 0.1 (the floor) times the standard prior's."""
    prior = Prior("energy", (0.0, 4.0), 0.1, HOP)
    silent = torch.full((1, 80, 40), math.log(LOG_FLOOR))
    zero = lambda x, mel, t: torch.zeros_like(x)  # noqa: E731
    one_step = Schedule.from_betas([0.5])
    out, standard = ddpm(zero, silent, one_step, 0, HOP, prior), ddpm(zero, silent, one_step, 0, HOP)
    inside = standard.abs() < 1  # where the standard output is not clamped
    torch.testing.assert_close(out[inside], 0.1 * standard[inside])
    assert 0.13 < float(out.std()) < 0.15 and float(out.abs().max()) < 1


def test_energy_training_draws_the_noise_from_the_prior_and_scores_the_whitened_eps(nets):
    net = with_prior(nets[0], prior="energy", prior_energy=(0.0, 8.0))
    s = net.prior.std(MEL)
    assert 0.1 <= s.min() < s.max() < 1.0
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(1, generator=gen) * 199
    eps = torch.randn(AUDIO.shape, generator=gen)
    from model.train.losses import alpha_at  # noqa: PLC0415

    alpha = alpha_at(t, Diffusion())[:, None]
    expected = (net(alpha * AUDIO + torch.sqrt(1 - alpha**2) * s * eps, MEL, t) - eps).abs().mean()
    loss = score_loss(net, AUDIO, MEL, Diffusion(), torch.Generator().manual_seed(0), net.prior)
    torch.testing.assert_close(loss, expected)
