"""Prometheus metrics of one server (`GET /metrics`): queue, batches, throughput, latency.

Each app has its own registry, so several servers (tests) can live in one process. Tokens and images
per second are both counters (take `rate()` in Prometheus) and gauges over the last minute (for a
human reading `/metrics` directly).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
WINDOW_S = 60.0


class _Rate:
    """Events per second over the last `WINDOW_S` seconds."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), count))

    def __call__(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._events and self._events[0][0] < now - WINDOW_S:
                self._events.popleft()
            return sum(count for _, count in self._events) / WINDOW_S


class Metrics:
    """The server's metrics; the scheduler and the routes update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("mmada_queue_depth", "Requests waiting for the model", registry=r)
        self.batch_rows = Histogram("mmada_batch_rows", "Rows (choices, images) per model batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("mmada_batch_requests", "Requests per model batch", buckets=BATCH_BUCKETS,
                                        registry=r)
        self.requests = Counter("mmada_requests", "Answered requests", ["route", "status"], registry=r)
        self.latency = Histogram("mmada_request_latency_seconds", "Time from arrival to the last byte", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("mmada_generated_tokens", "Generated text tokens", registry=r)
        self.images = Counter("mmada_generated_images", "Generated or edited images", registry=r)
        self.cancelled = Counter("mmada_cancelled_requests", "Requests whose client left before the answer",
                                 registry=r)
        self.rejected = Counter("mmada_rejected_requests", "Requests refused with 429 (queue full)", registry=r)
        self._token_rate, self._image_rate = _Rate(), _Rate()
        Gauge("mmada_tokens_per_second", f"Generated tokens per second over the last {WINDOW_S:g} s",
              registry=r).set_function(self._token_rate)
        Gauge("mmada_images_per_second", f"Generated images per second over the last {WINDOW_S:g} s",
              registry=r).set_function(self._image_rate)

    def add_tokens(self, count: int) -> None:
        self.tokens.inc(count)
        self._token_rate.add(count)

    def add_images(self, count: int) -> None:
        self.images.inc(count)
        self._image_rate.add(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
