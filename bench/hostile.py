"""Hostile and heavy input against a real server (issue 34), each measured beside a baseline checkout in one run.

    python -m bench.hostile --weights weights/small [--baseline /path/to/an/older/checkout] [--phase body ...]

Phases (each on a fresh `python -m server` on 127.0.0.1, started from this checkout and from --baseline):
  body:  one 32 MiB JSON body (80 rows of zeros, more frames than VOCODER_MAX_FRAMES) sent chunked to /v1/vocode and
         to v2's infer: its status and time, the server's peak RSS growth (VmHWM after /proc/PID/clear_refs), and the
         slowest /healthz answer meanwhile; then four maximal valid JSON bodies (a mel of VOCODER_MAX_FRAMES frames,
         indented) at once, each refused after its parse by an unknown preset (so no synthesis follows): the slowest
         /healthz and /readyz meanwhile, and for a control over 3 s before with nothing else to do.
  rho:   a default 1 s request alone (twice), then 12 requests for 12 new rho values (1 s mels) at once and, 0.3 s
         later, the default 1 s request again: its time, and the new-rho requests' statuses and Retry-After.
  cancel: a default 1 s request alone (twice), then a 20 s request at the quality preset whose client leaves after
         0.3 s and at once the default 1 s request again: its time, and the engine's cancellation metrics.
Prints one JSON line per phase and server, with `uptime` (the machine is shared: compare within one run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from .common import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


@contextmanager
def server(repo: Path, weights: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`python -m server` from `repo` (its own code) on a free port: yields (url, pid); SIGTERM on exit."""
    port = free_port()
    log = open(ROOT / "runs" / f"hostile-{repo.name}-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--weights", str(weights.resolve()), "--port", str(port)],
                            cwd=repo, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, 300)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Probe:
    """GETs `paths` in turn every 20 ms from a thread and keeps the slowest answer of each, in ms."""

    def __init__(self, url: str, paths: tuple[str, ...] = ("/healthz",)) -> None:
        self.url, self.paths = url, paths
        self.slowest = {p: 0.0 for p in paths}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                for path in self.paths:
                    start = time.perf_counter()
                    c.get(path)
                    self.slowest[path] = max(self.slowest[path], 1000 * (time.perf_counter() - start))
                time.sleep(0.02)

    def __enter__(self) -> Probe:
        self.thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join()


def chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), CHUNK):
        yield body[i:i + CHUNK]


def zeros_body(target: str, size: int = 32 * 2**20 - 4096) -> bytes:
    """~`size` bytes of JSON (just under the default VOCODER_MAX_BODY_BYTES): 80 rows of zeros, for /v1 or v2."""
    row = "[" + ",".join(["0"] * (size // 160)) + "]"
    mel = "[" + ",".join([row] * 80) + "]"
    if target == "v1":
        return ('{"mel": ' + mel + "}").encode()
    return ('{"inputs": [{"name": "mel", "shape": [1, 80, %d], "datatype": "FP32", "data": [%s]}]}'
            % (size // 160, mel)).encode()


def concurrently(fns: list[Callable[[], object]]) -> list:
    out: list = [None] * len(fns)

    def run(i: int) -> None:
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def phase_body(url: str, pid: int, max_frames: int) -> dict:
    model = httpx.get(f"{url}/v2").json()["models"][0]
    out: dict = {}
    for target, path in (("v1", "/v1/vocode"), ("v2", f"/v2/models/{model}/infer")):
        body = zeros_body(target)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = rss_kb(pid, "VmRSS")
        with Probe(url) as probe:
            start = time.perf_counter()
            r = httpx.post(f"{url}{path}", content=chunks(body), headers={"Content-Type": "application/json"},
                           timeout=120)
            seconds = time.perf_counter() - start
        out[target] = {"status": r.status_code, "seconds": round(seconds, 3), "body_mib": len(body) / 2**20,
                       "peak_rss_growth_mb": round((rss_kb(pid, "VmHWM") - before) / 1024, 1),
                       "healthz_slowest_ms": round(probe.slowest["/healthz"], 1)}
    mel = np.random.default_rng(0).normal(-5, 2, (80, max_frames)).astype(np.float32)
    body = json.dumps({"mel": mel.tolist()}, indent=1).encode()
    send = lambda: httpx.post(f"{url}/v1/vocode", params={"rho": "no-such-preset"}, content=body,  # noqa: E731
                              headers={"Content-Type": "application/json"}, timeout=120)
    with Probe(url, ("/healthz", "/readyz")) as idle:  # the control: the same probes with nothing else to do
        time.sleep(3)
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = rss_kb(pid, "VmRSS")
    with Probe(url, ("/healthz", "/readyz")) as probe:
        start = time.perf_counter()
        statuses = [r.status_code for r in concurrently([send] * 4)]
        seconds = time.perf_counter() - start
    out["four_maximal"] = {"statuses": statuses, "seconds": round(seconds, 3), "body_mib": round(len(body) / 2**20, 1),
                           "peak_rss_growth_mb": round((rss_kb(pid, "VmHWM") - before) / 1024, 1),
                           **{f"{p[1:]}_slowest_ms": round(v, 1) for p, v in probe.slowest.items()},
                           **{f"idle_{p[1:]}_slowest_ms": round(v, 1) for p, v in idle.slowest.items()}}
    return out


def post_mel(url: str, frames: int, **params) -> tuple[httpx.Response, float]:
    mel = np.random.default_rng(frames).normal(-5, 2, (80, frames)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, mel, allow_pickle=False)
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/vocode", params=params, content=buf.getvalue(),
                   headers={"Content-Type": "application/x-npy"}, timeout=600)
    return r, time.perf_counter() - start


def phase_rho(url: str, pid: int, max_frames: int) -> dict:
    """12 requests for 12 new rho values (1 s mels) at once, and 0.3 s later a default 1 s request."""
    _, idle = post_mel(url, 86, seed=1)
    _, idle_again = post_mel(url, 86, seed=1)
    rhos = [round(0.021 + i / 1000, 3) for i in range(12)]  # distinct on any grid of 2 or more digits
    new: list = [None] * len(rhos)

    def send(i: int) -> None:
        new[i] = post_mel(url, 86, rho=rhos[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(rhos))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(0.3)
    r, default = post_mel(url, 86, seed=1)
    for t in threads:
        t.join()
    metrics = {line.split()[0]: float(line.split()[1]) for line in httpx.get(f"{url}/metrics").text.splitlines()
               if line.startswith(("vocoder_schedule_build", "vocoder_schedule_cache_misses_total"))}
    return {"default_status": r.status_code, "default_seconds": round(default, 3),
            "default_alone_seconds": [round(idle, 3), round(idle_again, 3)],
            "new_rho_statuses": [x[0].status_code for x in new],
            "new_rho_retry_after": [x[0].headers.get("retry-after") for x in new],
            "new_rho_seconds": [round(x[1], 2) for x in new], "all_done_seconds": round(time.perf_counter() - start, 2),
            "metrics": metrics}


def phase_cancel(url: str, pid: int, max_frames: int) -> dict:
    """A 20 s request on the net's quality preset (the longest work a client can ask for) whose client leaves after
    0.3 s, then at once a default 1 s request."""
    _, idle = post_mel(url, 86, seed=1)
    _, idle_again = post_mel(url, 86, seed=1)
    mel = np.random.default_rng(20).normal(-5, 2, (80, 1720)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, mel, allow_pickle=False)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/vocode?method=bddm&rho=quality&seed=1 HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: application/x-npy"
                     f"\r\nContent-Length: {len(buf.getvalue())}\r\n\r\n".encode() + buf.getvalue())
        time.sleep(0.3)
    r, after = post_mel(url, 86, seed=1)
    time.sleep(1)
    metrics = {line.split()[0]: float(line.split()[1]) for line in httpx.get(f"{url}/metrics").text.splitlines()
               if line.startswith(("vocoder_syntheses_cancelled_total", "vocoder_cancel_seconds_sum",
                                   "vocoder_cancel_seconds_count"))}
    return {"after_status": r.status_code, "after_seconds": round(after, 3),
            "alone_seconds": [round(idle, 3), round(idle_again, 3)], "metrics": metrics}


PHASES = {"body": phase_body, "cancel": phase_cancel, "rho": phase_rho}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights" / "small")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. a git worktree of main) run the same way")
    ap.add_argument("--phase", choices=sorted(PHASES), action="append")
    ap.add_argument("--max-frames", type=int, default=86 * 120)
    args = ap.parse_args(argv)
    (ROOT / "runs").mkdir(exist_ok=True)
    env = {"VOCODER_MAX_FRAMES": str(args.max_frames), "VOCODER_DEVICE": "cpu"}
    for name in args.phase or sorted(PHASES):
        for repo in [ROOT, *([args.baseline] if args.baseline else [])]:
            with server(repo, args.weights, env) as (url, pid):
                result = PHASES[name](url, pid, args.max_frames)
            load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            print(json.dumps({"phase": name, "checkout": str(repo), "uptime": load, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
