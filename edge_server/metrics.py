"""The ES's Prometheus metrics (prometheus-client), one registry per server, served by ``--metrics-port``.

=====================================  =========  ==============================================
metric                                 type       what
=====================================  =========  ==============================================
``meg_edge_queue_depth``               gauge      requests waiting to join the batch
``meg_edge_batch_running``             gauge      requests in the running batch
``meg_edge_requests_in_flight``        gauge      RunSegment calls admitted and not finished
``meg_edge_batch_size``                histogram  requests per batched UNet call
``meg_edge_batch_rows``                histogram  UNet rows per call (guidance doubles a request)
``meg_edge_step_seconds``              histogram  seconds per batched UNet call
``meg_edge_requests_total``            counter    RunSegment calls by ``protocol`` and ``status``
``meg_edge_request_seconds``           histogram  RunSegment seconds by ``protocol`` (successful ones)
``meg_edge_images_total``              counter    generations denoised, by ``protocol``
=====================================  =========  ==============================================
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class EdgeMetrics:
    """The ES's metrics in their own :class:`~prometheus_client.CollectorRegistry` (no global state, so
    several servers can live in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.queued = Gauge("meg_edge_queue_depth", "Requests waiting to join the running batch", registry=r)
        self.running = Gauge("meg_edge_batch_running", "Requests in the running batch", registry=r)
        self.in_flight = Gauge("meg_edge_requests_in_flight", "RunSegment calls the engine admitted and not finished", registry=r)
        self.batch = Histogram("meg_edge_batch_size", "Requests per batched UNet call", buckets=BATCH_BUCKETS,
                               registry=r)
        self.rows = Histogram("meg_edge_batch_rows", "UNet rows per call (guidance doubles a request)",
                              buckets=BATCH_BUCKETS, registry=r)
        self.step = Histogram("meg_edge_step_seconds", "Seconds per batched UNet call", buckets=STEP_BUCKETS,
                              registry=r)
        self.requests = Counter("meg_edge_requests", "RunSegment calls by protocol and gRPC status",
                                ["protocol", "status"], registry=r)
        self.latency = Histogram("meg_edge_request_seconds", "Seconds per successful RunSegment, by protocol",
                                 ["protocol"], buckets=REQUEST_BUCKETS, registry=r)
        self.images = Counter("meg_edge_images", "Generations denoised, by protocol", ["protocol"], registry=r)

    # -- edge_server.engine.EngineMetrics ------------------------------------------------------------
    def engine_state(self, queued: int, running: int) -> None:
        self.queued.set(queued)
        self.running.set(running)

    def engine_admitted(self, requests: int) -> None:
        self.in_flight.set(requests)

    def engine_step(self, batch: int, rows: int, seconds: float) -> None:
        self.batch.observe(batch)
        self.rows.observe(rows)
        self.step.observe(seconds)

    # -- the servicer ----------------------------------------------------------------------------------
    def finished(self, protocol: str, status: str, seconds: float | None = None, images: int = 0) -> None:
        self.requests.labels(protocol, status).inc()
        if seconds is not None:
            self.latency.labels(protocol).observe(seconds)
        if images:
            self.images.labels(protocol).inc(images)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, int]:
    """Serve ``registry`` as Prometheus text on ``http://host:port/metrics`` (port 0 = any free port) in a daemon
    thread. Returns ``(server, port)``; ``server.shutdown()`` stops it. The ES passes ``--metrics-listen``
    (default 127.0.0.1: the page lists every UE id, so it stays on loopback unless the operator says otherwise)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
