"""bf16 inference quality guard: STOI and PESQ of bf16 autocast against fp32 on the same held-out clips.

Both precisions vocode each clip from its mel at the default rho with the same seed; the guard holds
when bf16's mean STOI is within 0.01 and its mean PESQ within 0.05 of fp32's (issue 11). Where `pesq`
is not installed (the bare GPU image: it ships as source only), PESQ is left out and `--audio-out`
saves the clips so that `--rescore` can score them on a machine that has it.

    python -m bench.precision --device cuda --audio-out runs/precision-audio.npz
    python -m bench.precision --rescore runs/precision-audio.npz
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from model import metrics
from model.audio import mel_spectrogram
from model.vocoder import Vocoder

from .common import apply_threads, base_parser, fmt, header, table, validation_clips, weights_for, write_outputs

PRECISIONS = ("fp32", "bf16")
#: Largest |bf16 - fp32| of the mean scores that the guard accepts.
TOLERANCE = {"stoi": 0.01, "pesq": 0.05}


def vocode_clips(weights: Path, device: str, data: Path, clips: int, seconds: float) -> dict[str, np.ndarray]:
    """{"reference": (clips, samples), "fp32": ..., "bf16": ...}: the recordings and both precisions' audio."""
    refs = validation_clips(data, clips, seconds)
    length = min(len(c.audio) for c in refs) // 256 * 256
    out = {"reference": np.stack([c.audio[:length] for c in refs])}
    for name in PRECISIONS:
        voc = Vocoder.load(weights, device, name)
        schedule = voc.schedule(voc.default_rho)
        out[name] = np.stack([voc.vocode(mel_spectrogram(c.audio[:length], voc.spec), schedule, seed=i)
                              for i, c in enumerate(refs)])
    return out


def pesq_available() -> bool:
    try:
        import pesq  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def score(audio: dict[str, np.ndarray]) -> dict:
    """Mean STOI and PESQ per precision, their differences, and whether the guard holds."""
    with_pesq = pesq_available()
    means = {}
    for name in PRECISIONS:
        pairs = list(zip(audio["reference"], audio[name]))
        means[name] = {"stoi": float(np.mean([metrics.stoi(r, e) for r, e in pairs])),
                       "pesq": float(np.nanmean([metrics.pesq_wb(r, e) for r, e in pairs])) if with_pesq else None}
    diff = {k: None if means["fp32"][k] is None else abs(means["bf16"][k] - means["fp32"][k]) for k in TOLERANCE}
    held = all(d is not None and d <= TOLERANCE[k] for k, d in diff.items())
    return {"means": means, "abs_diff": diff, "guard_holds": held if with_pesq else None,
            "clips": len(audio["reference"]), "seconds": audio["reference"].shape[1] / 22050}


def report(result: dict, device: str) -> str:
    m, d = result["means"], result["abs_diff"]
    verdict = {True: "holds", False: "FAILS", None: "not decided (no PESQ here: rescore the saved audio)"}
    return "\n".join([
        f"{result['clips']} held-out clips of {result['seconds']:.2f} s vocoded on {device} at the default rho, "
        "the same seed per clip in both precisions.", "",
        table(["Precision", "STOI", "PESQ"], [[p, m[p]["stoi"], fmt(m[p]["pesq"])] for p in PRECISIONS]
              + [["abs difference", d["stoi"], fmt(d["pesq"])],
                 ["tolerance", TOLERANCE["stoi"], TOLERANCE["pesq"]]]), "",
        f"Guard: {verdict[result['guard_holds']]}."])


def main(argv: list[str] | None = None) -> int:
    ap = base_parser("python -m bench.precision", __doc__)
    ap.add_argument("--device", default="cuda", help="where both precisions run (bf16 autocast wants CUDA)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--audio-out", type=Path, help="save the vocoded clips (for --rescore)")
    ap.add_argument("--rescore", type=Path, help="score clips saved by --audio-out instead of vocoding")
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    args.weights = weights_for(args.weights, args.device)[0]
    head, rescored = header("bench.precision", args.weights), ""
    if args.rescore:  # the header is the vocoding run's (its machine, weights and command)
        saved = np.load(args.rescore, allow_pickle=False)
        audio, device = {k: saved[k] for k in ("reference", *PRECISIONS)}, str(saved["device"])
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
    write_outputs(args.out, "precision", "bf16 quality guard", head, report(result, device) + rescored, result)
    print(f"wrote {args.out}/precision.md", file=sys.stderr)
    return 0 if result["guard_holds"] is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
