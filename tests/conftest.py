"""Shared fixtures: a complete tiny weights directory built through the real code paths, and the shared data."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import uvicorn

from bench.common import free_port
from model.audio import SAMPLE_RATE, MelSpec
from model.checkpoint import NE_NET, SCHEDULE_NET, SCORE_NET, save_module, write_config
from model.ne_net import CONFIGS as NE_CONFIGS
from model.ne_net import NENet
from model.schedule_net import CONFIGS as SCHEDULE_CONFIGS
from model.schedule_net import ScheduleNet
from model.schedules import Diffusion
from model.score_net import CONFIGS as SCORE_CONFIGS
from model.score_net import ScoreNet
from model.train.search import Search, run_search

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "ljspeech"

# The test networks are tiny: one thread runs them fastest and leaves the other cores to other work.
torch.set_num_threads(1)


def voiced_tone(seconds: float, sample_rate: int = SAMPLE_RATE, f0: float = 140.0) -> np.ndarray:
    """A speech-like test signal: a harmonic tone with vibrato and a syllable-rate envelope."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / sample_rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


def tiny_nets(seed: int = 0) -> tuple[ScoreNet, ScheduleNet]:
    """Seeded random tiny networks; the score net's zero-initialised output layer is randomised so that
    eps_theta is not identically zero."""
    torch.manual_seed(seed)
    score_net, schedule_net = ScoreNet(SCORE_CONFIGS["tiny"]), ScheduleNet(SCHEDULE_CONFIGS["tiny"])
    torch.nn.init.normal_(score_net.output_proj.weight, std=0.3)
    return score_net.eval(), schedule_net.eval()


def tiny_ne_net(seed: int = 0) -> NENet:
    """A seeded random tiny noise-level network."""
    torch.manual_seed(seed)
    return NENet(NE_CONFIGS["tiny"]).eval()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "wavs").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete weights directory (score net, schedule net, searched schedules, presets, reference mel, and a
    noise-level net)."""
    root = tmp_path_factory.mktemp("tiny-weights")
    (root / "data").mkdir()
    sf.write(root / "data" / "tone.wav", voiced_tone(0.5), SAMPLE_RATE)
    out = root / "weights"
    score_net, schedule_net = tiny_nets()
    ne_net = tiny_ne_net()
    write_config(out, {"audio": MelSpec().to_dict(), "diffusion": Diffusion().to_dict(),
                       "score_net": score_net.params.to_dict(), "schedule_net": schedule_net.params.to_dict(),
                       "ne_net": ne_net.params.to_dict(), "training": {}})
    save_module(out / SCORE_NET, score_net)
    save_module(out / SCHEDULE_NET, schedule_net)
    save_module(out / NE_NET, ne_net)
    run_search(Search(str(out), data=str(root / "data"), clips=1, grid=3, seconds=0.1, device="cpu"))
    return out


@contextmanager
def serving(app, ready: bool = True) -> Iterator[str]:
    """A real uvicorn server for `app` on a free loopback port (the protocol layer included), in a thread;
    yields its URL once started (and, with `ready`, once the engine is warm)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and (not ready or app.state.engine.ready)):
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)

