"""Checkpoints: safetensors weights plus one JSON config, nothing pickled.

A weights directory holds
  config.json                 architecture, audio and diffusion settings, search results, training record
  score_net.safetensors       eps_theta (EMA weights, fp16)
  schedule_net.safetensors    sigma_phi (fp16), once trained
  ne_net.safetensors          the noise-level network P_theta of noise-estimation sampling (fp16), once trained
  train_state.safetensors     fp32 weights, EMA and Adam moments, so training resumes exactly
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "bddm-vocoder/1"
CONFIG = "config.json"
SCORE_NET = "score_net.safetensors"
SCHEDULE_NET = "schedule_net.safetensors"
NE_NET = "ne_net.safetensors"
TRAIN_STATE = "train_state.safetensors"


class CheckpointError(RuntimeError):
    """A weights directory that is missing, corrupt or inconsistent with its config."""


def weights_id(directory: Path | None) -> str:
    """Directory name plus a hash of the files that decide the output, so two deployments can be compared."""
    digest = hashlib.sha256()
    for name in (CONFIG, SCORE_NET, SCHEDULE_NET):
        path = directory / name if directory else None
        if path is not None and path.exists():
            digest.update(path.read_bytes())
    return f"{directory.name if directory else 'in-memory'}@{digest.hexdigest()[:12]}"


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no {CONFIG} in {directory}: not a weights directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {config.get('format')!r}, expected {FORMAT!r}")
    return config


def write_config(directory: str | Path, config: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, **config}
    tmp = Path(directory) / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(Path(directory) / CONFIG)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
    """Atomic safetensors write (a crash mid-save never leaves a truncated file behind)."""
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in tensors.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"missing weights file {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} (truncated or corrupt?): {e}") from None


def save_module(path: str | Path, module: nn.Module, dtype: torch.dtype = torch.float16) -> None:
    save_tensors(path, module.state_dict(), dtype)


def load_module(path: str | Path, module: nn.Module) -> nn.Module:
    """Load safetensors into `module` (cast to its dtype); a shape or key mismatch is a CheckpointError."""
    state = load_tensors(path)
    own = module.state_dict()
    if set(state) != set(own):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(f"{path} does not match the config's architecture (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, config implies {tuple(own[k].shape)}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return module
