"""``python -m shared.rpc.healthcheck HOST:PORT``: exit 0 when a MEG server's gRPC health service says SERVING.

For container health checks (docker-compose.yml) and scripts: it needs only grpcio and grpcio-health-checking,
so it runs in the proxy image too; with ``--tls-ca`` (and ``--tls-cert/--tls-key`` for mutual TLS) it checks a
TLS server (the health service needs no token). Exit status 0 = SERVING, 1 = reachable but not serving (or the service
is unknown to it), 2 = unreachable or timed out; one line on stdout either way.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.rpc.security import SecurityConfigError, TlsFiles, add_tls_flags, secure_channel, tls_from_args


def check(address: str, service: str = "", timeout_s: float = 3.0, tls: TlsFiles | None = None) -> tuple[int, str]:
    """``(exit status, one-line message)`` of one Health/Check call to ``address`` (TLS when ``tls`` is enabled)."""
    with secure_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return 1, f"{address}: no health status for service {service!r}"
            return 2, f"{address}: {code.name}: {err.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return (0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1), f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.rpc.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("address", help="HOST:PORT of a meg-edge or meg-channel server")
    p.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    add_tls_flags(p, server=False)
    args = p.parse_args(argv)
    try:
        status, message = check(args.address, args.service, args.timeout, tls_from_args(args))
    except SecurityConfigError as exc:  # a TLS file missing or unreadable
        status, message = 2, f"{args.address}: {exc}"
    print(message)
    return status


if __name__ == "__main__":
    sys.exit(main())
