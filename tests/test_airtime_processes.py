"""Time on the air through real processes: ``meg-edge`` behind ``meg-channel serve --bandwidth-mhz ...``.

Within a tolerance (a real clock on a shared machine): a Probe's measured extra latency equals the reported
air + delay; k UEs at once in one cell take k times the air of one alone; a full queue is RESOURCE_EXHAUSTED at
once; a transmission that cannot make its deadline is DEADLINE_EXCEEDED at the deadline; bad settings are a
start-up error or INVALID_ARGUMENT naming the setting; the stats and metrics show the cells.
"""

from __future__ import annotations

import concurrent.futures
import math
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from shared.channel.airtime import parse_airtime
from shared.channel.cell import CellConfig
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
from shared.wire import air
from shared.wire.headers import AIRTIME_HEADER, UE_HEADER
from tests.support.procs import running, script

pytestmark = pytest.mark.slow

OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
NARROW = ["--bandwidth-mhz", "5", "--numerology", "0"]  # 25 PRB × 144 RE = 3,600 RE per 1 ms slot


@pytest.fixture(scope="module")
def es_port(random_model_dir: Path) -> Iterator[int]:
    with running([script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir),
                  "--device", "cpu"]) as (_, port):
        yield port


@contextmanager
def proxy(es_port: int, *flags: str) -> Iterator[tuple[int, edge_pb2_grpc.EdgeServiceStub, channel_pb2_grpc.ChannelControlStub]]:
    with running([script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{es_port}", *flags],
                 "meg.v1.ChannelControl") as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as ch:
        yield port, edge_pb2_grpc.EdgeServiceStub(ch), channel_pb2_grpc.ChannelControlStub(ch)


def _probe(n: int) -> edge_pb2.ProbeRequest:
    return edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.random.default_rng(n).standard_normal(n).astype(np.float32))])


def _timed(stub: edge_pb2_grpc.EdgeServiceStub, req: edge_pb2.ProbeRequest, ue: str = "ue",
           timeout: float = 60) -> tuple[float, dict[str, dict[str, float | int | str]], edge_pb2.ProbeResponse]:
    t0 = time.perf_counter()
    reply, call = stub.Probe.with_call(req, timeout=timeout, metadata=((UE_HEADER, ue),))
    elapsed = time.perf_counter() - t0
    md = dict(call.trailing_metadata() or ())
    return elapsed, parse_airtime(md[AIRTIME_HEADER]) if AIRTIME_HEADER in md else {}, reply


def _total(a: dict[str, dict[str, float | int | str]]) -> float:
    return sum(float(d["queue_s"]) + float(d["air_s"]) + float(d["delay_s"]) for d in a.values())


def test_a_probes_extra_latency_is_the_reported_air_plus_delay(es_port: int) -> None:
    """Against a proxy with no cell in front of the same ES (the hop's own cost cancels), at p95."""
    with proxy(es_port) as (_, plain, _), proxy(es_port, *NARROW, "--delay-ms", "10") as (_, cell, _ctl):
        for n in (16_384, 65_536):
            req = _probe(n)
            _timed(plain, req), _timed(cell, req)  # warm up both paths
            cfg = CellConfig(bandwidth_mhz=5, numerology=0)
            slots = math.ceil((n // 2 + 100) / cfg.re_per_slot)
            failures = []
            for _attempt in range(3):  # a measurement under another process's burst is taken again, at most twice
                errors, reported = [], []
                for _ in range(40):
                    base, none, _ = _timed(plain, req)
                    took, airtime, reply = _timed(cell, req)
                    assert none == {}  # no cell: no header, as before
                    errors.append(abs((took - base) - _total(airtime)))
                    reported.append(_total(airtime))
                # 16,384 values = 8,192 RE = 3 slots (3 ms) each way + 10 ms delay each way
                assert airtime["uplink"]["slots"] == slots and float(airtime["uplink"]["delay_s"]) == pytest.approx(0.010)
                assert float(airtime["downlink"]["air_s"]) == pytest.approx(slots * 1e-3, abs=1e-9)
                applied = reply.tensors[0].applied
                assert applied.resource_elements == n // 2 and applied.mcs == -1 and applied.slots >= 1
                # issue 19's max(5 %, 2 ms) is what benchmarks/bench_airtime.py measures on a quiet machine (README
                # table). A test must also pass on a busy host: with both cores taken by other processes the median
                # error is 2-3 ms and the p95 5-8 ms (scheduling noise of either process), so the median is held to
                # max(15 %, 4 ms) and the p95 to a sanity bound; an emulator that did not hold messages for their air
                # time would be off by ~100 % of it
                bound = max(0.15 * float(np.median(reported)), 0.004)
                median, p95 = float(np.median(errors)), float(np.percentile(errors, 95))
                if median <= bound and p95 <= max(0.5 * float(np.median(reported)), 0.010):
                    break
                failures.append(f"{n}: median {median * 1e3:.2f} ms (bound {bound * 1e3:.2f}), p95 {p95 * 1e3:.2f} ms; "
                                f"errors ms {sorted(round(e * 1e3, 2) for e in errors)}")
            else:
                pytest.fail("\n".join(failures))

def test_k_ues_at_once_in_one_cell_take_k_times_the_air_of_one(es_port: int) -> None:
    n, k = 524_288, 4  # 262,144 RE = 73 slots (73 ms) each way alone in the narrow cell
    with proxy(es_port, *NARROW) as (port, stub, _):
        req = _probe(n)
        _timed(stub, req, "warm")
        alone_s, alone, _ = min((_timed(stub, req, "alone") for _ in range(3)), key=lambda r: r[0])  # least noisy
        air_alone = sum(float(d["air_s"]) for d in alone.values())
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) for _ in range(k)]  # a phone each
        stubs = [edge_pb2_grpc.EdgeServiceStub(c) for c in channels]
        for i, s in enumerate(stubs):
            _timed(s, _probe(10), f"phone{i}")  # connected
        failures = []
        for _attempt in range(3):  # on a busy host the k sends may not overlap: that round is taken again
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(k) as pool:
                runs = list(pool.map(lambda i: _timed(stubs[i], req, f"phone{i}"), range(k)))
            wall = time.perf_counter() - t0
            shared = [sum(float(d["air_s"]) + float(d["queue_s"]) for d in a.values()) for _, a, _ in runs]
            # the cell is shared: the air stretches (processor sharing, no one waits behind another; one UE's
            # request may reach the proxy after the others are done, hence k - 1) ...
            overlapped = sum(x > 1.5 * air_alone for x in shared) >= k - 1
            # ... and the last of k finishes about k times later than one alone (the cell's work is conserved)
            conserved = wall - alone_s == pytest.approx((k - 1) * air_alone, rel=0.3)
            if overlapped and conserved:
                break
            failures.append(f"shared {shared}, air alone {air_alone}, wall {wall}, alone {alone_s}")
        else:
            pytest.fail("\n".join(failures))
        for c in channels:
            c.close()

def test_a_full_queue_is_resource_exhausted_at_once_and_a_late_one_deadline_exceeded_at_the_deadline(es_port: int) -> None:
    big = _probe(1_000_000)  # 500,000 RE = 139 slots = 139 ms each way in the narrow cell
    with proxy(es_port, *NARROW, "--queue-limit", "1") as (_, stub, ctl):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(_timed, stub, big, "phone")
            deadline = time.monotonic() + 30
            while not any(c.direction == "uplink" and c.backlog_messages
                          for c in ctl.GetStats(channel_pb2.GetStatsRequest(), timeout=5).cells):
                assert time.monotonic() < deadline and not first.done(), "the big Probe never reached the cell"
                time.sleep(0.002)  # poll: wait until it is on the cell's uplink (its air lasts 139 ms)
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:  # a small one: its refusal must not wait for the big one's air
                _timed(stub, _probe(10), "phone")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue_limit 1" in (err.value.details() or "")
            assert time.perf_counter() - t0 < 0.1  # at once, not after the first one's air
            assert first.result()[0] > 0.2
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            _timed(stub, big, "phone", timeout=0.1)
        waited = time.perf_counter() - t0
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.095 <= waited < 0.1 + 0.05, waited  # at the deadline, not after its 278 ms of air
        assert _timed(stub, _probe(10), "phone")[1]["uplink"]["slots"] == 1  # and the proxy keeps serving


def test_cells_change_at_runtime_and_bad_settings_name_the_setting(es_port: int, tmp_path: Path) -> None:
    for flags, needle in [(["--bandwidth-mhz", "7"], "bandwidth_mhz 7 is not in TS 38.101-1"),
                          (["--bandwidth-mhz", "-5"], "bandwidth_mhz must be > 0"),
                          (["--bandwidth-mhz", "20", "--numerology", "4"], "numerology 4 is not an FR1 numerology"),
                          (["--bandwidth-mhz", "20", "--duplex", "tdd", "--tdd-pattern", "DDDD"], "has no U slot"),
                          (["--bandwidth-mhz", "20", "--delay-ms", "-1"], "delay_ms must be a finite number"),
                          (["--delay-ms", "3"], "give --bandwidth-mhz")]:
        done = subprocess.run([script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream",
                               f"127.0.0.1:{es_port}", *flags], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and needle in done.stderr and "Traceback" not in done.stderr, (flags, done.stderr)
    profiles = tmp_path / "cells.toml"
    profiles.write_text('[cells.default]\nbandwidth_mhz = 5\nnumerology = 0\n[cells.es0]\nbandwidth_mhz = 10\n')
    with proxy(es_port, "--profiles", str(profiles)) as (port, stub, ctl):
        settings = ctl.GetChannel(channel_pb2.GetChannelRequest(), timeout=5)
        assert [(c.cell, c.prbs) for c in settings.cells] == [("default", 25), ("es0", 52)] and settings.clock == "enforce"
        req = _probe(200_000)
        _, before, _ = _timed(stub, req)
        assert before["uplink"]["cell"] == "es0" and before["uplink"]["slots"] == math.ceil(100_100 / (52 * 144))
        with pytest.raises(grpc.RpcError) as err:
            ctl.SetCell(channel_pb2.SetCellRequest(cell=channel_pb2.CellSettings(cell="es0", bandwidth_mhz=7)), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bandwidth_mhz 7" in (err.value.details() or "")
        done = subprocess.run([script("meg-channel"), "set-cell", "--via", f"127.0.0.1:{port}", "--cell", "es0",
                               "--bandwidth-mhz", "40"], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and "cell es0" in done.stdout and "216 PRB" in done.stdout, done.stderr
        _, after, _ = _timed(stub, req)
        assert after["uplink"]["slots"] == math.ceil(100_100 / (216 * 144))
        stats = ctl.GetStats(channel_pb2.GetStatsRequest(), timeout=5)
        up = next(c for c in stats.cells if c.cell == "es0" and c.direction == "uplink")
        assert up.messages == 2 and up.resource_elements > 200_000 and 0 < up.utilisation <= 1 and up.delivered_bits_per_s > 0
        text = subprocess.run([script("meg-channel"), "stats", "--via", f"127.0.0.1:{port}"], capture_output=True,
                              text=True, timeout=60, check=False).stdout
        assert "util" in text and "es0" in text


def test_account_clock_reports_without_waiting(es_port: int) -> None:
    req = _probe(1_000_000)  # 139 ms of air each way in the narrow cell
    with proxy(es_port, *NARROW, "--delay-ms", "2000", "--clock", "account") as (_, stub, _):
        took, airtime, _ = _timed(stub, req)  # one call: a second would share the air the first still holds
    assert _total(airtime) == pytest.approx(2 * (0.139 + 2.0), abs=0.003)
    assert took < 2.0  # it did not wait for them (4.3 s)
