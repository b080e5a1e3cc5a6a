"""The service's Prometheus metrics (prometheus-client), in a registry of its own per app."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self, queue_images: Callable[[], int], cache=None):
        self.registry = CollectorRegistry()
        self.requests = Counter("svdedit_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("svdedit_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("svdedit_queue_images", "images waiting for or in a batch", registry=self.registry)
        self.queue.set_function(queue_images)
        if cache is not None:  # runtime/svdedit/runtime/editing/cache.py's EditCache of the service
            for name, doc, read in (("hits", "latents (per image and stage) the edit cache gave back", lambda: cache.stats.hits),
                                    ("misses", "latents the edit cache did not hold", lambda: cache.stats.misses),
                                    ("bytes", "bytes of latents kept by the edit cache", lambda: cache.bytes)):
                Gauge(f"svdedit_edit_cache_{name}", doc, registry=self.registry).set_function(read)
        self.batch_images = Histogram("svdedit_batch_images", "images in the batch each edit request ran in",
                                      buckets=BATCH_BUCKETS, registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
