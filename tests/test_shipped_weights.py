"""The shipped nets and the rule that picks one: base where CUDA runs it, small on a CPU, a named one always."""

import subprocess
from pathlib import Path

import pytest
import torch

from model.runtime import DEFAULT_NETS, WEIGHTS_ROOT, WHY_NAMED, default_weights
from model.vocoder import Vocoder
from server.app import create_app
from server.settings import Settings

from conftest import REPO


def test_cuda_serves_base_and_a_cpu_serves_small():
    assert default_weights(torch.device("cuda")) == (WEIGHTS_ROOT / "base", default_weights(torch.device("cuda"))[1])
    assert default_weights(torch.device("cuda", 1))[0] == WEIGHTS_ROOT / "base"
    assert default_weights(torch.device("cpu"))[0] == WEIGHTS_ROOT / "small"
    assert "CUDA" in default_weights(torch.device("cuda"))[1]
    assert "CPU" in default_weights(torch.device("cpu"))[1]
    assert default_weights(torch.device("cuda"), "/app/weights")[0] == Path("/app/weights/base")
    assert DEFAULT_NETS == {"cuda": "base", "cpu": "small"}


@pytest.mark.parametrize("name, size", [("base", "base (64 x 30)"), ("small", "small (32 x 12)")])
def test_both_shipped_nets_load_complete(name, size):
    voc = Vocoder.load(WEIGHTS_ROOT / name, "cpu")
    assert voc.net == size and voc.chosen_because == WHY_NAMED
    assert voc.schedule_net is not None and set(voc.presets) == {"fast", "balanced", "quality"}
    assert (WEIGHTS_ROOT / name / "MODEL_CARD.md").exists() and (WEIGHTS_ROOT / name / "TRAINING.md").exists()


def test_no_weights_named_on_a_cpu_serves_small_and_says_why():
    voc = Vocoder.load(None, "cpu")
    assert voc.directory == (WEIGHTS_ROOT / "small").resolve() and voc.net.startswith("small")
    assert voc.chosen_because == default_weights(torch.device("cpu"))[1]


def test_the_old_default_path_still_loads_and_names_the_net():
    voc = Vocoder.load(WEIGHTS_ROOT / "default", "cpu")
    assert voc.directory.name == "small"


def test_a_named_directory_wins_over_the_rule(tiny_weights, tmp_path):
    voc = Vocoder.load(tiny_weights, "cpu", root=tmp_path)  # nothing under root: the rule is never consulted
    assert voc.directory == tiny_weights.resolve() and voc.chosen_because == WHY_NAMED


def test_model_endpoint_says_which_net_serves_and_why(tmp_path):
    from fastapi.testclient import TestClient  # noqa: PLC0415

    (tmp_path / "small").symlink_to(WEIGHTS_ROOT / "small")
    with TestClient(create_app(Settings(device="cpu", weights_root=tmp_path, batch_wait_ms=0))) as client:
        info = client.get("/v1/model").json()
    assert info["net"] == "small (32 x 12)" and info["weights"].startswith("small@")
    assert info["chosen_because"] == default_weights(torch.device("cpu"))[1]


@pytest.mark.parametrize("weights, flag", [("", None), ("weights/base", "--weights weights/base")])
def test_make_serve_passes_weights_only_when_set(weights, flag):
    recipe = subprocess.run(["make", "--no-print-directory", "-n", "serve", f"WEIGHTS={weights}"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    line = next(line for line in recipe if "-m server" in line)
    assert (flag in line) if flag else "--weights" not in line
