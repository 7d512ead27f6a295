# syntax=docker/dockerfile:1
# Two images from one recipe, so server and trainer always run the same code and the same libraries:
#   docker build -t bddm-vocoder .                            # the server (the last stage is the default)
#   docker build -t bddm-vocoder-train --target trainer .     # the trainer
#
# The base tag and the torch pin in pyproject.toml move together: torch==2.13.0 <-> pytorch/pytorch:2.13.0-...
# (PyPI's torch 2.13.0 is built for CUDA 13.0 and cuDNN 9, hence this tag; tests/test_deploy.py checks the pair).
# The image's torch satisfies the pin, so `pip install .` keeps it and adds only the project's other dependencies.
# Another base: `--build-arg BASE_IMAGE=...`, any image with `python` and `pip` on PATH, Python's headers and
# torch==2.13.0 (`make image-test` builds all three targets on a local Debian base with the CPU wheel).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C compiler, kept in both images: `pesq` ships only as source, and torch.compile's Triton kernels
# build a small C launcher at run time. Ubuntu's archive keeps no superseded patch versions, so an exact
# pin would break rebuilds; the base tag above fixes the Ubuntu release and so the compiler's major version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# uid 10001: distinct from the uid 1000 user some Ubuntu base images already carry.
RUN groupadd --gid 10001 vocoder && useradd --create-home --uid 10001 --gid vocoder vocoder

# One source of truth for Python requirements: pyproject.toml, installed as the project itself.
WORKDIR /opt/bddm-vocoder
COPY pyproject.toml ./
COPY model/ model/
COPY server/ server/
COPY bench/ bench/
# With its `grpc` extra: the server answers the Open Inference Protocol over gRPC where VOCODER_GRPC_PORT is set
# (docker-compose.yml and deploy/k8s/ set 8001). Its versions are pyproject.toml's lower bounds. The source (~2 MB)
# stays here for the ray stage, which installs the same project with its `ray` extra.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[grpc]"

# The shipped weights, in both images and owned by the app user: a named volume mounted at /app/weights
# starts as a copy of them whichever image mounts it first, the trainer can write there, and a run with
# `--out /app/weights/base` fine-tunes them. With VOCODER_WEIGHTS unset the server picks by device:
# /app/weights/base on CUDA, /app/weights/small on a CPU (VOCODER_WEIGHTS_ROOT is where it looks).
WORKDIR /app
COPY --chown=vocoder:vocoder weights/ /app/weights/


# Trainer: `docker run --gpus all -v DATA:/data:ro -v WEIGHTS:/app/weights IMAGE score --data /data ...`;
# several GPUs: `--entrypoint torchrun IMAGE --nproc_per_node=N -m model.train score ...`.
FROM base AS trainer
USER 10001:10001
ENTRYPOINT ["python", "-m", "model.train"]
CMD ["--help"]


# Ray: the project with its `ray` extra (ray[serve], pinned to the RayService's rayVersion), for KubeRay's head and
# workers (deploy/ray/rayservice.yaml): `docker build --target ray -t bddm-vocoder-ray .`. KubeRay starts Ray in it;
# the Serve application (deploy/ray/serve.yaml) runs `server.ray_app:build`.
FROM base AS ray
WORKDIR /opt/bddm-vocoder
# Pinned after all: the `ray` extra in pyproject.toml is ray[serve]==VERSION.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[ray]"
WORKDIR /app
ENV VOCODER_WEIGHTS_ROOT=/app/weights
USER 10001:10001


# Server: one process, one model, one GPU. Scale by containers (Kubernetes pods with nvidia.com/gpu: 1;
# compose replicas behind the proxy), never by uvicorn workers, which would each load a model.
FROM base AS server
ENV VOCODER_HOST=0.0.0.0 \
    VOCODER_PORT=8000 \
    VOCODER_WEIGHTS_ROOT=/app/weights \
    VOCODER_DEVICE=auto \
    VOCODER_SHUTDOWN_TIMEOUT_S=30
USER 10001:10001
EXPOSE 8000
# Ready = weights loaded and warmed up; python's urllib raises on any non-2xx answer, so no curl needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('VOCODER_PORT', '8000'), timeout=4)"]
# Exec form: python is PID 1 and gets SIGTERM itself; the server stops taking requests, finishes those
# in flight for up to VOCODER_SHUTDOWN_TIMEOUT_S, then exits (compose/k8s grace periods are longer).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "server"]
