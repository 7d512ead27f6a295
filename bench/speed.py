"""Speed benchmark: the score network, whole synthesis, the reference DiffWave, and the server under load.

(a) Score-network forward time per step and whole-synthesis real-time factor (RTF = wall seconds /
    audio seconds) against audio length, at each rho preset, on the CPU and on CUDA when present.
(b) The same architecture in the reference implementation (lmnt-com `diffwave`), loaded with *our*
    weights so both compute the same function, timed on the same input.
(c) `python -m server` as a subprocess under a closed-loop load of real validation mels: throughput,
    latency percentiles and 429s against concurrency, with micro-batching on and off.
(d) Time to the first schedule for a new rho (a schedule-cache miss) and the cost of a hit.
(e) The per-request conditioning cache: whole synthesis at the balanced preset with each layer's
    conditioning recomputed at every step (as before the cache) and computed once, in the same run.
(f) Batched throughput at the balanced preset, eager and torch.compile'd (VOCODER_COMPILE), with the
    compile time, the achieved TFLOP/s, and on CUDA the profile's top kernels of one compiled synthesis.
(g) Streaming: for real speech of several lengths at each preset, the whole request (`/v1/vocode`) against
    `/v1/vocode/stream` on the same server: the time to the first audio (the WAV header and the first 16 KiB of
    PCM at the client), the time to the last byte, and the largest difference of the two answers in 16-bit steps.
(h) The CPU paths side by side, per net and length at batch 1, in one run: balanced synthesis through `Vocoder` with
    today's eager module, the fast path (`model.score_net_cpu`) in fp32 and in bf16, and lmnt's `DiffWave` of the
    same shape and step count in a plain DDPM loop; each path's GFLOP/s from the FLOPs of the step as it runs
    (the windows with their margins, conditioner projections only where the cache is off) against the best
    GEMM rate measured in the same run. `--cpu-paths` runs this part alone into `speed-cpu-<net>.md`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch

from model.audio import mel_spectrogram
from model.checkpoint import read_config
from model.sampling import CONDITIONING_CACHE_BYTES, MARGIN_FRAMES, WINDOW_FRAMES, ddpm, step, windowed_eps
from model.schedules import Schedule
from model import score_net_cpu
from model.score_net import ScoreNet, step_embedding
from model.vocoder import Vocoder
from server.engine import CUDA_BATCH_WAIT_MS

from .common import (DEFAULT_REFERENCE, OFFICIAL, apply_threads, base_parser, fmt, free_port, header, log_axes,
                     npy_bytes, parse_with_quick, sync, table, timed, validation_clips, wait_ready, weights_for,
                     write_outputs)

REPO = Path(__file__).resolve().parent.parent

# --- inputs ----------------------------------------------------------------------------------------


def speech(data: Path, seconds: float, sample_rate: int) -> np.ndarray:
    """`seconds` of real speech: the validation clips end to end (so long inputs are speech too)."""
    audio = np.concatenate([c.audio for c in validation_clips(data, sample_rate=sample_rate)])
    need = int(seconds * sample_rate)
    return np.tile(audio, -(-need // len(audio)))[:need]


def mel_of(voc: Vocoder, speech: np.ndarray, seconds: float | None = None) -> torch.Tensor:
    """Log-mel of `speech`, or of its first `seconds`."""
    return mel_spectrogram(speech[:None if seconds is None else int(seconds * voc.spec.sample_rate)], voc.spec)


def bench_schedules(voc: Vocoder, reference: Path) -> tuple[dict[str, Schedule], list[str]]:
    """label -> schedule: the rho presets, or the official BDDM schedules for weights without a schedule net."""
    presets = sorted(voc.presets.items(), key=lambda kv: -kv[1].rho)
    if presets:
        return {f"{name} (ρ={p.rho:g})": voc.schedule(p.rho) for name, p in presets}, []
    official = {f"BDDM official {n}": Schedule.load(reference / OFFICIAL.format(n), voc.diffusion) for n in (7, 12)
                if (reference / OFFICIAL.format(n)).exists()}
    return official, ["these weights have no rho presets: whole-synthesis RTF uses the official BDDM schedules"]


# --- (a) and (b): the network and whole synthesis ---------------------------------------------------


def median_time(fn, reps: int) -> float:
    fn()  # warm-up: allocator, kernels, cuDNN autotuning
    return float(np.median([timed(fn)[1] for _ in range(reps)]))


def reference_diffwave(net: ScoreNet, betas: np.ndarray) -> torch.nn.Module | None:
    """lmnt-com DiffWave with our architecture and our weights (strict loading proves the layers match); None when
    the `diffwave` package (a test extra) is not installed. Its step-embedding table is our net's at the integer
    steps (the benchmark's t is one), and it is fed the mel our net standardises internally."""
    try:
        from diffwave.model import DiffWave  # noqa: PLC0415
        from diffwave.params import AttrDict  # noqa: PLC0415
    except ImportError:
        return None
    p = net.params
    ref = DiffWave(AttrDict(residual_channels=p.residual_channels, residual_layers=p.residual_layers,
                            dilation_cycle_length=p.dilation_cycle, n_mels=p.n_mels,
                            noise_schedule=betas.tolist(), unconditional=False))
    ref.load_state_dict({reference_name(k): v for k, v in net.state_dict().items()}, strict=True)
    ref.diffusion_embedding.embedding = step_embedding(torch.arange(len(betas)), p.step_embedding)
    return ref.to(next(net.parameters()).device).eval()


REFERENCE_NAMES = {"input_proj": "input_projection", "step_embedding": "diffusion_embedding",
                   "proj1": "projection1", "proj2": "projection2", "upsampler": "spectrogram_upsampler",
                   "layers": "residual_layers", "step_proj": "diffusion_projection",
                   "cond_proj": "conditioner_projection", "out_proj": "output_projection",
                   "skip_proj": "skip_projection", "output_proj": "output_projection"}


def reference_name(ours: str) -> str:
    return ".".join(REFERENCE_NAMES.get(part, part) for part in ours.split("."))


@torch.inference_mode()
def network_rows(voc: Vocoder, audio: np.ndarray, lengths: list[float], reps: int) -> list[dict]:
    """Per length: ours (windowed, as synthesis runs it; and one plain pass) vs the reference, same input."""
    net, dev = voc.score_net, voc.device
    ref = reference_diffwave(net, voc.diffusion.betas)
    eps = windowed_eps(net)
    rows = []
    for seconds in lengths:
        mel = mel_of(voc, audio, seconds)[None].to(dev)
        x = torch.randn(1, mel.shape[-1] * voc.spec.hop, device=dev)
        t = torch.tensor([voc.diffusion.steps // 2], device=dev)
        ours = median_time(lambda: eps(x, mel, t.float()), reps)
        plain = median_time(lambda: net(x, mel, t.float()), reps)
        row = {"net": net_label(voc), "device": device_label(dev), "seconds": seconds, "ours_s": ours, "ours_plain_s": plain,
               "reference_s": None, "ratio": None, "max_abs_diff": None}
        if ref is not None:
            ref_mel = (mel - net.mel_mean) / net.mel_std
            row["reference_s"] = median_time(lambda: ref(x, ref_mel, t), reps)
            row["ratio"] = plain / row["reference_s"]
            row["max_abs_diff"] = float((net(x, mel, t.float()) - ref(x, ref_mel, t).squeeze(1)).abs().max())
        rows.append(row)
    return rows


def preset_refine(voc: Vocoder, schedule: Schedule) -> int:
    """The refinements of the preset whose schedule this is (0 for a schedule no preset serves)."""
    return next((p.refine for p in voc.presets.values() if voc.schedule(p.rho) is schedule), 0)


def synthesis_rows(voc: Vocoder, audio: np.ndarray, schedules: dict[str, Schedule], lengths: list[float]) -> list[dict]:
    """Whole synthesis (DDPM, seeded) RTF per schedule and audio length, as a preset serves it: the reverse process,
    then the preset's refinements (`model.refine`), each timed, so refinement's share of the time shows."""
    rows = []
    for seconds in lengths:
        mel = mel_of(voc, audio, seconds)
        for label, schedule in schedules.items():
            k = preset_refine(voc, schedule)
            voc.refine(voc.vocode(mel[:, :16], schedule, seed=0), mel[:, :16], k)  # warm-up
            sampled, net_s = timed(voc.vocode, mel, schedule, seed=0)
            _, refine_s = timed(voc.refine, sampled, mel, k)
            wall = net_s + refine_s
            rows.append({"net": net_label(voc), "device": device_label(voc.device), "schedule": label,
                         "steps": schedule.steps, "refine": k, "seconds": seconds, "wall_s": wall, "rtf": wall / seconds,
                         "refine_s": refine_s, "refine_share": refine_s / wall})
    return rows


def cache_rows(voc: Vocoder, audio: np.ndarray, schedules: dict[str, Schedule], lengths: list[float],
               reps: int) -> list[dict]:
    """(e) Seeded DDPM at the balanced preset (else the first schedule), conditioning recomputed at every step
    (cache_bytes=0) against cached per request; the same audio both ways."""
    label = next((k for k in schedules if k.startswith("balanced")), next(iter(schedules)))
    schedule, hop, rows = schedules[label], voc.spec.hop, []
    for seconds in lengths:
        mel = mel_of(voc, audio, seconds)[None].to(voc.device)

        def run(cache_bytes: int) -> torch.Tensor:
            return ddpm(windowed_eps(voc.score_net, cache_bytes=cache_bytes), mel, schedule, 0, hop,
                        voc.score_net.prior)

        uncached = median_time(lambda: run(0), reps)
        cached = median_time(lambda: run(CONDITIONING_CACHE_BYTES), reps)
        rows.append({"net": net_label(voc), "device": device_label(voc.device), "schedule": label,
                     "steps": schedule.steps, "seconds": seconds, "uncached_s": uncached, "cached_s": cached, "speedup": uncached / cached,
                     "same_audio": bool(torch.equal(run(0), run(CONDITIONING_CACHE_BYTES)))})
    return rows


def step_macs(net: ScoreNet) -> int:
    """Multiply-accumulates per audio sample of one score-net call: every conv that runs at the audio rate
    (all but the mel upsampler; the conditioner projections count, as a call without the cache runs them)."""
    return sum(m.weight.numel() for name, m in net.named_modules()
               if isinstance(m, torch.nn.Conv1d) and not name.startswith("upsampler"))


def run_flops(net: ScoreNet, frames: int, steps: int, cache_bytes: int = CONDITIONING_CACHE_BYTES,
              window_frames: int = WINDOW_FRAMES) -> float:
    """FLOPs of `steps` score-net calls on `frames` of mel as `sampling.windowed_eps` runs them: every window with
    its margins; per sample and layer the dilated conv (3C x 2C) and the 1x1 projection (C x 2C), plus the
    conditioner projection (n_mels x 2C) only at the first step or, for windows the cache does not hold, at
    every step; the input and output layers. The mel upsampler and the step embedding are left out (<1%)."""
    p = net.params
    c, layers, hop = p.residual_channels, p.residual_layers, p.hop
    margin = max(MARGIN_FRAMES, 2 + -(-net.receptive_field // hop))
    single = frames <= window_frames + 2 * margin
    spans = [(0, frames)] if single else [(max(0, a - margin), min(frames, a + window_frames + margin))
                                          for a in range(0, frames, window_frames)]
    left, total = cache_bytes, 0.0
    for lo, hi in spans:
        samples = (hi - lo) * hop
        size = samples * 2 * c * layers * 4
        projections = 1 if size <= left else steps
        left -= size if size <= left else 0
        total += samples * (steps * (layers * 8 * c * c + c * c + 2 * c) + projections * layers * p.n_mels * 2 * c)
    return 2 * total


def gemm_peak(dtype: torch.dtype, reps: int = 5) -> float:
    """The best FLOP/s of a GEMM in `dtype`, torch.mm's or oneDNN's (the fast path's: on AMD's AVX-512 cores
    twice MKL's fp32 rate), over a square GEMM and the fast path's tile shapes, in this run."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 96, 64), (4096, 192, 128)):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        runs = [(torch.mm, b)] + ([(score_net_cpu.linear, b.t().contiguous())] if score_net_cpu.ONEDNN else [])
        for gemm, w in runs:
            best = max(best, 2 * m * k * n / min(timed(gemm, a, w)[1] for _ in range(reps)))
    return best


@torch.inference_mode()
def reference_synthesis(ref: torch.nn.Module, mel: torch.Tensor, schedule: Schedule, seed: int = 0) -> torch.Tensor:
    """A plain DDPM loop over `schedule` with lmnt's DiffWave at the nearest integer steps, on its own standardised
    mel (`reference_diffwave`): what a naive eager vocoder of the same shape and step count spends."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, mel.shape[-1] * 256, generator=g)
    for n in reversed(range(schedule.steps)):
        alpha, beta, sigma = float(schedule.alpha[n]), float(schedule.beta[n]), float(schedule.sigma[n])
        eps = ref(x, mel, torch.tensor([round(float(schedule.timesteps[n]))])).squeeze(1)
        x = step(x, eps, alpha**2, beta, sigma, torch.randn(x.shape, generator=g) if n > 0 else None)
    return x


#: (h) the paths timed side by side: label -> Vocoder.load keywords (None: lmnt's DiffWave).
CPU_PATHS = {"eager module": {"dtype": "fp32", "cpu_fast": False}, "fast fp32": {"dtype": "fp32"},
             "fast bf16": {"dtype": "bf16"}, "lmnt DiffWave": None}


def cpu_path_rows(weights: Path, audio: np.ndarray, lengths: list[float], reps: int) -> list[dict]:
    """(h) Balanced synthesis per path and length, the paths interleaved within each repetition (median)."""
    vocs = {label: Vocoder.load(weights, "cpu", **kw) for label, kw in CPU_PATHS.items() if kw is not None}
    voc = vocs["fast fp32"]
    schedules, _ = bench_schedules(voc, DEFAULT_REFERENCE)
    label = next((k for k in schedules if k.startswith("balanced")), next(iter(schedules)))
    schedule, net = schedules[label], voc.score_net
    ref = reference_diffwave(net, voc.diffusion.betas)
    peak = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}

    def paths(mel: torch.Tensor) -> dict:
        runs = {k: (lambda v=v: v.vocode(mel, schedule, seed=0)) for k, v in vocs.items()}
        if ref is not None:
            ref_mel = (mel[None] - net.mel_mean) / net.mel_std
            runs["lmnt DiffWave"] = lambda: reference_synthesis(ref, ref_mel, schedule)
        return runs

    for run in paths(mel_of(voc, audio, 1.0)).values():  # warm-up: allocator, oneDNN kernels
        run()
    rows = []
    for seconds in lengths:
        mel = mel_of(voc, audio, seconds)
        runs = paths(mel)
        walls = {k: [] for k in runs}
        for _ in range(reps):
            for k, run in runs.items():
                walls[k].append(timed(run)[1])
        flops = run_flops(net, mel.shape[-1], schedule.steps)
        reference = float(np.median(walls["lmnt DiffWave"])) if ref is not None else None
        for k, w in walls.items():
            wall = float(np.median(w))
            rate = (flops if k != "lmnt DiffWave" else  # one pass over the whole input, projecting at every step
                    run_flops(net, mel.shape[-1], schedule.steps, 0, mel.shape[-1])) / wall
            rows.append({"net": net_label(voc), "path": k, "schedule": label, "steps": schedule.steps,
                         "seconds": seconds, "wall_s": wall, "rtf": wall / seconds,
                         "over_reference": wall / reference if reference else None, "gflops": rate / 1e9,
                         "peak_gflops": peak["bf16" if "bf16" in k else "fp32"] / 1e9,
                         "efficiency": rate / peak["bf16" if "bf16" in k else "fp32"]})
        print(f"cpu paths of {net_label(voc)}, {seconds:g} s: "
              + ", ".join(f"{k} RTF {fmt(float(np.median(w)) / seconds)}" for k, w in walls.items()), file=sys.stderr)
    return rows


def compile_modes(which: str, device: str) -> list[str]:
    """--compile: auto times eager and compiled on CUDA, eager only on the CPU; on: both; off: eager only."""
    return ["off", "on"] if which == "on" or (which == "auto" and device == "cuda") else ["off"]


@torch.inference_mode()
def batch_rows(args, weights: Path, audio: np.ndarray, dev: str) -> tuple[list[dict], list[dict]]:
    """(f) rows per (compile mode, batch) and, on CUDA, the compiled synthesis's top kernels."""
    rows, kernels = [], []
    batches = args.batches or ([1, 4, 16, 64] if dev == "cuda" else [1, 4])
    for mode in compile_modes(args.compile, dev):
        voc = Vocoder.load(weights, device=dev, dtype=args.dtype, compile=mode)
        schedules, _ = bench_schedules(voc, args.reference_schedules)
        label = next((k for k in schedules if k.startswith("balanced")), next(iter(schedules)))
        mel = mel_of(voc, audio, args.batch_seconds)
        first_calls = [(mel[None, :, :16 + b].repeat(b, 1, 1), list(range(b))) for b in (1, 2)]
        _, warm_s = timed(lambda: [voc.vocode(m, schedules[label], seed=s) for m, s in first_calls])  # the compile
        macs = step_macs(voc.score_net) * mel.shape[-1] * voc.spec.hop * schedules[label].steps
        for batch in batches:
            clips = mel[None].repeat(batch, 1, 1)
            wall = median_time(lambda: voc.vocode(clips, schedules[label], seed=list(range(batch))), args.reps)
            rows.append({"net": net_label(voc), "device": device_label(voc.device),
                         "dtype": str(voc.dtype).removeprefix("torch."),
                         "compiled": voc.compiled, "warm_up_s": warm_s, "schedule": label,
                         "steps": schedules[label].steps, "seconds": args.batch_seconds, "batch": batch,
                         "wall_s": wall, "rtf": wall / (batch * args.batch_seconds),
                         "audio_s_per_s": batch * args.batch_seconds / wall, "tflops": 2 * macs * batch / wall / 1e12})
        if dev == "cuda" and voc.compiled:
            kernels = top_kernels(lambda: voc.vocode(mel, schedules[label], seed=0))
    return rows, kernels


def top_kernels(fn, top: int = 10, device: str = "cuda") -> list[dict]:
    """The CUDA kernels (or on the CPU, the operators) that take the time of one call of `fn`, by total self time."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    activity, key = ((ProfilerActivity.CUDA, "self_device_time_total") if device == "cuda"
                     else (ProfilerActivity.CPU, "self_cpu_time_total"))
    with profile(activities=[activity]) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: -getattr(e, key))
    return [{"kernel": e.key[:90], "calls": e.count, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total}
            for e in events[:top]]


def devices(which: str) -> list[str]:
    """--device: cpu, cuda, or all (the CPU and CUDA when present)."""
    if which == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if which == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    return [which]


def net_label(voc: Vocoder) -> str:
    return voc.directory.name if voc.directory else "in-memory"


def device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


# --- (c) and (d): the server ------------------------------------------------------------------------


@contextmanager
def server(weights: Path, env: dict[str, str], log: Path, start_timeout: float = 300.0) -> Iterator[str]:
    """`python -m server` on a free local port, yielding its base URL once /readyz says ready."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--weights", str(weights.resolve())], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(proc, url, start_timeout)
        except RuntimeError as e:
            raise SystemExit(f"{e}:\n{log.read_text()[-2000:]}") from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request_bodies(voc: Vocoder, data: Path, lo: float, hi: float) -> list[tuple[bytes, float]]:
    """(npy mel, audio seconds) from real validation clips, each cropped to a length cycling through [lo, hi] s."""
    clips = validation_clips(data, sample_rate=voc.spec.sample_rate)
    targets = np.linspace(lo, hi, len(clips))
    out = []
    for clip, target in zip(clips, targets):
        audio = clip.audio[:int(min(target, clip.seconds) * voc.spec.sample_rate)]
        if len(audio) >= lo * voc.spec.sample_rate * 0.99:
            mel = mel_of(voc, audio).numpy()
            out.append((npy_bytes(mel), mel.shape[-1] * voc.spec.hop / voc.spec.sample_rate))
    return out


async def closed_loop(url: str, bodies: list[tuple[bytes, float]], rho: str, clients: int, max_requests: int,
                      max_seconds: float) -> dict:
    """`clients` workers each send a request as soon as their last one answered, until either bound is hit.

    New requests stop after `max_seconds`; requests still running are given the same time again to finish
    and are then counted as unfinished. After a 429 the client waits Retry-After seconds (at most 5)."""
    done: list[tuple[float, int, float, int]] = []  # (latency, HTTP status or 0, audio seconds, batch size)
    issued = 0
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() - start < max_seconds:
            i, issued = issued, issued + 1
            body, seconds = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/vocode", params={"rho": rho}, content=body,
                                      headers={"content-type": "application/x-npy"})
            except httpx.TransportError:  # refused, reset or timed out: an error with no status
                done.append((time.perf_counter() - t0, 0, seconds, 0))
                continue
            done.append((time.perf_counter() - t0, r.status_code, seconds, int(r.headers.get("x-batch-size", 0))))
            if r.status_code == 429:  # a polite client waits as told (capped, so a row stays bounded)
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 5.0))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(2 * max_seconds + 60), limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=2 * max_seconds)
        for task in pending:
            task.cancel()
    wall = time.perf_counter() - start
    return summarise_load(done, clients, issued, wall)


def summarise_load(done: list[tuple[float, int, float, int]], clients: int, issued: int, wall: float) -> dict:
    ok = [d for d in done if d[1] == 200]
    lat = np.array([d[0] for d in ok]) if ok else np.array([np.nan])
    return {"clients": clients, "requests": issued, "ok": len(ok), "rejected_429": sum(d[1] == 429 for d in done),
            "errors": sum(d[1] not in (200, 429) for d in done), "unfinished": issued - len(done),
            "wall_s": wall, "throughput": sum(d[2] for d in ok) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "p99_s": float(np.percentile(lat, 99)),
            "mean_batch": float(np.mean([d[3] for d in ok])) if ok else float("nan")}


#: What counts as the first audio of a stream: the WAV header and the first 16 KiB of PCM (0.37 s at 22050 Hz).
FIRST_AUDIO_BYTES = 44 + 16 * 1024


def stream_rows(url: str, voc: Vocoder, audio: np.ndarray, lengths: list[float], presets: list[str]) -> list[dict]:
    """(g) Per length and preset, seeded: the whole request's wall time, then the stream's first audio and last
    byte, and how far the streamed samples are from the whole request's."""
    rows, npy_type = [], {"content-type": "application/x-npy"}
    with httpx.Client(base_url=url, timeout=3600) as client:
        for seconds in lengths:
            body = npy_bytes(mel_of(voc, audio, seconds).numpy())
            for preset in presets:
                params = {"rho": preset, "seed": 0}
                whole, whole_s = timed(client.post, "/v1/vocode", content=body, headers=npy_type, params=params)
                whole.raise_for_status()
                received, first_s, t0 = bytearray(), None, time.perf_counter()
                with client.stream("POST", "/v1/vocode/stream", content=body, headers=npy_type, params=params) as r:
                    r.raise_for_status()
                    for piece in r.iter_bytes():
                        received += piece
                        if first_s is None and len(received) >= FIRST_AUDIO_BYTES:
                            first_s = time.perf_counter() - t0
                total_s = time.perf_counter() - t0
                a, b = (np.frombuffer(x[44:], np.int16).astype(int) for x in (bytes(received), whole.content))
                rows.append({"preset": preset, "steps": int(whole.headers["x-diffusion-steps"]),
                             "refine": int(whole.headers["x-refine-iterations"]), "seconds": seconds,
                             "whole_s": whole_s, "first_audio_s": first_s, "stream_total_s": total_s,
                             "first_over_whole": first_s / whole_s,
                             "max_lsb": int(np.abs(a - b).max()) if a.shape == b.shape else None})
                print(f"stream {seconds:g} s {preset}: first audio {fmt(first_s)} s, whole {fmt(whole_s)} s",
                      file=sys.stderr)
    return rows


def new_rhos(voc: Vocoder, count: int) -> list[float]:
    """rhos no preset uses, inside the presets' range (so their schedules have typical lengths)."""
    rhos = sorted(p.rho for p in voc.presets.values())
    lo, hi = rhos[0], rhos[-1]
    picks = np.geomspace(lo, hi, count + 2)[1:-1] if hi > lo else [lo * 0.9 ** (i + 1) for i in range(count)]
    return [float(f"{r:.3g}") for r in picks if float(f"{r:.3g}") not in rhos]


def schedule_latency(url: str, rhos: list[float], hits: int) -> dict:
    """Per new rho: GET /v1/schedules once (a miss: the schedule net runs) then `hits` more times (cache hits)."""
    rows = []
    with httpx.Client(base_url=url, timeout=600) as client:
        health = [timed(client.get, "/healthz")[1] for _ in range(hits)]
        for rho in rhos:
            first, miss_s = timed(client.get, "/v1/schedules", params={"rho": rho})
            first.raise_for_status()
            again = [timed(client.get, "/v1/schedules", params={"rho": rho}) for _ in range(hits)]
            rows.append({"rho": rho, "steps": first.json()["steps"], "miss_s": miss_s,
                         "first_cached": first.json()["cached"], "hit_s": float(np.median([s for _, s in again])),
                         "hits_cached": all(r.json()["cached"] for r, _ in again)})
    return {"healthz_s": float(np.median(health)), "rows": rows}


def load_rows(args, weights: Path, voc: Vocoder, bodies: list[tuple[bytes, float]],
              log_dir: Path) -> tuple[list[dict], dict, str]:
    """Each batching mode in its own fresh server; (d) runs first on the batching-on server (cold cache).
    Returns (load rows, schedule latencies, the device the server runs on)."""
    rows, schedules = [], None
    inherited = {k: v for k, v in os.environ.items() if k != "VOCODER_BATCH_WAIT_MS"}
    on = {**inherited, "VOCODER_BATCH_WAIT_MS": f"{CUDA_BATCH_WAIT_MS:g}"}  # the GPU default, on any device
    for mode, env in (("on", on), ("off", {**inherited, "VOCODER_BATCH_WAIT_MS": "0"})):
        with server(weights, env, log_dir / f"server-batching-{mode}.log") as url:
            device = httpx.get(f"{url}/v1/model", timeout=30).json()["device"]
            if schedules is None:
                schedules = schedule_latency(url, new_rhos(voc, 1 if args.quick else 3), 3 if args.quick else 10)
            for clients in args.clients:
                requests = max(args.requests, args.per_client * clients)
                result = asyncio.run(closed_loop(url, bodies, args.rho, clients, requests, args.load_seconds))
                rows.append({"batching": mode, **result})
                print(f"load batching={mode} clients={clients}: {fmt(result['throughput'])} audio s/s, "
                      f"p50 {fmt(result['p50_s'])} s, 429s {result['rejected_429']}", file=sys.stderr)
    return rows, schedules, device


# --- report -----------------------------------------------------------------------------------------


def network_section(rows: list[dict]) -> list[str]:
    return ["## Score network, one forward pass (one reverse step)", "",
            "Median wall time of one eps_theta evaluation on real speech (batch 1). *Ours* is the plain module; "
            "*windowed* is how synthesis calls it (bounded memory, exact). *Reference* is lmnt-com `diffwave`'s "
            "`DiffWave` with the same residual channels/layers/dilation cycle, loaded with our weights "
            "(max |difference| of the two outputs shown), fed an integer step.", "",
            table(["Net", "Device", "Audio s", "Ours ms", "Windowed ms", "Reference ms", "Ours / reference",
                   "Max abs diff"],
                  [[r["net"], r["device"], r["seconds"], 1e3 * r["ours_plain_s"], 1e3 * r["ours_s"], ms(r["reference_s"]),
                    r["ratio"], "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"] for r in rows])]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def synthesis_section(rows: list[dict]) -> list[str]:
    lengths = sorted({r["seconds"] for r in rows})
    keys = list(dict.fromkeys((r["net"], r["device"], r["schedule"], r["steps"]) for r in rows))
    by = {(r["net"], r["device"], r["schedule"], r["seconds"]): r for r in rows}

    def cell(r: dict) -> str:
        return f"{fmt(r['rtf'])} ({100 * r.get('refine_share', 0):.0f}%)"

    return ["## Whole synthesis", "",
            "Real-time factor = wall seconds / audio seconds for one seeded DDPM synthesis of real speech, then the "
            "preset's mel-consistency refinements, as the server serves the preset (lower is faster; below 1 is "
            "faster than real time). In brackets: the refinements' share of that time.", "",
            table(["Net", "Device", "Schedule", "Steps", "Refinements", *(f"RTF {s:g} s" for s in lengths)],
                  [[net, d, s, n, by[(net, d, s, lengths[0])].get("refine", 0),
                    *(cell(by[(net, d, s, L)]) for L in lengths)] for net, d, s, n in keys])]


def cache_section(rows: list[dict]) -> list[str]:
    return ["## Conditioning cache", "",
            "Whole seeded DDPM synthesis with every layer's conditioning recomputed at each step (as before the "
            "cache) and computed once per request (`sampling.windowed_eps`), median wall time, in the same run.", "",
            table(["Net", "Device", "Schedule", "Steps", "Audio s", "Recomputed s", "Cached s", "Speed-up",
                   "Same audio"],
                  [[r["net"], r["device"], r["schedule"], r["steps"], r["seconds"], r["uncached_s"], r["cached_s"],
                    r["speedup"], str(r["same_audio"])] for r in rows])]


def batch_section(rows: list[dict], kernels: list[dict]) -> list[str]:
    if not rows:
        return []
    parts = ["## Batched and compiled", "",
             "Seeded DDPM at the balanced preset on copies of one real-speech mel per batch, median wall time of "
             "`Vocoder.vocode`. Compiled = `torch.compile(dynamic=True)` of the score-net step (VOCODER_COMPILE); "
             "*warm-up* is the first two calls (batch 1 and 2), which compile it. Audio s / s = batch x clip "
             "seconds / wall; TFLOP/s counts the audio-rate convs' multiply-adds (2 FLOPs each).", "",
             table(["Net", "Device", "Dtype", "Compiled", "Warm-up s", "Steps", "Clip s", "Batch", "Wall s",
                    "RTF per clip", "Audio s / s", "TFLOP/s"],
                   [[r["net"], r["device"], r["dtype"], str(r["compiled"]), r["warm_up_s"], r["steps"], r["seconds"], r["batch"],
                     r["wall_s"], r["rtf"], r["audio_s_per_s"], r["tflops"]] for r in rows])]
    if kernels:
        parts += ["", "Top CUDA kernels of one compiled synthesis (batch 1):", "", kernel_table(kernels)]
    return parts + [""]


def kernel_table(kernels: list[dict]) -> str:
    return table(["Kernel", "Calls", "ms", "Share"],
                 [[f"`{k['kernel']}`", k["calls"], k["ms"], f"{100 * k['share']:.1f}%"] for k in kernels])


def load_section(load: dict, args) -> list[str]:
    lo, hi = args.mel_seconds
    return ["## Server under load", "",
            f"`python -m server` serving {load['net']} on 127.0.0.1 (device {load['device']}) in a fresh process per "
            f"batching mode, closed "
            f"loop: each client sends its next request as soon as its last one is answered (after a 429, once "
            f"Retry-After has passed, at most 5 s). Mels of {lo:g}-{hi:g} s "
            f"from the validation clips, rho={load['rho']}, unseeded (the server batches seeded requests only when "
            f"their lengths are equal). At most max({args.requests}, {args.per_client} x clients) requests and "
            f"{args.load_seconds:g} s of new requests per row. Throughput = audio seconds returned per wall second; "
            "latency percentiles over successful (200) responses; batching on = VOCODER_BATCH_WAIT_MS="
            f"{CUDA_BATCH_WAIT_MS:g} (the default on CUDA), off = 0 (the default on a CPU).", "",
            table(["Batching", "Clients", "Requests", "200", "429", "Other errors", "Unfinished", "Audio s / s",
                   "p50 s", "p95 s", "p99 s", "Mean batch"],
                  [[r["batching"], r["clients"], r["requests"], r["ok"], r["rejected_429"], r["errors"],
                    r["unfinished"], r["throughput"], r["p50_s"], r["p95_s"], r["p99_s"], r["mean_batch"]]
                   for r in load["rows"]])]


def stream_section(load: dict) -> list[str]:
    rows = load.get("stream") or []
    if not rows:
        return []
    return ["## Streaming", "",
            f"`python -m server` serving {load['net']} (device {load['device']}): each input (real speech, seed 0) "
            "first as a whole request (`/v1/vocode`, wall time to the last byte), then streamed "
            "(`/v1/vocode/stream`): *first audio* is the WAV header and the first 16 KiB of PCM at the client. "
            "Max difference = the largest |streamed - whole| sample, in 16-bit steps.", "",
            table(["Audio s", "Preset", "Steps", "Refinements", "Whole request s", "First audio s", "Stream total s",
                   "First audio / whole", "Max difference (LSB)"],
                  [[r["seconds"], r["preset"], r["steps"], r.get("refine", 0), r["whole_s"], r["first_audio_s"],
                    r["stream_total_s"],
                    f"{100 * r['first_over_whole']:.1f}%", r["max_lsb"]] for r in rows]), ""]


def schedule_section(sched: dict) -> list[str]:
    return ["## Schedule for a new rho", "",
            "GET /v1/schedules?rho=... on a fresh server: the first call runs the schedule network (cache miss); "
            "later calls hit the cache (median). A GET /healthz round trip for comparison: "
            f"{1e3 * sched['healthz_s']:.1f} ms.", "",
            table(["rho", "Steps", "Miss ms", "Hit ms", "Miss reported uncached", "Hits reported cached"],
                  [[r["rho"], r["steps"], 1e3 * r["miss_s"], 1e3 * r["hit_s"], str(not r["first_cached"]),
                    str(r["hits_cached"])] for r in sched["rows"]])]


def cpu_path_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["## CPU paths side by side", "",
            f"Seeded DDPM at the {rows[0]['schedule']} preset ({rows[0]['steps']} steps), batch 1, real speech, "
            f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
            "median wall time with the paths interleaved in each repetition. "
            "*Eager module*: `Vocoder` with today's `ScoreNet` (`cpu_fast=False`); *fast*: `Vocoder` on "
            "`model.score_net_cpu` (fp32 exact; bf16 GEMMs); *lmnt DiffWave*: lmnt-com's `DiffWave` with our "
            "weights in a plain DDPM loop at the same step count. GFLOP/s counts the step as it runs "
            "(`run_flops`; lmnt's projects the conditioner at every step); efficiency is against the best fp32 "
            "(bf16 for the bf16 path) GEMM rate measured in the same run, torch.mm's (MKL) or oneDNN's, whichever "
            "was the faster.", "",
            table(["Net", "Path", "Audio s", "Wall s", "RTF", "x lmnt time", "GFLOP/s", "GEMM peak GFLOP/s",
                   "Efficiency"],
                  [[r["net"], r["path"], r["seconds"], r["wall_s"], r["rtf"], r["over_reference"], r["gflops"],
                    r["peak_gflops"], f"{100 * r['efficiency']:.0f}%"] for r in rows]), ""]


def plot_cpu_paths(rows: list[dict]):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    nets = list(dict.fromkeys(r["net"] for r in rows))
    fig, axes = plt.subplots(1, len(nets), figsize=(6 * len(nets), 4.5), squeeze=False)
    for ax, net in zip(axes[0], nets):
        for path in CPU_PATHS:
            mine = [r for r in rows if (r["net"], r["path"]) == (net, path)]
            if mine:
                ax.plot([r["seconds"] for r in mine], [r["rtf"] for r in mine], "o-", label=path)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        log_axes(ax, sorted({r["seconds"] for r in rows}))
        ax.set(xlabel="audio seconds", ylabel="RTF (wall / audio)", title=f"{net}: balanced synthesis on the CPU")
        ax.legend(fontsize=8)
    return fig


def report(net_rows, synth_rows, cached_rows, batched, load, sched, server_note: str | None, notes: list[str],
           args, cpu_rows: list[dict]) -> str:
    parts = network_section(net_rows) + [""] + synthesis_section(synth_rows) + [""] + cache_section(cached_rows) + [""]
    parts += batch_section(*batched) + cpu_path_section(cpu_rows)
    if server_note:
        parts += ["## Server under load", "", server_note]
    else:
        parts += load_section(load, args) + [""] + schedule_section(sched) + [""] + stream_section(load)
    if notes:
        parts += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(parts)


def plot(net_rows, synth_rows, load):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ax = axes[0]
    for net, dev in dict.fromkeys((r["net"], r["device"]) for r in net_rows):
        rows = [r for r in net_rows if (r["net"], r["device"]) == (net, dev)]
        for key, label, style in (("ours_plain_s", "ours", "o-"), ("reference_s", "reference DiffWave", "s--")):
            if rows[0][key] is not None:
                ax.plot([r["seconds"] for r in rows], [1e3 * r[key] for r in rows], style,
                        label=f"{label}, {net} ({dev})")
    log_axes(ax, sorted({r["seconds"] for r in net_rows}))
    ax.set(xlabel="audio seconds", ylabel="ms per forward (one step)", title="Score network forward")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key in dict.fromkeys((r["net"], r["device"], r["schedule"]) for r in synth_rows):
        rows = [r for r in synth_rows if (r["net"], r["device"], r["schedule"]) == key]
        ax.plot([r["seconds"] for r in rows], [r["rtf"] for r in rows], "o-", label=f"{key[0]}: {key[2]}, "
                f"{rows[0]['steps']} steps ({key[1]})")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    log_axes(ax, sorted({r["seconds"] for r in synth_rows}))
    ax.set(xlabel="audio seconds", ylabel="RTF (wall / audio)", title="Whole synthesis")
    ax.legend(fontsize=8)
    ax = axes[2]
    if load:
        for mode, color in (("on", "C0"), ("off", "C1")):
            rows = [r for r in load["rows"] if r["batching"] == mode]
            x = [r["throughput"] for r in rows]
            ax.plot(x, [r["p50_s"] for r in rows], "o-", color=color, label=f"p50, batching {mode}")
            ax.plot(x, [r["p95_s"] for r in rows], "^--", color=color, label=f"p95, batching {mode}")
            for r in rows:
                ax.annotate(str(r["clients"]), (r["throughput"], r["p50_s"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.legend(fontsize=8)
    ax.set(xlabel="throughput (audio s per s)", ylabel="latency s",
           title="Server: latency vs throughput (labels: clients)")
    ax.grid(alpha=0.3)
    return fig


# --- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    ap = base_parser("python -m bench.speed", __doc__, several=True)
    ap.add_argument("--reference-schedules", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--lengths", type=float, nargs="+", default=[1, 5, 10, 30], help="audio seconds")
    ap.add_argument("--reps", type=int, default=3, help="timed forward passes per length (median)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=16, help="requests per load row, at least per-client x clients")
    ap.add_argument("--per-client", type=int, default=2, help="requests per client per load row, at least")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="stop sending new requests after this")
    ap.add_argument("--mel-seconds", type=float, nargs=2, default=[2.0, 10.0], help="request length range")
    ap.add_argument("--rho", default="balanced", help="rho or preset the load requests ask for")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--stream-lengths", type=float, nargs="*", default=[5, 20, 60],
                    help="(g) audio seconds streamed at each preset (none: skip)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="where (a) and (b) run; cuda writes speed-gpu.md, the others speed.md")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="(f): auto times eager and compiled on CUDA, eager only on the CPU")
    ap.add_argument("--batches", type=int, nargs="+", help="(f) batch sizes (default 1 4 16 64 on CUDA, 1 4 on CPU)")
    ap.add_argument("--batch-seconds", type=float, default=10.0, help="(f) clip length")
    ap.add_argument("--served", action="store_true",
                    help="only what a client meets, into speed-served.md: each preset's whole synthesis with its "
                         "refinements' share, then the server under load, the schedule cache and streaming")
    ap.add_argument("--cpu-paths", action="store_true",
                    help="(h) alone, into speed-cpu-<net>.md (its lengths: --lengths), with every preset's RTF on "
                         "the fast path in fp32 and bf16 at --preset-seconds")
    ap.add_argument("--preset-seconds", type=float, default=5.0, help="(h) with --cpu-paths: the presets' length")
    args = parse_with_quick(ap, argv, {"lengths": [1, 5], "reps": 1, "clients": [1, 4], "requests": 2,
                                       "per_client": 1, "load_seconds": 20.0, "mel_seconds": [2.0, 3.0],
                                       "batches": [1, 2], "batch_seconds": 1.0, "stream_lengths": [2.0]})
    if min(args.lengths) <= 0 or min(args.reps, min(args.clients), args.requests, args.per_client) < 1:
        ap.error("--lengths, --reps, --clients, --requests and --per-client must be positive")
    return args


def server_part(args, weights: Path) -> tuple[dict | None, dict | None, str | None]:
    """(c) and (d) on one net: (load results, schedule latencies, why they were skipped)."""
    if args.skip_server:
        return None, None, "Skipped (--skip-server)."
    voc = Vocoder.load(weights, device="cpu")
    if not voc.presets:
        return None, None, "Skipped: these weights have no rho presets, so the server has no schedule to serve."
    if args.rho not in voc.presets:
        try:
            float(args.rho)
        except ValueError:
            raise SystemExit(f"--rho {args.rho!r}: not a number nor one of the presets {sorted(voc.presets)}") from None
    bodies = request_bodies(voc, args.data, *args.mel_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        rows, sched, device = load_rows(args, weights, voc, bodies, Path(tmp))
        streamed = []
        if args.stream_lengths:
            with server(weights, dict(os.environ), Path(tmp) / "server-stream.log") as url:
                audio = speech(args.data, max(args.stream_lengths), voc.spec.sample_rate)
                streamed = stream_rows(url, voc, audio, args.stream_lengths, sorted(voc.presets, key=lambda n: voc.presets[n].rho,
                                                                                    reverse=True))
    rho = f"{args.rho} ({voc.presets[args.rho].rho:g})" if args.rho in voc.presets else args.rho
    return {"net": net_label(voc), "rho": rho, "device": device, "rows": rows, "stream": streamed}, sched, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    nets = weights_for(args.weights, args.device)
    head = header("bench.speed", nets)
    if args.cpu_paths:
        return cpu_paths_main(args, nets, head)
    if args.served:
        return served_main(args, nets[0], head)
    net_rows, synth_rows, cached_rows, batched, notes = [], [], [], ([], []), []
    audio = speech(args.data, max(*args.lengths, args.batch_seconds), read_config(nets[0])["audio"]["sample_rate"])
    cpu_rows = []
    for dev in devices(args.device):
        for weights in nets:  # the same inputs for every net
            cpu_rows += cpu_path_rows(weights, audio, args.lengths, args.reps) if dev == "cpu" else []
            voc = Vocoder.load(weights, device=dev, dtype=args.dtype)
            schedules, more = bench_schedules(voc, args.reference_schedules)
            notes += [f"{net_label(voc)}: {n}" for n in more] if dev == "cpu" else []
            net_rows += network_rows(voc, audio, args.lengths, args.reps)
            synth_rows += synthesis_rows(voc, audio, schedules, args.lengths)
            cached_rows += cache_rows(voc, audio, schedules, args.lengths, args.reps)
            rows, kernels = batch_rows(args, weights, audio, dev)
            batched = (batched[0] + rows, kernels or batched[1])
            print(f"network and synthesis of {net_label(voc)} timed on {dev}", file=sys.stderr)
    if net_rows[0]["reference_s"] is None:
        notes.append("reference DiffWave not timed: install it with `pip install --no-deps diffwave`")
    load, sched, server_note = server_part(args, nets[0])  # the server sections on the first net
    name = "speed-gpu" if args.device == "cuda" else "speed"
    write_outputs(args.out, name, f"Speed benchmark{' (GPU)' if args.device == 'cuda' else ''}", head,
                  report(net_rows, synth_rows, cached_rows, batched, load, sched, server_note, notes, args, cpu_rows),
                  {"network": net_rows, "synthesis": synth_rows, "conditioning_cache": cached_rows,
                   "cpu_paths": cpu_rows,
                   "batched": batched[0], "top_kernels": batched[1], "load": load,
                   "schedule_latency": sched,
                   "notes": notes}, plot, net_rows, synth_rows, load)
    print(f"wrote {args.out}/{name}.md, {name}.json, {name}.png", file=sys.stderr)
    return 0


def cpu_paths_main(args, nets: list[Path], head: dict) -> int:
    """--cpu-paths: (h) alone for each net, one report named after the nets (each a run under 10 minutes)."""
    audio = speech(args.data, max(*args.lengths, args.preset_seconds), read_config(nets[0])["audio"]["sample_rate"])
    rows, presets = [], []
    for weights in nets:
        rows += cpu_path_rows(weights, audio, args.lengths, args.reps)
        for dtype in ("fp32", "bf16"):  # every preset on the fast path, for the choice of the CPU default
            voc = Vocoder.load(weights, "cpu", dtype)
            presets += [{**r, "device": f"cpu, fast {dtype}"} for r in
                        synthesis_rows(voc, audio, bench_schedules(voc, args.reference_schedules)[0],
                                       [args.preset_seconds])]
    name = "speed-cpu-" + "-".join(w.resolve().name for w in nets)
    write_outputs(args.out, name, "CPU paths side by side", head,
                  "\n".join(cpu_path_section(rows) + synthesis_section(presets)),
                  {"cpu_paths": rows, "presets": presets}, plot_cpu_paths, rows)
    print(f"wrote {args.out}/{name}.md, {name}.json, {name}.png", file=sys.stderr)
    return 0


def served_main(args, weights: Path, head: dict) -> int:
    """--served: the presets as served (synthesis, then refinement, timed apart) and the server sections, one net."""
    voc = Vocoder.load(weights, device="cpu" if args.device == "all" else args.device, dtype=args.dtype)
    audio = speech(args.data, max(args.lengths), voc.spec.sample_rate)
    rows = synthesis_rows(voc, audio, bench_schedules(voc, args.reference_schedules)[0], args.lengths)
    load, sched, server_note = server_part(args, weights)
    body = synthesis_section(rows) + [""]
    body += (["## Server under load", "", server_note] if server_note else
             load_section(load, args) + [""] + schedule_section(sched) + [""] + stream_section(load))
    write_outputs(args.out, "speed-served", "What a client meets: the presets as served", head, "\n".join(body),
                  {"synthesis": rows, "load": load, "schedule_latency": sched})
    print(f"wrote {args.out}/speed-served.md, speed-served.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
