"""The built images under podman, run as users run them. `make image-test` (scripts/image-test.sh) builds the
server, trainer and Ray images and runs this file; anywhere else it is skipped.

The server image serves the host's bytes for a seed, non-root and read-only, passes its own HEALTHCHECK, drains on
SIGTERM within compose's grace period and refuses broken weights with one line; the trainer image's weights are served
by the server image; the Ray image runs the Serve config; docker-compose.yml's vocoder service comes up under
podman-compose behind its healthcheck."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.common import free_port, npy_bytes, wait_ready
from conftest import SHARED_DATA
from model.audio import HOP, N_MELS, read_id_list
from model.checkpoint import SCORE_NET
from model.plan import BDDM

ROOT = Path(__file__).resolve().parent.parent
SERVER, TRAINER, RAY = (os.environ.get(f"IMAGE_TEST_{name}") for name in ("SERVER", "TRAINER", "RAY"))
pytestmark = pytest.mark.skipif(not (SERVER and TRAINER and RAY), reason="run by `make image-test`, which builds "
                                                                          "the images first")
DATA = Path(os.environ.get("IMAGE_TEST_DATA", SHARED_DATA))
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GRACE_S = float(COMPOSE["services"]["vocoder"]["stop_grace_period"].removesuffix("s"))
NPY = {"Content-Type": "application/x-npy"}
EXAMPLE = np.load(ROOT / "server" / "static" / "examples" / "LJ003-0043.npy")  # a real mel, 4 s


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, f"podman {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def record(what: str, seconds: float) -> None:
    """A start time for the script's summary."""
    if path := os.environ.get("IMAGE_TEST_TIMINGS"):
        with open(path, "a") as f:
            f.write(f"{what:<44} {seconds:6.1f} s\n")


def readable(path: Path) -> Path:
    """Bind-mounted folders are read by the images' uid 10001."""
    for p in (path, *path.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


@contextmanager
def container(image: str, *args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    """`podman run -d`, removed afterwards whatever happens; its log is printed (pytest shows it on failure)."""
    name = f"image-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, *args, image, *command)
    try:
        yield name
    finally:
        logs = podman("logs", "--tail", "40", name, check=False)
        print(logs.stdout, logs.stderr)
        podman("rm", "-f", "-t", "0", name, check=False)


def wait_healthy(name: str, timeout: float = 240) -> None:
    """The image's own HEALTHCHECK (GET /readyz from inside), run until it passes: podman schedules it through
    systemd timers, which this host has not, so the test runs it."""
    deadline = time.monotonic() + timeout
    while podman("healthcheck", "run", name, check=False, timeout=30).returncode != 0:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", f"{name} is {state}: {podman('logs', name, check=False).stdout[-3000:]}"
        assert time.monotonic() < deadline, f"{name} never passed its healthcheck"
        time.sleep(1)
    assert podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() == "healthy"


@contextmanager
def serve(image: str, *args: str, label: str) -> Iterator[tuple[str, str]]:
    """The server image, published on a free local port; yields the URL once its healthcheck passes."""
    port = free_port()
    start = time.monotonic()
    with container(image, "-p", f"127.0.0.1:{port}:8000", "-e", "VOCODER_DEVICE=cpu", *args) as name:
        wait_healthy(name)
        record(label, time.monotonic() - start)
        yield name, f"http://127.0.0.1:{port}"


def scrape(url: str) -> dict[str, float]:
    """Requests in flight (this scrape among them), /v1/vocode answers, and jobs the inference worker has started."""
    samples = [s for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text)
               for s in family.samples]

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    return {"in_flight": total("vocoder_requests_in_flight"), "started": total("vocoder_queue_wait_seconds_count"),
            "answered": total("vocoder_request_duration_seconds_count", route="/v1/vocode")}


# Read-only root; the one tmpfs is all the server writes (temporary files, numba's cache).
READ_ONLY = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str]]:
    with serve(SERVER, *READ_ONLY, "-e", "VOCODER_THREADS=1", label="server (read-only, uid 10001)") as running:
        yield running


def test_server_image_runs_non_root_read_only_and_healthy(server):
    name, url = server
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
    denied = podman("exec", name, "touch", "/app/weights/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert httpx.get(url + "/readyz", timeout=10).status_code == 200


def test_server_image_answers_the_hosts_bytes(server):
    """The same weights (the shipped CPU net), seed and thread count: the image computes what the host computes."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOCODER_")}, "VOCODER_THREADS": "1"}
    host = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--device", "cpu"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(host, f"http://127.0.0.1:{port}", timeout=180)
        answers = []
        for url in (server[1], f"http://127.0.0.1:{port}"):
            assert httpx.get(url + "/v1/model", timeout=10).json()["weights"]
            r = httpx.post(url + "/v1/vocode", params={"seed": 7}, content=npy_bytes(EXAMPLE), headers=NPY,
                           timeout=120)
            assert r.status_code == 200, r.text
            answers.append(r.content)
        assert len(answers[0]) > EXAMPLE.shape[1] * HOP and answers[0] == answers[1]
    finally:
        host.terminate()
        host.communicate(timeout=60)


def test_server_image_drains_on_sigterm_within_the_grace_period():
    """`podman stop -t GRACE` is what compose does: SIGTERM, then SIGKILL after stop_grace_period."""
    # The net's path (projection alone answers in milliseconds), short (2 s of audio, the fast preset): still running
    # when SIGTERM lands, and all four finish inside the server's 30 s drain window even on a loaded 2-core host (past
    # it the server cancels what is left, which is not the drain this checks).
    requests, frames = 4, 172
    mel = np.random.default_rng(0).normal(-5, 2, (N_MELS, frames)).astype(np.float32)
    with serve(SERVER, *READ_ONLY, label="server (drain test)") as (name, url):
        answers: list[httpx.Response] = []

        def post(seed: int) -> None:
            answers.append(httpx.post(url + "/v1/vocode", params={"seed": seed, "rho": "fast", "method": BDDM},
                                      content=npy_bytes(mel), headers=NPY, timeout=GRACE_S + 60))

        threads = [threading.Thread(target=post, args=(i,)) for i in range(requests)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while True:  # every request accepted (in flight, the scrape itself aside, or answered) and one in inference
            metrics = scrape(url)
            if metrics["in_flight"] - 1 + metrics["answered"] >= requests and metrics["started"] >= 1:
                break
            assert time.monotonic() < deadline, "the requests never all reached the server"
            time.sleep(0.05)
        assert metrics["answered"] < requests, "all answered before SIGTERM: make the requests longer"
        start = time.monotonic()
        podman("stop", "-t", str(int(GRACE_S)), name, timeout=GRACE_S + 30)
        stopped = time.monotonic() - start
        for t in threads:
            t.join(60)
        assert [r.status_code for r in answers] == [200] * requests, (f"stopped in {stopped:.1f} s",
                                                                      [r.text[:200] for r in answers])
        assert all(len(r.content) > frames * HOP for r in answers)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        assert stopped < GRACE_S, f"took {stopped:.1f} s, compose would have killed it at {GRACE_S} s"
        logs = podman("logs", name)
        log = logs.stdout + logs.stderr
        assert "Traceback" not in log and log.index("Shutting down") < log.rindex('"route": "/v1/vocode"')
        record(f"server drain of {requests} requests after SIGTERM", stopped)


def test_server_image_refuses_truncated_weights_with_one_line(tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(ROOT / "weights" / "small", weights)
    data = (weights / SCORE_NET).read_bytes()
    (weights / SCORE_NET).write_bytes(data[: len(data) // 2])
    with container(SERVER, *READ_ONLY, "-v", f"{readable(weights)}:/weights:ro", "-e", "VOCODER_WEIGHTS=/weights",
                   "-e", "VOCODER_DEVICE=cpu") as name:
        status = podman("wait", name, timeout=180).stdout.strip()
        logs = podman("logs", name)  # the container's output alone (podman's own complaints go to its stderr)
    lines = (logs.stdout + logs.stderr).strip().splitlines()
    assert status == "2" and len(lines) == 1, logs.stdout + logs.stderr
    assert lines[0].startswith("error:") and "/weights" in lines[0] and "Traceback" not in lines[0]


# --- the trainer --------------------------------------------------------------------------------------------------

def test_trainer_image_prints_its_help():
    r = podman("run", "--rm", TRAINER, timeout=120)
    assert "usage: python -m model.train" in r.stdout and "all" in r.stdout


@pytest.fixture
def weights_volume() -> Iterator[str]:
    name = f"image-test-weights-{uuid.uuid4().hex[:8]}"
    yield name
    podman("volume", "rm", "-f", name, check=False)


def test_trainer_image_trains_weights_the_server_image_serves(tmp_path, weights_volume):
    """As docker-compose.yml does it: a named volume at /app/weights (filled from the image's weights), the trainer
    writes a new net into it, and the server serves that net from it."""
    if not (DATA / "wavs").is_dir():
        pytest.fail(f"the shared LJ data is not at {DATA} (CI has ../shared beside the clone)")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("\n".join(read_id_list(DATA / "train.txt")[:3]) + "\n")
    (lists / "valid.txt").write_text(read_id_list(DATA / "valid.txt")[0] + "\n")
    start = time.monotonic()
    r = podman("run", "--rm", "-e", "OMP_NUM_THREADS=1", "-v", f"{weights_volume}:/app/weights",
               "-v", f"{DATA}:/data:ro", "-v", f"{readable(lists)}:/lists:ro", TRAINER,
               "all", "--data", "/data/wavs", "--list", "/lists/train.txt", "--valid-list", "/lists/valid.txt",
               "--out", "/app/weights/mine", "--config", "tiny", "--net", "tiny", "--device", "cpu",
               "--minutes", "4", "--search-minutes", "1", "--steps", "5", "--schedule-steps", "5", "--batch", "2",
               "--segment-frames", "16", "--clips", "1", "--grid", "3", "--seconds", "0.25", timeout=600)
    assert "rho -> steps" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    record("trainer: model.train all --config tiny", time.monotonic() - start)

    with serve(SERVER, "-v", f"{weights_volume}:/app/weights:ro", "-e", "VOCODER_WEIGHTS=/app/weights/mine",
               label="server on the trainer's weights") as (name, url):
        info = httpx.get(url + "/v1/model", timeout=10).json()
        config = json.loads(podman("exec", name, "cat", "/app/weights/mine/config.json").stdout)
        assert config["training"]["score"]["steps"] == 5 and info["net"]
        r = httpx.post(url + "/v1/vocode", params={"seed": 1}, content=npy_bytes(EXAMPLE[:, :40]), headers=NPY,
                       timeout=120)
        assert r.status_code == 200 and len(r.content) > 40 * HOP, r.text


# --- Ray --------------------------------------------------------------------------------------------------------

def test_ray_image_serves_the_serve_config_on_a_cpu(tmp_path):
    """deploy/ray/serve.yaml as shipped, but for a CPU: num_gpus 0 and device cpu (one replica)."""
    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    args = config["applications"][0]["args"]
    args.update(num_gpus=0, device="cpu", num_cpus=1, max_replicas=1)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "serve.yaml").write_text(yaml.safe_dump(config))
    port, start = free_port(), time.monotonic()
    with container(RAY, "-p", f"127.0.0.1:{port}:8000", "--shm-size", "512m", "-e", "RAY_USAGE_STATS_ENABLED=0",
                   "-v", f"{readable(tmp_path / 'ray')}:/config:ro",
                   command=("serve", "run", "/config/serve.yaml")) as name:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running" and time.monotonic() < deadline, f"Ray Serve never became ready ({state})"
            time.sleep(1)
        record("ray: serve run (Ray start + replica ready)", time.monotonic() - start)
        r = httpx.post(url + "/v1/vocode", params={"seed": 2}, content=npy_bytes(EXAMPLE[:, :40]), headers=NPY,
                       timeout=120)
        assert r.status_code == 200 and len(r.content) > 40 * HOP, r.text
        model = httpx.get(url + "/v2", timeout=10).json()["models"][0]
        body = {"inputs": [{"name": "mel", "shape": [1, N_MELS, 40], "datatype": "FP32",
                            "data": EXAMPLE[:, :40].ravel().tolist()}], "parameters": {"seed": 2}}
        r = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=120)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"][-1] == 40 * HOP, r.text


# --- compose ------------------------------------------------------------------------------------------------------

def test_compose_brings_up_the_vocoder_behind_its_healthcheck():
    """podman-compose with docker-compose.yml and its CPU override: the vocoder service from the image built above.
    (nginx, Prometheus and Grafana cannot be pulled here; tests/test_deploy.py checks their configs.)"""
    project = f"image-test-{uuid.uuid4().hex[:6]}"
    compose = [str(Path(sys.executable).parent / "podman-compose"), "-p", project,
               "-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "deploy" / "compose.cpu.yml")]
    start = time.monotonic()
    try:
        r = subprocess.run([*compose, "up", "-d", "--no-build", "vocoder"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        name = podman("ps", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
                      ).stdout.split()
        assert len(name) == 1, name
        assert podman("inspect", "--format", "{{.ImageName}}", name[0]).stdout.strip().endswith(SERVER.split("/")[-1])
        wait_healthy(name[0])
        record("compose: vocoder service healthy", time.monotonic() - start)
        env = podman("exec", name[0], "printenv", "VOCODER_DEVICE").stdout.strip()
        assert env == "cpu"
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "5"], capture_output=True, timeout=180)
