"""``meg-ue load`` as a user runs it: real ES and proxy processes, the CLI in a subprocess, its files."""

from __future__ import annotations

import csv
import json
import os
import re
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


# --- the timeline under a mobility scenario (issue 20) ----------------------------------------------------------
_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) meg\.channel INFO scenario: (snr|handover)\((.*)\)\s*$")
ES1_SNR = 5.5  # ue0->es1's SNR: no step of ue0->es0 takes it, so a request's applied SNR says which ES served it


def _scenario(path: Path) -> Path:
    """ue0->es0 steps down 1 dB every 3 s (30 -> 0 dB over 90 s), ue0->es1 stays at 5.5 dB, and ue0 is handed
    between es1 and es0 every 7 s: wherever the load's window falls (the model loads first), it sees steps and
    a handover."""
    lines = ["step_s = 0.5", '[[event]]\nat_s = 0.0\nlink = "ue0->es0"\nsnr_db = 30.0',
             f'[[event]]\nat_s = 0.0\nlink = "ue0->es1"\nsnr_db = {ES1_SNR}']
    lines += [f'[[event]]\nat_s = {3.0 * k}\nlink = "ue0->es0"\nsnr_db = {30.0 - k}' for k in range(1, 31)]
    lines += [f'[[event]]\nat_s = {7.0 * k}\nue = "ue0"\nhandover = "{"es1" if k % 2 else "es0"}"' for k in range(1, 13)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _played(log_lines: list[str]) -> list[tuple[float, str, str, str]]:
    """The events the proxy logged as fired: (Unix time, kind, link or UE, value)."""
    from datetime import datetime

    out = []
    for line in log_lines:
        m = _LOGGED.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the proxy logs local time
            args = [s.strip() for s in m.group(3).split(",")]
            who, value = (args[0], args[2]) if m.group(2) == "snr" else (args[0], args[1])
            out.append((t, m.group(2), who, value))
    return out


def _at(events: list[tuple[float, str, str, str]], t: float, kind: str, who: str, default: str) -> str:
    value = default
    for te, k, w, v in events:
        if te <= t and k == kind and w == who:
            value = v
    return value


def _near(events: list[tuple[float, str, str, str]], t0: float, t1: float, kind: str, who: str | None = None) -> bool:
    return any(t0 <= te <= t1 and k == kind and (who is None or w == who) for te, k, w, _ in events)


def test_timeline_follows_a_scenario_and_agrees_with_requests_csv(random_model_dir: Path, tmp_path: Path) -> None:
    """Issue 20: a load run under ``meg-channel serve --scenario`` (real clock; one ES behind two names, so a
    handover changes the link, not the model): the timeline's serving ES is where the scenario's handovers route
    the UE at each read and its link SNR the SNR the scenario set on that link, a handover and several SNR steps
    show up, the proxy's scenario clock agrees with its log, and the bins (air time too: a 20 MHz cell) recount
    requests.csv exactly."""
    scenario = _scenario(tmp_path / "ramp.toml")
    es = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir)]
    with running(es) as (_, es_port):
        ch = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{es_port}",
              "--upstream", f"es1=127.0.0.1:{es_port}", "--snr-db", "40", "--scenario", str(scenario),
              "--bandwidth-mhz", "20"]  # a cell: the bins' air time too
        with running(ch) as (proxy, ch_port):
            s = _load(random_model_dir, f"127.0.0.1:{ch_port}", tmp_path / "run", "--ues", "1", "--duration", "16",
                      "--steps", "2", "--timeline-s", "1")
            events = _played(list(proxy.tail))  # type: ignore[attr-defined]
    assert len([e for e in events if e[1] == "snr"]) >= 3, events
    tl = s["timeline"]
    assert tl["bin_s"] == 1.0 and tl["link_sampled"] is True and tl["link_error"] is None  # type: ignore[index]
    t0 = float(tl["t0_unix"])  # type: ignore[index]
    rows = list(csv.DictReader((tmp_path / "run" / "timeline.csv").open()))
    assert len(rows) == tl["bins"] >= 15  # type: ignore[index]
    assert [float(r["t0_s"]) for r in rows] == [float(k) for k in range(len(rows))]
    reqs = [r for r in csv.DictReader((tmp_path / "run" / "requests.csv").open()) if r["warmup"] == "False"]
    assert len(reqs) == s["requests"] and all(r["status"] == "OK" for r in reqs)

    # each request's applied SNR: its link's (the ES serving ue0 when it was sent) at the time its reply crossed
    for r in reqs:
        sent, done = t0 + float(r["sent_s"]), t0 + float(r["done_s"])
        if _near(events, sent - 0.3, sent + 0.3, "handover"):
            continue
        es = _at(events, sent, "handover", "ue0", "es0")
        if _near(events, done - 0.6, done + 0.3, "snr", f"ue0->{es}"):
            continue
        assert float(r["downlink_snr_db"]) == float(_at(events, done, "snr", f"ue0->{es}", "40")), (r, es)

    # each bin: its serving ES is where the scenario's handovers route ue0 when the bin was read (es0 before the
    # first), and its link SNR is what the scenario had set on that link then
    checked = 0
    seen_es: set[str] = set()
    snrs: set[float] = set()
    for row in rows:
        at = t0 + float(row["sampled_s"])
        es = row["serving"]
        seen_es.add(es)
        snrs.add(float(row["link_snr_db"]))
        if _near(events, at - 0.4, at + 0.4, "handover"):
            continue
        assert es == _at(events, at, "handover", "ue0", "es0"), row
        if not _near(events, at - 0.4, at + 0.4, "snr", f"ue0->{es}"):
            assert float(row["link_snr_db"]) == float(_at(events, at, "snr", f"ue0->{es}", "40")), row
            checked += 1
    # the proxy's own account of where the scenario is, at each read (its clock started with the first events)
    started = min(e[0] for e in events)
    assert {r["scenario"] for r in rows} == {"ramp"}
    for row in rows:
        assert float(row["scenario_s"]) == pytest.approx(t0 + float(row["sampled_s"]) - started, abs=0.3), row
    table = "\n".join(f"{r['t0_s']} {r['sampled_s']} {r['serving']} {r['link_snr_db']} {r['finished']}" for r in rows)
    assert checked >= len(rows) // 2, f"t0 {t0}\n{table}\n{events}"
    assert seen_es == {"es0", "es1"}, seen_es  # the handover shows up
    assert len(snrs) >= 3, snrs  # and the steps do

    # the bins recount requests.csv (sent by sent_s, finished/failed by done_s, latency of the finished)
    for k, row in enumerate(rows):
        def inside(key: str, k: int = k) -> list[dict[str, str]]:
            return [r for r in reqs if k <= float(r[key]) < k + 1 or (k == len(rows) - 1 and float(r[key]) >= k)]
        done = inside("done_s")
        assert int(row["sent"]) == len(inside("sent_s")) and int(row["finished"]) == len(done), (row, k)
        assert int(row["failed"]) == 0
        if done:
            lat = [float(r["latency_s"]) for r in done]
            assert float(row["latency_p50_s"]) == pytest.approx(float(np.percentile(lat, 50)), abs=2e-6)
            assert float(row["latency_p99_s"]) == pytest.approx(float(np.percentile(lat, 99)), abs=2e-6)
            assert float(row["applied_snr_db"]) == pytest.approx(np.mean([float(r["downlink_snr_db"]) for r in done]),
                                                                 abs=1e-3)
            assert float(row["air_s"]) == pytest.approx(sum(float(r["air_s"]) for r in done), abs=1e-5)
            assert float(row["air_s"]) > 0
        else:
            assert row["latency_p50_s"] == "" and row["applied_snr_db"] == "" and row["air_s"] == ""
    assert sum(int(r["finished"]) for r in rows) == len(reqs)
    assert (tmp_path / "run" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
