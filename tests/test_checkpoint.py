"""Weights directories: safetensors + JSON round trips, and clear CheckpointErrors for broken ones."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from model.checkpoint import (CONFIG, FORMAT, SCORE_NET, CheckpointError, load_module, load_tensors, read_config,
                              save_module, save_tensors, write_config)
from model.score_net import CONFIGS, ScoreNet
from model.vocoder import Vocoder


@pytest.fixture
def weights(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny weights, safe to damage."""
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def test_module_round_trip_exact_in_fp32_and_rounded_in_fp16(tmp_path):
    torch.manual_seed(0)
    net = ScoreNet(CONFIGS["tiny"])
    save_module(tmp_path / "fp32.safetensors", net, dtype=torch.float32)
    save_module(tmp_path / "fp16.safetensors", net)
    exact = load_module(tmp_path / "fp32.safetensors", ScoreNet(CONFIGS["tiny"]))
    halved = load_module(tmp_path / "fp16.safetensors", ScoreNet(CONFIGS["tiny"]))
    for k, v in net.state_dict().items():
        assert torch.equal(exact.state_dict()[k], v)
        assert halved.state_dict()[k].dtype == torch.float32
        assert torch.equal(halved.state_dict()[k], v.half().float())
    assert load_tensors(tmp_path / "fp16.safetensors")["input_proj.weight"].dtype == torch.float16
    assert not list(tmp_path.glob("*.tmp"))  # writes are atomic renames


def test_config_round_trip(tmp_path):
    write_config(tmp_path, {"score_net": CONFIGS["tiny"].to_dict(), "search": {"default_rho": 0.3}})
    config = read_config(tmp_path)
    assert config["format"] == FORMAT and config["search"] == {"default_rho": 0.3}
    assert config["score_net"] == CONFIGS["tiny"].to_dict()


def test_tiny_weights_load_to_the_saved_values(weights):
    voc = Vocoder.load(weights, "cpu")
    saved = load_tensors(weights / SCORE_NET)
    for k, v in voc.score_net.state_dict().items():
        assert torch.equal(v, saved[k].float())
    assert voc.presets and voc.default_rho is not None and voc.schedules


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "delete"])
def test_broken_safetensors_is_a_checkpoint_error(weights, damage):
    path = weights / SCORE_NET
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64 + data[64:200],
                          "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="score_net.safetensors"):
        Vocoder.load(weights, "cpu")


def test_config_that_does_not_match_the_weights(weights):
    config = json.loads((weights / CONFIG).read_text())
    config["score_net"] = CONFIGS["small"].to_dict()
    (weights / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape|does not match"):
        Vocoder.load(weights, "cpu")
    config["score_net"] = {**CONFIGS["tiny"].to_dict(), "residual_layers": 4}
    (weights / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        Vocoder.load(weights, "cpu")
    config["score_net"] = {"channels": 16}
    (weights / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="score_net"):
        Vocoder.load(weights, "cpu")


@pytest.mark.parametrize("config", [None, "{not json", json.dumps({"format": "something-else/9"})])
def test_bad_config_is_a_checkpoint_error(tmp_path, config):
    if config is not None:
        (tmp_path / CONFIG).write_text(config)
    with pytest.raises(CheckpointError):
        read_config(tmp_path)


def test_tensor_file_with_other_keys_is_refused(tmp_path):
    save_tensors(tmp_path / "w.safetensors", {"other.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="does not match"):
        load_module(tmp_path / "w.safetensors", ScoreNet(CONFIGS["tiny"]))
