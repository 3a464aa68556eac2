"""The edge daemon: ``create_server(settings) -> (server, port)`` as in grpc's own examples."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import grpc

from edge_server.metrics import EdgeMetrics, serve_metrics
from edge_server.power_control import PowerControl
from edge_server.servicer import EdgeServicer
from edge_server.settings import EdgeSettings
from shared.model.ops import ModelParts
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.rpc.security import (
    ADMIN_TOKEN_ENV,
    UE_TOKEN_ENV,
    TlsFiles,
    read_token,
    server_credentials,
    server_interceptors,
)
from shared.rpc.server import (
    add_guarded,
    add_health_and_reflection,
    bind,
    serve_until_signal,
    server_options,
    set_serving,
)

log = logging.getLogger("meg.edge")
T = TypeVar("T")
SERVICE_NAME = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"].full_name


async def _in_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread that ends with it, not in a pooled executor thread that stays: a thread that ran
    torch kernels keeps an idle OpenMP team while it lives, and that throttles the engine's (see
    :mod:`edge_server.engine`)."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            done.set_exception(exc)

    thread = threading.Thread(target=run, name="meg-load", daemon=True)
    thread.start()
    result = await asyncio.wrap_future(done)
    thread.join()
    return result


async def create_server(settings: EdgeSettings, parts: ModelParts | None = None) -> tuple[grpc.aio.Server, int, object]:
    """Load the model (unless given), build and start the server. Returns ``(server, port, health)``.

    The health service reports SERVING for ``""`` and ``meg.v1.EdgeService`` once the model is loaded.
    Bind ``HOST:0`` to get a free port.
    """
    if parts is None:
        parts = await _in_own_thread(lambda: ModelParts.load(settings.model, settings.device))
    tls = TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_ca)
    power = PowerControl(settings.power_policy, settings.csi_via, settings.name, settings.power_budget, settings.power_model,
                         tls=tls if tls.enabled else None, token=read_token(settings.control_token_file, ADMIN_TOKEN_ENV))
    metrics = EdgeMetrics()
    servicer = EdgeServicer(parts, settings, power, metrics)  # owns the batching engine
    token = read_token(settings.token_file, UE_TOKEN_ENV)
    server = grpc.aio.server(options=server_options(settings.max_message_bytes),
                             interceptors=server_interceptors({f"/{SERVICE_NAME}/": token}))
    add_guarded(server, edge_pb2_grpc.add_EdgeServiceServicer_to_server, servicer)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings.listen, server_credentials(tls) if tls.enabled else None)
    await server.start()
    await set_serving(health, [SERVICE_NAME])
    server.meg_servicer = servicer  # serve() stops its engine; tests reach it
    if settings.metrics_port is not None:
        servicer.metrics_http, servicer.metrics_port = serve_metrics(metrics.registry, settings.listen,
                                                                     settings.metrics_port)
        log.info("meg-edge metrics on http://%s:%d/metrics", settings.listen.rpartition(":")[0],
                 servicer.metrics_port)
    g = parts.geometry
    log.info(
        "meg-edge %s serving %s on port %d (device %s, image %d², latent %d×%d², cond %d×%d, power %s)",
        settings.name, parts.name, port, parts.device, g.image_size, g.latent_channels, g.latent_size, g.max_tokens,
        g.embed_dim, settings.power_policy,
    )
    return server, port, health


async def serve(settings: EdgeSettings) -> None:
    server, port, health = await create_server(settings)
    print(f"meg-edge listening on port {port}", flush=True)
    await serve_until_signal(server, health, settings.grace_s)
    server.meg_servicer.close()
    log.info("meg-edge stopped")
