"""The host a vocoder runs on: which device, precision and thread count serve, and which shipped net serves when
none is named. Read from the machine (CUDA, the CPU's bf16 ISA, the affinity mask and cgroup quota) and from the
records the benchmarks leave beside the weights (`CPU_BF16_RECORD`); `Vocoder.load` applies them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError

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
#: The method a request that names none gets, by the resolved device (`model.plan` resolves it), and why. On a CPU
#: the net's path wins nowhere at matched time (bench/results/projection.md, refine.md): projection alone from the
#: coherent start gives the net's balanced quality or better in a fraction of its time.
DEFAULT_METHODS = {"cuda": "bddm", "cpu": "projection"}
WHY_METHOD = {"cuda": "CUDA runs the net's steps in milliseconds; projection alone has not been measured against it "
                      "on a GPU",
              "cpu": "on a CPU the net's path wins nowhere at matched time: on 8 held-out clips projection alone's "
                     "quality preset (128 projections of PGHI's coherent start) scored STOI 0.990 / PESQ-WB 3.93 "
                     "against the net's balanced preset's (7 steps + 48) 0.987 / 3.79, in a twentieth of its time "
                     "(bench/results/projection.md)"}


#: The server's micro-batching wait where none is set and a GPU runs the batch as one (on a CPU: 0, no batching).
CUDA_BATCH_WAIT_MS = 5.0

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


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)
