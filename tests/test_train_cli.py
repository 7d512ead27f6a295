"""The trainer CLI end to end on the shared data: score -> schedule -> search -> Vocoder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.audio import read_id_list
from model.checkpoint import SCHEDULE_NET, read_config
from model.prior import DEFAULT_PRIOR
from model.refine import PRESET_PROJECTIONS, PRESET_REFINE
from model.scheduling import REFERENCE
from model.train.__main__ import main
from model.vocoder import Vocoder

REPO = Path(__file__).resolve().parent.parent


def train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny networks: one thread is fastest
    return subprocess.run([sys.executable, "-m", "model.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny weights directory made by the three subcommands, on a few clips of the shared data, under the
    default prior of a new net, `energy` (every other test's nets use the standard one)."""
    tmp = tmp_path_factory.mktemp("train-cli")
    (tmp / "train.txt").write_text("\n".join(read_id_list(shared_data / "train.txt")[:3]) + "\n")
    (tmp / "valid.txt").write_text(read_id_list(shared_data / "valid.txt")[0] + "\n")
    out, wavs = tmp / "weights", str(shared_data / "wavs")
    small = ["--batch", "2", "--segment-frames", "16", "--device", "cpu"]
    for args in (["score", "--config", "tiny", "--out", str(out)],
                 ["schedule", "--net", "tiny", "--weights", str(out)]):
        r = train(*args, "--data", wavs, "--list", str(tmp / "train.txt"), "--steps", "3", *small)
        assert r.returncode == 0, r.stderr
    r = train("search", "--weights", str(out), "--data", wavs, "--list", str(tmp / "valid.txt"),
              "--clips", "1", "--grid", "3", "--seconds", "0.25", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "rho -> steps" in r.stdout
    return out


def test_cli_makes_a_complete_weights_dir(trained: Path):
    config = read_config(trained)
    assert (trained / SCHEDULE_NET).exists() and (trained / REFERENCE).exists()
    lo, hi = config["score_net"]["prior_energy"]  # the training clips' frame energy range
    assert config["score_net"]["prior"] == DEFAULT_PRIOR == "energy" and 0 < lo < hi
    assert config["training"]["score"]["steps"] == 3
    schedule = config["training"]["schedule"]
    assert schedule["steps"] == 3 and schedule["tau"] == 66 and schedule["runs"][-1]["git_revision"]
    assert config["training"]["search"]["grid"] == 3 and config["training"]["search"]["clips"] == 1
    search = config["search"]
    assert set(search["presets"]) == {"fast", "balanced", "quality"}
    bddm = {n: p["bddm"] for n, p in search["presets"].items()}  # a preset holds both methods
    assert search["default_rho"] == bddm["balanced"]["rho"]
    assert {n: p["refine"] for n, p in bddm.items()} == PRESET_REFINE  # BDDM's is (rho, K)
    assert {n: p["projection"]["refine"] for n, p in search["presets"].items()} == PRESET_PROJECTIONS
    assert all(str(p["rho"]) in search["schedules"] for p in bddm.values())
    # --objective presets (the default): each preset's schedule comes from its own pair, stored at its rho,
    # and the stored rho -> steps map still never gives fewer steps for a smaller rho
    assert search["objective"] == "presets"
    for name, pair in search["preset_pairs"].items():
        stored = search["schedules"][str(bddm[name]["rho"])]
        assert (stored["alpha_hat_N"], stored["beta_hat_N"]) == (pair["alpha_hat_N"], pair["beta_hat_N"])
        assert stored["steps"] == pair["steps"]
    steps = [search["schedules"][r]["steps"] for r in sorted(search["schedules"], key=float)]
    assert steps == sorted(steps, reverse=True)

    voc = Vocoder.load(trained, device="cpu")
    mel = voc.reference_mel[:, :10]
    for rho in (voc.default_rho, 0.0421):  # stored, and scheduled on demand
        audio = voc.vocode(mel, voc.schedule(rho), seed=0)
        assert audio.shape == (10 * 256,) and np.all(np.isfinite(audio))


def test_an_explicit_prior_continues_a_trained_net_under_it(shared_data: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture):
    """The GPU recipe's question (does `base` continued under the energy prior beat a new net?) needs this."""
    (tmp_path / "train.txt").write_text(read_id_list(shared_data / "train.txt")[0] + "\n")
    args = ["score", "--out", str(tmp_path / "w"), "--data", str(shared_data / "wavs"), "--list",
            str(tmp_path / "train.txt"), "--batch", "1", "--segment-frames", "8", "--probe-every", "100",
            "--probe-seconds", "0.5", "--device", "cpu"]
    main([*args, "--config", "tiny", "--prior", "standard", "--steps", "2"])
    assert read_config(tmp_path / "w")["score_net"]["prior"] == "standard"
    main([*args, "--steps", "1"])  # resumed as it is
    main([*args, "--prior", "energy", "--steps", "1"])
    assert "continuing its weights under energy" in capsys.readouterr().out
    config = read_config(tmp_path / "w")
    assert config["score_net"]["prior"] == "energy" and config["score_net"]["prior_energy"][0] > 0
    assert config["training"]["prior_switches"] == [{"at_step": 3, "to": "energy"}]
    assert config["training"]["score"]["steps"] == 4


def test_schedule_training_resumes(trained: Path, shared_data: Path):
    r = train("schedule", "--weights", str(trained), "--data", str(shared_data / "wavs"),
              "--list", str(trained.parent / "train.txt"), "--steps", "1", "--batch", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "resuming at step 3" in r.stdout
    assert read_config(trained)["training"]["schedule"]["steps"] == 4


@pytest.mark.parametrize("args, message", [
    (["schedule", "--steps", "0"], "--steps must be at least 1"),
    (["search", "--grid", "0"], "--grid must be at least 1"),
    (["search", "--rho", "1.5"], "--rho in (0, 1)"),
    (["search"], "no config.json"),
    (["schedule", "--steps", "1"], "no config.json"),
])
def test_bad_arguments_exit_with_code_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str):
    with pytest.raises(SystemExit) as e:
        main([*args, "--weights", str(tmp_path), "--data", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_sigterm_stops_training_and_saves(shared_data: Path, tmp_path: Path):
    """`docker stop` or `kill` ends the step, saves the weights, EMA and Adam state, and exits 0."""
    (tmp_path / "train.txt").write_text(read_id_list(shared_data / "train.txt")[0] + "\n")
    out = tmp_path / "weights"
    proc = subprocess.Popen([sys.executable, "-m", "model.train", "score", "--config", "tiny", "--out", str(out),
                             "--data", str(shared_data / "wavs"), "--list", str(tmp_path / "train.txt"),
                             "--steps", "1000000", "--batch", "1", "--segment-frames", "8", "--probe-every", "5",
                             "--probe-seconds", "0.2", "--device", "cpu"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 5:"):  # training is under way
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGTERM: stopping" in rest
    steps = read_config(out)["training"]["score"]["steps"]
    assert steps >= 5 and (out / "train_state.safetensors").exists()
