"""Faults heal: the real ES and proxy processes are killed (SIGKILL) and restarted on the same ports while
a few UEs generate concurrently. Every request is answered (the UE retries UNAVAILABLE with backoff under
the same request_id; the proxy reconnects to the restarted ES within ~1 s), and no ES incarnation runs a
segment of one request twice: its log has one completion line per request_id and segment, and one
computation start ("run ID PROTOCOL TASK SEGMENT SHARE", logged by :mod:`edge_server.idempotency`) per
request_id and segment — a retry is answered from the run already going or done."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.model.ops import ModelParts
from shared.protocol.params import Params
from tests.support.procs import script
from ue_client.edge_client import EdgeClient
from ue_client.session import generate

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)

UES, PER_UE = 3, 4
DONE = re.compile(r"seg (\d+) req ([0-9a-f-]+): ")
STARTED = re.compile(r"meg\.edge\.idempotency INFO run (\S+ \S+ \S+ \d+ -?\d+)")


class Daemon:
    """A console-script daemon whose output is collected in a thread; restartable on its first port."""

    def __init__(self, argv: list[str]) -> None:
        self.argv, self.port, self.runs = argv, 0, []  # type: ignore[var-annotated]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: list[str] = []
        self.runs.append(lines)
        started = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                m = re.search(r"listening on port (\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    started.set()
            started.set()

        threading.Thread(target=pump, daemon=True).start()
        assert started.wait(120) and proc.poll() is None, "".join(lines)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.timeout(300)
def test_kill_and_restart_es_and_proxy_under_load(random_model_dir: Path) -> None:
    parts = ModelParts.load(str(random_model_dir), "cpu")
    # the orphan grace outlasts the faults below however slow a busy machine makes the restarts (the default 3 s
    # does not when the proxy takes longer than that to come back): a retry must join the run, never restart it
    es = Daemon([script("meg-edge"), "serve", "--listen", "127.0.0.1:{port}", "--model", str(random_model_dir), "--device", "cpu",
                 "--orphan-grace-s", "120"])
    proxy = Daemon([script("meg-channel"), "serve", "--listen", "127.0.0.1:{port}", "--upstream", "127.0.0.1:ES_PORT"])
    results: dict[str, list[object]] = {}
    errors: list[BaseException] = []
    retries = [0]
    try:
        es.start()
        proxy.argv = [a.replace("ES_PORT", str(es.port)) for a in proxy.argv]
        proxy.start()

        def ue(name: str) -> None:
            try:
                with EdgeClient(f"127.0.0.1:{proxy.port}", timeout_s=120, ue_id=name) as client:
                    for i in range(PER_UE):
                        r = generate(parts, client, "a red circle", "CIAG", params=Params(seed=i, steps=20))
                        results.setdefault(name, []).append(r)
                        time.sleep(0.2)
                    retries[0] += client.retries
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=ue, args=(f"phone{i}",)) for i in range(UES)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        es.kill()  # mid-run
        time.sleep(1.0)
        es.start()  # same port; loads the model again
        time.sleep(1.5)
        proxy.kill()
        time.sleep(0.5)
        proxy.start()
        for t in threads:
            t.join(240)
        assert not errors, errors
        assert sum(len(v) for v in results.values()) == UES * PER_UE  # every request answered
        assert retries[0] >= 1  # the faults were felt, and healed by retrying
        print(f"retries {retries[0]}; completions per ES incarnation:",
              [sum(Counter(DONE.findall("".join(r))).values()) for r in es.runs])
        completions = [Counter(DONE.findall("".join(incarnation))) for incarnation in es.runs]
        assert sum(sum(c.values()) for c in completions) >= UES * PER_UE  # the log shows every completed run
        for done in completions:
            twice = {k: n for k, n in done.items() if n > 1}
            assert not twice, f"segments run twice by one ES: {twice}"
        starts = [Counter(STARTED.findall("".join(incarnation))) for incarnation in es.runs]
        assert any(starts), "RunSegment did not go through edge_server.idempotency (no 'run ...' lines in the ES log)"
        for started in starts:
            twice = {k: n for k, n in started.items() if n > 1}
            assert not twice, f"computations started twice by one ES for one request: {twice}"
    finally:
        proxy.stop()
        es.stop()
