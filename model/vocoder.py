"""The vocoder as a user sees it: a weights directory loaded once, mel in, waveform out, rho as the knob.

Used by the offline CLIs (`model.synth`), the benchmarks and the server alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import MelSpec
from .checkpoint import NE_NET, SCHEDULE_NET, SCORE_NET, CheckpointError, load_module, read_config
from .ne_net import NENet, NENetParams
from .noise_estimation import DEFAULT_FAMILY, ne_ddpm
from .prior import EpsFn
from .refine import project, reach_frames, refine_iterations
from .sampling import SAMPLERS, NoiseSource, Seeds, windowed_eps
from .schedules import Diffusion, Schedule
from .score_net import CONFIGS, ScoreNet, ScoreNetParams
from .score_net_cpu import CpuScoreNet, intra_op_threads
from .streaming import FIRST_FRAMES, LARGEST_FRAMES, Stream, margin_frames

#: Where the shipped nets live (`weights/base`, `weights/small`); a deployment points VOCODER_WEIGHTS_ROOT elsewhere.
WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
#: The net served when none is named, by the resolved device: DiffWave `base`, the quality net, where a GPU runs
#: it; on a CPU the `small` net. Measured on 2 cores (AMD EPYC, bf16 as auto serves it there) on the held-out
#: acceptance clips, each preset as served with its refinements: within RTF 0.5 `small` gives balanced STOI 0.987 /
#: PESQ-WB 3.80 at RTF 0.18 and quality 0.990 / 4.02 at 0.33, while `base`'s only preset within it is fast, 0.981 /
#: 3.56 at 0.40 (its balanced runs at RTF 0.94); bench/results/quality.md, speed-cpu-*.md.
DEFAULT_NETS = {"cuda": "base", "cpu": "small"}
WHY_DEFAULT = {"cuda": "no weights named; CUDA serves DiffWave base, the quality net",
               "cpu": "no weights named; a CPU-only host serves small: within RTF 0.5 on 2 cores its presets with "
                      "their refinements score better than base's only preset there (small balanced STOI 0.987 / "
                      "PESQ-WB 3.80 at RTF 0.18, quality 0.990 / 4.02 at 0.33; base fast 0.981 / 3.56 at 0.40, its "
                      "balanced at RTF 0.94)"}
WHY_NAMED = "named by the caller (--weights or VOCODER_WEIGHTS)"


@dataclass(frozen=True)
class Preset:
    """A named setting of the quality/speed knob: rho, the scheduling loop's threshold (so the diffusion steps),
    and the mel-consistency refinements after sampling (`model.refine`)."""

    rho: float
    refine: int = 0

    @classmethod
    def from_config(cls, value: float | dict) -> "Preset":
        """A stored preset: {"rho", "refine"}, or a bare rho (weights searched before refinement: none)."""
        if isinstance(value, dict):
            return cls(float(value["rho"]), int(value.get("refine", 0)))
        return cls(float(value))


#: Inference precisions: "auto" is bf16 on CUDA (autocast; the noise and the sampler's arithmetic stay fp32); on a
#: CPU it is bf16 where `cpu_bf16_serves`, else fp32.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Beside the weights, written by `python -m bench.precision --device cpu --record`: per CPU bf16 ISA
#: (`cpu_bf16_isa`), whether the quality guard held there and how much faster bf16 was than fp32.
CPU_BF16_RECORD = "cpu_bf16.json"


def cpu_bf16_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """"amx_bf16" or "avx512_bf16" where this CPU multiplies bf16 natively; None elsewhere (ARM, older x86)."""
    try:
        line = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    flags = set(line.split(":", 1)[1].split())
    return next((isa for isa in ("amx_bf16", "avx512_bf16") if isa in flags), None)


def cpu_bf16_serves(directory: Path | None, isa: str | None = None) -> bool:
    """bf16 serves these weights on this CPU only where its ISA has bf16, the guard held on that ISA and bf16 was
    the faster there (`CPU_BF16_RECORD`); a net whose elementwise passes outweigh its GEMMs stays fp32."""
    isa = isa or cpu_bf16_isa()
    if directory is None or isa is None:
        return False
    try:
        entry = json.loads((Path(directory) / CPU_BF16_RECORD).read_text()).get(isa) or {}
    except (OSError, ValueError):
        return False
    return entry.get("guard_holds") is True and entry.get("speedup", 0) > 1


def resolve_dtype(dtype: str, device: torch.device, directory: Path | None = None) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if cpu_bf16_serves(directory) else torch.float32
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be auto, fp32 or bf16, not {dtype!r}")
    return DTYPES[dtype]


def resolve_compile(compile: str, device: torch.device) -> bool:
    """VOCODER_COMPILE: "auto" compiles on CUDA only. On the CPU the step runs as `CpuScoreNet` instead: inductor's
    CPU backend needs a C++ compiler (g++), which the images do not install (they have gcc only), and on today's
    module it was slower than eager here (bench/results/speed.md)."""
    if compile not in ("auto", "on", "off"):
        raise CheckpointError(f"compile must be auto, on or off, not {compile!r}")
    return device.type == "cuda" if compile == "auto" else compile == "on"


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_threads(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may run on: its affinity mask, capped by the cgroup v2 CPU quota (`cpu.max`) of its
    cgroup and every parent, rounded down so that no thread waits out a throttled period. `os.cpu_count()`
    counts the host's cores, which oversubscribes a container limited to fewer."""
    n = len(os.sched_getaffinity(0))
    try:
        group = next(line[3:] for line in proc_cgroup.read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):  # no cgroup v2 (a v1-only host): the mask alone
        return n
    path = cgroup_root / group.lstrip("/")
    for directory in (path, *path.parents):
        try:
            quota, period = (directory / "cpu.max").read_text().split()
        except (OSError, ValueError):
            quota = "max"
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
        if directory == cgroup_root:
            break
    return n


def resolve_threads(threads: int | None) -> int:
    """Intra-op threads per request: as given, else as many as torch is set to use but no more than `cpu_threads`."""
    if threads is not None:
        if threads < 1:
            raise CheckpointError(f"threads must be at least 1, not {threads}")
        return threads
    return min(torch.get_num_threads(), cpu_threads())


def default_weights(device: torch.device, root: str | Path = WEIGHTS_ROOT) -> tuple[Path, str]:
    """(directory, why) of the net this device serves when no weights are named (`DEFAULT_NETS`)."""
    kind = device.type if device.type in DEFAULT_NETS else "cpu"
    return Path(root) / DEFAULT_NETS[kind], WHY_DEFAULT[kind]


def as_mel(mel: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(mel, dtype=np.float32) if not torch.is_tensor(mel) else mel).float()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


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
        from . import scheduling  # noqa: PLC0415  (scheduling imports this module's neighbours only)

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
            return {name: Preset.from_config(v) for name, v in self.search.get("presets", {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"config.json: bad search presets ({e})") from None

    @property
    def default_rho(self) -> float | None:
        return self.search.get("default_rho")

    @property
    def default_refine(self) -> int:
        """The refinements of the preset at the default rho: what a request that names no preset gets."""
        return next((p.refine for p in self.presets.values() if p.rho == self.default_rho), 0)

    def schedule(self, rho: float) -> Schedule:
        """The BDDM schedule for rho: a stored one, else generated now by the schedule network."""
        from . import scheduling  # noqa: PLC0415

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
               sampler: str = "ddpm", noise: NoiseSource | None = None, refine: int = 0) -> np.ndarray:
        """Log-mel (n_mels, F) or (B, n_mels, F) -> float32 audio (F * hop,) or (B, F * hop) in [-1, 1], then
        `refine` mel-consistency projections (`model.refine`). The noise is `seed`'s unless a source of it is given
        (`sampling.ddpm`). No schedule is projection alone (`model.plan.PROJECTION`): the seeded noise, refined, with
        no network at all."""
        iterations, sample_with = refine_iterations(refine), SAMPLERS["noise" if schedule is None else sampler]

        def sample(eps: EpsFn, m: torch.Tensor) -> torch.Tensor:
            start = sample_with(eps, m, schedule, seed, self.spec.hop, self.score_net.prior, noise)
            with torch.autocast(m.device.type, enabled=False):  # the projection is fp32, whatever the net's precision
                return project(start, m, self.spec, iterations)

        return self._sample(mel, sample)

    def vocode_ne(self, mel: np.ndarray | torch.Tensor, steps: int, seed: Seeds = None,
                  family: str = DEFAULT_FAMILY) -> np.ndarray:
        """Noise-estimation sampling in `steps` steps (`model.noise_estimation`): each utterance's schedule fitted
        as it goes. Log-mel (n_mels, F) or (B, n_mels, F) -> audio as `vocode`."""
        if self.ne_net is None:
            raise CheckpointError("these weights have no noise-level network; run `python -m model.train ne` first")
        return self._sample(mel, lambda eps, m: ne_ddpm(eps, self.ne_net, m, steps, seed, self.spec.hop,
                                                        self.score_net.prior, family, self.diffusion))

    def _sample(self, mel: np.ndarray | torch.Tensor, sample: Callable[[EpsFn, torch.Tensor], torch.Tensor]):
        """`sample(eps_theta, mel (B, n_mels, F))` on this device and precision, for one mel or a batch."""
        mel = as_mel(mel)
        single = mel.dim() == 2
        mel = (mel[None] if single else mel).to(self.device)
        autocast = self.dtype != torch.float32 and not isinstance(self.step_net, CpuScoreNet)
        with intra_op_threads(self.threads), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            audio = sample(windowed_eps(self.step_net), mel).float().cpu().numpy()
        return audio[0] if single else audio

    def stream(self, mel: np.ndarray | torch.Tensor, schedule: Schedule | None, seed: int | None = None,
               refine: int = 0, first: int = FIRST_FRAMES, largest: int = LARGEST_FRAMES) -> Stream:
        """The same audio as `vocode(mel, schedule, seed, refine=refine)` (DDPM), as chunks of `first` frames
        doubling up to `largest`, computed one at a time (`model.streaming`). Each chunk's margin covers the reach
        of every reverse step and every refinement."""
        steps, iterations = 0 if schedule is None else schedule.steps, refine_iterations(refine)
        return Stream(lambda m, noise: self.vocode(m, schedule, noise=noise), lambda a, m: self.refine(a, m, iterations),
                      as_mel(mel), seed, self.spec.hop, margin_frames(self.score_net.receptive_field, self.spec.hop, steps),
                      reach_frames(self.spec, iterations), max(steps, 1), first, largest)

    def refine(self, audio: np.ndarray, mel: np.ndarray | torch.Tensor, iterations: int) -> np.ndarray:
        """`iterations` mel-consistency projections (`model.refine.project`) of audio (F * hop,) or (B, F * hop)
        onto its log-mel, on this device in fp32."""
        mel, audio = as_mel(mel), torch.as_tensor(audio)
        single = audio.dim() == 1
        audio, mel = (audio[None], mel[None]) if single else (audio, mel)
        out = project(audio.to(self.device), mel.to(self.device), self.spec, refine_iterations(iterations)).cpu().numpy()
        return out[0] if single else out
