"""Offline CLIs: wav -> `model.mel` -> `model.synth` -> wav, and exit code 2 with one line for bad input."""

import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model import mel as mel_cli
from model import synth
from model.audio import HOP, SAMPLE_RATE, load_audio
from model.checkpoint import CONFIG
from model.mel import MelError, parse_mel_npy, read_mel_file
from model.vocoder import Vocoder

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 12


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mel_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mel") / "mel.npy"
    path.write_bytes(npy_bytes(np.random.default_rng(0).normal(-5, 1, (80, FRAMES)).astype(np.float32)))
    return path


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_wav_to_mel_to_wav_round_trip(shared_data, tiny_weights, tmp_path):
    """`model.mel` in-process, then `python -m model.synth` as a user runs it (one interpreter start is enough)."""
    clip = load_audio(shared_data / "wavs" / "LJ001-0001.flac")[: SAMPLE_RATE // 2]
    sf.write(tmp_path / "in.wav", clip, SAMPLE_RATE)
    assert mel_cli.main([str(tmp_path / "in.wav"), "-o", str(tmp_path / "in.mel")]) == 0
    mel = np.load(tmp_path / "in.mel", allow_pickle=False)  # the exact name given, no ".npy" appended
    assert mel.dtype == np.float32 and mel.shape == (80, len(clip) // HOP)

    out = run_module("model.synth", str(tmp_path / "in.mel"), "-o", str(tmp_path / "out.wav"),
                     "--weights", str(tiny_weights), "--preset", "fast", "--seed", "1", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "steps" in out.stdout and "RTF" in out.stdout and "s of audio" in out.stdout
    audio, sr = sf.read(tmp_path / "out.wav")
    assert sr == SAMPLE_RATE and audio.shape == (mel.shape[1] * HOP,)


def synth_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = synth.main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("shape_dtype", [((80, FRAMES), np.float64), ((1, 80, FRAMES), np.float16)])
def test_synth_accepts_float_mels_2d_or_batched_one(capsys, tiny_weights, tmp_path, shape_dtype):
    shape, dtype = shape_dtype
    (tmp_path / "m.npy").write_bytes(npy_bytes(np.full(shape, -4.0, dtype)))
    rc, out, err = synth_main(capsys, str(tmp_path / "m.npy"), "-o", str(tmp_path / "o.wav"),
                              "--weights", str(tiny_weights), "--seed", "0", "--device", "cpu")
    assert rc == 0, err
    assert sf.info(tmp_path / "o.wav").frames == FRAMES * HOP


def test_synth_schedule_options_and_seeded_determinism(capsys, tiny_weights, mel_file, shared_data, tmp_path):
    official = shared_data.parent / "reference-schedules" / "bddm-official-ljspeech-7steps.json"
    runs = {
        "a": ["--steps-schedule", str(official), "--seed", "5"],
        "b": ["--steps-schedule", str(official), "--seed", "5"],
        "c": ["--steps-schedule", str(official), "--seed", "6"],
        "rho": ["--rho", str(json.loads((tiny_weights / CONFIG).read_text())["search"]["default_rho"])],
    }
    audio = {}
    for name, options in runs.items():
        rc, out, err = synth_main(capsys, str(mel_file), "-o", str(tmp_path / f"{name}.wav"),
                                  "--weights", str(tiny_weights), "--device", "cpu", *options)
        assert rc == 0, err
        audio[name] = sf.read(tmp_path / f"{name}.wav")[0]
        assert len(audio[name]) == FRAMES * HOP
        assert name == "rho" or out.count("7 steps") == 1
    np.testing.assert_array_equal(audio["a"], audio["b"])
    assert not np.array_equal(audio["a"], audio["c"])


def test_synth_refines_as_the_preset_says_or_as_asked_and_projects_with_no_net(capsys, tiny_weights, mel_file,
                                                                              tmp_path):
    voc = Vocoder.load(tiny_weights, "cpu")
    mel = read_mel_file(mel_file, voc.spec.n_mels)
    fast = voc.presets["fast"]
    runs = {"preset": (["--preset", "fast"], voc.schedule(fast.rho), fast.refine, f"{fast.refine} refinements"),
            "asked": (["--preset", "fast", "--refine", "3"], voc.schedule(fast.rho), 3, "3 refinements"),
            "projection": (["--method", "projection", "--refine", "5"], None, 5, "projection alone, 5 projections"),
            "projection preset": (["--method", "projection", "--preset", "fast"], None, fast.projections,
                                  f"projection alone, {fast.projections} projections")}
    for name, (options, schedule, refine, says) in runs.items():
        rc, out, err = synth_main(capsys, str(mel_file), "-o", str(tmp_path / f"{name}.wav"),
                                  "--weights", str(tiny_weights), "--device", "cpu", "--seed", "2", *options)
        assert rc == 0 and says in out, err
        expected = voc.vocode(mel, schedule, seed=2, refine=refine)
        assert np.abs(sf.read(tmp_path / f"{name}.wav", dtype="float32")[0] - expected).max() <= 1 / 32768 + 1e-6
    for options in (["--refine", "-1"], ["--refine", "100000"], ["--method", "projection", "--rho", "0.1"]):
        with pytest.raises(SystemExit) as e:
            synth.main([str(mel_file), "-o", str(tmp_path / "x.wav"), "--weights", str(tiny_weights), *options])
        assert e.value.code == 2


BAD_MELS = {
    "text file": b"frames,80\n1,2,3\n",
    "empty file": b"",
    "pickled object array": npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
    "plain pickle": pickle.dumps(np.zeros((80, 4))),
    "npz archive": None,  # filled below
    "truncated npy": npy_bytes(np.zeros((80, 40), np.float32))[:-100],
    "wrong band count": npy_bytes(np.zeros((40, FRAMES), np.float32)),
    "batch of two": npy_bytes(np.zeros((2, 80, FRAMES), np.float32)),
    "1-d array": npy_bytes(np.zeros(80 * FRAMES, np.float32)),
    "integer dtype": npy_bytes(np.zeros((80, FRAMES), np.int16)),
    "NaN": npy_bytes(np.where(np.arange(FRAMES) == 3, np.nan, -5.0)[None].repeat(80, 0).astype(np.float32)),
    "Inf": npy_bytes(np.full((80, FRAMES), -np.inf, np.float32)),
    "beyond float32": npy_bytes(np.full((80, FRAMES), 1e300)),
    "zero frames": npy_bytes(np.zeros((80, 0), np.float32)),
}
_buf = io.BytesIO()
np.savez(_buf, mel=np.zeros((80, FRAMES), np.float32))
BAD_MELS["npz archive"] = _buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_MELS))
def test_bad_mel_file_exits_2_with_one_line(capsys, tiny_weights, tmp_path, case):
    (tmp_path / "bad.npy").write_bytes(BAD_MELS[case])
    rc, out, err = synth_main(capsys, str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o.wav"),
                              "--weights", str(tiny_weights), "--device", "cpu")
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (case, err)
    assert not (tmp_path / "o.wav").exists()
    with pytest.raises(MelError):
        parse_mel_npy(BAD_MELS[case])


def test_missing_mel_file_exits_2(capsys, tiny_weights, tmp_path):
    rc, _, err = synth_main(capsys, str(tmp_path / "absent.npy"), "-o", str(tmp_path / "o.wav"),
                            "--weights", str(tiny_weights))
    assert rc == 2 and "absent.npy" in err and err.count("\n") == 1


def test_bad_weights_or_schedule_exit_2(capsys, tiny_weights, mel_file, tmp_path):
    no_search = Path(shutil.copytree(tiny_weights, tmp_path / "no-search"))
    config = json.loads((no_search / CONFIG).read_text())
    del config["search"]
    (no_search / CONFIG).write_text(json.dumps(config))
    (tmp_path / "sched.json").write_text('{"beta": [0.1, 1.5]}')
    cases = {
        "not a weights dir": ["--weights", str(tmp_path)],
        "no default rho": ["--weights", str(no_search)],
        "invalid schedule": ["--weights", str(tiny_weights), "--steps-schedule", str(tmp_path / "sched.json")],
        "missing schedule": ["--weights", str(tiny_weights), "--steps-schedule", str(tmp_path / "none.json")],
        "rho out of range": ["--weights", str(tiny_weights), "--rho", "1.5"],
        "no such device": ["--weights", str(tiny_weights), "--device", "cuda"] if not torch.cuda.is_available() else
                          ["--weights", str(tiny_weights), "--rho", "nan"],
    }
    for name, options in cases.items():
        rc, _, err = synth_main(capsys, str(mel_file), "-o", str(tmp_path / "o.wav"), *options)
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)


def test_mel_cli_rejects_unreadable_audio(capsys, tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF not really")
    assert mel_cli.main([str(tmp_path / "x.wav"), "-o", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.npy").exists()
