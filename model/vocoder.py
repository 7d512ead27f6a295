"""The vocoder as a user sees it: a weights directory loaded once, mel in, waveform out, rho as the knob.

Used by the offline CLIs (`model.synth`), the benchmarks and the server alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import scheduling
from .audio import MelSpec, resample
from .cancel import Cancelled, Check
from .checkpoint import NE_NET, SCHEDULE_NET, SCORE_NET, CheckpointError, load_module, read_config
from .ne_net import NENet, NENetParams
from .noise_estimation import DEFAULT_FAMILY, ne_ddpm
from .prior import EpsFn
from .phase import CoherentPhase, coherent_start
from .projector import in_pool, project_item
from .refine import (MAX_GAIN, MOMENTUM, PRESET_PROJECTIONS, clipped, gain_floor, project, reach_frames,
                     refine_iterations, target_of)
from .runtime import (DEFAULT_METHODS, WEIGHTS_ROOT, WHY_METHOD, WHY_NAMED, default_weights, resolve_compile,
                      resolve_device, resolve_dtype, resolve_threads)
from .sampling import SAMPLERS, NoiseSource, Seeds, item_seeds, windowed_eps
from .schedules import Diffusion, Schedule
from .score_net import CONFIGS, ScoreNet, ScoreNetParams
from .score_net_cpu import CpuScoreNet, intra_op_threads
from .streaming import FIRST_FRAMES, LARGEST_FRAMES, Stream, WholeStream, margin_frames
from .transcode import to_net


@dataclass(frozen=True)
class Preset:
    """A named setting of the quality/speed knob, for each method: `bddm` is rho, the scheduling loop's threshold
    (so the diffusion steps), and `refine` mel-consistency projections after sampling (`model.refine`);
    `projection` is `projections` projections of the mel's coherent start (`model.phase`). Numeric rho is BDDM's."""

    rho: float
    refine: int = 0
    projections: int = 0

    @classmethod
    def from_config(cls, name: str, value: float | dict) -> "Preset":
        """A stored preset: {"bddm": {"rho", "refine"}, "projection": {"refine"}}; as weights stored it before
        projection had presets, {"rho", "refine"} or a bare rho (projection then `PRESET_PROJECTIONS`')."""
        default = PRESET_PROJECTIONS.get(name, 0)
        if not isinstance(value, dict):
            return cls(float(value), 0, default)
        if "bddm" not in value:
            return cls(float(value["rho"]), int(value.get("refine", 0)), default)
        bddm, projection = value["bddm"], value.get("projection", {})
        return cls(float(bddm["rho"]), int(bddm.get("refine", 0)), int(projection.get("refine", default)))

    def to_config(self) -> dict:
        return {"bddm": {"rho": self.rho, "refine": self.refine}, "projection": {"refine": self.projections}}


def as_mel(mel: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(mel, dtype=np.float32) if not torch.is_tensor(mel) else mel).float()


#: The peak a foreign contract's output beyond full scale is scaled to (`Vocoder.in_contract`).
PEAK = 0.999


@dataclass
class Vocoder:
    score_net: ScoreNet
    config: dict
    device: torch.device
    schedule_net: torch.nn.Module | None = None
    ne_net: NENet | None = None  # the noise-level network of noise-estimation sampling, once trained
    reference_mel: torch.Tensor | None = None
    directory: Path | None = None
    #: Why these weights serve: named by the caller, or the device's default (`default_weights`).
    chosen_because: str = WHY_NAMED
    schedules: dict[float, Schedule] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    #: torch.compile the score net's step (inductor fuses the gated activation and the residual arithmetic);
    #: one graph with a symbolic batch and length, so any request shape reuses it after the warm-up.
    compiled: bool = False
    #: On a CPU the step runs as `CpuScoreNet`, the same function 2-4x faster (bench/results/speed-cpu-*.md); False
    #: keeps the module (the benchmark's baseline and the tests' oracle).
    cpu_fast: bool = True
    #: Threads each request runs on (`resolve_threads`): torch's intra-op count, and the fast path's pool.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.compiled:
            self.step_net = torch.compile(self.score_net, dynamic=True)
        elif self.device.type == "cpu" and self.cpu_fast:
            self.step_net = CpuScoreNet(self.score_net, dtype=self.dtype, threads=self.threads)
        else:
            self.step_net = self.score_net

    @classmethod
    def load(cls, directory: str | Path | None = None, device: str = "auto", dtype: str = "auto",
             compile: str = "off", root: str | Path = WEIGHTS_ROOT, threads: int | None = None,
             cpu_fast: bool = True) -> "Vocoder":
        """Load a weights directory, or with none named the device's default net under `root`; a missing,
        corrupt or mismatched file raises CheckpointError."""
        dev = resolve_device(device)
        directory, why = (Path(directory), WHY_NAMED) if directory is not None else default_weights(dev, root)
        directory = directory.resolve()  # weights/default is a link to small: report the net, not the alias
        config = read_config(directory)
        precision = resolve_dtype(dtype, dev, directory)
        compiled = resolve_compile(compile, dev)
        try:
            score_net = ScoreNet(ScoreNetParams(**config["score_net"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}/config.json: bad score_net section ({e})") from None
        load_module(directory / SCORE_NET, score_net)
        voc = cls(score_net.to(dev).eval(), config, dev, directory=directory, chosen_because=why, dtype=precision,
                  compiled=compiled, cpu_fast=cpu_fast, threads=resolve_threads(threads))
        voc._load_scheduling(directory)
        return voc

    def _load_scheduling(self, directory: Path) -> None:
        """Schedule net, reference mel and searched schedules, when `train schedule` / `search` made them, and the
        noise-level net of noise-estimation sampling when `train ne` did."""
        if (directory / SCHEDULE_NET).exists() and self.config.get("schedule_net"):
            self.schedule_net = scheduling.load_schedule_net(directory, self.config).to(self.device).eval()
        if (directory / NE_NET).exists() and self.config.get("ne_net"):
            try:
                ne_net = NENet(NENetParams(**self.config["ne_net"]))
            except TypeError as e:
                raise CheckpointError(f"{directory}/config.json: bad ne_net section ({e})") from None
            self.ne_net = load_module(directory / NE_NET, ne_net).to(self.device).eval()
        self.reference_mel = scheduling.load_reference_mel(directory)
        for d in (self.config.get("search") or {}).get("schedules", {}).values():
            s = Schedule.from_dict(d, self.diffusion)
            self.schedules[float(s.meta["rho"])] = s

    @property
    def net(self) -> str:
        """The score net's size, 'base (64 x 30)', named after `CONFIGS` where it is one of them."""
        p = self.score_net.params
        name = next((n for n, c in CONFIGS.items()
                     if (c.residual_channels, c.residual_layers, c.dilation_cycle)
                     == (p.residual_channels, p.residual_layers, p.dilation_cycle)), "custom")
        return f"{name} ({p.residual_channels} x {p.residual_layers})"

    @property
    def diffusion(self) -> Diffusion:
        return Diffusion(**self.config["diffusion"])

    @property
    def spec(self) -> MelSpec:
        return MelSpec(**self.config["audio"])

    @property
    def search(self) -> dict:
        return self.config.get("search") or {}

    @property
    def presets(self) -> dict[str, Preset]:
        try:
            return {name: Preset.from_config(name, v) for name, v in self.search.get("presets", {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"config.json: bad search presets ({e})") from None

    @property
    def default_rho(self) -> float | None:
        return self.search.get("default_rho")

    @property
    def default_method(self) -> str:
        return DEFAULT_METHODS["cuda" if self.device.type == "cuda" else "cpu"]

    @property
    def method_because(self) -> str:
        return WHY_METHOD["cuda" if self.device.type == "cuda" else "cpu"]

    @property
    def default_preset(self) -> str | None:
        """The preset at the default rho: what a request that names none gets, in either method."""
        return next((name for name, p in self.presets.items() if p.rho == self.default_rho), None)

    @property
    def default_refine(self) -> int:
        """The refinements of the preset at the default rho: what a request that names no preset gets."""
        return next((p.refine for p in self.presets.values() if p.rho == self.default_rho), 0)

    def schedule(self, rho: float) -> Schedule:
        """The BDDM schedule for rho: a stored one, else generated now by the schedule network."""
        rho = scheduling.canonical_rho(rho)
        if rho in self.schedules:
            return self.schedules[rho]
        if self.schedule_net is None or self.reference_mel is None or "alpha_hat_N" not in self.search:
            raise CheckpointError("these weights have no schedule network or grid search; run "
                                  "`python -m model.train schedule` and `search` first, or pass a schedule")
        return scheduling.noise_schedule(self.score_net, self.schedule_net, self.reference_mel.to(self.device),
                                         self.search["alpha_hat_N"], self.search["beta_hat_N"], rho,
                                         self.diffusion, seed=0)

    def vocode(self, mel: np.ndarray | torch.Tensor, schedule: Schedule | None, seed: Seeds = None,
               sampler: str = "ddpm", noise: NoiseSource | None = None, refine: int = 0,
               contract: MelSpec | None = None, stop: Check | None = None) -> np.ndarray:
        """Log-mel (n_mels, F) or (B, n_mels, F) -> float32 audio (F * hop,) or (B, F * hop) in [-1, 1], then
        `refine` mel-consistency projections (`model.refine`). The noise is `seed`'s unless a source of it is given
        (`sampling.ddpm`). No schedule is projection alone (`projection_alone`), in the mel's own contract. A mel in
        another `contract` than the net's is vocoded in it (`in_contract`): F * its hop samples at its rate. `stop`
        runs after each reverse step, between the net's windows within one (`sampling.windowed_eps`) and before each
        projection, and may raise `model.cancel.Cancelled`."""
        iterations = refine_iterations(refine)
        if schedule is None:
            mel = as_mel(mel)
            items = [mel] if mel.dim() == 2 else list(mel)
            audio = self.projection_alone(items, item_seeds(seed, len(items)), iterations, contract,
                                          None if stop is None else [stop] * len(items))
            return audio[0] if mel.dim() == 2 else np.stack(audio)
        if contract is not None and contract != self.spec:
            return self.in_contract(mel, contract, lambda m: self.vocode(m, schedule, seed, sampler, noise, stop=stop),
                                    iterations, stop)

        hook = None if stop is None else lambda _: stop()  # after each reverse step's net (`model.cancel`)

        def sample(eps: EpsFn, m: torch.Tensor) -> torch.Tensor:
            start = SAMPLERS[sampler](eps, m, schedule, seed, self.spec.hop, self.score_net.prior, noise, hook)
            with torch.autocast(m.device.type, enabled=False):  # the projection is fp32, whatever the net's precision
                return project(start, m, self.spec, iterations, threads=self.threads, stop=stop)

        return self._sample(mel, sample, stop)

    def projection_alone(self, mels: Sequence[torch.Tensor], seeds: Sequence[int | None], iterations: int,
                         contract: MelSpec | None = None, stops: Sequence[Check] | None = None
                         ) -> list[np.ndarray | None]:
        """Projection alone, no network: each mel's (n_mels, F_i) coherent start (`model.phase`, its noise its
        seed's), then `iterations` projections (`model.projector`), all in the mel's `contract` (the net's by
        default), on the CPU whatever the device. The items run side by side on the pool, each at its own length, so
        each is what it would be alone: the server batches requests so. Each item's check in `stops` is called
        before each of its projections: an item it cancels is dropped (None in its place) and its pool thread goes
        to the others; when every item is dropped, `Cancelled` is raised."""
        spec = contract or self.spec

        def one(item: tuple[torch.Tensor, int | None, Check | None]) -> np.ndarray | None:
            mel, seed, stop = as_mel(item[0]).cpu(), item[1], item[2]
            start = coherent_start(mel, spec, seed)[0].numpy()
            if not iterations:
                return start
            try:
                out = project_item(start, target_of(mel, spec).numpy(), spec, iterations, MOMENTUM, MAX_GAIN,
                                   gain_floor(spec), stop, clamp=not clipped(spec))
            except Cancelled:
                return None
            return out / max(1.0, np.abs(out).max() / PEAK) if clipped(spec) else out  # as `in_contract` says why

        audio = in_pool(one, zip(mels, seeds, stops or [None] * len(mels)), self.threads)
        if all(a is None for a in audio):
            raise Cancelled(f"all {len(audio)} items were cancelled")
        return audio

    def in_contract(self, mel: np.ndarray | torch.Tensor, contract: MelSpec,
                    vocode: Callable[[torch.Tensor], np.ndarray], iterations: int,
                    stop: Check | None = None) -> np.ndarray:
        """A mel (n_mels, F) or (B, n_mels, F) in the caller's contract, vocoded in it: read into the net's contract
        (`model.transcode.to_net`), sampled by `vocode` (net audio, unrefined), resampled to the contract's rate and
        cut to F hops, then refined by `iterations` projections in the contract's own STFT against the caller's own
        mel. Measured against refining in the net's contract first (bench/results/contracts-compare.md). A clipped dB
        scale (Coqui's, Rayhane's) says loudness only up to its top, and those stacks peak-normalise what they write:
        an output beyond full scale is scaled to peak `PEAK` rather than clipped (the Rayhane predictions in
        ../shared/data/tts-mels ask for up to 4x full scale)."""
        mel = as_mel(mel)
        single = mel.dim() == 2
        batch = mel[None] if single else mel
        audio = vocode(torch.stack([to_net(m, contract, self.spec) for m in batch]))
        samples = batch.shape[-1] * contract.hop
        fitted = np.zeros((len(batch), samples), np.float32)
        for i, a in enumerate(audio):
            a = resample(a, self.spec.sample_rate, contract.sample_rate)[:samples]
            fitted[i, :len(a)] = a
        if not clipped(contract):
            out = self.refine(fitted, batch, iterations, contract, stop=stop)
            return out[0] if single else out
        out = self.refine(fitted, batch, iterations, contract, clamp=False, stop=stop)
        out = out / np.maximum(1.0, np.abs(out).max(axis=-1, keepdims=True) / PEAK)
        return out[0] if single else out

    def vocode_ne(self, mel: np.ndarray | torch.Tensor, steps: int, seed: Seeds = None,
                  family: str = DEFAULT_FAMILY) -> np.ndarray:
        """Noise-estimation sampling in `steps` steps (`model.noise_estimation`): each utterance's schedule fitted
        as it goes. Log-mel (n_mels, F) or (B, n_mels, F) -> audio as `vocode`."""
        if self.ne_net is None:
            raise CheckpointError("these weights have no noise-level network; run `python -m model.train ne` first")
        return self._sample(mel, lambda eps, m: ne_ddpm(eps, self.ne_net, m, steps, seed, self.spec.hop,
                                                        self.score_net.prior, family, self.diffusion))

    def _sample(self, mel: np.ndarray | torch.Tensor, sample: Callable[[EpsFn, torch.Tensor], torch.Tensor],
                stop: Check | None = None):
        """`sample(eps_theta, mel (B, n_mels, F))` on this device and precision, for one mel or a batch; `stop` is
        checked between the net's windows (`sampling.windowed_eps`)."""
        mel = as_mel(mel)
        single = mel.dim() == 2
        mel = (mel[None] if single else mel).to(self.device)
        autocast = self.dtype != torch.float32 and not isinstance(self.step_net, CpuScoreNet)
        with intra_op_threads(self.threads), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            audio = sample(windowed_eps(self.step_net, stop=stop), mel).float().cpu().numpy()
        return audio[0] if single else audio

    def stream(self, mel: np.ndarray | torch.Tensor, schedule: Schedule | None, seed: int | None = None,
               refine: int = 0, first: int = FIRST_FRAMES, largest: int = LARGEST_FRAMES,
               contract: MelSpec | None = None) -> Stream | WholeStream:
        """The same audio as `vocode(mel, schedule, seed, refine=refine)` (DDPM), as chunks of `first` frames
        doubling up to `largest`, computed one at a time (`model.streaming`). Each chunk's margin covers the reach
        of every reverse step and every refinement; projection alone's start is computed block by block as the chunks
        need it (`phase.CoherentPhase`), in the mel's own contract. A contract at the net's rate and hop maps frame to
        frame (one more frame of margin for its reading into the net's, `transcode.to_net`); one at another rate or
        hop, or a clipped dB scale (peak-normalised whole, `in_contract`), is vocoded whole at the first chunk
        (`WholeStream`)."""
        steps, iterations = 0 if schedule is None else schedule.steps, refine_iterations(refine)
        spec, vocode = contract or self.spec, (lambda m, noise: self.vocode(m, schedule, noise=noise))
        margin = margin_frames(self.score_net.receptive_field, self.spec.hop, steps)
        if schedule is None and clipped(spec):
            return WholeStream(lambda: self.vocode(mel, None, seed, refine=iterations, contract=spec),
                               as_mel(mel).shape[-1], spec.hop, first, largest)
        if schedule is None:
            start = CoherentPhase(as_mel(mel), spec, seed)
            vocode = lambda m, noise: start.audio(noise.lo // spec.hop, noise.hi // spec.hop)[0].numpy()  # noqa: E731
        elif spec != self.spec:
            if (spec.sample_rate, spec.hop) != (self.spec.sample_rate, self.spec.hop) or clipped(spec):
                return WholeStream(lambda: self.vocode(mel, schedule, seed, refine=iterations, contract=spec),
                                   as_mel(mel).shape[-1], spec.hop, first, largest)
            vocode, margin = (lambda m, noise: self.vocode(to_net(m, spec, self.spec), schedule, noise=noise)), margin + 1
        return Stream(vocode, lambda a, m: self.refine(a, m, iterations, spec), as_mel(mel), seed, spec.hop, margin,
                      reach_frames(spec, iterations), max(steps, 1), first, largest)

    def refine(self, audio: np.ndarray, mel: np.ndarray | torch.Tensor, iterations: int,
               contract: MelSpec | None = None, clamp: bool = True, stop: Check | None = None) -> np.ndarray:
        """`iterations` mel-consistency projections (`model.refine.project`) of audio (F * hop,) or (B, F * hop)
        onto its mel in `contract` (the net's by default), on this device in fp32; `stop` before each."""
        mel, audio = as_mel(mel), torch.as_tensor(audio)
        single = audio.dim() == 1
        audio, mel = (audio[None], mel[None]) if single else (audio, mel)
        out = project(audio.to(self.device), mel.to(self.device), contract or self.spec, refine_iterations(iterations),
                      clamp=clamp, threads=self.threads, stop=stop).cpu().numpy()
        return out[0] if single else out
