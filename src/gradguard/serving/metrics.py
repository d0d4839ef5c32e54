"""The server's Prometheus metrics, in a registry of their own (one per app)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gradguard.result import ScoreResult

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST"]

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """Counters and histograms of one app (``gradguard_*``); :meth:`render` gives the Prometheus text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gradguard_requests", "Requests answered.", ["endpoint", "status"], registry=r)
        self.errors = Counter("gradguard_errors", "Requests answered with an error.", ["endpoint", "type"], registry=r)
        self.generation = Histogram("gradguard_generation_seconds", "Generation time per answer.", buckets=_SECONDS,
                                    registry=r)
        self.scoring = Histogram("gradguard_scoring_seconds", "Scoring time per answer.", buckets=_SECONDS, registry=r)
        self.request = Histogram("gradguard_request_seconds", "Request time.", ["endpoint"], buckets=_SECONDS,
                                 registry=r)
        self.queue_depth = Gauge("gradguard_queue_depth", "Requests waiting for the model.", registry=r)
        self.batch_size = Histogram("gradguard_batch_size", "Requests per generation batch.",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.confidence = Histogram("gradguard_confidence", "Calibrated confidence of scored answers.",
                                    buckets=tuple(i / 10 for i in range(1, 11)), registry=r)
        self.out_of_domain = Counter("gradguard_out_of_domain", "Answers outside the calibration data.", registry=r)
        self.unscored = Counter("gradguard_unscored", "Answers without a usable score.", registry=r)

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth()`` at every scrape."""
        self.queue_depth.set_function(depth)

    def observe_batch(self, size: int) -> None:
        """One generation batch of ``size`` requests ran (the micro-batcher's ``on_batch``)."""
        self.batch_size.observe(size)

    def observe_result(self, result: ScoreResult | None, metadata: Mapping[str, Any] | None = None) -> None:
        """One answer's timings, confidence and flags (``None`` result: unscored)."""
        if result is None:
            self.unscored.inc()
            return
        if result.timings.generate_s is not None:
            self.generation.observe(result.timings.generate_s)
        self.scoring.observe(result.timings.score_s)
        if not result.scored or (metadata is not None and metadata.get("scored") is False):
            self.unscored.inc()
        if result.confidence is not None:
            self.confidence.observe(result.confidence)
        if result.in_domain is False:
            self.out_of_domain.inc()

    def observe_request(self, endpoint: str, status: int, seconds: float, error_type: str | None = None) -> None:
        """One request answered with ``status`` after ``seconds``."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.request.labels(endpoint=endpoint).observe(seconds)
        if error_type is not None:
            self.errors.labels(endpoint=endpoint, type=error_type).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
