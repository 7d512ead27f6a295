"""Vocoding in the caller's contract (`Vocoder.vocode(..., contract=)`, `model.transcode`): F x hop samples at the
contract's rate, the output agrees with the caller's own mel, a stream joins to the whole, one seed one answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from model.audio import load_audio, mel_spectrogram
from model.profiles import PROFILES
from model.refine import distance
from model.transcode import net_frames, to_net
from model.vocoder import Vocoder


@pytest.fixture(scope="module")
def voc(tiny_weights) -> Vocoder:
    return Vocoder.load(tiny_weights, "cpu", dtype="fp32", threads=1)


def clip_mel(name: str, seconds: float = 0.8) -> torch.Tensor:
    spec = PROFILES[name].spec
    wav = load_audio(SHARED_DATA / "wavs" / "LJ003-0047.flac", spec.sample_rate)[:int(seconds * spec.sample_rate)]
    return mel_spectrogram(wav, spec)


@pytest.mark.parametrize("name", [n for n in PROFILES if n != "hifigan"])
def test_a_foreign_contracts_mel_becomes_its_hops_at_its_rate_and_agrees_with_its_mel(voc, name):
    spec, mel = PROFILES[name].spec, clip_mel(name)
    schedule = voc.schedule(voc.presets["fast"].rho)
    unrefined = voc.vocode(mel, schedule, seed=1, refine=0, contract=spec)
    audio = voc.vocode(mel, schedule, seed=1, refine=16, contract=spec)
    assert audio.shape == unrefined.shape == (mel.shape[-1] * spec.hop,)
    assert np.abs(audio).max() <= 1.0
    before, after = (float(distance(torch.from_numpy(a)[None], mel[None], spec)) for a in (unrefined, audio))
    assert after < 0.6 * before  # the refinements ran in the caller's own STFT, against its own mel


def test_the_nets_own_contract_takes_the_usual_path_bit_for_bit(voc):
    mel, schedule = clip_mel("hifigan"), voc.schedule(voc.presets["fast"].rho)
    assert np.array_equal(voc.vocode(mel, schedule, seed=2, refine=4),
                          voc.vocode(mel, schedule, seed=2, refine=4, contract=PROFILES["hifigan"].spec))


def test_a_batch_in_a_contract_is_its_items(voc):
    spec, mel = PROFILES["espnet"].spec, clip_mel("espnet")
    schedule = voc.schedule(voc.presets["fast"].rho)
    batch = voc.vocode(torch.stack([mel, mel]), schedule, seed=[3, 4], refine=4, contract=spec)
    assert np.allclose(batch[1], voc.vocode(mel, schedule, seed=4, refine=4, contract=spec), atol=2 / 32768)


@pytest.mark.parametrize("name", ["tacotron2", "rayhane", "bigvgan-24k"])
def test_a_stream_in_a_contract_joins_to_the_whole_within_one_lsb(voc, name):
    spec, mel = PROFILES[name].spec, clip_mel(name, 1.2)
    schedule = voc.schedule(voc.presets["fast"].rho)
    whole = voc.vocode(mel, schedule, seed=5, refine=8, contract=spec)
    stream = voc.stream(mel, schedule, seed=5, refine=8, first=20, largest=40, contract=spec)
    joined = np.concatenate([stream.render(c) for c in stream.plan])
    assert joined.shape == whole.shape
    assert np.abs(joined - whole).max() <= 1 / 32768


def test_reading_into_the_nets_contract_keeps_the_sound_and_covers_the_duration():
    net = PROFILES["hifigan"].spec
    ref = clip_mel("hifigan", 2.0)
    for name in ("tacotron2", "espnet", "coqui", "bigvgan-24k"):
        spec = PROFILES[name].spec
        mel = clip_mel(name, 2.0)
        read = to_net(mel, spec, net)
        assert read.shape == (net.n_mels, net_frames(mel.shape[-1], spec, net))
        n = min(read.shape[-1], ref.shape[-1])
        loud = ref[:, :n] > -6
        assert (read[:, :n] - ref[:, :n])[loud].abs().mean() < 0.5, name  # within 0.5 nats where it is heard


def test_the_synth_cli_vocodes_in_a_named_contract_and_refuses_a_wrong_one(tiny_weights, tmp_path):
    import subprocess
    import sys

    import soundfile as sf
    from conftest import REPO

    spec = PROFILES["rayhane"].spec
    np.save(tmp_path / "mel.npy", clip_mel("rayhane", 0.5).numpy())
    base = [sys.executable, "-m", "model.synth", str(tmp_path / "mel.npy"), "-o", str(tmp_path / "out.wav"),
            "--weights", str(tiny_weights), "--preset", "fast", "--device", "cpu"]
    ok = subprocess.run([*base, "--mel-format", "rayhane"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    audio, rate = sf.read(tmp_path / "out.wav")
    assert (len(audio), rate) == (clip_mel("rayhane", 0.5).shape[-1] * spec.hop, spec.sample_rate)
    predicted = SHARED_DATA.parent / "tts-mels" / "ru-rayhane-2.npy"  # a Rayhane prediction, sent as the net's
    wrong = subprocess.run([*base[:3], str(predicted), *base[4:]], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert wrong.returncode == 2 and "rayhane" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
