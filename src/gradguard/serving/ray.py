"""The scoring server as a Ray Serve deployment: N replicas of the same app, one model per replica.

``gradguard serve --ray --replicas N`` calls :func:`serve_with_ray`; :func:`deployment` builds the
:class:`ray.serve.Application` for your own ``serve.run`` (or a ``serve run module:app`` config). Every replica
runs :func:`gradguard.serving.app.create_app` with the same :class:`~gradguard.serving.settings.ServerSettings`
and loads its own copy of ``settings.model`` (so the model path must exist on every node). Ray's HTTP proxy
listens on ``settings.host``/``settings.port`` and spreads requests over the replicas.

Back-pressure: each replica takes at most ``max_ongoing_requests`` requests at a time (default ``2 *
settings.max_batch``: one batch generating, the next one forming); the rest wait in Ray's queue of at most
``max_queued_requests`` (default ``settings.max_queue``) and beyond that Ray answers ``429`` with
``Retry-After`` (``backpressure_status=503`` for Ray's default 503) — the same answer the single server gives
when its own queue is full, so clients retry both the same way.

Metrics: every replica keeps its own ``/metrics`` (Prometheus text of that replica only; Ray's proxy sends
``GET /metrics`` to one replica). With ``ray_metrics=True`` (the default) the replica also reports the key
counters through :mod:`ray.util.metrics`, which Ray's per-node metrics endpoint exports summed over the replicas
(as ``ray_gradguard_*``); see ``docs/ray_serve.md``.

Ray is imported lazily: ``pip install 'gradguard[ray]'``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gradguard.extras import require
from gradguard.serving.settings import ServerSettings, check_bind

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

    from gradguard.serving.metrics import ServerMetrics

__all__ = ["deployment", "serve_with_ray", "RAY_METRIC_PREFIX"]

logger = logging.getLogger("gradguard.serving.ray")

#: The name prefix of the metrics reported through :mod:`ray.util.metrics` (Ray exports them as ``ray_<name>``).
RAY_METRIC_PREFIX = "gradguard_"

_PURPOSE = "scale-out on Ray Serve"


def _serve() -> Any:
    return require("ray.serve", "ray", _PURPOSE)


def mirror_to_ray(metrics: ServerMetrics) -> None:
    """Also report ``metrics``' requests, errors, latencies, batch sizes and unscored/out-of-domain answers
    through :mod:`ray.util.metrics` (summed over replicas by Ray's metrics export). Patches the instance."""
    from ray.util import metrics as ray_metrics

    buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
    p = RAY_METRIC_PREFIX
    requests = ray_metrics.Counter(f"{p}requests", "Requests answered.", tag_keys=("endpoint", "status"))
    errors = ray_metrics.Counter(f"{p}errors", "Requests answered with an error.", tag_keys=("endpoint", "type"))
    latency = ray_metrics.Histogram(f"{p}request_seconds", "Request time.", boundaries=buckets,
                                    tag_keys=("endpoint",))
    scoring = ray_metrics.Histogram(f"{p}scoring_seconds", "Scoring time per answer.", boundaries=buckets)
    generation = ray_metrics.Histogram(f"{p}generation_seconds", "Generation time per answer.", boundaries=buckets)
    batches = ray_metrics.Histogram(f"{p}batch_size", "Requests per generation batch.",
                                    boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 32, 64])
    unscored = ray_metrics.Counter(f"{p}unscored", "Answers without a usable score.")
    out_of_domain = ray_metrics.Counter(f"{p}out_of_domain", "Answers outside the calibration data.")

    observe_request, observe_result, observe_batch = (
        metrics.observe_request, metrics.observe_result, metrics.observe_batch,
    )

    def on_request(endpoint: str, status: int, seconds: float, error_type: str | None = None) -> None:
        observe_request(endpoint, status, seconds, error_type)
        requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        latency.observe(seconds, tags={"endpoint": endpoint})
        if error_type is not None:
            errors.inc(tags={"endpoint": endpoint, "type": error_type})

    def on_result(result: Any, metadata: Mapping[str, Any] | None = None) -> None:
        observe_result(result, metadata)
        if result is None or not result.scored or (metadata is not None and metadata.get("scored") is False):
            unscored.inc()
        if result is None:
            return
        if result.timings.generate_s is not None:
            generation.observe(result.timings.generate_s)
        scoring.observe(result.timings.score_s)
        if result.in_domain is False:
            out_of_domain.inc()

    def on_batch(size: int) -> None:
        observe_batch(size)
        batches.observe(size)

    metrics.observe_request = on_request  # type: ignore[method-assign]
    metrics.observe_result = on_result  # type: ignore[method-assign]
    metrics.observe_batch = on_batch  # type: ignore[method-assign]


class GradguardReplica:
    """One replica: the app of :func:`~gradguard.serving.app.create_app` for ``settings`` (its own model)."""

    def __init__(self, settings: Mapping[str, Any], ray_metrics: bool = True) -> None:
        self.settings = ServerSettings.model_validate(dict(settings))
        self.ray_metrics = ray_metrics
        self._gradguard_app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        from gradguard.serving.app import create_app

        app = create_app(self.settings)
        if self.ray_metrics:
            try:
                mirror_to_ray(app.state.metrics)
            except Exception:  # noqa: BLE001 - metrics are never worth a replica
                logger.exception("gradguard: could not report metrics through ray.util.metrics")
        self._gradguard_app = app
        return app

    def check_health(self) -> None:
        """Serve's health check: a replica whose model failed to load is unhealthy (Serve replaces it)."""
        engine = getattr(getattr(self._gradguard_app, "state", None), "engine", None)
        if engine is not None and engine.load_error:
            raise RuntimeError(f"the model could not be loaded: {engine.load_error}")


def deployment(
    settings: ServerSettings | None = None,
    *,
    replicas: int = 2,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    autoscaling_config: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    backpressure_status: int = 429,
    ray_metrics: bool = True,
    name: str = "gradguard",
    ray_actor_options: Mapping[str, Any] | None = None,
) -> Application:
    """The server app as a Ray Serve application of ``replicas`` replicas (each loads ``settings.model``).

    ``num_cpus``/``num_gpus``: Ray resources per replica (fractions share a CPU or GPU). ``autoscaling_config``
    (Ray's ``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ...) replaces the fixed ``replicas``.
    ``max_ongoing_requests`` (default ``2 * settings.max_batch``) and ``max_queued_requests`` (default
    ``settings.max_queue``; ``-1``: unbounded) bound the requests in a replica and in Ray's queue before it;
    a request beyond them gets ``backpressure_status`` (429 with ``Retry-After: 1``, or Ray's 503).
    ``ray_actor_options`` adds to the replica's actor options (e.g. ``runtime_env``).
    """
    serve = _serve()
    settings = settings or ServerSettings()
    check_bind(settings)
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    if num_cpus < 0 or num_gpus < 0:
        raise ValueError("num_cpus and num_gpus per replica must not be negative")
    if backpressure_status not in (429, 503):
        raise ValueError(f"backpressure_status must be 429 or 503, not {backpressure_status}")
    actor_options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, **(ray_actor_options or {})}
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": max_ongoing_requests or 2 * settings.max_batch,
        "max_queued_requests": settings.max_queue if max_queued_requests is None else max_queued_requests,
        # a replica loads a model: give it time before Serve declares the start failed or a replica hung
        "health_check_timeout_s": 60.0,
        "graceful_shutdown_timeout_s": settings.request_timeout_s,
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = replicas
    try:
        from ray.serve.config import BackpressureConfig
    except ImportError:  # older Ray: its 503 without Retry-After
        pass
    else:
        retry = 1.0 if backpressure_status == 429 else None
        options["backpressure_config"] = BackpressureConfig(status_code=backpressure_status, retry_after_s=retry)
    ingress = serve.ingress()(GradguardReplica)
    return serve.deployment(ingress).options(**options).bind(settings.model_dump(mode="json"), ray_metrics)


def _proxy_address(settings: ServerSettings) -> str:
    """Where Ray's HTTP proxy listens: ``settings``' address, unless Serve already ran with another one (warned)."""
    want = f"http://{settings.host}:{settings.port}"
    try:  # private API: only for the warning
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            return want
        host, port = client.http_config.host, client.http_config.port
    except Exception:  # noqa: BLE001
        return want
    if (host, port) != (settings.host, settings.port):
        logger.warning(
            "gradguard: Serve already runs on this cluster with its HTTP proxy on %s:%s; serving there, not on "
            "%s:%s (run `serve shutdown` first to move it)", host, port, settings.host, settings.port,
        )
        return f"http://{host}:{port}"
    return want


def serve_with_ray(
    settings: ServerSettings | None = None,
    *,
    replicas: int = 2,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    autoscaling_config: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    address: str | None = None,
    blocking: bool = True,
    name: str = "gradguard",
    route_prefix: str = "/",
    ray_init_kwargs: Mapping[str, Any] | None = None,
) -> DeploymentHandle:
    """Run :func:`deployment` on Ray Serve, Ray's HTTP proxy on ``settings.host``/``settings.port``.

    ``address``: ``None`` starts a Ray instance on this machine (unless this process is already connected to
    one); ``"auto"`` or ``"ray://HOST:10001"``/``"HOST:6379"`` attaches to a running cluster (``ray start
    --head``). ``blocking``: serve until Ctrl-C, then take the app down (and the Ray instance, if this call
    started it); else return the app's handle at once, with the replicas ready.
    """
    settings = settings or ServerSettings()
    check_bind(settings)
    ray = require("ray", "ray", _PURPOSE)
    serve = _serve()
    app = deployment(
        settings, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus, autoscaling_config=autoscaling_config,
        max_ongoing_requests=max_ongoing_requests, max_queued_requests=max_queued_requests, name=name,
    )
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, **(ray_init_kwargs or {}))
        started_ray = address is None
    serve.start(http_options={"host": settings.host, "port": settings.port})
    where = _proxy_address(settings)
    started = time.perf_counter()
    handle = serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    base = where + (route_prefix.rstrip("/") if route_prefix != "/" else "")
    logger.warning("gradguard: %s replicas ready in %.1fs; OpenAI base_url %s/v1",
                   "autoscaled" if autoscaling_config is not None else replicas, time.perf_counter() - started, base)
    if not blocking:
        return handle
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if started_ray:
            serve.shutdown()
            ray.shutdown()
        else:
            serve.delete(name)
    return handle
