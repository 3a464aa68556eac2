"""Start the real console scripts as subprocesses on free loopback ports and stop them cleanly.

Used by the tests and the benchmarks alike (neither imports the other's helpers).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.rpc.security import TlsFiles, secure_channel

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (else the bare name, found on PATH)."""
    path = BIN / name
    return str(path) if path.exists() else name


@contextmanager
def running(argv: Sequence[str], health_service: str = "", timeout: float = 120.0,
            tls: TlsFiles | None = None) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``argv`` (which prints ``listening on port N``), wait until health says SERVING, yield (proc, port).
    ``tls``: the client's PEM files for a daemon that serves TLS (the health service needs no token).

    On exit: SIGTERM, and the process must end by itself with status 0 (graceful drain).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # HF offline: inherited (importing shared sets it)
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    port = None
    drain: threading.Thread | None = None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv[0]} exited early:\n" + "".join(lines))
            lines.append(line)
            m = re.search(r"listening on port (\d+)", line)
            port = int(m.group(1)) if m else None
            if time.monotonic() > deadline:
                raise TimeoutError("".join(lines))
        # keep reading its output (the last lines stay in ``proc.tail``): a daemon that logs into a pipe nobody
        # drains blocks once the pipe's buffer (64 KiB) is full
        proc.tail = collections.deque(lines, maxlen=200)  # type: ignore[attr-defined]
        drain = threading.Thread(target=proc.tail.extend, args=(proc.stdout,), daemon=True)  # type: ignore[attr-defined]
        drain.start()
        with secure_channel(f"127.0.0.1:{port}", tls) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=health_service), timeout=30, wait_for_ready=True
            ).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        if drain is not None:
            drain.join(10)  # it ends at the output's end
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0, f"{argv[0]} did not stop cleanly: {proc.returncode}"
