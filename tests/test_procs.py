"""tests.support.procs.running: a daemon that logs a lot keeps running (its output is drained, not left in a pipe)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.support.procs import running

#: A gRPC health server that says where it listens, then logs ~256 KiB (four pipe buffers) and leaves a mark.
CHATTY = """
import signal, sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"listening on port {port}", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # before the mark: the test stops it once the mark is there
for i in range(256):
    print("x" * 1023, flush=True)
open(sys.argv[1], "w").write("done")
server.wait_for_termination()
"""


def test_running_drains_a_chatty_daemon(tmp_path: Path) -> None:
    mark = tmp_path / "done"
    with running([sys.executable, "-c", CHATTY, str(mark)], timeout=60) as (proc, port):
        assert port > 0
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists(), "the daemon blocked writing its log: nobody read the pipe"
        assert proc.poll() is None
    assert list(proc.tail)[-1].startswith("x")  # type: ignore[attr-defined]
