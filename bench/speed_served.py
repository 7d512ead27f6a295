"""What a client meets (`bench.speed` (c), (d), `--served`): `python -m server` under a closed-loop load of real
validation mels with micro-batching on and off, the schedule cache's miss and hit, and each preset as served.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from model.runtime import CUDA_BATCH_WAIT_MS
from model.vocoder import Vocoder

from .common import Client, Server, closed_loop, fmt, npy_bytes, table, timed, validation_clips, write_outputs
from .speed_stream import stream_rows, stream_section
from .speed_synthesis import bench_schedules, mel_of, net_label, speech, synthesis_rows, synthesis_section


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


def load_row(client: Client, bodies: list[tuple[bytes, float]], rho: str, clients: int, max_seconds: float) -> dict:
    """`clients` closed-loop clients (`common.closed_loop`) for `max_seconds` or the client's budget: throughput,
    latency percentiles, 429s and the server's batch sizes. After a 429 a client waits Retry-After, at most 5 s."""
    def make(i: int) -> tuple:
        body, seconds = bodies[i % len(bodies)]
        return body, {"rho": rho}, "application/x-npy", {"seconds": seconds}

    start = time.perf_counter()
    done = closed_loop(client, clients, max_seconds, make, backoff_cap=5.0)
    wall = time.perf_counter() - start
    ok = [d for d in done if d["status"] == 200]
    lat = np.array([d["latency"] for d in ok]) if ok else np.array([np.nan])
    return {"clients": clients, "requests": client.sent, "ok": len(ok),
            "rejected_429": sum(d["status"] == 429 for d in done),
            "errors": sum(d["status"] not in (200, 429) for d in done), "unfinished": client.sent - len(done),
            "wall_s": wall, "throughput": sum(d["seconds"] for d in ok) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "p99_s": float(np.percentile(lat, 99)),
            "mean_batch": float(np.mean([d["batch"] for d in ok])) if ok else float("nan")}


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
        with Server(weights, log_dir / f"server-batching-{mode}.log", env) as server:
            url = server.url
            device = httpx.get(f"{url}/v1/model", timeout=30).json()["device"]
            if schedules is None:
                schedules = schedule_latency(url, new_rhos(voc, 1 if args.quick else 3), 3 if args.quick else 10)
            for clients in args.clients:
                requests = max(args.requests, args.per_client * clients)
                client = Client(url, requests, clients, timeout=2 * args.load_seconds + 60)
                try:
                    result = load_row(client, bodies, args.rho, clients, args.load_seconds)
                finally:
                    client.close()
                rows.append({"batching": mode, **result})
                print(f"load batching={mode} clients={clients}: {fmt(result['throughput'])} audio s/s, "
                      f"p50 {fmt(result['p50_s'])} s, 429s {result['rejected_429']}", file=sys.stderr)
    return rows, schedules, device


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
            with Server(weights, Path(tmp) / "server-stream.log") as server:
                audio = speech(args.data, max(args.stream_lengths), voc.spec.sample_rate)
                presets = sorted(voc.presets, key=lambda n: voc.presets[n].rho, reverse=True)
                streamed = stream_rows(server.url, voc, audio, args.stream_lengths, presets)
    rho = f"{args.rho} ({voc.presets[args.rho].rho:g})" if args.rho in voc.presets else args.rho
    return {"net": net_label(voc), "rho": rho, "device": device, "rows": rows, "stream": streamed}, sched, None


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


def schedule_section(sched: dict) -> list[str]:
    return ["## Schedule for a new rho", "",
            "GET /v1/schedules?rho=... on a fresh server: the first call runs the schedule network (cache miss); "
            "later calls hit the cache (median). A GET /healthz round trip for comparison: "
            f"{1e3 * sched['healthz_s']:.1f} ms.", "",
            table(["rho", "Steps", "Miss ms", "Hit ms", "Miss reported uncached", "Hits reported cached"],
                  [[r["rho"], r["steps"], 1e3 * r["miss_s"], 1e3 * r["hit_s"], str(not r["first_cached"]),
                    str(r["hits_cached"])] for r in sched["rows"]])]


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
