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
    SecurityConfigError,
    TlsFiles,
    is_loopback,
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
    set_not_serving,
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


def insecure_setup(settings: EdgeSettings, tls: TlsFiles, token: str | None, control_token: str | None) -> list[str]:
    """The start-up warnings of a set-up that works but exposes something (one-way TLS needs
    ``--insecure-one-way-tls``: :class:`SecurityConfigError` without it)."""
    out = []
    if tls.enabled and not tls.ca:
        if not settings.insecure_one_way_tls:
            raise SecurityConfigError(
                "--tls-cert/--tls-key without --tls-ca is one-way TLS: any client may connect without a certificate. "
                "Give --tls-ca (mutual TLS), or pass --insecure-one-way-tls to accept that")
        out.append("one-way TLS (--insecure-one-way-tls): clients are not authenticated by certificate")
    if token and not tls.enabled and not is_loopback(settings.listen):
        out.append(f"UEs send their bearer token in plaintext to {settings.listen}: anyone on the path can read it; "
                   "use --tls-cert/--tls-key/--tls-ca beyond loopback")
    if tls.ca and not settings.tls_client_names:
        out.append("any client certificate the CA signed is accepted (a UE's too); --tls-client-name meg-channel "
                   "accepts only the proxy's")
    if settings.power_policy != "none" and settings.csi_via == "advertised" and not (tls.ca and settings.tls_client_names):
        out.append("--csi-via advertised trusts the meg-channel-control header of any caller: the admin token goes "
                   "wherever a caller says; use it on loopback only")
    if control_token and not tls.enabled and settings.power_policy != "none":
        out.append("the admin token goes to the proxy's control service in plaintext (no --tls-*)")
    return out


async def create_server(settings: EdgeSettings, parts: ModelParts | None = None) -> tuple[grpc.aio.Server, int, object]:
    """Load the model (unless given), build and start the server. Returns ``(server, port, health)``.

    The health service reports SERVING for ``""`` and ``meg.v1.EdgeService`` once the model is loaded.
    Bind ``HOST:0`` to get a free port.
    """
    if parts is None:
        parts = await _in_own_thread(lambda: ModelParts.load(settings.model, settings.device))
    tls = TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_ca)
    control_token = read_token(settings.control_token_file, ADMIN_TOKEN_ENV)
    token = read_token(settings.token_file, UE_TOKEN_ENV)
    for line in insecure_setup(settings, tls, token, control_token):
        log.warning("%s", line)
    csi_via = None if settings.csi_via == "advertised" else settings.csi_via
    power = PowerControl(settings.power_policy, csi_via, settings.name, settings.power_budget, settings.power_model,
                         tls=tls if tls.enabled else None, token=control_token)
    metrics = EdgeMetrics()
    servicer = EdgeServicer(parts, settings, power, metrics)  # its segment handler owns the batching engine
    server = grpc.aio.server(options=server_options(settings.max_message_bytes),
                             interceptors=server_interceptors({f"/{SERVICE_NAME}/": token}))
    add_guarded(server, edge_pb2_grpc.add_EdgeServiceServicer_to_server, servicer,
                client_names=settings.tls_client_names if tls.ca else ())
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings.listen, server_credentials(tls) if tls.enabled else None)
    await server.start()
    await set_serving(health, [SERVICE_NAME])
    loop = asyncio.get_running_loop()

    def engine_gave_up(why: str) -> None:  # the engine's thread: health turns NOT_SERVING on the loop
        log.critical("meg-edge cannot serve: %s", why)
        loop.call_soon_threadsafe(lambda: loop.create_task(set_not_serving(health, [SERVICE_NAME])))

    servicer.engine.on_failure.append(engine_gave_up)
    server.meg_servicer = servicer  # serve() stops its engine; tests reach it
    if settings.metrics_port is not None:
        servicer.metrics_http, servicer.metrics_port = serve_metrics(metrics.registry, settings.metrics_listen,
                                                                     settings.metrics_port)
        log.info("meg-edge metrics on http://%s:%d/metrics", settings.metrics_listen, servicer.metrics_port)
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
