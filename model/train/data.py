"""Training data: a directory of audio decoded once into memory, served as random aligned segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..audio import MelSpec, list_audio, load_audio, mel_spectrogram, read_id_list
from ..prior import frame_energy


class AudioCorpus:
    """Every clip of a directory (optionally filtered by an id list) with its log-mel, in memory."""

    def __init__(self, data: str | Path, id_list: str | Path | None = None, spec: MelSpec = MelSpec(),
                 min_frames: int = 8) -> None:
        ids = read_id_list(id_list) if id_list else None
        files = list_audio(data, ids)
        if not files:
            raise FileNotFoundError(f"no audio files (wav/flac) in {data}" + (f" listed in {id_list}" if ids else ""))
        self.spec = spec
        self.names: list[str] = []
        self.wavs: list[torch.Tensor] = []
        self.mels: list[torch.Tensor] = []
        for f in files:
            wav = load_audio(f, spec.sample_rate)
            frames = len(wav) // spec.hop
            if frames < min_frames:
                continue
            wav = torch.from_numpy(wav[: frames * spec.hop])
            self.names.append(f.stem)
            self.wavs.append(wav)
            self.mels.append(mel_spectrogram(wav, spec))
        self.frames = np.array([m.shape[-1] for m in self.mels])

    def __len__(self) -> int:
        return len(self.wavs)

    @property
    def seconds(self) -> float:
        return float(self.frames.sum() * self.spec.hop / self.spec.sample_rate)

    def mel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and std of the log-mels over every frame: the score net's input standardisation."""
        mels = torch.cat(self.mels, dim=-1).double()
        return mels.mean(dim=-1).numpy(), mels.std(dim=-1).clamp(min=1e-3).numpy()

    def energy_range(self) -> tuple[float, float]:
        """(min, max) frame energy over every frame (`model.prior.frame_energy`): the energy prior's scale."""
        energy = torch.cat([frame_energy(m) for m in self.mels])
        return float(energy.min()), float(energy.max())

    def fixed_clips(self, count: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The first `count` clips, centre-cropped to one common length of at most `seconds`, as
        (audio (B, S), mel (B, n_mels, F), ids): the same segments every time, for scoring and probes."""
        hop = self.spec.hop
        chosen = list(range(min(count, len(self))))
        frames = min(max(1, round(seconds * self.spec.sample_rate / hop)), *(int(self.frames[i]) for i in chosen))
        starts = [(int(self.frames[i]) - frames) // 2 for i in chosen]
        audio = torch.stack([self.wavs[i][s * hop:(s + frames) * hop] for i, s in zip(chosen, starts)])
        mels = torch.stack([self.mels[i][:, s:s + frames] for i, s in zip(chosen, starts)])
        return audio, mels, [self.names[i] for i in chosen]

    def segments(self, batch: int, frames: int, generator: np.random.Generator,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (audio (B, frames*hop), mel (B, n_mels, frames)) on `device`, clips drawn by length."""
        p = self.frames / self.frames.sum()
        audio, mels, hop = [], [], self.spec.hop
        for i in generator.choice(len(self), size=batch, p=p):
            wav, mel = self.wavs[i], self.mels[i]
            if mel.shape[-1] < frames:  # short clip: zero-pad audio, pad mel with silence
                pad = frames - mel.shape[-1]
                wav = torch.nn.functional.pad(wav, (0, pad * hop))
                mel = torch.nn.functional.pad(mel, (0, pad), value=float(np.log(1e-5)))
            start = int(generator.integers(0, mel.shape[-1] - frames + 1))
            audio.append(wav[start * hop:(start + frames) * hop])
            mels.append(mel[:, start:start + frames])
        return torch.stack(audio).to(device, non_blocking=True), torch.stack(mels).to(device, non_blocking=True)
