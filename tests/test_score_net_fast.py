"""The score net's faster forward against a plain implementation of the same maths, kept here as the oracle (not as
a second code path in model/): the mel upsampled by the ConvTranspose2d modules themselves and one conditioner conv
per layer, as the score net computed it before. fp32 to 1e-5, on random weights and on the shipped nets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_nets
from model.checkpoint import SCORE_NET, load_module, read_config
from model.sampling import ddpm, windowed_eps
from model.schedules import Schedule
from model.score_net import ScoreNet, ScoreNetParams, polyphase

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def plain_condition(net: ScoreNet, mel: torch.Tensor) -> torch.Tensor:
    up = net.upsampler
    x = F.leaky_relu(up.conv1(((mel - net.mel_mean) / net.mel_std).unsqueeze(1)), 0.4)
    return F.leaky_relu(up.conv2(x), 0.4).squeeze(1)


def plain_eps(net: ScoreNet, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps_theta layer by layer, each layer projecting the upsampled mel with its own 1x1 conv."""
    cond = plain_condition(net, mel)
    emb = net.step_embedding(t)
    h = F.relu(net.input_proj(x.unsqueeze(1)))
    skip = torch.zeros_like(h)
    for layer in net.layers:
        y = layer.dilated_conv(h + layer.step_proj(emb).unsqueeze(-1)) + layer.cond_proj(cond)
        gate, filt = y.chunk(2, dim=1)
        residual, s = layer.out_proj(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        h, skip = (h + residual) / math.sqrt(2.0), skip + s
    return net.output_proj(F.relu(net.skip_proj(skip / math.sqrt(len(net.layers))))).squeeze(1)


def random_net(seed: int = 0) -> ScoreNet:
    """The tiny net with every weight random, the upsampler's biases included (a new net starts them at zero)."""
    net = tiny_nets(seed)[0]
    with torch.no_grad():
        for conv in (net.upsampler.conv1, net.upsampler.conv2):
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.3)
    return net


def shipped(name: str) -> ScoreNet:
    return load_module(WEIGHTS / name / SCORE_NET, ScoreNet(ScoreNetParams(**read_config(WEIGHTS / name)["score_net"])))


def inputs(batch: int, frames: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames * 256, generator=g), torch.randn(batch, 80, frames, generator=g) - 5,
            torch.rand(batch, generator=g) * 199)


@pytest.mark.parametrize("frames", [1, 2, 7, 33])
def test_polyphase_is_the_transposed_conv(frames):
    conv = random_net().upsampler.conv1
    x = torch.randn(3, 80, frames)
    expected = conv(x.unsqueeze(1)).squeeze(1)
    assert expected.shape == (3, 80, 16 * frames)
    torch.testing.assert_close(polyphase(conv, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("batch", "frames"), [(1, 1), (1, 13), (3, 5), (2, 37)])
def test_forward_matches_the_plain_maths_on_random_weights(batch, frames):
    net = random_net()
    x, mel, t = inputs(batch, frames)
    with torch.inference_mode():
        expected = plain_eps(net, x, mel, t)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(net(x, mel, t), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(net(x, mel, t, net.conditioners(mel)), expected, atol=1e-5, rtol=0)


def test_conditioners_are_each_layers_projection():
    net = random_net()
    _, mel, _ = inputs(2, 9)
    with torch.inference_mode():
        cond = plain_condition(net, mel)
        conditioners = net.conditioners(mel)
        assert len(conditioners) == len(net.layers)
        for layer, c in zip(net.layers, conditioners):
            assert c.shape == (2, 2 * net.params.residual_channels, 9 * 256)
            torch.testing.assert_close(c, layer.cond_proj(cond), atol=1e-5, rtol=0)


def test_gradients_match_the_plain_maths():
    """Training differentiates through the polyphase weights: every parameter's gradient is the plain one's."""
    net = random_net()
    x, mel, t = inputs(2, 5)
    grads = []
    for eps in (net, lambda *a: plain_eps(net, *a)):
        net.zero_grad()
        (eps(x, mel, t) ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("batch", "frames"), [(1, 3), (2, 11)])
def test_shipped_small_weights_load_and_match(batch, frames):
    net = shipped("small").eval()
    x, mel, t = inputs(batch, frames, seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(net(x, mel, t), plain_eps(net, x, mel, t), atol=1e-5, rtol=0)


def test_shipped_base_weights_load():
    net = shipped("base")
    assert (net.params.residual_channels, net.params.residual_layers) == (64, 30)


def test_windowed_synthesis_gives_the_plain_audio():
    """Windows, the per-request conditioning cache and the faster forward together: the plain full pass's audio."""
    net = random_net()
    _, mel, _ = inputs(2, 40, seed=3)
    schedule = Schedule.from_betas([1e-3, 0.05, 0.3])
    plain = ddpm(lambda x, m, t: plain_eps(net, x, m, t), mel, schedule, seed=[1, 2])
    for cache_bytes in (0, 10**9):
        torch.testing.assert_close(ddpm(windowed_eps(net, window_frames=12, cache_bytes=cache_bytes), mel, schedule,
                                        seed=[1, 2]), plain, atol=1e-5, rtol=0)
