"""Noise estimation: the schedule families and their fit, the sampler (pinned on tiny nets), the shipped noise-level
network against guessing, the trainer and the CLI's choice of method."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_ne_net, tiny_nets
from model import synth
from model.audio import HOP, load_audio, mel_spectrogram, read_id_list
from model.checkpoint import CONFIG, NE_NET, read_config
from model.ne_net import level_errors, mean_guess
from model.noise_estimation import FAMILIES, fit, ne_ddpm
from model.prior import Prior
from model.sampling import windowed_eps
from model.schedules import Diffusion
from model.train.__main__ import main as train_main
from model.runtime import WEIGHTS_ROOT
from model.vocoder import Vocoder

DIFFUSION = Diffusion()
MEL = torch.randn(2, 80, 6, generator=torch.Generator().manual_seed(1)) - 5.0
#: (alpha_hat, beta) of item 0 at each of 3 steps on the seeded tiny nets below, from this code (2026-11-28).
STORED_LEVELS = [[0.5365113, 0.27706335], [0.53603184, 0.26785805], [0.53518879, 0.46481121]]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
@pytest.mark.parametrize("alpha_bar", [0.13, 0.5, 0.9, 0.9999])
def test_the_fit_reaches_the_estimated_level_in_exactly_the_steps_left(family, n, alpha_bar):
    betas = fit(family, n, alpha_bar)
    assert betas.shape == (n,) and np.all((betas > 0) & (betas < 1)) and np.all(np.diff(betas) >= 0)
    assert np.prod(1 - betas) == pytest.approx(alpha_bar, rel=1e-9)
    if n == 1:
        assert betas[0] == pytest.approx(1 - alpha_bar)  # the last step goes to clean audio
    if family == "fibonacci" and n >= 3:
        np.testing.assert_allclose(betas[2:], betas[1:-1] + betas[:-2])


def test_the_ne_sampler_is_pinned_on_tiny_nets_and_deterministic_for_a_seed():
    score_net, _ = tiny_nets()
    ne_net = tiny_ne_net()
    eps_fn = windowed_eps(score_net)
    levels: list = []
    a = ne_ddpm(eps_fn, ne_net, MEL, 3, seed=[4, 5], levels=levels, family="fibonacci")
    b = ne_ddpm(eps_fn, ne_net, MEL, 3, seed=[4, 5], family="fibonacci")
    c = ne_ddpm(eps_fn, ne_net, MEL, 3, seed=[4, 6], family="fibonacci")
    assert a.shape == (2, 6 * HOP) and torch.equal(a, b) and not torch.equal(a[1], c[1]) and torch.equal(a[0], c[0])
    assert len(levels) == 3 and all(len(step) == 2 for step in levels)
    np.testing.assert_allclose(np.array([step[0] for step in levels]), np.array(STORED_LEVELS), rtol=1e-4)
    last_alpha, last_beta = levels[-1][0]
    assert last_beta == pytest.approx(1 - last_alpha)  # the final step always lands on clean audio
    assert torch.equal(ne_ddpm(eps_fn, ne_net, MEL, 3, seed=[4, 5], prior=Prior(), family="fibonacci"), a)


@pytest.fixture(scope="module")
def held_out(shared_data: Path):
    """Four held-out clips, 1 s each from their second second (valid.txt)."""
    ids = read_id_list(shared_data / "valid.txt")[:4]
    audio = torch.stack([torch.from_numpy(load_audio(shared_data / "wavs" / f"{i}.flac")[22050:22050 + 86 * HOP])
                         for i in ids])
    return audio, mel_spectrogram(audio)


@pytest.mark.parametrize("net", ["base", "small"])
def test_the_shipped_noise_level_net_beats_guessing_at_every_level(net, held_out):
    voc = Vocoder.load(WEIGHTS_ROOT / net, "cpu")
    assert voc.ne_net is not None
    errors = level_errors(voc.ne_net, *held_out, voc.diffusion, voc.score_net.prior, (0, 5, 20, 60, 100, 150, 199))
    for t, (net_error, guess_error) in errors.items():
        assert net_error < guess_error, (t, net_error, guess_error)
    assert mean_guess(voc.diffusion) == pytest.approx(np.mean(np.log(1 - DIFFUSION.alphas**2)), abs=0.05)


def test_the_trainer_writes_and_resumes_the_noise_level_net(tiny_weights, shared_data, tmp_path, capsys):
    weights = Path(shutil.copytree(tiny_weights, tmp_path / "w"))
    config = json.loads((weights / CONFIG).read_text())
    del config["ne_net"]
    (weights / CONFIG).write_text(json.dumps(config))
    (weights / NE_NET).unlink()
    (tmp_path / "train.txt").write_text(read_id_list(shared_data / "train.txt")[0] + "\n")
    args = ["ne", "--weights", str(weights), "--data", str(shared_data / "wavs"), "--list", str(tmp_path / "train.txt"),
            "--net", "tiny", "--batch", "2", "--segment-frames", "8", "--device", "cpu"]
    train_main([*args, "--steps", "3"])
    train_main([*args, "--steps", "2"])
    assert "resuming at step 3" in capsys.readouterr().out
    config = read_config(weights)
    assert config["ne_net"]["channels"] == 8 and config["training"]["ne"]["steps"] == 5
    assert Vocoder.load(weights, "cpu").ne_net is not None


def run_synth(capsys, *argv: str) -> tuple[int, str]:
    rc = synth.main(list(argv))
    return rc, capsys.readouterr().err


def test_synth_method_ne(capsys, tiny_weights, tmp_path):
    mel = tmp_path / "m.npy"
    np.save(mel, np.random.default_rng(0).normal(-5, 1, (80, 10)).astype(np.float32))
    out = [str(mel), "-o", str(tmp_path / "o.wav"), "--weights", str(tiny_weights), "--device", "cpu"]
    rc, err = run_synth(capsys, *out, "--method", "ne", "--steps", "3", "--seed", "1")
    assert rc == 0, err
    first = sf.read(tmp_path / "o.wav")[0]
    assert first.shape == (10 * HOP,)
    assert run_synth(capsys, *out, "--method", "ne", "--steps", "3", "--seed", "1")[0] == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "o.wav")[0], first)
    assert run_synth(capsys, *out, "--method", "ne", "--steps", "2", "--family", "linear")[0] == 0


@pytest.mark.parametrize("options, message", [
    (["--steps", "3"], "--steps N goes with --method ne"),
    (["--method", "ne"], "--method ne needs --steps N"),
    (["--method", "ne", "--steps", "3", "--rho", "0.1"], "not allowed with argument"),
    (["--method", "ne", "--steps", "3", "--preset", "fast"], "not allowed with argument"),
    (["--steps", "3", "--steps-schedule", "s.json"], "not allowed with argument"),
    (["--method", "ne", "--steps", "0"], "--steps >= 1"),
    (["--preset", "fast", "--sampler", "ddim"], "unrecognized arguments: --sampler"),  # DDIM is not offered
])
def test_synth_steps_only_with_method_ne_and_alone(capsys, tiny_weights, tmp_path, options, message):
    with pytest.raises(SystemExit) as e:
        synth.main(["m.npy", "-o", str(tmp_path / "o.wav"), "--weights", str(tiny_weights), *options])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_synth_method_ne_without_a_noise_level_net_exits_2(capsys, tiny_weights, tmp_path):
    weights = Path(shutil.copytree(tiny_weights, tmp_path / "w"))
    (weights / NE_NET).unlink()
    mel = tmp_path / "m.npy"
    np.save(mel, np.full((80, 4), -5.0, np.float32))
    rc, err = run_synth(capsys, str(mel), "-o", str(tmp_path / "o.wav"), "--weights", str(weights), "--method", "ne",
                        "--steps", "3")
    assert rc == 2 and "no noise-level network" in err and err.count("\n") == 1
