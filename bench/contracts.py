"""Vocoding in the caller's contract: what each mel profile costs, and how the server should do it.

    python -m bench.contracts [--compare] [--quick]

Per profile (`model.profiles`), the held-out clips' mels made in that contract (by the peer's own code where it is
installed, `bench.peers`: Coqui's and ESPnet's) are vocoded at the default preset and scored against the recording
at lag 0 (STOI, PESQ-WB/NB, periodicity, pauses, DNSMOS), with the best lag within a hop reported beside. `--compare` scores the two ways of vocoding a foreign contract on the tuning clips:

- A: the caller's mel -> linear magnitude -> the net's contract (`model.transcode`); the usual path there (its
     sampling and refinements in the net's STFT); then resampled to the caller's rate;
- B: the same net audio without the net-contract refinements, resampled, then the refinements as projections in
     the caller's own STFT against the caller's own mel, so the output agrees with exactly what was sent.

The predicted mels in ../shared/data/tts-mels are scored non-intrusively (DNSMOS, voicing), tacotron2-a also
against WaveGlow's output, and the Rayhane ones against librosa's mel_to_audio (32 iterations) in their contract.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from scipy.signal import lfilter

from model import metrics
from model.audio import SAMPLE_RATE, load_audio, mel_spectrogram, resample
from model.contract import MelSpec, expand
from model.detect import WrongContract, check
from model.profiles import PROFILES
from model.plan import BDDM, METHODS, Method, plan_for
from model.refine import project
from model.transcode import to_net
from model.vocoder import Vocoder

from .common import (DEFAULT_DATA, TUNING_CLIPS, apply_threads, base_parser, fmt, header, parse_with_quick, table,
                     validation_clips, weights_for, write_outputs)
from .peers import PEERS, installed, peer_mel

TTS_MELS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tts-mels"
#: The predicted mels and the profile each was made in.
PREDICTED = {**{f"ru-rayhane-{i}": "rayhane" for i in range(9)}, "vi-fastspeech2": "hifigan",
             **{f"tacotron2-{c}": "hifigan" for c in "ab"}, **{f"tacotron2-{c}": "tacotron2" for c in "cde"}}
INTRUSIVE = ("stoi", "pesq", "pesq_nb", "periodicity", "vuv_f1", "floor_db")
DNSMOS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


def fit(audio: np.ndarray, samples: int) -> np.ndarray:
    return audio[:samples] if len(audio) >= samples else np.pad(audio, (0, samples - len(audio)))


def option_a(voc: Vocoder, mel: torch.Tensor, spec: MelSpec, seed: int, rho: float, refine: int) -> np.ndarray:
    audio = voc.vocode(to_net(mel, spec, voc.spec), voc.schedule(rho), seed=seed, refine=refine)
    return fit(resample(audio, voc.spec.sample_rate, spec.sample_rate), mel.shape[-1] * spec.hop)


def option_b(voc: Vocoder, mel: torch.Tensor, spec: MelSpec, seed: int, rho: float, refine: int) -> np.ndarray:
    audio = voc.vocode(to_net(mel, spec, voc.spec), voc.schedule(rho), seed=seed, refine=0)
    audio = fit(resample(audio, voc.spec.sample_rate, spec.sample_rate), mel.shape[-1] * spec.hop)
    return project(torch.from_numpy(audio)[None], mel[None], spec, refine)[0].numpy()


def served(voc: Vocoder, mel: torch.Tensor, spec: MelSpec, seed: int, method: Method | None = None) -> np.ndarray:
    """What the server serves a request that names only the contract (and `method`; None: the device's default,
    projection alone on a CPU): its plan (`model.plan`) run by `Vocoder.vocode` in the caller's contract."""
    plan = plan_for(voc, method, None, None, ("bench", spec))
    schedule = voc.schedule(plan.rho) if plan.method == BDDM else None
    return voc.vocode(mel, schedule, seed=seed, refine=plan.refine, contract=spec)


def best_lag(ref: np.ndarray, est: np.ndarray, reach: int) -> int:
    """The shift of est (in samples, within +-reach) that correlates best with ref."""
    n = min(len(ref), len(est))
    ref, est = ref[:n].astype(np.float64), est[:n].astype(np.float64)
    lags = range(-reach, reach + 1)
    return max(lags, key=lambda k: float(np.dot(ref[max(0, k):n + min(0, k)], est[max(0, -k):n - max(0, k)])))


def intrusive(ref: np.ndarray, est: np.ndarray, sr: int) -> dict[str, float]:
    ref, est = ref[:min(len(ref), len(est))], est[:min(len(ref), len(est))]
    _, floor = metrics.noise_floor(ref, est)
    return {"stoi": metrics.stoi(ref, est, sr), "pesq": metrics.pesq_wb(ref, est, sr),
            "pesq_nb": metrics.pesq_nb(ref, est, sr), **metrics.pitch_errors(ref, est, sr), "floor_db": floor}


def score_profiles(voc: Vocoder, names: list[str], clips_at: dict, methods: dict, dnsmos: bool) -> list[dict]:
    """Each profile's held-out clips by each of `methods`: name -> fn(voc, mel, spec, seed) -> audio."""
    rows = []
    for name in names:
        spec = PROFILES[name].spec
        by = PEERS[name][1] if name in PEERS and installed(PEERS[name][0]) else "ours"
        for method, fn in methods.items():
            per_clip = []
            for i, clip in enumerate(clips_at[spec.sample_rate]):
                theirs = peer_mel(name, clip.audio)
                mel = mel_spectrogram(clip.audio, spec) if theirs is None else torch.from_numpy(theirs)
                t0 = time.perf_counter()
                est = fn(voc, mel, spec, 1 + i)
                seconds = time.perf_counter() - t0
                lag = best_lag(clip.audio, est, spec.hop)
                scores = {**intrusive(clip.audio, est, spec.sample_rate), "lag": lag, "rtf": seconds / clip.seconds,
                          **(metrics.dnsmos(est, spec.sample_rate) if dnsmos else {})}
                per_clip.append(scores)
            summary = {k: float(np.nanmean([c[k] for c in per_clip])) for k in per_clip[0]}
            summary["lag_range"] = [min(c["lag"] for c in per_clip), max(c["lag"] for c in per_clip)]
            rows.append({"profile": name, "method": method, "mels_by": by, **summary, "clips": per_clip})
            print(f"{name:12s} {method:8s} " + " ".join(f"{k} {fmt(summary[k])}" for k in (*INTRUSIVE, "rtf")),
                  flush=True)
    return rows


def librosa_rayhane(mel: np.ndarray, spec: MelSpec) -> np.ndarray:
    """librosa's mel_to_audio (32 Griffin-Lim iterations) in the contract, pre-emphasis undone, peak-normalised as
    Rayhane's save_wav does (and as the server does beyond full scale)."""
    power = expand(torch.from_numpy(mel).double(), spec).numpy()
    wav = librosa.feature.inverse.mel_to_audio(power, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop,
                                               win_length=spec.win_length, center=spec.center, pad_mode=spec.pad_mode,
                                               power=spec.power, n_iter=32, fmin=spec.fmin, fmax=spec.fmax)
    wav = lfilter([1.0], [1.0, -spec.preemphasis], wav) if spec.preemphasis else wav
    return (wav / max(1.0, np.abs(wav).max() / 0.999)).astype(np.float32)


def score_predicted(voc: Vocoder, mels: Path, quick: bool) -> list[dict]:
    rows = []
    for stem, profile in PREDICTED.items():
        if quick and stem not in ("ru-rayhane-0", "tacotron2-a"):
            continue
        spec = PROFILES[profile].spec
        mel = torch.from_numpy(np.load(mels / f"{stem}.npy"))
        est = served(voc, mel, spec, 1)
        row = {"mel": stem, "profile": profile, "method": voc.default_method, **metrics.dnsmos(est, spec.sample_rate),
               **vuv(est, spec.sample_rate)}
        if stem == "tacotron2-a":
            peer = load_audio(mels / "tacotron2-a.waveglow.wav", spec.sample_rate)
            row.update({f"vs_waveglow_{k}": v for k, v in intrusive(peer, est, spec.sample_rate).items()},
                       vs_waveglow_lag=best_lag(peer, est, spec.hop))
        rows.append(row)
        if profile == "rayhane":
            gla = librosa_rayhane(mel.numpy(), spec)
            rows.append({"mel": stem, "profile": profile, "method": "librosa GLA 32",
                         **metrics.dnsmos(gla, spec.sample_rate), **vuv(gla, spec.sample_rate)})
        print(" ".join(f"{k} {fmt(v)}" for k, v in rows[-1].items()), flush=True)
    return rows


def vuv(x: np.ndarray, sr: int) -> dict[str, float]:
    """The voiced share of frames and their pitch strength: a whispering vocoder loses both."""
    _, strength = metrics.pitch_track(x, sr)
    return {"voiced": float(np.mean(strength > 0)), "pitch_strength": float(np.mean(strength[strength > 0]))
            if np.any(strength > 0) else math.nan}


def check_cost(repeats: int = 200) -> dict[str, float]:
    """Milliseconds `model.detect.check` takes on 10 s of a clip's mel, per declared profile (best of `repeats`)."""
    wav = np.tile(validation_clips(DEFAULT_DATA, 1)[0].audio, 4)[:10 * SAMPLE_RATE]
    out = {}
    for name in ("hifigan", "espnet", "rayhane"):
        mel = mel_spectrogram(wav, PROFILES["hifigan"].spec).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                check(mel, PROFILES[name].spec)
            except WrongContract:
                pass
            times.append(time.perf_counter() - start)
        out[name] = 1000 * min(times)
    return out


def acceptance(rows: list[dict], predicted: list[dict], default: str) -> list[str]:
    """The issue's acceptance lines, as measured on the `default` method's rows."""
    out, served = [], {r["profile"]: r for r in rows if r["method"] == default}
    for name, r in served.items():
        ok = r["stoi"] >= 0.95 and r["pesq"] >= 3.0
        out.append(f"- {name}: STOI {r['stoi']:.3f}, PESQ-WB {r['pesq']:.2f} at lag 0: {'met' if ok else 'NOT met'}")
    if {"hifigan", "tacotron2"} <= set(served):
        gap = served["hifigan"]["stoi"] - served["tacotron2"]["stoi"]
        out.append(f"- tacotron2 within 0.01 STOI of hifigan: {gap:+.3f}: {'met' if gap <= 0.01 else 'NOT met'}")
    ours = [r["dnsmos_ovrl"] for r in predicted if r["profile"] == "rayhane" and r["method"] == default]
    gla = [r["dnsmos_ovrl"] for r in predicted if r["profile"] == "rayhane" and r["method"] != default]
    if ours and gla:
        out.append(f"- Rayhane predictions, DNSMOS OVRL: served {np.mean(ours):.2f} against librosa GLA-32 "
                   f"{np.mean(gla):.2f}: {'met' if np.mean(ours) >= np.mean(gla) else 'NOT met'}")
    return out


def report(args: argparse.Namespace, rows: list[dict], predicted: list[dict], voc: Vocoder,
           check_ms: dict[str, float]) -> str:
    cols = ("stoi", "pesq", "pesq_nb", "periodicity", "vuv_f1", "floor_db", *(DNSMOS if args.dnsmos else ()), "rtf")
    preset = voc.presets.get(voc.default_preset or "")
    body = [f"Default preset `{voc.default_preset}` (bddm: rho {voc.default_rho:g}, {voc.default_refine} refinements; "
            f"projection: {preset.projections if preset else 0} projections); the device's default method: "
            f"{voc.default_method}; clips: "
            f"{'tuning' if args.compare else 'acceptance'} (valid.txt {args.skip + 1}-{args.skip + args.clips}), "
            f"{args.seconds or 'whole'} s; scored at lag 0 against the recording at the contract's rate; `lag`: the "
            "mean best lag in samples (range across clips).", "",
            table(("profile", "mels by", "method", *cols, "lag"),
                  [(r["profile"], r.get("mels_by", "ours"), r["method"], *(fmt(r.get(c)) for c in cols),
                    f"{r['lag']:+.1f} ({r['lag_range'][0]:+d}..{r['lag_range'][1]:+d})") for r in rows]),
            "", "Wrong-contract check (`model.detect.check`) on 10 s: "
            + ", ".join(f"declared {k} {v:.3f} ms" for k, v in check_ms.items()), "", *acceptance(rows, predicted, voc.default_method)]
    if predicted:
        keys = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "voiced", "pitch_strength", "vs_waveglow_stoi",
                "vs_waveglow_pesq", "vs_waveglow_lag")
        body += ["", "## Predicted mels (../shared/data/tts-mels), non-intrusive", "",
                 table(("mel", "profile", "method", *keys),
                       [(r["mel"], r["profile"], r["method"], *(fmt(r.get(k)) for k in keys)) for r in predicted])]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    ap = base_parser("python -m bench.contracts", __doc__)
    ap.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    ap.add_argument("--compare", action="store_true", help="A against B on the tuning clips (the design choice)")
    ap.add_argument("--methods", nargs="*", choices=list(METHODS),
                    help="the methods to score (default: the device's, as the server serves a request naming none)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=None, help="crop each clip (default: whole)")
    ap.add_argument("--no-dnsmos", dest="dnsmos", action="store_false")
    ap.add_argument("--no-predicted", dest="predicted", action="store_false")
    ap.add_argument("--tts-mels", type=Path, default=TTS_MELS)
    args = parse_with_quick(ap, argv, {"clips": 2, "seconds": 2.0, "profiles": ["hifigan", "rayhane"]})
    args.skip = 0 if args.compare else TUNING_CLIPS
    apply_threads(args.threads)
    weights = weights_for(args.weights, "cpu")[0]
    voc = Vocoder.load(weights, "cpu", dtype=args.dtype)
    rates = {PROFILES[n].spec.sample_rate for n in args.profiles}
    clips_at = {sr: validation_clips(args.data, args.clips, args.seconds, sr, args.skip) for sr in rates}
    rho, refine = voc.default_rho, voc.default_refine
    methods = ({"A": lambda *a: option_a(*a, rho, refine), "B": lambda *a: option_b(*a, rho, refine)} if args.compare
               else {m: lambda *a, m=m: served(*a, m) for m in args.methods or [voc.default_method]})
    name = "contracts-compare" if args.compare else "contracts"
    rows: list[dict] = []
    predicted: list[dict] = []

    def write() -> None:  # after each profile: a long run on a shared machine keeps what it has measured
        write_outputs(args.out, name, "Mel contracts: each profile vocoded at the default preset",
                      header("bench.contracts", weights), report(args, rows, predicted, voc, check_ms),
                      {"profiles": rows, "predicted": predicted, "check_ms": check_ms,
                       "args": {k: str(v) for k, v in vars(args).items()}})

    check_ms = check_cost()
    for profile in args.profiles:
        rows += score_profiles(voc, [profile], clips_at, methods, args.dnsmos)
        write()
    if args.predicted and not args.compare:
        predicted = score_predicted(voc, args.tts_mels, args.quick)
        write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
