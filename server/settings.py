"""Server configuration: environment variables prefixed VOCODER_, overridable by `python -m server` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.contract import MelSpec
from model.profiles import Profile, load_directory
from model.runtime import WEIGHTS_ROOT
from model.vocoder import Vocoder


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOCODER_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: The Open Inference Protocol v2 over gRPC (`server.grpc_v2`, the `grpc` extra) on this port; unset: no gRPC.
    grpc_port: int | None = Field(None, ge=0, le=65535)
    #: The weights directory to serve; unset, the device picks the shipped net (`model.runtime.DEFAULT_NETS`).
    weights: Path | None = None
    #: Where the shipped nets are, for that default.
    weights_root: Path = WEIGHTS_ROOT
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Inference precision: auto is bf16 on CUDA (autocast); on a CPU bf16 only where the weights' record says the
    #: guard held on this CPU's bf16 ISA and bf16 was faster (`model.runtime.cpu_bf16_serves`), else fp32.
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    #: Intra-op threads per request; unset: the CPUs this process may use (affinity mask, cgroup v2 quota).
    threads: int | None = Field(None, gt=0)
    #: torch.compile the score net's step (auto: on CUDA only); the compile runs in the warm-up, before /readyz.
    compile: Literal["auto", "on", "off"] = "auto"
    #: Longest mel accepted, in frames of the net's contract (86 frames ~ 1 s at 22050 Hz / hop 256): ~2 minutes;
    #: a mel in another contract may last as many seconds (`frames_in`).
    max_frames: int = Field(86 * 120, gt=0)
    #: Custom mel contracts registered by name at start-up: NAME.json files (`model.profiles.load_directory`).
    contracts_dir: Path | None = None
    #: Largest request body; a 2-minute float32 mel is ~3.3 MB, as JSON ~10 MB, as 16-bit WAV ~5.3 MB.
    max_body_bytes: int = Field(32 * 2**20, gt=0)
    #: Jobs waiting for the inference worker before new requests get 429.
    queue_size: int = Field(32, gt=0)
    #: How long the worker waits for companions to micro-batch with; 0 disables batching. Unset: 5 ms on CUDA, 0 on
    #: a CPU, where the fast path runs a batch's items one after another, so a batch only makes its first reply
    #: wait for its last (bench/results/speed-served.md).
    batch_wait_ms: float | None = Field(None, ge=0)
    max_batch: int = Field(8, gt=0)
    schedule_cache_size: int = Field(64, gt=0)
    #: Builds of schedules the cache lacks, running or waiting (one runs at a time); beyond them: 429.
    schedule_queue_size: int = Field(2, gt=0)
    api_key: SecretStr | None = None
    request_timeout_s: float = Field(300.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


#: A JSON body's bound on its values, in the net's values per second: room for a contract with more bands or
#: frames per second (bigvgan-24k's 100 bands at 24 kHz are 1.4 times the net's); the contract's own limit follows.
CONTRACT_VALUES = 2


def frames_in(settings: Settings, net: MelSpec, contract: MelSpec) -> int:
    """VOCODER_MAX_FRAMES, counted in the net's frames, as frames of `contract`: the same seconds of audio."""
    return max(1, settings.max_frames * net.hop * contract.sample_rate // (net.sample_rate * contract.hop))


def load_contracts(settings: Settings) -> dict[str, Profile]:
    """The contracts registered from VOCODER_CONTRACTS_DIR (none when unset); a bad directory is a ContractError."""
    return {} if settings.contracts_dir is None else load_directory(settings.contracts_dir)


def load_vocoder(settings: Settings) -> Vocoder:
    """The vocoder these settings serve (`Vocoder.load`); missing or corrupt weights raise CheckpointError."""
    return Vocoder.load(settings.weights, settings.device, settings.dtype, settings.compile, settings.weights_root,
                        settings.threads)
