"""``--metrics-port`` on ``meg-edge serve`` and ``meg-channel serve``: real processes, real scrapes, and the
numbers agree with what the load generator saw."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import script

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)


@contextmanager
def serving(argv: list[str]) -> Iterator[tuple[int, int]]:
    """Run a daemon that logs its metrics port and prints ``listening on port N``; yield (port, metrics port)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        port = metrics = None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("exited early:\n" + "".join(lines))
            lines.append(line)
            if m := re.search(r"metrics on (?:http://[^ ]*:|port )(\d+)", line):
                metrics = int(m.group(1))
            if m := re.search(r"listening on port (\d+)", line):
                port = int(m.group(1))
        assert metrics, "".join(lines)
        yield port, metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0, "".join(lines)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from ``http://127.0.0.1:port/metrics``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_edge_and_proxy_metrics_match_the_load(random_model_dir: Path) -> None:
    from shared.model.ops import ModelParts
    from ue_client.edge_client import EdgeClient
    from ue_client.load import LoadConfig, run_load

    es_argv = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir),
               "--max-batch", "4", "--metrics-port", "0"]
    with serving(es_argv) as (es_port, es_metrics):
        ch_argv = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}",
                   "--snr-db", "15", "--metrics-port", "0"]
        with serving(ch_argv) as (ch_port, ch_metrics):
            via = f"127.0.0.1:{ch_port}"
            parts = ModelParts.load(str(random_model_dir), "cpu")
            cfg = LoadConfig(via=via, ues=3, requests=9, protocols=(("FULL-ES", 1.0), ("CIAG", 1.0)), steps=4)
            summary, records = run_load(parts, cfg, lambda ue: EdgeClient(via, ue_id=ue))
            assert summary["ok"] == 9, summary
            es = scrape(es_metrics)
            ch = scrape(ch_metrics)

    per = {p: sum(r.protocol == p for r in records) for p in ("FULL-ES", "CIAG")}
    for p, n in per.items():
        assert es[("meg_edge_requests_total", (("protocol", p), ("status", "OK")))] == n
        assert es[("meg_edge_images_total", (("protocol", p),))] == n
    assert es[("meg_edge_batch_size_count", ())] > 0
    assert es[("meg_edge_batch_size_sum", ())] == 9 * 4  # 9 requests × 4 steps, however they were batched
    assert es[("meg_edge_step_seconds_count", ())] == es[("meg_edge_batch_size_count", ())]
    assert es[("meg_edge_queue_depth", ())] == 0 and es[("meg_edge_requests_in_flight", ())] == 0

    ue_down = sum(r.downlink_symbols for r in records)
    proxy_down = sum(v for (name, labels), v in ch.items()
                     if name == "meg_channel_symbols_total" and ("direction", "downlink") in labels)
    assert proxy_down == ue_down == summary["proxy"]["downlink"]["symbols"]  # type: ignore[index]
    assert ch[("meg_channel_links", ())] == 3
    rpcs = [ch[("meg_channel_rpcs_total", (("direction", "uplink"), ("link", f"ue{i}->es0")))] for i in range(3)]
    assert sum(rpcs) == 9 and min(rpcs) >= 1  # one ES segment per request (FULL-ES and CIAG), every UE its link



def _listening_hosts(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                hosts.add("127.0.0.1" if addr == "0100007F" else "any" if set(addr) == {"0"} else addr)
    return hosts


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_proxy_metrics_bind_loopback_even_when_grpc_listens_on_all() -> None:
    """The per-link counters name every UE: /metrics binds 127.0.0.1 unless --metrics-listen says otherwise
    (issue 23.5; before, it bound the --listen host, 0.0.0.0 in containers)."""
    argv = [script("meg-channel"), "serve", "--listen", "0.0.0.0:0", "--upstream", "127.0.0.1:1", "--metrics-port", "0"]
    with serving(argv) as (_port, metrics):
        assert _listening_hosts(metrics) == {"127.0.0.1"}
    with serving([*argv, "--metrics-listen", "0.0.0.0"]) as (_port, metrics):
        assert _listening_hosts(metrics) == {"any"}
