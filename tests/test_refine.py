"""Mel-consistency refinement (`model.refine`): a fixed point at the recording, a falling distance to the mel on
held-out clips, exact locality, the served path unchanged at refine=0, and the knob on the API."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SHARED_DATA
from model.audio import HOP, LOG_FLOOR, N_MELS, MelSpec, load_audio, mel_filterbank, mel_spectrogram
from model.refine import MAX_ITERATIONS, _spread, distance, project, reach_frames
from model.vocoder import Vocoder
from server import Settings
from test_server_api import started

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "main-f82c294-small.npz"
NPY = {"Content-Type": "application/x-npy"}
SPEC = MelSpec()


def held_out(clip: str, seconds: float) -> torch.Tensor:
    return torch.from_numpy(load_audio(SHARED_DATA / "wavs" / f"{clip}.flac")[:int(seconds * SPEC.sample_rate)])


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_the_spread_averages_each_bins_bands_and_takes_the_nearest_band_where_none_covers_it():
    spread, fb = _spread(SPEC), mel_filterbank()
    assert np.allclose(spread.sum(axis=1), 1.0, atol=1e-6)  # each bin's gain is a weighted mean of band gains
    uncovered = fb.sum(axis=0) == 0
    assert uncovered[0] and uncovered[-1]  # DC and the bins above fmax
    assert spread[0].argmax() == 0 and spread[-1].argmax() == N_MELS - 1
    silent = torch.zeros(1, 20 * HOP)
    out = project(silent, torch.full((1, N_MELS, 20), float(np.log(LOG_FLOOR))), SPEC, 4)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-4  # nothing divided by zero


@pytest.mark.parametrize("profile", ["hifigan", "rayhane"])
def test_the_bins_above_fmax_stay_near_the_recordings_level(profile):
    """The bins no band covers take their band's gain only up to its level: with the band's gain alone they
    compounded over projection alone's 64 projections, to 9 dB (hifigan, 8-11 kHz) and 11 dB (rayhane, 7.6-11 kHz)
    above the recording's energy there on the tuning clips."""
    from model.profiles import PROFILES
    from model.vocoder import Vocoder as Voc

    spec = PROFILES[profile].spec
    audio = held_out("LJ003-0049", 3.0)
    voc = Voc.load(None, "cpu")
    out = voc.vocode(mel_spectrogram(audio[None], spec)[0], None, seed=1, refine=64, contract=spec)
    recorded = audio[:len(out)].numpy()

    def above_fmax(x: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(x)) ** 2
        return 10 * np.log10(power[np.fft.rfftfreq(len(x), 1 / spec.sample_rate) >= spec.fmax].sum())

    assert abs(above_fmax(out) - above_fmax(recorded)) < 4.5


def test_a_recordings_own_mel_leaves_the_recording_unchanged():
    audio = held_out("LJ003-0050", 2.0)[None]
    audio = audio[:, :audio.shape[-1] // HOP * HOP]
    mel = mel_spectrogram(audio)
    for iterations in (1, 8):
        assert torch.allclose(project(audio, mel, SPEC, iterations), audio, atol=1e-5)
    assert torch.equal(project(audio, mel, SPEC, 0), audio)


@pytest.mark.parametrize("clip", ["LJ003-0049", "LJ003-0058"])
def test_the_distance_to_the_mel_falls_over_the_iterations_on_held_out_clips(tiny_weights, clip):
    voc = Vocoder.load(tiny_weights, "cpu")
    mel = mel_spectrogram(held_out(clip, 1.5))[None]
    start = torch.from_numpy(voc.vocode(mel, voc.schedule(voc.presets["fast"].rho), seed=1))
    d = [float(distance(project(start, mel, SPEC, k), mel, SPEC)[0]) for k in (0, 2, 8, 32)]
    assert d[0] > 1.0 and all(a > b for a, b in zip(d, d[1:])) and d[-1] < d[0] / 4, d
    plain = float(distance(project(start, mel, SPEC, 8, momentum=0.0), mel, SPEC)[0])
    assert d[2] < plain  # fast Griffin-Lim's momentum gets further in the same iterations


def test_a_batch_is_refined_item_by_item():
    mel = mel_spectrogram(torch.stack([held_out("LJ003-0049", 0.5)[:40 * HOP], held_out("LJ003-0058", 0.5)[:40 * HOP]]))
    noise = 0.1 * torch.randn(2, mel.shape[-1] * HOP, generator=torch.Generator().manual_seed(0))
    batch = project(noise, mel, SPEC, 5)
    for i in range(2):
        assert torch.allclose(batch[i], project(noise[i:i + 1], mel[i:i + 1], SPEC, 5)[0], atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3])
def test_a_change_reaches_no_further_than_reach_frames(iterations):
    """A sample changed in the middle moves the output only within `reach_frames` of it: the margin a streamed chunk
    takes per refinement (`model.streaming`)."""
    frames, at = 120, 60 * HOP
    mel = mel_spectrogram(held_out("LJ003-0049", 1.5)[:frames * HOP])[None]
    x = 0.1 * torch.randn(1, frames * HOP, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[0, at] += 0.5
    changed = (project(x, mel, SPEC, iterations) - project(y, mel, SPEC, iterations)).abs()[0] > 0
    where = changed.nonzero()[:, 0]
    reach = reach_frames(SPEC, iterations) * HOP
    assert where.min() >= at - reach and where.max() <= at + reach
    assert where.max() - where.min() > reach  # it does spread: the bound is not vacuous


@pytest.mark.parametrize("preset", ["fast", "balanced"])
def test_refine_0_is_the_audio_of_main_before_refinement(preset):
    """The fixture was recorded by the shipped `small` net at main f82c294, before refinement existed, on one thread
    of an Intel Xeon (as conftest sets it: a kernel's summation order depends on the thread count). There main's
    score net, the module, reproduced it bit for bit; on other CPUs BLAS takes other kernels (MKL's AVX2 path on an
    AMD EPYC differs by 7e-7), and the CPU fast path that now serves (`model.score_net_cpu`) sums in another order,
    so both equal it to fp32 tolerance."""
    assert torch.get_num_threads() == 1
    fixture = np.load(FIXTURE)
    for cpu_fast in (False, True):
        voc = Vocoder.load(REPO / "weights" / "small", "cpu", "fp32", cpu_fast=cpu_fast)
        audio = voc.vocode(fixture["mel"], voc.schedule(voc.presets[preset].rho), seed=7, refine=0)
        assert np.abs(audio - fixture[preset]).max() < 1e-5


# --- the knob on the API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_weights):
    c = started(Settings(weights=tiny_weights, device="cpu", batch_wait_ms=0))
    yield c
    c.__exit__(None, None, None)


def test_the_model_lists_each_presets_steps_and_refinements(client):
    info = client.get("/v1/model").json()
    voc = client.app.state.engine.vocoder
    assert {n: p["refine"] for n, p in info["presets"].items()} == {n: p.refine for n, p in voc.presets.items()}
    assert all(p["steps"] >= 1 for p in info["presets"].values())
    assert info["default_refine"] == info["presets"]["balanced"]["refine"] and info["max_refine"] == MAX_ITERATIONS


def test_a_preset_brings_its_refinements_and_refine_overrides_them(client):
    body, voc = npy(mel_spectrogram(held_out("LJ003-0049", 0.3)).numpy()), client.app.state.engine.vocoder
    answers = {}
    for params in ({"rho": "fast"}, {"rho": "fast", "refine": 0}, {"rho": "fast", "refine": 7}, {},
                   {"rho": voc.presets["fast"].rho}):
        r = client.post("/v1/vocode", content=body, headers=NPY, params={**params, "seed": 2, "method": "bddm"})
        assert r.status_code == 200, r.text
        answers[str(params)] = r
    assert answers["{'rho': 'fast'}"].headers["x-refine-iterations"] == str(voc.presets["fast"].refine)
    # the default method (projection alone on a CPU) takes the preset's projections; a numeric rho means BDDM
    default = client.post("/v1/vocode", content=body, headers=NPY, params={"rho": "fast"})
    assert (default.headers["x-method"], default.headers["x-refine-iterations"]) == (
        voc.default_method, str(voc.presets["fast"].projections))
    numeric = client.post("/v1/vocode", content=body, headers=NPY, params={"rho": voc.presets["fast"].rho})
    assert numeric.headers["x-method"] == "bddm"
    wrong = client.post("/v1/vocode", content=body, headers=NPY, params={"rho": 0.05, "method": "projection"})
    assert wrong.status_code == 400 and "numeric" in wrong.json()["detail"]
    assert answers["{'rho': 'fast', 'refine': 0}"].headers["x-refine-iterations"] == "0"
    assert answers["{'rho': 'fast', 'refine': 7}"].headers["x-refine-iterations"] == "7"
    assert answers["{}"].headers["x-refine-iterations"] == str(voc.default_refine)  # the default preset's
    numeric = answers[f"{{'rho': {voc.presets['fast'].rho}}}"]  # a numeric rho: the default preset's K
    assert numeric.headers["x-refine-iterations"] == str(voc.default_refine)
    mel = mel_spectrogram(held_out("LJ003-0049", 0.3))
    expected = voc.vocode(mel, voc.schedule(voc.presets["fast"].rho), seed=2, refine=7)
    served = sf.read(io.BytesIO(answers["{'rho': 'fast', 'refine': 7}"].content), dtype="float32")[0]
    assert np.abs(served - expected).max() <= 1 / 32768 + 1e-6  # the same audio, to the 16-bit quantisation


def test_projection_alone_takes_no_step_and_the_json_body_may_carry_refine(client):
    mel = mel_spectrogram(held_out("LJ003-0058", 0.3)).numpy()
    r = client.post("/v1/vocode", content=npy(mel), headers=NPY, params={"method": "projection", "refine": 5,
                                                                          "seed": 4})
    assert r.status_code == 200 and r.headers["x-diffusion-steps"] == "0" and r.headers["x-method"] == "projection"
    assert "x-rho" not in r.headers and r.headers["x-refine-iterations"] == "5"
    j = client.post("/v1/vocode", json={"mel": mel.tolist(), "refine": 5, "seed": 4}, params={"method": "projection"})
    assert j.status_code == 200 and j.content == r.content
    bad = client.post("/v1/vocode", json={"mel": mel.tolist(), "refine": -2})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid refine"
