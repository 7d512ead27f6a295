"""The mel contracts TTS stacks send, by name (`mel_format`), each with where its numbers come from.

A profile is a `MelSpec` (`model.contract`) plus the stacks that use it and its source. Custom contracts are
registered by name from a directory of JSON files (`load_directory`, VOCODER_CONTRACTS_DIR), or sent as an object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import ContractError, MelSpec

DEFAULT = "hifigan"
#: A registered contract's name: what a URL query and a JSON field can carry plainly.
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class Profile:
    spec: MelSpec
    stacks: str
    source: str


PROFILES: dict[str, Profile] = {
    "hifigan": Profile(
        MelSpec(), "HiFi-GAN, NeMo FastPitch, SpeechBrain, Glow-TTS, Grad-TTS; this server's nets",
        "jik876/hifi-gan meldataset.py mel_spectrogram: reflect pad (n_fft - hop) / 2, center=False, magnitude, "
        "librosa Slaney filterbank 0-8000 Hz, ln(clamp(x, 1e-5))"),
    "tacotron2": Profile(
        MelSpec(center=True), "NVIDIA Tacotron 2, WaveGlow, librosa center=True, DiffWave's torchaudio front end",
        "NVIDIA/tacotron2 stft.py + layers.TacotronSTFT: the same parameters as hifigan, but the STFT reflect-pads "
        "n_fft / 2 on each side (centred frames)"),
    "espnet": Profile(
        MelSpec(fmin=80.0, fmax=7600.0, center=True, compression="log10", floor=1e-10),
        "ESPnet2 TTS (LJSpeech recipes), ParallelWaveGAN; send mean/std as a custom contract if normalised",
        "kan-bayashi/ParallelWaveGAN bin/preprocess.py logmelfilterbank (librosa.stft centred, reflect; "
        "log10(max(1e-10, mel)) of the magnitude) with its LJSpeech config (fmin 80, fmax 7600), and ESPnet2's "
        "LogMelFbank as egs2 TTS recipes run it (tts.sh: fmin 80, fmax 7600, win_length null; log_base 10; "
        "torch.stft centred, reflect). Checked against both packages' own code on held-out LJ clips "
        "(tests/test_peers.py): parallel_wavegan 0.6.1 within 1.1e-4 (log10); espnet 202511 within 1.8e-3, as "
        "ESPnet floors each STFT bin's power at 1e-10 (magnitude 1e-5) before the filterbank and this contract "
        "does not, which moves only near-silent bands (digital silence: about -6.3 in ESPnet, -10 here; both "
        "vocode as silence)"),
    "coqui": Profile(
        MelSpec(fmax=11025.0, center=True, compression="db", floor=1e-8, ref_db=20.0, normalize="symmetric"),
        "Coqui TTS (BaseAudioConfig defaults: Tacotron, Glow-TTS, VITS recipes' mel losses)",
        "coqui-ai/TTS TTS/config/shared_configs.py BaseAudioConfig defaults (fft 1024, hop 256, 80 mels, mel_fmax "
        "None = sr / 2, ref_level_db 20, min_level_db -100, spec_gain 20 log10 of max(x, 1e-8), signal_norm "
        "symmetric to [-4, 4], clip_norm) and AudioProcessor.melspectrogram (librosa.stft centred, reflect); checked "
        "against coqui-tts 0.28's own AudioProcessor (tests/test_peers.py)"),
    "rayhane": Profile(
        MelSpec(hop=275, n_fft=2048, win=1100, fmin=55.0, fmax=7600.0, center=True, pad_mode="constant",
                preemphasis=0.97, power=2.0, compression="db", ref_db=20.0, normalize="symmetric"),
        "Rayhane-mamah Tacotron-2 and its forks (garlic-shake/Tacotron-2, begeekmyfriend)",
        "Rayhane-mamah/Tacotron-2 hparams.py (n_fft 2048, hop_size 275, win_size 1100, fmin 55, fmax 7600, "
        "preemphasis 0.97, magnitude_power 2, ref_level_db 20, min_level_db -100, symmetric_mels, max_abs_value 4) "
        "and datasets/audio.py (librosa.stft pad_mode='constant', centred; pre-emphasis before the STFT)"),
    "bigvgan-24k": Profile(
        MelSpec(sample_rate=24000, n_mels=100, fmax=12000.0), "BigVGAN 24 kHz 100-band, Vocos-style 24 kHz stacks",
        "NVIDIA/BigVGAN bigvgan_24khz_100band config.json (24000 Hz, n_fft 1024, hop 256, win 1024, 100 mels, "
        "0-12000 Hz) and meldataset.py (HiFi-GAN's framing and ln). Checked against bigvgan 2.4.1's own "
        "mel_spectrogram on held-out LJ clips (tests/test_peers.py): within 5e-5 in bands above -7, and at most "
        "0.02 in the quietest, where its sqrt(|X|^2 + 1e-9) lifts each bin's magnitude"),
}


def contract(mel_format: str | dict | None, registered: dict[str, Profile] | None = None) -> MelSpec:
    """The contract a request names: None is the default profile; a string a profile or a registered contract;
    a dict a custom contract (checked). An unknown name or a bad contract is a ContractError."""
    if mel_format is None:
        return PROFILES[DEFAULT].spec
    if isinstance(mel_format, dict):
        return MelSpec.from_dict(mel_format)
    if not isinstance(mel_format, str):
        raise ContractError(f"mel_format is a profile name or a contract object, not {type(mel_format).__name__}")
    known = {**PROFILES, **(registered or {})}
    if mel_format not in known:
        raise ContractError(f"unknown mel_format {mel_format[:64]!r}; known: {', '.join(known)}")
    return known[mel_format].spec


def describe(registered: dict[str, Profile] | None = None) -> dict[str, dict]:
    """Every profile and registered contract with its stacks, source and fields (for /v1/model)."""
    return {name: {"stacks": p.stacks, "source": p.source, "contract": p.spec.to_dict()}
            for name, p in {**PROFILES, **(registered or {})}.items()}


def load_directory(directory: str | Path) -> dict[str, Profile]:
    """Custom contracts from `NAME.json` files (a contract object; "stats": a `.npy` of (2, n_mels), a `.stats.json`
    of {"mean", "std"} or an ESPnet2 recipe's `feats_stats.npz` beside it, for mean/std normalisation). A missing
    directory, a bad file or a name clash is a ContractError."""
    root = Path(directory)
    if not root.is_dir():
        raise ContractError(f"contracts directory {root} does not exist")
    out: dict[str, Profile] = {}
    for path in sorted(p for p in root.glob("*.json") if not p.name.endswith(".stats.json")):
        name = path.stem
        if not set(name) <= NAME_CHARS or name in PROFILES:
            raise ContractError(f"{path}: the name must be [a-z0-9._-] and not a built-in profile's")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ContractError(f"{path}: not readable JSON ({e})") from None
        if isinstance(data, dict) and "stats" in data:
            data = {**{k: v for k, v in data.items() if k != "stats"}, **_stats(root / str(data["stats"]))}
        try:
            spec = MelSpec.from_dict(data)
        except ContractError as e:
            raise ContractError(f"{path}: {e}") from None
        out[name] = Profile(spec, "registered", str(path))
    return out


def _stats(path: Path) -> dict:
    """{"mean", "std"} from a stats file: JSON of the two, a .npy (2, n_mels) of mean and std rows, or ESPnet2's
    collect_stats `.npz` of count, sum and sum_square, read as its GlobalMVN reads it (never unpickled)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                count = float(data["count"])
                mean = np.asarray(data["sum"], np.float64) / count
                var = np.asarray(data["sum_square"], np.float64) / count - mean * mean
            return {"normalize": "meanstd", "mean": mean.tolist(), "std": np.sqrt(np.maximum(var, 1e-20)).tolist()}
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.ndim != 2 or array.shape[0] != 2:
                raise ContractError(f"{path}: stats .npy must be (2, n_mels): mean and std")
            return {"normalize": "meanstd", "mean": array[0].tolist(), "std": array[1].tolist()}
        data = json.loads(path.read_text())
        return {"normalize": "meanstd", "mean": list(data["mean"]), "std": list(data["std"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ContractError(f"{path}: unreadable stats ({e})") from None
