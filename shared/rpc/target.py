"""``host:port`` targets as the CLIs take them: :func:`target` (an argparse type), :func:`split_hostport`."""

from __future__ import annotations

import argparse


def split_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError with a readable message."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return host, int(port)


class TargetError(argparse.ArgumentTypeError, ValueError):
    """A ``--via`` that is not HOST:PORT (argparse reports it as a usage error; elsewhere a ValueError)."""


def target(value: str) -> str:
    """argparse type of ``--via``: ``HOST:PORT`` (or a ``unix:`` path). A bare host is an error, never
    gRPC's silent default port 443."""
    if value.startswith(("unix:", "unix-abstract:")):
        return value
    try:
        split_hostport(value)
    except ValueError:
        hint = " (it has no port; the channel proxy listens on 50052 by default, the edge server on 50051)" \
            if ":" not in value.strip("[]") or value.endswith("]") else ""
        raise TargetError(f"{value!r} is not HOST:PORT{hint}") from None
    return value
