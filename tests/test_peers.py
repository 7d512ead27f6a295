"""The profiles against the peers' own code. `make install-test` installs each peer without its dependencies (their
models' are gigabytes; their audio front ends need a few small packages, in the test extra), and held-out LJ clips'
mels made by

- Coqui TTS's `AudioProcessor` (coqui-tts 0.28.0 with coqui-tts-trainer 0.4.0's config class; librosa, coqpit-config),
- parallel_wavegan's `logmelfilterbank` (0.6.1, its LJSpeech config; bin/preprocess.py imports h5py and kaldiio
  through the package's utils and datasets). Its sdist builds only without build isolation: setup.py imports pip,
  which pip's isolated build environment lacks ("ModuleNotFoundError: No module named 'pip'" in "Getting
  requirements to build wheel"); built with the venv's own pip and setuptools (>= 70.1: a fresh Python 3.11 venv's
  setuptools 65 has no bdist_wheel without the wheel package) it installs in about 2 s (1.2 MB; h5py and kaldiio
  17 MB more),
- ESPnet2's `LogMelFbank` (espnet 202511: a 2.2 MB wheel, 25 MB installed, about 2 s; its front end imports
  typeguard, humanfriendly and torch_complex, 1.3 MB),
- BigVGAN's `meldataset.mel_spectrogram` (bigvgan 2.4.1, under a second; librosa, tqdm)

equal our profile's and vocode with its `mel_format`. An ESPnet recipe's normalised mels: ESPnet's own
`collect_stats` makes `feats_stats.npz` from the train clips, the server registers that file as it is, and mels
normalised by ESPnet's `GlobalMVN` vocode by the registered name. In CI (`CI` set), which installs every peer, a
missing one fails its test; elsewhere it skips."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import httpx
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from bench.peers import bigvgan_mel, coqui_audio_processor, espnet_fbank, espnet_mel, installed, pwg_mel
from conftest import SHARED_DATA, serving
from model.audio import list_audio, load_audio, mel_spectrogram, read_id_list
from model.profiles import PROFILES
from server import Settings, create_app
from test_server_api import NPY, npy

def peer(module: str, package: str) -> None:
    """Skip unless `module` is installed; in CI, which installs every peer, its absence fails the test instead."""
    if not installed(module):
        if os.environ.get("CI"):
            pytest.fail(f"{package} is not installed: `make install-test` installs it")
        pytest.skip(f"{package} is not installed (make install-test installs it)")


def espnet_recipe_stats(out: Path, train: list[Path], dev: list[Path]) -> Path:
    """`feats_stats.npz` made by ESPnet's own collect_stats from the train clips, as tts.sh's stage 5 runs it: the
    task's model (its Tacotron 2 is built tiny, since collect_feats runs only the feature extractor) over batches of
    padded waveforms with their lengths. Returns the train set's stats file, which training's GlobalMVN reads."""
    from espnet2.main_funcs.collect_stats import collect_stats  # noqa: PLC0415
    from espnet2.tts.espnet_model import ESPnetTTSModel  # noqa: PLC0415
    from espnet2.tts.tacotron2 import Tacotron2  # noqa: PLC0415

    tts = Tacotron2(idim=4, odim=80, embed_dim=8, eunits=8, econv_layers=0, adim=8, aconv_chans=2, dunits=8,
                    dlayers=1, prenet_units=8, postnet_layers=0)
    model = ESPnetTTSModel(feats_extract=espnet_fbank(), pitch_extract=None, energy_extract=None, normalize=None,
                           pitch_normalize=None, energy_normalize=None, tts=tts)

    def batches(paths: list[Path], size: int = 8):
        for i in range(0, len(paths), size):
            wavs = [torch.from_numpy(load_audio(p)) for p in paths[i:i + size]]
            yield [p.stem for p in paths[i:i + size]], {
                "text": torch.zeros(len(wavs), 1, dtype=torch.long),
                "text_lengths": torch.ones(len(wavs), dtype=torch.long),
                "speech": torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
                "speech_lengths": torch.tensor([len(w) for w in wavs])}

    with torch.no_grad():
        collect_stats(model, list(batches(train)), list(batches(dev)), out, ngpu=0, log_interval=None,
                      write_collected_feats=False)
    return out / "train" / "feats_stats.npz"


def held_out(count: int = 3, seconds: float = 1.0) -> list[np.ndarray]:
    ids = read_id_list(SHARED_DATA / "valid.txt")[8:8 + count]
    return [load_audio(p)[:int(seconds * 22050)] for p in list_audio(SHARED_DATA / "wavs", ids)]


def vocodes(base: str, mel: np.ndarray, mel_format: str, hop: int) -> None:
    """`mel` vocodes with `mel_format` into audio of its frames' length."""
    r = httpx.post(f"{base}/v1/vocode", params={"mel_format": mel_format, "rho": "fast"}, content=npy(mel),
                   headers=NPY, timeout=120)
    assert r.status_code == 200, r.text
    assert len(np.frombuffer(r.content[44:], np.int16)) == mel.shape[-1] * hop


@pytest.fixture(scope="module")
def url(tiny_weights, tmp_path_factory):
    """A server with two normalised contracts registered: `espnet-ljs`, the espnet profile normalised per band by
    the mean and std of the train clips' mels (ours); and, where ESPnet is installed, `espnet-recipe`, whose stats
    are the `feats_stats.npz` ESPnet's collect_stats makes from the same clips."""
    registered = tmp_path_factory.mktemp("contracts")
    train = list_audio(SHARED_DATA / "wavs", read_id_list(SHARED_DATA / "train.txt")[::10])
    mels = np.concatenate([mel_spectrogram(load_audio(p), PROFILES["espnet"].spec).numpy() for p in train], axis=1)
    np.save(registered / "ljs_stats.npy", np.stack([mels.mean(axis=1), mels.std(axis=1)]))
    contract = {k: v for k, v in PROFILES["espnet"].spec.to_dict().items() if v is not None}
    (registered / "espnet-ljs.json").write_text(json.dumps({**contract, "stats": "ljs_stats.npy"}))
    if installed("espnet2"):
        dev = list_audio(SHARED_DATA / "wavs", read_id_list(SHARED_DATA / "valid.txt")[8:11])
        stats = espnet_recipe_stats(tmp_path_factory.mktemp("tts_stats"), train, dev)
        shutil.copy(stats, registered / "feats_stats.npz")
        (registered / "espnet-recipe.json").write_text(json.dumps({**contract, "stats": "feats_stats.npz"}))
    with serving(create_app(Settings(weights=tiny_weights, device="cpu", contracts_dir=registered))) as base:
        yield base, np.load(registered / "ljs_stats.npy"), registered


def test_coquis_own_mels_equal_the_coqui_profile_and_vocode_with_it(url):
    base, _, _ = url
    peer("TTS", "coqui-tts")
    processor = coqui_audio_processor()
    spec = PROFILES["coqui"].spec
    for wav in held_out():
        theirs = processor.melspectrogram(wav).astype(np.float32)
        assert np.abs(theirs - mel_spectrogram(wav, spec).numpy()).max() < 1e-3
        vocodes(base, theirs, "coqui", spec.hop)
        refused = httpx.post(f"{base}/v1/vocode", params={"rho": "fast"}, content=npy(theirs), headers=NPY,
                             timeout=120)
        assert refused.status_code == 422 and "coqui" in refused.json()["detail"]


def test_parallel_wavegans_own_mels_equal_the_espnet_profile_and_vocode_with_it(url):
    base, _, _ = url
    peer("parallel_wavegan", "parallel_wavegan")
    spec = PROFILES["espnet"].spec
    for wav in held_out():
        theirs = pwg_mel(wav)
        assert theirs.shape == (80, spec.frames(len(wav)))
        assert np.abs(theirs - mel_spectrogram(wav, spec).numpy()).max() < 5e-4  # 1.1e-4 on valid.txt 9-20, whole
        vocodes(base, theirs, "espnet", spec.hop)


def test_bigvgans_own_mels_equal_the_bigvgan_24k_profile_and_vocode_with_it(url):
    """BigVGAN's mel is HiFi-GAN's with each bin's magnitude sqrt(|X|^2 + 1e-9): in bands above -7 (ln) it is the
    profile's to 5e-5, and the floor lifts only the quietest (0.02 at most on valid.txt 9-20, whole; 0.07 on these
    clips' band-limited top, resampled from 22050 Hz)."""
    base, _, _ = url
    peer("bigvgan", "bigvgan")
    spec = PROFILES["bigvgan-24k"].spec
    for wav in held_out():
        wav = librosa.resample(wav, orig_sr=22050, target_sr=24000).astype(np.float32)
        theirs, ours = bigvgan_mel(wav), mel_spectrogram(wav, spec).numpy()
        assert theirs.shape == ours.shape == (100, spec.frames(len(wav)))
        assert np.abs(theirs - ours)[ours > -7].max() < 1e-4 and np.abs(theirs - ours).max() < 0.1
        vocodes(base, theirs, "bigvgan-24k", spec.hop)


def test_espnets_own_mels_equal_the_espnet_profile_and_vocode_with_it(url):
    """ESPnet floors each STFT bin's power at 1e-10 (magnitude 1e-5) before the filterbank, the contract only the
    band at 1e-10: in the frames with such a bin (1-6 % of them in valid.txt 9-20) ESPnet's bands come out higher,
    by at most 1.8e-3 in log10; every other frame is the profile's to float32 rounding (4.8e-7)."""
    base, _, _ = url
    peer("espnet2", "espnet")
    fbank = espnet_fbank()
    spec = PROFILES["espnet"].spec
    for wav in held_out():
        theirs = espnet_mel(fbank, wav)[0].numpy().T
        assert theirs.shape == (80, spec.frames(len(wav)))
        difference = theirs - mel_spectrogram(wav, spec).numpy()
        floored = (np.abs(librosa.stft(wav, n_fft=spec.n_fft, hop_length=spec.hop, pad_mode="reflect")) < 1e-5)
        floored = floored.any(axis=0)
        assert np.abs(difference[:, ~floored]).max() < 1e-5 and floored.mean() < 0.1
        assert difference.max() < 5e-3 and difference.min() > -1e-5
        vocodes(base, theirs, "espnet", spec.hop)


def test_espnets_digital_silence_vocodes_as_silence_in_the_espnet_profile(url):
    """ESPnet's bin floor puts digital silence at log10(1e-5 x the band's filter weights), about -6.3, where the
    profile says -10: far apart in value, both as quiet as the contract can say, and they vocode as silence."""
    base, _, _ = url
    peer("espnet2", "espnet")
    fbank = espnet_fbank()
    wav = np.concatenate([np.zeros(22050 // 2, np.float32), held_out(1)[0]])
    theirs = espnet_mel(fbank, wav)[0].numpy().T
    silent = theirs[:, 2:40]  # frames whose window holds only zeros
    assert -6.5 < silent.min() and silent.max() < -6.2
    assert mel_spectrogram(wav, PROFILES["espnet"].spec)[:, 2:40].max() == -10
    r = httpx.post(f"{base}/v1/vocode", params={"mel_format": "espnet", "rho": "fast"}, content=npy(theirs),
                   headers=NPY, timeout=120)
    assert r.status_code == 200, r.text
    audio = np.frombuffer(r.content[44:], np.int16) / 32768
    assert np.sqrt(np.mean(audio[:10000] ** 2)) < 0.01 * np.sqrt(np.mean(audio[12000:] ** 2))
    refused = httpx.post(f"{base}/v1/vocode", params={"rho": "fast"}, content=npy(theirs), headers=NPY, timeout=120)
    assert refused.status_code == 422 and "espnet" in refused.json()["detail"]  # that silence is ESPnet's fingerprint


def test_an_espnet_recipes_stats_register_as_they_are_and_its_normalised_mels_vocode_by_name(url):
    """ESPnet normalises the features it trains on with GlobalMVN over the train set's feats_stats.npz; the server
    reads the same mean and std from that file, and its own mel in the registered contract is ESPnet's."""
    base, _, registered = url
    peer("espnet2", "espnet")
    fbank = espnet_fbank()
    from espnet2.layers.global_mvn import GlobalMVN  # noqa: PLC0415

    mvn = GlobalMVN(registered / "feats_stats.npz")
    served = httpx.get(f"{base}/v1/model").json()["profiles"]["espnet-recipe"]["contract"]
    assert np.abs(np.array(served["mean"]) - mvn.mean.numpy()).max() < 1e-6
    assert np.abs(np.array(served["std"]) - mvn.std.numpy()).max() < 1e-6
    hop = PROFILES["espnet"].spec.hop
    for wav in held_out():
        with torch.no_grad():
            theirs = mvn(espnet_mel(fbank, wav))[0][0].numpy().T.astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, wav, 22050, format="WAV", subtype="FLOAT")
        ours = httpx.post(f"{base}/v1/mel", params={"mel_format": "espnet-recipe"}, content=buf.getvalue(),
                          headers={"Content-Type": "audio/wav"}, timeout=120)
        assert ours.status_code == 200, ours.text
        # ESPnet's bin floor, over the std: 2.1e-3 on valid.txt 9-20
        assert np.abs(np.load(io.BytesIO(ours.content)) - theirs).max() < 5e-3
        vocodes(base, theirs, "espnet-recipe", hop)
        refused = httpx.post(f"{base}/v1/vocode", params={"rho": "fast"}, content=npy(theirs), headers=NPY,
                             timeout=120)
        assert refused.status_code == 422 and "mean/std" in refused.json()["detail"]


def test_an_espnet_recipes_normalised_mels_vocode_by_their_registered_name(url):
    base, stats, _ = url
    for wav in held_out():
        mel = mel_spectrogram(wav, PROFILES["espnet"].spec).numpy()
        normalised = ((mel - stats[0][:, None]) / stats[1][:, None]).astype(np.float32)
        vocodes(base, normalised, "espnet-ljs", PROFILES["espnet"].spec.hop)
        refused = httpx.post(f"{base}/v1/vocode", params={"rho": "fast"}, content=npy(normalised), headers=NPY,
                             timeout=120)
        assert refused.status_code == 422 and "mean/std" in refused.json()["detail"]
    assert "espnet-ljs" in httpx.get(f"{base}/v1/model").json()["profiles"]
