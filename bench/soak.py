"""Soak test: overload and endurance of a real server process on loopback.

Starts `python -m server` on 127.0.0.1 (a free port) with the given weights and then
  1. capacity: a few closed-loop clients for --capacity-seconds -> audio seconds per second;
  2. burst: 4x capacity offered at once (4 x capacity_rps x --burst-seconds requests, at least
     --min-burst, all concurrent).
     Every request must be answered (200, or 429/503 with Retry-After); every 200 must be a WAV of
     frames * 256 finite samples, and a seeded 200 must equal the same seed vocoded alone;
  3. memory: after a warm-up (--warmup-requests mixed requests and one burst), --fuzz-requests mixed
     requests (valid mels, and .npy, JSON and WAV bodies with random byte edits, headers included)
     with --bursts bursts of --burst-size between them; no answer may be a 5xx, and the RSS after the
     warm-up may grow <= 10%;
  4. soak: closed-loop load with varied requests (lengths, rho, formats, some bad inputs) for
     --minutes; server RSS (process tree) is sampled at 1 min and at the end and may grow <= 10%.
Bounded in requests (--max-requests, --max-burst) and time (phase lengths, per-request timeouts);
the server is always stopped with SIGTERM and must exit 0. Writes soak.md and soak.json to --out
(bench/results); the server's log goes to runs/soak-server.log.

    python -m bench.soak --weights weights/small --minutes 10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.audio import HOP, SAMPLE_RATE, encode_audio, load_audio, mel_spectrogram

from .common import (DEFAULT_OUT, Client, Server, closed_loop, fmt, header, header_markdown, mutate, npy_bytes,
                     random_edits, table, weights_for)

ROOT = Path(__file__).resolve().parent.parent
SERVER_LOG = ROOT / "runs" / "soak-server.log"  # one JSON line per request: evidence, not a result to commit
RSS_GROWTH_LIMIT = 0.10
LSB = 1 / 32768  # 16-bit PCM step: batched vs. alone may differ by float rounding, not more
MATCH_TOLERANCE = 4 * LSB


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its descendants (Linux /proc), so worker processes count too."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def test_mel(audio: str | None, seconds: float) -> np.ndarray:
    """Log-mel of a real clip (cut to `seconds`) or of a synthetic voiced signal when none is given."""
    n = int(seconds * SAMPLE_RATE)
    if audio:
        wav = load_audio(audio)[:n]
    else:
        t = np.arange(n) / SAMPLE_RATE
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        wav = sum(0.3 / k * np.sin(k * phase) for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        wav = (wav + 0.003 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    return mel_spectrogram(wav).numpy()


def check_answer(res: dict, frames: int, reference: np.ndarray | None = None) -> str | None:
    """None when `res` is a correct answer: 200 with the right audio, or an overload reply with Retry-After."""
    if res["status"] in (429, 503):
        return None if res["retry_after"] else f"{res['status']} without Retry-After"
    if res["status"] != 200:
        return f"status {res['status']}: {res.get('error')}"
    if res["error"]:
        return res["error"]
    if res.get("sample_rate") != SAMPLE_RATE:
        return f"sample rate {res.get('sample_rate')}"
    audio = res["audio"]
    if audio.ndim != 1 or audio.shape[0] != frames * HOP:
        return f"audio shape {audio.shape}, expected ({frames * HOP},)"
    if not np.all(np.isfinite(audio)):
        return "non-finite samples"
    if reference is not None and np.max(np.abs(audio - reference)) > MATCH_TOLERANCE:
        return f"seeded audio differs from its reference by {np.max(np.abs(audio - reference)) / LSB:.0f} LSB"
    return None


def fuzz_request(i: int, mel: np.ndarray) -> tuple[str, bytes, str, bool]:
    """(path, body, content type, valid) of mixed request i: a valid mel, or a .npy, JSON or WAV body with
    random byte edits (the decoders' inputs, headers included)."""
    rng = np.random.default_rng(i)
    npy = npy_bytes(mel)
    kind = i % 4
    if kind == 0:
        return "/v1/vocode", npy, "application/x-npy", True
    if kind == 1:
        return "/v1/vocode", mutate(npy, random_edits(rng)), "application/x-npy", False
    if kind == 2:
        doc = json.dumps({"mel": mel[:, :4].round(2).tolist(), "seed": i}).encode()
        return "/v1/vocode", mutate(doc, random_edits(rng), head=len(doc)), "application/json", False
    wav = encode_audio(0.1 * np.sin(np.arange(4096, dtype=np.float32) / 9), SAMPLE_RATE)
    return "/v1/mel", mutate(wav, random_edits(rng), head=44), "audio/wav", False


def audio_seconds(results: list[dict]) -> float:
    return sum(r["audio"].shape[0] / SAMPLE_RATE for r in results if r["status"] == 200 and r["audio"] is not None)


@dataclass
class Load:
    """What the phases share: the server, the load client, and the request they repeat (a seeded mel)."""

    args: argparse.Namespace
    server: Server
    client: Client
    mel: np.ndarray
    base: dict  # the rho of capacity, burst and memory's floods

    @property
    def frames(self) -> int:
        return self.mel.shape[-1]

    @property
    def body(self) -> bytes:
        return npy_bytes(self.mel)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.server.proc.pid)


def capacity(load: Load) -> tuple[dict, dict[str, bool]]:
    """1. A few closed-loop clients: the server's capacity in requests and audio seconds per second."""
    args, body, t0 = load.args, load.body, time.monotonic()
    cap = closed_loop(load.client, args.clients, args.capacity_seconds,
                      lambda i: (body, {**load.base, "seed": i}, "application/x-npy", {}))
    wall = time.monotonic() - t0
    ok = [r for r in cap if r["status"] == 200]
    return ({"clients": args.clients, "seconds": round(wall, 2), "requests": len(cap), "ok": len(ok),
             "audio_s_per_s": round(audio_seconds(cap) / wall, 3), "requests_per_s": round(len(ok) / wall, 3),
             "p50_latency_s": percentile([r["latency"] for r in ok], 50)},
            {"capacity_measured": bool(ok) and all(check_answer(r, load.frames) is None for r in cap)})


def burst(load: Load, capacity_rps: float) -> tuple[dict, dict[str, bool]]:
    """2. 4x capacity, all at once; seeded replies checked against the same seed vocoded alone."""
    args, client, body = load.args, load.client, load.body
    seeds = list(range(args.reference_seeds))
    refs = {s: client.vocode(body, {**load.base, "seed": s}) for s in seeds}
    crit = {"references_ok": all(check_answer(r, load.frames) is None and r["status"] == 200 for r in refs.values())}
    n_burst = min(args.max_burst, max(args.min_burst, math.ceil(4 * capacity_rps * args.burst_seconds)))
    start = threading.Barrier(n_burst)

    def one(i: int) -> dict:
        start.wait()
        res = client.vocode(body, {**load.base, "seed": seeds[i % len(seeds)]})
        res["problem"] = check_answer(res, load.frames, refs[seeds[i % len(seeds)]]["audio"])
        return res

    t0 = time.monotonic()
    with ThreadPoolExecutor(n_burst) as pool:
        answers = list(pool.map(one, range(n_burst)))
    admitted = [r["latency"] for r in answers if r["status"] == 200]
    problems = sorted({r["problem"] for r in answers if r["problem"]})
    crit.update(burst_every_request_answered=all(r["status"] is not None for r in answers),
                burst_answers_correct=not problems and bool(admitted))
    return ({"requests": n_burst, "wall_s": round(time.monotonic() - t0, 2), "status_counts": status_counts(answers),
             "admitted": len(admitted), "overload_exercised": len(admitted) < n_burst,
             "p50_latency_s": percentile(admitted, 50), "p99_latency_s": percentile(admitted, 99),
             "max_latency_s": max(admitted, default=None), "problems": problems[:10]}, crit)


def memory(load: Load) -> tuple[dict, dict[str, bool]]:
    """3. RSS after a warm-up, then after mixed fuzz and valid requests with bursts between them."""
    args, client, body, small = load.args, load.client, load.body, load.mel[:, :16]

    def mixed(first: int, count: int) -> list[dict]:
        def one(i: int) -> dict:
            path, data, ctype, valid = fuzz_request(i, small)
            res = client.vocode(data, {"seed": i} if valid else {}, ctype, path)
            res["problem"] = (check_answer(res, small.shape[-1]) if valid else
                              None if res["status"] and res["status"] < 500 else f"fuzz answered {res['status']}")
            return res
        with ThreadPoolExecutor(args.clients) as pool:
            return list(pool.map(one, range(first, first + count)))

    def flood() -> list[dict]:
        with ThreadPoolExecutor(args.burst_size) as pool:
            return list(pool.map(lambda i: client.vocode(body, {**load.base, "seed": i}), range(args.burst_size)))

    def rss_mib() -> float:
        return round(load.rss_bytes() / 2**20, 1)

    t0 = time.monotonic()
    report = {"rss_mib": [("start", rss_mib())]}
    sent = mixed(0, args.warmup_requests) + flood()
    report["rss_mib"].append(("after warm-up", rss_mib()))
    per_part = math.ceil(args.fuzz_requests / max(args.bursts, 1))
    for part in range(max(args.bursts, 1)):
        count = min(per_part, args.fuzz_requests - part * per_part)
        sent += mixed(args.warmup_requests + part * per_part, count)
        if part < args.bursts:
            sent += flood()
        report["rss_mib"].append((f"after {part * per_part + count} requests and burst {part + 1}", rss_mib()))
    warm, end = report["rss_mib"][1][1], report["rss_mib"][-1][1]
    problems = sorted({r["problem"] for r in sent if r.get("problem")}
                      | {f"burst answered {r['status']}" for r in sent if "problem" not in r
                         and check_answer(r, load.frames) is not None})
    report.update(requests=len(sent), minutes=round((time.monotonic() - t0) / 60, 2),
                  status_counts=status_counts(sent), growth_after_warmup=round(end / warm - 1, 4),
                  problems=problems[:10])
    return report, {"memory_no_server_errors": not problems,
                    "memory_rss_growth_within_10pct": end / warm - 1 <= RSS_GROWTH_LIMIT}


def varied_requests(load: Load, rhos: list[str]):
    """make(i) of the soak: lengths, rhos, formats and the JSON form in turn, and a bad request now and then."""
    mel, base, frames = load.mel, load.base, load.frames
    presets, lengths = [None, *rhos], [max(1, frames // 4), frames // 2, frames]

    def varied(i: int) -> tuple:
        kind = i % 10
        if kind == 9:  # a bad request now and then: must be a 4xx, never a 5xx, and must not leak
            return b"\x93NUMPY garbage", base, "application/x-npy", {"expect": "4xx"}
        m = mel[:, :lengths[i % len(lengths)]]
        params = {"seed": i, "format": "flac" if kind == 3 else "wav"}
        if presets[i % len(presets)]:
            params["rho"] = presets[i % len(presets)]
        elif base:
            params.update(base)
        meta = {"expect": "ok", "frames": m.shape[-1]}
        if kind == 6:  # the JSON form of the same request
            return json.dumps({"mel": m.tolist(), "seed": params.pop("seed")}), params, "application/json", meta
        return npy_bytes(m), params, "application/x-npy", meta

    return varied


def sustained(load: Load) -> tuple[dict, dict[str, bool]]:
    """4. Varied requests for --minutes, RSS sampled at 1 min and at the end; rhos the weights cannot serve skipped."""
    args, client = load.args, load.client
    usable = [rho for rho in args.soak_rho if client.vocode(npy_bytes(load.mel[:, :8]), {"rho": rho})["status"] == 200]
    soak_s = args.minutes * 60
    sample_at = min(60.0, soak_s / 2)
    rss: list[tuple[float, int]] = []
    t0 = time.monotonic()
    sampler_stop = threading.Event()

    def sample() -> None:
        rss.append((round(time.monotonic() - t0, 1), load.rss_bytes()))
        if not sampler_stop.wait(sample_at):
            rss.append((round(time.monotonic() - t0, 1), load.rss_bytes()))
            while not sampler_stop.wait(30):
                rss.append((round(time.monotonic() - t0, 1), load.rss_bytes()))

    sampler = threading.Thread(target=sample)
    sampler.start()
    soak = closed_loop(client, args.clients, soak_s, varied_requests(load, usable))
    rss.append((round(time.monotonic() - t0, 1), load.rss_bytes()))
    sampler_stop.set()
    sampler.join()
    wall = time.monotonic() - t0
    bad = [r for r in soak if r["expect"] == "4xx" and not (r["status"] and 400 <= r["status"] < 500)]
    wrong = [p for r in soak if r["expect"] == "ok" and (p := check_answer(r, r["frames"]))]
    at_1min = next((b for t, b in rss if t >= sample_at), rss[-1][1])
    growth = rss[-1][1] / at_1min - 1
    ok = [r["latency"] for r in soak if r["status"] == 200]
    report = {"minutes": round(wall / 60, 2), "requests": len(soak), "ok": len(ok),
              "overloaded": sum(r["status"] in (429, 503) for r in soak),
              "audio_s_per_s": round(audio_seconds(soak) / wall, 3),
              "p50_latency_s": percentile(ok, 50), "p99_latency_s": percentile(ok, 99),
              "rss_mib": [(t, round(b / 2**20, 1)) for t, b in rss],
              "rss_start_mib": round(at_1min / 2**20, 1), "rss_end_mib": round(rss[-1][1] / 2**20, 1),
              "refused": sum(r["expect"] == "4xx" and 400 <= (r["status"] or 0) < 500 for r in soak),
              "rss_at_first_sample_s": sample_at, "rss_growth": round(growth, 4),
              "problems": sorted(set(wrong))[:10] + [f"bad input answered {r['status']}" for r in bad[:5]],
              "rhos": {"used": usable, "skipped": [r for r in args.soak_rho if r not in usable]}}
    return report, {"soak_answers_correct": not wrong and not bad and bool(ok),
                    "soak_rss_growth_within_10pct": growth <= RSS_GROWTH_LIMIT,
                    "soak_ran_full_length": wall >= 0.95 * soak_s}  # not cut short by --max-requests


def status_counts(results: list[dict]) -> dict[str, int]:
    return {str(k): sum(r["status"] == k for r in results) for k in sorted({r["status"] for r in results}, key=str)}


def run(args: argparse.Namespace) -> dict:
    """The four phases on one server, which must then exit 0 on SIGTERM."""
    mel = test_mel(args.audio, args.seconds)
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    server = Server(args.weights, SERVER_LOG, ready_timeout=args.ready_timeout)
    client = Client(server.url, args.max_requests, connections=max(args.max_burst, args.clients),
                    timeout=args.request_timeout)
    load = Load(args, server, client, mel, {"rho": args.rho} if args.rho else {})
    report: dict = {"header": header("bench.soak", weights_for(args.weights and Path(args.weights))[0]),
                    "server_command": " ".join(["python", *server.cmd[1:]]), "mel_frames": load.frames,
                    "min_burst": args.min_burst, "burst_size": args.burst_size, "criteria": {}}
    crit = report["criteria"]
    try:
        report["capacity"], more = capacity(load)
        crit.update(more)
        report["burst"], more = burst(load, report["capacity"]["requests_per_s"])
        crit.update(more)
        report["memory"], more = memory(load)
        crit.update(more)
        report["soak"], more = sustained(load)
        crit.update(more)
        report["soak_rhos"] = report["soak"].pop("rhos")
        report["requests_sent"] = client.sent
    finally:
        client.close()
        code = server.stop()
    report["server_exit_code"] = code
    crit["server_exits_0_on_sigterm"] = code == 0
    report["passed"] = all(crit.values())
    return report


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    c, b, s = report.get("capacity", {}), report.get("burst", {}), report.get("soak", {})
    seconds = report["mel_frames"] * HOP / SAMPLE_RATE
    rows = [
        ["capacity", f"{c.get('clients')} closed-loop clients for {fmt(c.get('seconds'))} s: "
         f"{fmt(c.get('audio_s_per_s'))} audio s/s, {fmt(c.get('requests_per_s'))} req/s, "
         f"p50 latency {fmt(c.get('p50_latency_s'))} s"],
        ["burst", f"{b.get('requests')} requests at once (4x capacity, at least {report['min_burst']}): "
         f"statuses {b.get('status_counts')}; admitted p50 {fmt(b.get('p50_latency_s'))} s, "
         f"p99 {fmt(b.get('p99_latency_s'))} s"],
        ["soak", f"{fmt(s.get('minutes'))} min, {s.get('requests')} requests ({s.get('ok')} ok, "
         f"{s.get('overloaded')} overloaded, {s.get('refused')} bad inputs refused): {fmt(s.get('audio_s_per_s'))} "
         f"audio s/s, p99 {fmt(s.get('p99_latency_s'))} s; RSS {fmt(s.get('rss_start_mib'))} MiB at "
         f"{fmt(s.get('rss_at_first_sample_s'))} s, {fmt(s.get('rss_end_mib'))} MiB at the end "
         f"({100 * s.get('rss_growth', 0):+.1f}%)"],
    ]
    m = report.get("memory")
    if m:
        rows.insert(2, ["memory", f"{m['requests']} requests in {fmt(m['minutes'])} min (mixed fuzz and valid, "
                        f"bursts of {report['burst_size']}; statuses {m['status_counts']}): RSS "
                        + ", ".join(f"{v} MiB {k}" for k, v in m["rss_mib"])
                        + f" ({100 * m['growth_after_warmup']:+.1f}% after warm-up)"])
    body = [
        f"Server: `{report['server_command']}` on loopback; each request vocodes a {report['mel_frames']}-frame mel "
        f"({seconds:.2f} s of audio). Soak rhos: {report.get('soak_rhos')}.", "",
        table(["phase", "result"], rows), "",
        table(["criterion", "result"], [[k.replace("_", " "), "PASS" if v else "FAIL"]
                                        for k, v in report["criteria"].items()]), "",
        f"**Overall: {'PASS' if report['passed'] else 'FAIL'}**",
    ]
    problems = b.get("problems", []) + (m or {}).get("problems", []) + s.get("problems", [])
    if problems:
        body += ["", "Problems seen:", *[f"- {p}" for p in problems]]
    (out / "soak.md").write_text(f"# Soak test\n\n{header_markdown(report['header'])}\n\n" + "\n".join(body) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", help="weights directory (default: the server's pick for this host's device)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the sustained soak")
    p.add_argument("--clients", type=int, default=3, help="closed-loop clients for capacity and soak")
    p.add_argument("--seconds", type=float, default=1.0, help="audio seconds per request")
    p.add_argument("--audio", help="clip whose mel is vocoded (default: a synthetic voiced signal)")
    p.add_argument("--rho", help="rho or preset for capacity and burst (default: the server's)")
    p.add_argument("--soak-rho", nargs="*", default=["fast", "quality", "0.3", "0.05"],
                   help="rhos mixed into the soak (exercise the schedule cache)")
    p.add_argument("--capacity-seconds", type=float, default=30.0)
    p.add_argument("--burst-seconds", type=float, default=10.0, help="burst = 4 x capacity req/s x this, at once")
    p.add_argument("--min-burst", type=int, default=48,
                   help="at least this many (the default server admits 8 running + 32 queued, so 48 overloads it)")
    p.add_argument("--max-burst", type=int, default=256)
    p.add_argument("--reference-seeds", type=int, default=4)
    p.add_argument("--warmup-requests", type=int, default=200, help="memory phase: mixed requests before the baseline")
    p.add_argument("--fuzz-requests", type=int, default=2000, help="memory phase: mixed fuzz and valid requests")
    p.add_argument("--bursts", type=int, default=3, help="memory phase: bursts between the mixed requests")
    p.add_argument("--burst-size", type=int, default=64)
    p.add_argument("--max-requests", type=int, default=20000, help="hard cap on requests sent")
    p.add_argument("--request-timeout", type=float, default=600.0, help="client side; the server's is 300 s")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    report = run(args)
    write(report, args.out)
    print((args.out / "soak.md").read_text())
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
