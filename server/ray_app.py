"""Ray Serve: the whole app (`/v1`, `/v2`, streams, the audition page) as a Serve deployment, one replica per GPU,
autoscaled on ongoing requests, for serving past one machine.

    serve run server.ray_app:build num_gpus=1          # or: serve deploy deploy/ray/serve.yaml (KubeRay: RayService)

Each replica is one `create_app` (its lifespan loads the net and starts its engine) wrapped with `serve.ingress`.
`build`'s arguments are this module's `RayOptions` plus any server setting (`weights`, `device`, `queue_size`, ...,
as `VOCODER_*` names them); `num_gpus=0` serves from CPUs.

One batcher: the engine's. Its micro-batching already joins unseeded requests that share a schedule, keeps seeded
ones alone (the same seed gives the same bytes) and lets a stream's chunks take turns with other work; `@serve.batch`
in front of it would batch twice and break those promises, so it is not used.

Backpressure: a replica's `max_ongoing_requests` is the engine's `queue_size`, so Ray never sends a replica more
requests than its queue admits and a `/v1` client never meets the engine's 429 under Ray. Past that, requests wait in
Ray's own queue (`max_queued_requests` per caller); when that is full too, Ray's proxy answers 503. A `/v2` batch of
B is one request but B engine jobs: one that does not fit the queue still gets the engine's 429 with Retry-After.

A replica that dies (killed, out of host memory, its node lost): Ray's proxy answers the requests it held with its
own plain-text 500 (ray-project/ray#47219), and Serve replaces it at its next health check (`health_check_period_s`);
new requests wait in Ray's queue meanwhile, and the replacement takes them once warmed up. REST only: the gRPC
listener (VOCODER_GRPC_PORT) is refused here, as Ray's proxy would not route to it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from .app import create_app
from .settings import Settings


class RayOptions(BaseModel):
    """How the deployment is placed and scaled (`build`'s arguments that are not server settings)."""

    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(1, ge=0, description="GPUs per replica: one replica per GPU; 0 serves from CPUs")
    num_cpus: float = Field(2, gt=0, description="CPUs per replica (the engine's one inference thread and its loop)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="autoscaling target per replica; default the engine's max_batch (a full batch running)")
    max_queued_requests: int = Field(64, ge=-1, description="requests a caller holds for busy replicas before Ray's "
                                                           "503; -1 is unbounded")
    health_check_period_s: float = Field(10, gt=0, description="how often Serve checks a replica: a dead one is "
                                                               "replaced at the next check (Ray's default, 10 s)")


def build(args: dict[str, Any]) -> Application:
    """The Serve application from `serve run server.ray_app:build key=value ...` or a config's `args`."""
    fields = Settings.model_fields
    options = RayOptions.model_validate({k: v for k, v in args.items() if k not in fields})
    settings = Settings(**{k: v for k, v in args.items() if k in fields})
    if settings.grpc_port is not None:
        raise ValueError("Ray Serve stays REST-only (/v1 and /v2 through Ray's HTTP proxy): unset grpc_port "
                         "(VOCODER_GRPC_PORT); every replica would bind it, and Ray's proxy would not route to it")
    return deployment(settings).options(**deployment_options(options, settings)).bind()


def deployment_options(options: RayOptions, settings: Settings) -> dict[str, Any]:
    """Placement, backpressure and autoscaling (module docstring): one replica per `num_gpus`, at most the engine's
    queue in flight per replica, scaled up once replicas average a full batch in flight; a stopping replica gets
    the plain server's drain time (VOCODER_SHUTDOWN_TIMEOUT_S) for the requests it holds."""
    return {"ray_actor_options": {"num_gpus": options.num_gpus, "num_cpus": options.num_cpus},
            "max_ongoing_requests": settings.queue_size,
            "max_queued_requests": options.max_queued_requests,
            "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
            "health_check_period_s": options.health_check_period_s,
            "autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                                   "target_ongoing_requests": options.target_ongoing_requests or settings.max_batch}}


def deployment(settings: Settings) -> serve.Deployment:
    """The deployment for these settings; each replica builds its own app (and engine) from them."""

    @serve.deployment(name="bddm-vocoder")
    @serve.ingress(lambda: create_app(settings, serve_when_ready=True))
    class Vocoder:
        """A replica: `create_app(settings)` behind Ray's HTTP proxy. Serve routes to a replica once its start-up is
        done, so that includes the warm-up: a replacement replica never answers "not ready"."""

    return Vocoder
