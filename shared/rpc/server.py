"""gRPC plumbing shared by the three processes: server options, health + reflection, graceful stop,
request bodies that do not parse (-> INVALID_ARGUMENT), port binding with a clear error."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Collection, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.wire.limits import DEFAULT_MAX_MESSAGE_BYTES


def message_options(max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]


#: Bounds on what clients may hold open on a MEG server (grpc core's channel arguments).
CONNECTION_LIMITS: dict[str, int] = {
    "grpc.max_allowed_incoming_connections": 1024,  # connections at once (more are refused at accept)
    "grpc.max_concurrent_streams": 128,  # RPCs in flight per connection (more wait for a stream)
    "grpc.max_connection_idle_ms": 5 * 60_000,  # a connection without RPCs for 5 min gets GOAWAY
    "grpc.max_connection_age_ms": 60 * 60_000,  # every connection is recycled after an hour...
    "grpc.max_connection_age_grace_ms": 10 * 60_000,  # ...once its RPCs end (at most 10 min more)
    "grpc.max_metadata_size": 16 * 1024,  # headers per call (meg-* headers are a few dozen bytes)
    "grpc.http2.max_ping_strikes": 2,  # a client pinging more often than allowed is disconnected
}


def server_options(max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, **limits: int) -> list[tuple[str, int]]:
    """Message limits, :data:`CONNECTION_LIMITS` (``limits`` overrides them by short name, e.g.
    ``max_connection_idle_ms=200``), and no ``SO_REUSEPORT``: a second process on the same port is a start-up
    error instead of silently splitting the traffic.

    Bodies: grpc hands interceptors only the call's headers, so a missing or wrong token is UNAUTHENTICATED
    before the request message is read or parsed; what an unauthenticated client can still push is what HTTP/2
    flow control lets it have in flight (grpc's windows, not the 64 MiB message limit)."""
    bounds = dict(CONNECTION_LIMITS)
    for name, value in limits.items():
        key = next((k for k in bounds if k.rsplit(".", 1)[1] == name), None)
        if key is None:
            raise ValueError(f"no connection limit {name!r}; known: {[k.rsplit('.', 1)[1] for k in bounds]}")
        bounds[key] = value
    return [*message_options(max_bytes), ("grpc.so_reuseport", 0), *bounds.items()]


#: Client channels to a peer that may restart (the proxy's upstreams): retry connecting within ~1 s
#: instead of gRPC's default exponential backoff up to 120 s.
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``listen`` (plaintext or TLS); raises OSError with a readable message if it cannot."""
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or not available on this machine")
    return port


class _Undecodable:
    """What a guarded deserializer returns for bytes that do not parse; the handler turns it into a status."""

    def __init__(self, message: str) -> None:
        self.message = message


def peer_name(context: grpc.aio.ServicerContext) -> str:
    """The common name of the client certificate TLS verified for this call (``""`` without one) — a client
    certificate's CN is its identity, as Kubernetes reads it."""
    names = (context.auth_context() or {}).get("x509_common_name") or [b""]
    return names[0].decode("utf-8", "replace") if isinstance(names[0], bytes) else str(names[0])


def _guard(handler: grpc.RpcMethodHandler, method: str, client_names: Collection[str] = ()) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    if deserialize is None or handler.request_streaming:
        return handler
    allowed = ", ".join(sorted(client_names))

    def safe_deserialize(raw: bytes) -> object:
        try:
            return deserialize(raw)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return _Undecodable(f"the request to {method} does not parse as its message type: {exc}")

    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: object, context: grpc.aio.ServicerContext) -> Any:
            if client_names and peer_name(context) not in client_names:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{method} accepts client certificates named {allowed} only; this one is named "
                                    f"{peer_name(context)[:64] or 'nothing'}")
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await behaviour(request, context)

        return guarded

    kind = "unary_unary" if handler.unary_unary else "unary_stream"
    return handler._replace(
        request_deserializer=safe_deserialize, **{kind: wrap(getattr(handler, kind))}
    )


class _Collector:
    """Stands in for a server in a generated ``add_*Servicer_to_server`` call and keeps its handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = dict(handlers)


def add_guarded(server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: object,
                client_names: Collection[str] = ()) -> None:
    """``add_XServicer_to_server(servicer, server)``, except that a request body that does not parse is
    answered ``INVALID_ARGUMENT`` with a readable message (grpc's own deserializer failure is ``UNKNOWN``), and,
    with ``client_names``, a call whose client certificate has another common name ``PERMISSION_DENIED`` (mTLS:
    the CA signs every role's certificate; this says which roles may call)."""
    collector = _Collector()
    add_to_server(servicer, collector)
    add_guarded_handlers(server, collector.services, client_names)


def add_guarded_handlers(server: grpc.aio.Server, services: dict[str, dict[str, grpc.RpcMethodHandler]],
                         client_names: Collection[str] = ()) -> None:
    """Register ``{service: {method: handler}}`` with every request deserializer guarded (see add_guarded)."""
    for service, handlers in services.items():
        guarded = {name: _guard(h, f"/{service}/{name}", client_names) for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        server.add_registered_method_handlers(service, guarded)


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Attach the standard health service (every name NOT_SERVING until set) and server reflection."""
    names = list(service_names)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, service_names: Iterable[str]) -> None:
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def set_not_serving(servicer: health.aio.HealthServicer, service_names: Iterable[str]) -> None:
    """Health NOT_SERVING for the server and ``service_names`` (a daemon that cannot go on: orchestrators restart it)."""
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


async def serve_until_signal(
    server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, grace_s: float
) -> None:
    """Run until SIGTERM/SIGINT, then report NOT_SERVING and drain in-flight RPCs for ``grace_s``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
