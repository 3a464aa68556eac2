"""``meg-ue load`` as a user runs it: real ES and proxy processes, the CLI in a subprocess, its files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.procs import running, script

pytestmark = pytest.mark.slow  # real processes / a model end to end (conftest: 600 s per test)


@pytest.fixture(scope="module")
def proxy_addr(random_model_dir: Path) -> Iterator[str]:
    """An ES with a small engine (max batch 2, max queue 2) behind a 20 dB AWGN proxy."""
    es = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir),
          "--max-batch", "2", "--max-queue", "2"]
    with running(es) as (_, es_port):
        ch = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}",
              "--snr-db", "20"]
        with running(ch) as (_, ch_port):
            yield f"127.0.0.1:{ch_port}"


def _load(random_model_dir: Path, via: str, out: Path, *flags: str) -> dict[str, object]:
    argv = [script("meg-ue"), "load", "--via", via, "--model", str(random_model_dir), "--out", str(out), "--json",
            *flags]
    env = dict(os.environ)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "req/s" in done.stderr  # the progress line
    return json.loads(done.stdout)


def test_closed_loop_writes_results_csv_and_plots(random_model_dir: Path, proxy_addr: str, tmp_path: Path) -> None:
    s = _load(random_model_dir, proxy_addr, tmp_path, "--ues", "4", "--requests", "16", "--warmup", "2",
              "--protocol", "FULL-ES:2,CIAG", "--steps", "3")
    assert s["requests"] == 16 and s["ok"] == 16 and s["errors"] == {}
    assert s["warmup_requests"] == 2
    lat = s["latency_s"]
    assert list(lat) == ["p50", "p90", "p95", "p99", "p99.9", "min", "mean", "max"]  # type: ignore[arg-type]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]  # type: ignore[index]
    assert s["throughput_rps"] > 0
    per = s["per_protocol"]
    assert set(per) == {"FULL-ES", "CIAG"} and sum(p["requests"] for p in per.values()) == 16  # type: ignore[union-attr]
    # the proxy saw every transmission the UEs accounted (and the warmup's on top)
    proxy, ue = s["proxy"], s["ue_accounting"]
    for d in ("uplink", "downlink"):
        assert proxy[d]["symbols"] >= ue[d]["symbols"] > 0  # type: ignore[index]
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert len(rows) == 18 and {r["ue"] for r in rows} <= {"ue0", "ue1", "ue2", "ue3"}
    assert all(r["status"] == "OK" for r in rows)
    on_file = json.loads((tmp_path / "results.json").read_text())
    assert on_file["latency_s"] == lat
    for png in ("latency.png", "timeline.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_open_loop_overload_gets_resource_exhausted_fast(random_model_dir: Path, proxy_addr: str,
                                                         tmp_path: Path) -> None:
    """Poisson arrivals far above what a max-batch-2, max-queue-2 ES serves: the excess is refused at once,
    the rest served, and every request ends (none hangs)."""
    s = _load(random_model_dir, proxy_addr, tmp_path, "--ues", "16", "--requests", "40", "--rate", "200",
              "--steps", "60", "--timeout", "120")
    errors = s["errors"]
    assert set(errors) == {"RESOURCE_EXHAUSTED"}, errors  # type: ignore[arg-type]
    assert s["ok"] >= 4 and s["ok"] + errors["RESOURCE_EXHAUSTED"] == 40  # type: ignore[index]
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert len(rows) == 40
    refused = [float(r["latency_s"]) for r in rows if r["status"] == "RESOURCE_EXHAUSTED"]
    served = [float(r["latency_s"]) for r in rows if r["status"] == "OK"]
    assert np.median(refused) < np.min(served)  # refused at once, not after waiting for a place
    assert all("at capacity" in r["error"] for r in rows if r["status"] == "RESOURCE_EXHAUSTED")


def test_no_token_reaches_a_file_a_log_line_or_stdout(random_model_dir: Path, proxy_addr: str, tmp_path: Path) -> None:
    """Issue 23 (2): the admin token (and the key path) used to land in results.json and ``--json``."""
    secret = "s3cr3t-admin-token-4711"
    token_file = tmp_path / "admin.token"
    token_file.write_text(secret + "\n")
    out = tmp_path / "run"
    argv = [script("meg-ue"), "--log-level", "debug", "load", "--via", proxy_addr, "--model", str(random_model_dir),
            "--out", str(out), "--json", "--ues", "1", "--requests", "1", "--steps", "2",
            "--admin-token-file", str(token_file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout and secret not in done.stderr
    for path in out.iterdir():
        assert secret.encode() not in path.read_bytes(), path
    config = json.loads(done.stdout)["config"]
    assert config["admin_token_given"] is True and "admin_token" not in config and config["control_tls"] is False


def test_out_is_never_overwritten_without_asking(random_model_dir: Path, tmp_path: Path) -> None:
    """Issue 23 (15): a folder with an earlier run's files is refused (before the model loads) unless --overwrite."""
    (tmp_path / "results.json").write_text('{"earlier": true}\n')
    argv = [script("meg-ue"), "load", "--via", "127.0.0.1:9", "--model", str(random_model_dir), "--out", str(tmp_path),
            "--ues", "1", "--requests", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert f"--out {tmp_path} is not empty" in done.stderr and "--overwrite" in done.stderr
    assert json.loads((tmp_path / "results.json").read_text()) == {"earlier": True}


def test_requests_are_on_disk_as_they_end_and_ctrl_c_keeps_them(random_model_dir: Path, proxy_addr: str,
                                                               tmp_path: Path) -> None:
    """Issue 23 (15): requests.csv grows while the run goes; Ctrl-C writes the summary of what ended."""
    import signal
    import time

    argv = [script("meg-ue"), "load", "--via", proxy_addr, "--model", str(random_model_dir), "--out", str(tmp_path),
            "--json", "--ues", "2", "--duration", "600", "--steps", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv_path = tmp_path / "requests.csv"
    deadline = time.monotonic() + 120
    try:
        while not (csv_path.exists() and len(csv_path.read_text().splitlines()) >= 4):  # header + 3 rows
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert not (tmp_path / "results.json").exists()  # the summary comes at the end, in one piece
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == summary["requests"] + summary["warmup_requests"] >= 3
    assert json.loads((tmp_path / "results.json").read_text())["requests"] == summary["requests"]
    assert not list(tmp_path.glob(".*.tmp"))
