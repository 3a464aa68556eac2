"""gRPC plumbing shared by the three processes: server options, health + reflection, graceful stop,
request bodies that do not parse (-> INVALID_ARGUMENT), port binding with a clear error."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable
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


def server_options(max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Message limits, and no ``SO_REUSEPORT``: a second process on the same port is a start-up error
    instead of silently splitting the traffic."""
    return [*message_options(max_bytes), ("grpc.so_reuseport", 0)]


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


def _guard(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    if deserialize is None or handler.request_streaming:
        return handler

    def safe_deserialize(raw: bytes) -> object:
        try:
            return deserialize(raw)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return _Undecodable(f"the request to {method} does not parse as its message type: {exc}")

    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: object, context: grpc.aio.ServicerContext) -> Any:
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


def add_guarded(server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: object) -> None:
    """``add_XServicer_to_server(servicer, server)``, except that a request body that does not parse is
    answered ``INVALID_ARGUMENT`` with a readable message (grpc's own deserializer failure is ``UNKNOWN``)."""
    collector = _Collector()
    add_to_server(servicer, collector)
    add_guarded_handlers(server, collector.services)


def add_guarded_handlers(server: grpc.aio.Server, services: dict[str, dict[str, grpc.RpcMethodHandler]]) -> None:
    """Register ``{service: {method: handler}}`` with every request deserializer guarded (see add_guarded)."""
    for service, handlers in services.items():
        guarded = {name: _guard(h, f"/{service}/{name}") for name, h in handlers.items()}
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
