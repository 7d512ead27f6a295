"""How fast the score net and whole synthesis run (`bench.speed` (a), (b), (e)): one reverse step against lmnt-com's
reference DiffWave loaded with our weights, whole synthesis per preset with its refinements' share, and the
per-request conditioning cache; plus the inputs and labels every part of the speed benchmark shares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.audio import mel_spectrogram
from model.sampling import CONDITIONING_CACHE_BYTES, MARGIN_FRAMES, WINDOW_FRAMES, ddpm, windowed_eps
from model.schedules import Schedule
from model.score_net import ScoreNet, step_embedding
from model.vocoder import Vocoder

from .common import OFFICIAL, fmt, table, timed, validation_clips


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
