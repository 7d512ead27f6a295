"""Conditioning: the two health measurements mean what they say, and the net's mel input design cannot regress."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import voiced_tone
from model.audio import mel_spectrogram
from model.checkpoint import CheckpointError, read_config, write_config
from model.conditioning import GAIN_STEPS, SILENCE, conditioning_gain, pad_with_silence, silence_gap
from model.prior import Prior
from model.schedules import Diffusion
from model.score_net import CONFIGS, ScoreNet, ScoreNetParams
from model.vocoder import Vocoder

HOP = 256
AUDIO = torch.from_numpy(voiced_tone(0.5))[: 43 * HOP][None]
MEL = mel_spectrogram(AUDIO)
TWENTY_DB = math.log(10.0)  # 20 dB quieter in amplitude is ln-mel - ln 10


class Oracle(torch.nn.Module):
    """An eps_theta that knows the clean audio, but only uses it when the mel is not silence."""

    def __init__(self, clean: torch.Tensor, diffusion: Diffusion = Diffusion()) -> None:
        super().__init__()
        self.clean, self.diffusion = clean, diffusion
        self.params, self.receptive_field, self.prior = ScoreNetParams(), 0, Prior()

    def conditioners(self, mel: torch.Tensor) -> list[torch.Tensor]:
        return []

    def forward(self, x: torch.Tensor, mel: torch.Tensor, t: torch.Tensor, conditioners=None) -> torch.Tensor:
        alpha = float(self.diffusion.alpha_at(float(t[0])))
        x0 = self.clean if bool((mel > SILENCE).any()) else torch.zeros_like(x)
        return (x - alpha * x0) / math.sqrt(1 - alpha**2)


def standardised_net(params: ScoreNetParams = CONFIGS["small"]) -> ScoreNet:
    """A new net as the trainer makes it: input statistics from the (here: one-clip) training mels."""
    torch.manual_seed(0)
    return ScoreNet(params.with_mel_stats(MEL[0].double().mean(-1).tolist(), MEL[0].double().std(-1).tolist()))


def test_gain_is_one_for_a_net_that_ignores_its_mel():
    net = ScoreNet(CONFIGS["tiny"]).eval()
    for layer in net.layers:
        torch.nn.init.zeros_(layer.cond_proj.weight)
    torch.nn.init.normal_(net.output_proj.weight, std=0.3)
    gain = conditioning_gain(net, AUDIO, MEL)
    assert list(gain) == list(GAIN_STEPS)
    assert all(g == pytest.approx(1.0, abs=1e-6) for g in gain.values())


def test_gain_is_large_for_a_net_that_follows_its_mel():
    gain = conditioning_gain(Oracle(AUDIO), AUDIO, MEL)
    assert all(g > 100 for g in gain.values())


def test_silence_gap_measures_the_padding_against_the_speech():
    frames = 86  # one second each side
    padded = pad_with_silence(MEL, frames)
    assert padded.shape[-1] == MEL.shape[-1] + 2 * frames
    assert torch.all(padded[..., :frames] == SILENCE) and torch.equal(padded[..., frames:-frames], MEL)

    gen = torch.Generator().manual_seed(0)
    noise_everywhere = lambda m: torch.randn(m.shape[0], m.shape[-1] * HOP, generator=gen)  # noqa: E731
    follows = lambda m: noise_everywhere(m) * (m > SILENCE).any(1).float().repeat_interleave(HOP, -1)  # noqa: E731
    quieter = lambda m: noise_everywhere(m) * (0.1 + 0.9 * (m > SILENCE).any(1).float().repeat_interleave(HOP, -1))  # noqa: E731
    assert abs(silence_gap(noise_everywhere, MEL)) < 0.5
    assert silence_gap(quieter, MEL) == pytest.approx(20.0, abs=0.5)
    assert silence_gap(follows, MEL) > 100


def test_the_net_sees_a_mel_and_the_same_mel_20_db_quieter_differently():
    net = standardised_net()
    loud, quiet = net.condition(MEL), net.condition(MEL - TWENTY_DB)
    assert (loud - quiet).std() > 0.25 * loud.std()


def test_the_conditioning_is_mostly_the_mel_not_a_constant_offset():
    """The raw ln-mel (mean about -5.7) made the conditioning a mel-independent pattern that training switched
    off; standardised, the part that the mel does not explain is small."""
    net = standardised_net()
    constant = net.condition(net.mel_mean.expand_as(MEL))
    assert constant.std() < 0.5 * (net.condition(MEL) - constant).std()


def test_trainer_default_is_standardised_and_older_configs_keep_the_raw_input():
    legacy = {k: v for k, v in CONFIGS["small"].to_dict().items() if k not in ("mel_mean", "mel_std", "step_embedding")}
    params = ScoreNetParams(**legacy)
    assert not params.normalized and params.step_embedding == "diffwave"
    net = ScoreNet(params)
    assert torch.equal(net.condition(MEL), net.upsampler(MEL))
    assert "mel_mean" not in net.state_dict()  # the statistics live in the config, not the weight file
    restored = ScoreNetParams(**standardised_net().params.to_dict())
    assert restored.normalized and len(restored.mel_mean) == 80


@pytest.mark.parametrize("change, message", [
    ({"mel_mean": [0.0] * 79, "mel_std": [1.0] * 79}, "needs 80 finite values"),
    ({"mel_mean": [0.0] * 80}, "come together"),
    ({"mel_mean": [0.0] * 80, "mel_std": [0.0] * 80}, "must be positive"),
    ({"step_embedding": "rotary"}, "step_embedding must be one of"),
])
def test_bad_conditioning_settings_are_refused_clearly(tiny_weights: Path, tmp_path: Path, change: dict, message: str):
    weights = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    config = read_config(weights)
    config["score_net"].update(change)
    write_config(weights, config)
    with pytest.raises(CheckpointError, match=message):
        Vocoder.load(weights, "cpu")
