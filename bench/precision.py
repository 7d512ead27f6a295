"""bf16 inference quality guard: STOI and PESQ of bf16 against fp32 on the same held-out clips.

Both precisions vocode each clip from its mel at the default rho with the same seed; the guard holds
when bf16's mean STOI is within 0.01 and its mean PESQ within 0.05 of fp32's (issue 11). On CUDA bf16 is
autocast; on a CPU it is `CpuScoreNet`'s bf16 GEMMs, and the run also times both precisions: `--record`
writes the verdict and the speed-up beside the weights (`model.runtime.CPU_BF16_RECORD`), under this CPU's
bf16 ISA, which is what lets VOCODER_DTYPE=auto serve bf16 there. Where `pesq` is not installed (the bare GPU
image: it ships as source only), PESQ is left out and `--audio-out` saves the clips so that `--rescore` can
score them on a machine that has it.

    python -m bench.precision --device cuda --audio-out runs/precision-audio.npz
    python -m bench.precision --rescore runs/precision-audio.npz
    python -m bench.precision --device cpu --threads 2 --weights weights/base --record
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from model import metrics
from model.audio import mel_spectrogram
from model.runtime import CPU_BF16_RECORD, cpu_bf16_isa
from model.vocoder import Vocoder

from .common import apply_threads, base_parser, fmt, header, table, validation_clips, weights_for, write_outputs

PRECISIONS = ("fp32", "bf16")
#: The audio each precision is scored on: the net's output alone, and as served (the default preset's refinements).
STAGES = ("net", "served")
#: Largest |bf16 - fp32| of the mean scores that the guard accepts.
TOLERANCE = {"stoi": 0.01, "pesq": 0.05}


def vocode_clips(weights: Path, device: str, data: Path, clips: int, seconds: float) -> dict[str, np.ndarray]:
    """{"reference": (clips, samples), "net_fp32", "net_bf16", "served_fp32", "served_bf16": ..., "seconds_fp32",
    "seconds_bf16"}: the recordings, both precisions' audio before and after the default preset's refinements and
    the wall seconds of that whole synthesis, each clip in both precisions in turn (so that a shared machine's load
    falls on both alike), after a warm-up."""
    refs = validation_clips(data, clips, seconds)
    length = min(len(c.audio) for c in refs) // 256 * 256
    out = {"reference": np.stack([c.audio[:length] for c in refs])}
    vocs = {name: Vocoder.load(weights, device, name) for name in PRECISIONS}
    schedule, refine = vocs["fp32"].schedule(vocs["fp32"].default_rho), vocs["fp32"].default_refine
    mels = [mel_spectrogram(c.audio[:length], vocs["fp32"].spec) for c in refs]
    audio = {f"{stage}_{name}": [] for stage in STAGES for name in PRECISIONS}
    walls = dict.fromkeys(PRECISIONS, 0.0)
    for name, voc in vocs.items():
        voc.vocode(mels[0][:, :64], schedule, seed=0, refine=refine)
    for i, mel in enumerate(mels):
        for name, voc in vocs.items():
            start = time.perf_counter()
            audio[f"net_{name}"].append(voc.vocode(mel, schedule, seed=i))
            audio[f"served_{name}"].append(voc.refine(audio[f"net_{name}"][-1], mel, refine))
            walls[name] += time.perf_counter() - start
    out.update({key: np.stack(clips) for key, clips in audio.items()})
    out.update({f"seconds_{name}": np.array(walls[name]) for name in PRECISIONS})
    return out


def pesq_available() -> bool:
    try:
        import pesq  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def score(audio: dict[str, np.ndarray]) -> dict:
    """Mean STOI and PESQ per stage and precision, bf16's differences from fp32, and whether the guard holds on
    every stage."""
    with_pesq = pesq_available()
    means, diff = {}, {}
    for stage in STAGES:
        for name in PRECISIONS:
            pairs = list(zip(audio["reference"], audio[f"{stage}_{name}"]))
            means[f"{stage}_{name}"] = {
                "stoi": float(np.mean([metrics.stoi(r, e) for r, e in pairs])),
                "pesq": float(np.nanmean([metrics.pesq_wb(r, e) for r, e in pairs])) if with_pesq else None}
        a, b = means[f"{stage}_fp32"], means[f"{stage}_bf16"]
        diff[stage] = {k: None if a[k] is None else abs(b[k] - a[k]) for k in TOLERANCE}
    held = all(d is not None and d <= TOLERANCE[k] for stage in STAGES for k, d in diff[stage].items())
    timed = "seconds_fp32" in audio
    return {"means": means, "abs_diff": diff, "guard_holds": held if with_pesq else None,
            "clips": len(audio["reference"]), "seconds": audio["reference"].shape[1] / 22050,
            "wall_s": {p: float(audio[f"seconds_{p}"]) for p in PRECISIONS} if timed else None,
            "speedup": float(audio["seconds_fp32"] / audio["seconds_bf16"]) if timed else None}


def report(result: dict, device: str) -> str:
    m, d = result["means"], result["abs_diff"]
    verdict = {True: "holds", False: "FAILS", None: "not decided (no PESQ here: rescore the saved audio)"}
    label = {"net": "net alone", "served": "as served (refined)"}
    rows = []
    for stage in STAGES:
        rows += [[label[stage], p, m[f"{stage}_{p}"]["stoi"], fmt(m[f"{stage}_{p}"]["pesq"])] for p in PRECISIONS]
        rows.append([label[stage], "abs difference", d[stage]["stoi"], fmt(d[stage]["pesq"])])
    return "\n".join([
        f"{result['clips']} held-out clips of {result['seconds']:.2f} s vocoded on {device} at the default preset, "
        "the same seed per clip in both precisions; scored on the net's output and on it after the preset's "
        "refinements (in fp32 for both), as the server serves it.", "",
        table(["Audio", "Precision", "STOI", "PESQ"], rows + [["", "tolerance", TOLERANCE["stoi"], TOLERANCE["pesq"]]]),
        "", f"Guard: {verdict[result['guard_holds']]}."]
        + ([f"Wall time of the {result['clips']} clips as served: fp32 {result['wall_s']['fp32']:.2f} s, bf16 "
            f"{result['wall_s']['bf16']:.2f} s (bf16 {result['speedup']:.2f}x as fast)."] if result["wall_s"] else []))


def record(weights: Path, result: dict, head: dict) -> Path:
    """This CPU's verdict beside the weights, under its bf16 ISA (`model.runtime.cpu_bf16_serves` reads it)."""
    isa = cpu_bf16_isa()
    if isa is None:
        raise SystemExit("--record: this CPU has no bf16 ISA (amx_bf16, avx512_bf16) to record a verdict for")
    path = weights / CPU_BF16_RECORD
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[isa] = {"guard_holds": result["guard_holds"], "abs_diff": result["abs_diff"],
                    "speedup": result["speedup"], "cpu": head["hardware"]["cpu"],
                    "threads": head["hardware"]["torch_threads"], "date": head["date"],
                    "git_revision": head["git_revision"], "command": head["command"]}
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = base_parser("python -m bench.precision", __doc__)
    ap.add_argument("--device", default="cuda", help="where both precisions run (bf16 autocast wants CUDA)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--audio-out", type=Path, help="save the vocoded clips (for --rescore)")
    ap.add_argument("--rescore", type=Path, help="score clips saved by --audio-out instead of vocoding")
    ap.add_argument("--record", action="store_true",
                    help=f"with --device cpu: write the verdict and speed-up to WEIGHTS/{CPU_BF16_RECORD}")
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    args.weights = weights_for(args.weights, args.device)[0]
    head, rescored = header("bench.precision", args.weights), ""
    if args.rescore:  # the header is the vocoding run's (its machine, weights and command)
        saved = np.load(args.rescore, allow_pickle=False)
        keys = ["reference"] + [f"{stage}_{p}" for stage in STAGES for p in PRECISIONS]
        audio, device = {k: saved[k] for k in keys}, str(saved["device"])
        rescored = f"\n\nScored on {head['hardware']['cpu']} by `{head['command']}`."
        head = json.loads(str(saved["header"]))
    else:
        audio, device = vocode_clips(args.weights, args.device, args.data, args.clips, args.seconds), args.device
        if args.device == "cuda":
            import torch  # noqa: PLC0415

            device = f"cuda ({torch.cuda.get_device_name()})"
        if args.audio_out:
            args.audio_out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.audio_out, device=np.array(device), header=np.array(json.dumps(head)), **audio)
    result = score(audio)
    name = f"precision-cpu-{args.weights.name}" if device == "cpu" else "precision"
    write_outputs(args.out, name, "bf16 quality guard", head, report(result, device) + rescored, result)
    print(f"wrote {args.out}/{name}.md", file=sys.stderr)
    if args.record and args.device == "cpu":
        print(f"wrote {record(args.weights, result, head)}", file=sys.stderr)
    return 0 if result["guard_holds"] is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
