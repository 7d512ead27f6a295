"""What both benchmarks share: the report header, the clips they run on, one table writer, the output files.

Every report starts with the same header (hardware, date, git revision, weights, exact command) so a
number can always be traced back to the machine, code and checkpoint that produced it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from model.audio import list_audio, load_audio, read_id_list
from model.checkpoint import SCORE_NET, git_revision, read_config
from model.runtime import default_weights, resolve_device

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("../shared/data/ljspeech")
DEFAULT_OUT = Path("bench/results")
DEFAULT_REFERENCE = Path("../shared/data/reference-schedules")
OFFICIAL = "bddm-official-ljspeech-{}steps.json"


def parse_with_quick(ap: argparse.ArgumentParser, argv: list[str] | None, quick: dict) -> argparse.Namespace:
    """Parse; with --quick, `quick` replaces the defaults (explicit flags still win)."""
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**quick)
        args = ap.parse_args(argv)
    return args


def base_parser(prog: str, doc: str, several: bool = False) -> argparse.ArgumentParser:
    """The options every model benchmark takes; `several` lets --weights repeat, to compare nets side by side."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, action="append" if several else "store",
                    help="weights directory" + ("; repeat it to compare nets side by side" if several else "")
                    + " (default: the device's net, weights/base on CUDA, weights/small on a CPU)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LJ Speech dir with wavs/ and valid.txt")
    ap.add_argument("--quick", action="store_true", help="a small smoke run (minutes on a CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                    help="inference precision (auto: bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap


def weights_for(weights: Path | list[Path] | None, device: str = "auto") -> list[Path]:
    """The --weights given, else the net the server would pick on `device` (`model.runtime.default_weights`)."""
    if weights:
        return list(weights) if isinstance(weights, list) else [weights]
    return [default_weights(resolve_device("auto" if device == "all" else device))[0]]


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(threads)


def nets_of(module: str, args: argparse.Namespace) -> tuple[list[Path], dict]:
    """A benchmark's start: its threads set, the nets it runs (`weights_for`) and its report's header."""
    apply_threads(args.threads)
    nets = weights_for(args.weights, args.device)
    return nets, header(module, nets)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def weights_info(directory: Path) -> dict:
    """Weights id (directory name + score-net hash prefix) and training steps from its config."""
    config = read_config(directory)
    digest = hashlib.sha256((directory / SCORE_NET).read_bytes()).hexdigest()[:12]
    training = config.get("training") or {}
    return {"dir": str(directory), "id": f"{directory.name}@{digest}", "score_net": config.get("score_net"),
            "score_steps": (training.get("score") or {}).get("steps"),
            "schedule_steps": (training.get("schedule") or {}).get("steps"),
            "has_schedule_net": bool(config.get("schedule_net")),
            "presets": (config.get("search") or {}).get("presets")}


def dirty_mark() -> str:
    """'+changes' when tracked code differs from the commit, so a report never claims a revision it did not run
    (weights/ is left out: the weights id names those)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!weights"],
                             capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return "+changes" if out.strip() else ""


def header(module: str, weights: Path | Sequence[Path]) -> dict:
    """Everything needed to reproduce a run: machine, time, code, weights (one net or several side by side) and the
    exact command."""
    nets = [weights] if isinstance(weights, Path) else list(weights)
    return {"hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "gpu": gpu_name(), "torch": torch.__version__, "python": platform.python_version()},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_revision": git_revision() + dirty_mark(),
            "weights": [weights_info(w) for w in nets],
            "command": " ".join(["python -m", module, *map(shlex.quote, sys.argv[1:])])}


def architecture(params: dict | None) -> str:
    if not params:
        return "unknown"
    return (f"{params['residual_channels']} channels x {params['residual_layers']} layers, "
            f"dilation cycle {params['dilation_cycle']}")


def weights_markdown(w: dict) -> str:
    steps = (f"score net {w['score_steps']} training steps" if w["score_steps"] is not None
             else "score-net training not recorded")
    if w["schedule_steps"] is not None:
        steps += f", schedule net {w['schedule_steps']} steps"
    return f"`{w['id']}` ({w['dir']}; {steps}; score net {architecture(w['score_net'])})"


def header_markdown(h: dict) -> str:
    hw, nets = h["hardware"], h["weights"] if isinstance(h["weights"], list) else [h["weights"]]
    gpu = f"; GPU {hw['gpu']}" if hw["gpu"] else "; no GPU"
    return "\n".join([
        f"- Hardware: {hw['cpu']}, {hw['cores']} cores ({hw['torch_threads']} torch threads){gpu}; "
        f"torch {hw['torch']}, Python {hw['python']}",
        f"- Date: {h['date']}; git revision `{h['git_revision']}`",
        *(f"- Weights: {weights_markdown(w)}" for w in nets),
        f"- Command: `{h['command']}`",
    ])


def fmt(value) -> str:
    """About four significant digits, never scientific notation for ordinary magnitudes."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if not isinstance(value, float):
        return str(value)
    size = abs(value)
    if size != 0 and (size >= 1e5 or size < 1e-3):
        return f"{value:.3g}"
    return f"{value:.{min(3, max(0, 3 - math.floor(math.log10(size)))) if size else 0}f}"


def table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The one Markdown table writer; cells are formatted by `fmt` unless already strings."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log_axes(ax, xticks: Sequence[float], log_y: bool = True) -> None:
    """Log-scaled axes labelled with plain numbers (x ticks exactly at the measured points)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: PLC0415

    ax.set_xscale("log")
    ax.set_xticks(list(xticks), [f"{t:g}" for t in xticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)


def write_outputs(out: Path, name: str, title: str, head: dict, body: str, data: dict, plot=None, *plot_args) -> None:
    """`<name>.md` (header + body), `<name>.json` (header + raw numbers) and `<name>.png` from `plot(*plot_args)`;
    the PNG is left out where matplotlib is not installed (the bare GPU image of scripts/gpu-train.sh)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(f"# {title}\n\n{header_markdown(head)}\n\n{body.strip()}\n")
    (out / f"{name}.json").write_text(json.dumps({"header": head, **data}, indent=1, default=_json_default))
    if plot is None:
        return
    try:
        figure = plot(*plot_args)
    except ImportError as e:
        print(f"no {name}.png: {e}", file=sys.stderr)
        return
    figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


@dataclass(frozen=True)
class Clip:
    id: str
    audio: np.ndarray  # float32 mono
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


#: valid.txt's first clips: the search scored its candidates on them and the trainer's probe watches them, so a
#: method is tuned on them (`bench.refine`) and accepted on the rest (`bench.quality --skip`).
TUNING_CLIPS = 8


def validation_clips(data: Path, count: int | None = None, seconds: float | None = None,
                     sample_rate: int = 22050, skip: int = 0) -> list[Clip]:
    """The held-out recordings (valid.txt) after the first `skip`, optionally `count` of them, each cropped to
    `seconds`."""
    ids = read_id_list(data / "valid.txt")[skip:][:count]
    paths = {p.stem: p for p in list_audio(data / "wavs", ids)}
    missing = [i for i in ids if i not in paths]
    if missing:
        raise SystemExit(f"{data}: missing validation audio for {', '.join(missing[:3])}")
    crop = None if seconds is None else int(seconds * sample_rate)
    return [Clip(i, load_audio(paths[i], sample_rate)[:crop], sample_rate) for i in ids]


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """(fn(...), wall seconds), synchronising CUDA so GPU time is not under-counted."""
    sync()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    sync()
    return result, time.perf_counter() - t0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_port() -> int:
    """A free TCP port on the loopback interface, for a server started by a benchmark or a test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float, poll: float = 0.2) -> None:
    """Poll `url`/readyz until it answers 200; RuntimeError if the process exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"server not ready after {timeout:.0f} s")


class Server:
    """`python -m server` on a free loopback port, as a child process that is ready (/readyz 200) once constructed;
    `stop()` sends SIGTERM and returns its exit code. Also a context manager."""

    def __init__(self, weights: str | Path | None, log: Path, env: dict[str, str] | None = None,
                 ready_timeout: float = 300.0, poll: float = 0.5) -> None:
        port = free_port()
        self.cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                    *(["--weights", str(Path(weights).resolve())] if weights else [])]
        self.url, self.log = f"http://127.0.0.1:{port}", log.open("wb")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.proc, self.url, ready_timeout, poll)
        except RuntimeError as e:
            self.stop()
            raise SystemExit(f"{e}:\n{log.read_text()[-2000:]}") from None

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *_) -> None:
        self.stop()


class Client:
    """The load client: one httpx connection pool shared by threads, and a budget of requests (`take`)."""

    def __init__(self, url: str, max_requests: int, connections: int, timeout: float) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.Client(base_url=url, timeout=timeout, limits=limits)
        self.budget, self.lock = max_requests, threading.Lock()
        self.sent = 0

    def take(self) -> bool:
        with self.lock:
            if self.sent >= self.budget:
                return False
            self.sent += 1
            return True

    def vocode(self, body: bytes, params: dict, content_type: str = "application/x-npy",
               path: str = "/v1/vocode") -> dict:
        """One request -> {status (None: no answer), latency, retry_after, batch, audio (float32 or None), error}."""
        t0 = time.perf_counter()
        try:
            r = self.http.post(path, content=body, params=params, headers={"Content-Type": content_type})
        except httpx.HTTPError as e:
            return {"status": None, "latency": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"}
        out = {"status": r.status_code, "latency": time.perf_counter() - t0, "audio": None, "error": None,
               "retry_after": r.headers.get("retry-after"), "batch": int(r.headers.get("x-batch-size", 0))}
        if r.status_code == 200 and path == "/v1/vocode":
            try:
                out["audio"], out["sample_rate"] = sf.read(io.BytesIO(r.content), dtype="float32")
            except (sf.LibsndfileError, RuntimeError) as e:
                out["error"] = f"unparseable audio: {e}"
        elif r.status_code >= 400:
            try:
                if not r.json():
                    out["error"] = "empty JSON error body"
            except ValueError:
                out["error"] = f"non-JSON error body {r.text[:80]!r}"
        return out

    def close(self) -> None:
        self.http.close()


def closed_loop(client: Client, n_clients: int, seconds: float, make: Callable[[int], tuple],
                backoff_cap: float = 2.0) -> list[dict]:
    """`n_clients` threads each sending a request as soon as their last one answered, for `seconds` or until the
    client's budget is spent; `make(i)` is request i's (body, params, content type, fields added to its result).
    After a 429 or 503 a thread waits Retry-After seconds, at most `backoff_cap`."""
    stop, results, lock = time.monotonic() + seconds, [], threading.Lock()

    def worker(w: int) -> None:
        i = 0
        while time.monotonic() < stop and client.take():
            body, params, ctype, meta = make(w * 1_000_000 + i)
            res = client.vocode(body, params, ctype)
            res.update(meta, t=time.monotonic())
            with lock:
                results.append(res)
            i += 1
            if res["status"] in (429, 503):
                time.sleep(min(float(res["retry_after"] or 1), backoff_cap))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def npy_bytes(mel: np.ndarray) -> bytes:
    """A mel as the .npy body that /v1/vocode takes."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(mel, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def mutate(data: bytes, ops: Sequence[tuple[str, int, int, bool]], head: int = 128) -> bytes:
    """`data` with (kind, position, byte, in_head) edits: flip a bit, set, insert or delete a byte; an edit with
    in_head lands in the first `head` bytes (a file's header). The mutation fuzzers' one operator."""
    b = bytearray(data)
    for kind, pos, value, in_head in ops:
        span = min(head, len(b)) if in_head else len(b)
        if kind == "insert":
            b.insert(pos % (span + 1), value)
        elif span and kind == "flip":
            b[pos % span] ^= 1 << (value % 8)
        elif span and kind == "set":
            b[pos % span] = value
        elif span and kind == "delete":
            del b[pos % span]
    return bytes(b)


def random_edits(rng: np.random.Generator, most: int = 8) -> list[tuple[str, int, int, bool]]:
    """1..`most` random edits for `mutate`."""
    return [(str(rng.choice(["flip", "set", "insert", "delete"])), int(rng.integers(2**20)), int(rng.integers(256)),
             bool(rng.integers(2))) for _ in range(int(rng.integers(1, most + 1)))]

