"""The KServe InferenceService, the KubeRay RayService and the Ray Serve config, checked without a cluster.

No CRD schema ships offline, so these stay out of deploy/k8s/'s strict validation. Each custom resource is held to
the fields its controller requires (apiVersion, kind, image, port, resources, probes); the pod templates inside
them are validated as core Kubernetes pods; the Serve config by Ray's own schema and by building its application.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from server import Settings, create_app
from server.ray_app import build

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.33.0"


def load(path: str) -> dict:
    (doc,) = yaml.safe_load_all((ROOT / path).read_text())
    return doc


def valid_pod_spec(spec: dict, where: str) -> None:
    """A pod template's spec, validated against the core API as a Pod's."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: not a valid pod spec: {e.message} at {'.'.join(map(str, e.path))}")


def server_port() -> int:
    return int(re.search(r"VOCODER_PORT=(\d+)", (ROOT / "Dockerfile").read_text()).group(1))


def ray_pin() -> str:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    (pin,) = [d.split("==")[1] for d in extra if d.startswith("ray[serve]==")]
    return pin


def gpus(container: dict) -> tuple[int, int]:
    return container["resources"]["requests"]["nvidia.com/gpu"], container["resources"]["limits"]["nvidia.com/gpu"]


def test_serve_config_is_valid_and_builds():
    config = load("deploy/ray/serve.yaml")
    ServeDeploySchema.model_validate(config)  # Ray's own schema (what `serve deploy` checks)
    (app,) = config["applications"]
    assert app["import_path"] == "server.ray_app:build" and app["route_prefix"] == "/"
    build(app["args"])  # the args are RayOptions and server settings, or this raises
    assert config["http_options"]["port"] == server_port()


def test_rayservice_runs_the_serve_config_on_the_ray_image():
    service = load("deploy/ray/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == load("deploy/ray/serve.yaml")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray_pin() == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]
    valid_pod_spec(head, "RayService head")
    (head_container,) = head["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports["serve"] == server_port() and ports["gcs-server"] == 6379
    assert "nvidia.com/gpu" not in head_container["resources"]["requests"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    (group,) = cluster["workerGroupSpecs"]
    valid_pod_spec(group["template"]["spec"], "RayService worker")
    (worker,) = group["template"]["spec"]["containers"]
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert gpus(worker) == (args["num_gpus"], args["num_gpus"])  # one replica per GPU worker
    assert group["maxReplicas"] == args["max_replicas"]
    for container in (head_container, worker):
        assert container["image"].split("/")[-1].startswith("bddm-vocoder-ray:")
        assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    assert re.search(r"^FROM base AS ray$", (ROOT / "Dockerfile").read_text(), re.M)


def test_inferenceservice_serves_v2_on_the_servers_port():
    isvc = load("deploy/kserve/inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    valid_pod_spec({"containers": predictor["containers"]}, "InferenceService predictor")
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"].split("/")[-1].startswith("bddm-vocoder:")
    assert [p["containerPort"] for p in container["ports"]] == [server_port()]
    assert gpus(container) == (1, 1) and container["resources"]["limits"]["memory"]
    routes = set(create_app().openapi()["paths"])
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": server_port()} and path in routes
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= {f"VOCODER_{name.upper()}" for name in Settings.model_fields}
    settings = Settings(**{k.removeprefix("VOCODER_").lower(): v for k, v in env.items()})
    # Knative holds what the engine's queue would refuse, and scales on a full batch per pod
    assert predictor["containerConcurrency"] == settings.queue_size
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", settings.max_batch)
