"""gRPC plumbing shared by the three processes: server options, health + reflection, graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

#: Largest message any MEG process accepts or sends (an image of 1024×1024×3 float32 is 12 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def message_options(max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]


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


def split_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError with a readable message."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return host, int(port)
