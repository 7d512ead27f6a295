"""The peers' own mel code, where it is installed (`make install-test` installs each without its dependencies): the
mels their stacks would send, for the profiles' tests (tests/test_peers.py) and bench.contracts.

- `coqui`: Coqui TTS's `AudioProcessor` with `BaseAudioConfig`'s defaults (coqui-tts 0.28.0);
- `espnet`: ESPnet2's `LogMelFbank` as its LJSpeech TTS recipes build it (espnet 202511); parallel_wavegan's
  `logmelfilterbank` (0.6.1) with its LJSpeech config computes the same contract;
- `bigvgan-24k`: BigVGAN's `meldataset.mel_spectrogram` (bigvgan 2.4.1, HiFi-GAN's, with each bin's magnitude
  sqrt(|X|^2 + 1e-9)) with its 24 kHz 100-band config.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

#: ESPnet2's egs2 TTS recipes' front end for LJSpeech: run.sh's fs, n_fft and n_shift; tts.sh's fmin, fmax, n_mels
#: and win_length (null), passed to LogMelFbank as --feats_extract_conf.
ESPNET_LJSPEECH = {"fs": 22050, "n_fft": 1024, "hop_length": 256, "win_length": None, "fmin": 80, "fmax": 7600,
                   "n_mels": 80}
#: ParallelWaveGAN's egs/ljspeech/voc1 config, as bin/preprocess.py passes it to logmelfilterbank.
PWG_LJSPEECH = {"fft_size": 1024, "hop_size": 256, "win_length": None, "window": "hann", "num_mels": 80, "fmin": 80,
                "fmax": 7600}
#: The module each profile's peer code lives in, and the peer's name.
PEERS = {"coqui": ("TTS", "coqui-tts AudioProcessor"), "espnet": ("espnet2", "espnet LogMelFbank"),
         "bigvgan-24k": ("bigvgan", "bigvgan meldataset")}


def installed(module: str) -> bool:
    """Whether `module` imports (or has: `bare` puts a package in sys.modules)."""
    return module in sys.modules or importlib.util.find_spec(module) is not None


def bare(name: str) -> None:
    """The installed package `name` in sys.modules without running its `__init__.py`, whose imports are the models'
    (Coqui's demands torchaudio and torchcodec, BigVGAN's huggingface_hub), not the audio front end's."""
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(importlib.util.find_spec(name).origin).parent)]
        sys.modules[name] = package


def coqui_audio_processor():
    """Coqui's AudioProcessor with BaseAudioConfig's defaults."""
    bare("TTS")
    from TTS.config.shared_configs import BaseAudioConfig  # noqa: PLC0415
    from TTS.utils.audio.processor import AudioProcessor  # noqa: PLC0415

    return AudioProcessor(BaseAudioConfig())


def espnet_fbank():
    """ESPnet2's LogMelFbank as an LJSpeech TTS recipe builds it."""
    from espnet2.tts.feats_extract.log_mel_fbank import LogMelFbank  # noqa: PLC0415

    return LogMelFbank(**ESPNET_LJSPEECH)


def espnet_mel(fbank, wav: np.ndarray) -> torch.Tensor:
    """ESPnet's (1, frames, n_mels) features of one clip, with its lengths as its data loader gives them."""
    with torch.no_grad():
        return fbank(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))[0]


def pwg_mel(wav: np.ndarray) -> np.ndarray:
    """parallel_wavegan's (n_mels, frames) log10 mel of one 22050 Hz clip (it computes (frames, n_mels))."""
    from parallel_wavegan.bin.preprocess import logmelfilterbank  # noqa: PLC0415

    return logmelfilterbank(wav, 22050, **PWG_LJSPEECH).T.astype(np.float32)


def bigvgan_mel(wav: np.ndarray) -> np.ndarray:
    """BigVGAN's (n_mels, frames) mel of one 24 kHz clip with its bigvgan_24khz_100band config."""
    bare("bigvgan")
    from bigvgan.meldataset import mel_spectrogram  # noqa: PLC0415

    return mel_spectrogram(torch.from_numpy(wav)[None], 1024, 100, 24000, 256, 1024, 0, 12000)[0].numpy()


def peer_mel(profile: str, wav: np.ndarray) -> np.ndarray | None:
    """The (n_mels, frames) mel of `wav` by `profile`'s peer code, None where it has none or it is not installed."""
    if profile not in PEERS or not installed(PEERS[profile][0]):
        return None
    if profile == "coqui":
        return coqui_audio_processor().melspectrogram(wav).astype(np.float32)
    if profile == "bigvgan-24k":
        return bigvgan_mel(wav)
    return espnet_mel(espnet_fbank(), wav)[0].numpy().T.copy()
