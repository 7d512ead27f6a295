"""Ray Serve for real: a local Ray (2 CPUs, no dashboard) runs `server.ray_app:build` with num_gpus=0, the option a
user sets on a CPU-only cluster; it answers /v1/vocode and /v2 with the plain server's samples for a seed, and
streams. Ray is shut down after the module."""

from __future__ import annotations

import io
import os
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import tritonclient.http as triton
from pydantic import ValidationError

from bench.common import free_port
from conftest import serving
from model.audio import HOP, N_MELS
from server import Settings, create_app
from server.ray_app import RayOptions, build, deployment_options

NPY = {"Content-Type": "application/x-npy"}


def npy(frames: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).normal(-5, 2, (N_MELS, frames)).astype(np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def ray_url(tiny_weights):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a test
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 2**20)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"num_gpus": 0, "num_cpus": 1, "max_replicas": 1, "weights": str(tiny_weights),
                         "device": "cpu"}), name="vocoder", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the Serve replica never became ready"
            time.sleep(0.2)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def plain_url(tiny_weights):
    with serving(create_app(Settings(weights=tiny_weights, device="cpu"))) as url:
        yield url


def vocode(url: str, route: str = "/v1/vocode", frames: int = 30, **params) -> bytes:
    with httpx.stream("POST", url + route, params=params, content=npy(frames), headers=NPY, timeout=120) as r:
        assert r.status_code == 200, r.read()
        if route.endswith("/stream"):  # chunked through Ray's proxy too, not buffered into one answer
            assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
        return b"".join(r.iter_bytes())


def test_ray_serve_answers_with_the_plain_servers_bytes(ray_url, plain_url):
    for params in ({"seed": 3, "rho": "fast"}, {"seed": 4, "format": "flac", "sample_rate": 16000}):
        assert vocode(ray_url, **params) == vocode(plain_url, **params)
    tensor = triton.InferInput("mel", [1, N_MELS, 12], "FP32")
    tensor.set_data_from_numpy(np.load(io.BytesIO(npy(12)))[None])
    answers = []
    for url in (ray_url, plain_url):
        with triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120) as client:
            name = client.get_server_metadata()["models"][0]
            answers.append(client.infer(name, [tensor], parameters={"seed": 5}).as_numpy("audio"))
    assert np.array_equal(*answers)


def test_ray_serve_streams(ray_url, plain_url):
    params = {"seed": 6, "rho": "fast"}
    streamed = vocode(ray_url, "/v1/vocode/stream", frames=200, **params)  # two chunks: 86 frames, then 114
    assert streamed == vocode(plain_url, "/v1/vocode/stream", frames=200, **params)
    (a, _), (b, _) = (sf.read(io.BytesIO(x), dtype="int16") for x in (streamed, vocode(ray_url, frames=200, **params)))
    assert len(a) == 200 * HOP and np.abs(a.astype(int) - b).max() <= 1


def test_replicas_take_what_the_engine_queue_admits_and_scale_on_full_batches():
    settings = Settings(queue_size=12, max_batch=4)
    options = deployment_options(RayOptions(num_gpus=0), settings)
    assert options["ray_actor_options"]["num_gpus"] == 0
    assert options["max_ongoing_requests"] == 12 and options["autoscaling_config"]["target_ongoing_requests"] == 4
    assert options["graceful_shutdown_timeout_s"] == settings.shutdown_timeout_s
    assert deployment_options(RayOptions(), settings)["ray_actor_options"]["num_gpus"] == 1  # one replica per GPU
    with pytest.raises(ValidationError, match="num_gpu"):
        build({"num_gpu": 0})  # a typo is refused, not ignored
