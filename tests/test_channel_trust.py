"""Issue 23 on the proxy: the control service never open by accident (1), a bounded link table (6), channel
math off the event loop and bounded (9), no Inf/NaN out of finite input and no power beyond p_max (12)."""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from channel_emulator.cells import CellSet
from channel_emulator.link import LinkTable, LinkTableFull
from channel_emulator.proxy import create_proxy
from shared.channel.cell import CellConfig
from shared.channel.power import P_MAX
from shared.channel.profiles import IDEAL, ChannelProfile, load_profiles
from shared.channel.transmit import MAX_POWER_BLOCKS, transmit
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.wire import air
from shared.wire.headers import UE_HEADER
from tests.conftest import BackgroundLoop
from tests.support.procs import running, script

OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
DEAD_UPSTREAM = {"es0": "127.0.0.1:9"}  # nothing listens: an RPC fails UNAVAILABLE once its uplink has crossed


@contextmanager
def inproc_proxy(table: LinkTable, cells: CellSet | None = None) -> Iterator[str]:
    bg = BackgroundLoop()
    server, port, _ = bg.run(create_proxy("127.0.0.1:0", DEAD_UPSTREAM, table, cells=cells))  # type: ignore[misc]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        bg.run(server.stop(0))
        bg.close()


# -- (1) a UE token never leaves the control service open --------------------------------------------------------
def test_a_ue_token_without_an_admin_token_refuses_to_start(tmp_path: Path) -> None:
    token = tmp_path / "ue.token"
    token.write_text("ue-secret\n")
    argv = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--token-file", str(token)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--admin-token-file" in done.stderr and "--insecure-open-control" in done.stderr, done.stderr
    with running([*argv, "--insecure-open-control"], "meg.v1.ChannelControl"):  # open on purpose: it starts
        pass
    with pytest.raises(ValueError, match="open to callers with no token"):
        asyncio.run(create_proxy("127.0.0.1:0", DEAD_UPSTREAM, LinkTable(load_profiles(None), IDEAL, IDEAL),
                                 ue_token="ue-secret"))


# -- (6) links named by the meg-ue header are bounded state --------------------------------------------------------
def test_the_link_table_forgets_the_least_recently_used_idle_link_and_is_full_only_when_all_are_busy() -> None:
    table = LinkTable(load_profiles(None), IDEAL, IDEAL)
    table.max_links = 3
    for name in ("a->es0", "b->es0", "c->es0"):
        table.link(name)
    table.link("a->es0")  # used again: b is now the least recently used
    table.link("d->es0")
    assert list(table.links) == ["c->es0", "a->es0", "d->es0"] and table.evicted == 1
    table.busy = {"c->es0": 1, "a->es0": 1, "d->es0": 2}
    with pytest.raises(LinkTableFull, match="every one is in use"):
        table.link("e->es0")
    table.busy.pop("a->es0")
    table.link("e->es0")
    assert "a->es0" not in table.links and "e->es0" in table.links


def test_a_full_link_table_answers_resource_exhausted_through_the_proxy() -> None:
    table = LinkTable(load_profiles(None), IDEAL, IDEAL)
    table.max_links = 2
    # a narrow cell keeps each Probe on the air for ~140 ms: its link is busy meanwhile
    cells = CellSet({"default": CellConfig(bandwidth_mhz=5, numerology=0)})
    big = edge_pb2.ProbeRequest(tensors=[air.to_air("x", np.ones(1_000_000, np.float32))])
    with inproc_proxy(table, cells) as addr, grpc.insecure_channel(addr, options=OPTIONS) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        codes: dict[str, grpc.StatusCode] = {}

        def call(ue: str) -> None:
            try:
                stub.Probe(big, timeout=30, metadata=((UE_HEADER, ue),))
            except grpc.RpcError as exc:
                codes[ue] = exc.code()  # type: ignore[attr-defined]

        threads = [threading.Thread(target=call, args=(ue,)) for ue in ("a", "b")]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(table.busy) < 2 and time.monotonic() < deadline:  # wait until both are in flight
            time.sleep(0.005)
        with pytest.raises(grpc.RpcError) as err:
            stub.Probe(edge_pb2.ProbeRequest(), timeout=10, metadata=((UE_HEADER, "c"),))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "in use" in (err.value.details() or "")
        for t in threads:
            t.join()
        assert codes == {"a": grpc.StatusCode.UNAVAILABLE, "b": grpc.StatusCode.UNAVAILABLE}  # crossed, no ES there
        with pytest.raises(grpc.RpcError) as err:  # idle now: a new name takes the oldest one's place
            stub.Probe(edge_pb2.ProbeRequest(), timeout=10, metadata=((UE_HEADER, "c"),))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "c->es0" in table.links and table.evicted == 1


# -- (9) heavy channel math neither blocks the loop nor is unbounded -------------------------------------------------
def test_a_huge_probe_with_block_length_one_does_not_stall_health_checks() -> None:
    table = LinkTable(load_profiles(None), ChannelProfile(model="awgn", snr_db=10), IDEAL)
    n = 8 * 1024 * 1024  # 32 MiB of float32
    huge = air.to_air("x", np.random.default_rng(0).standard_normal(n, dtype=np.float32))
    huge.block_length = 1
    with inproc_proxy(table) as addr, grpc.insecure_channel(addr, options=OPTIONS) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        done = threading.Event()
        worst = 0.0

        def probe() -> None:
            try:
                edge_pb2_grpc.EdgeServiceStub(ch).Probe(edge_pb2.ProbeRequest(tensors=[huge]), timeout=60)
            except grpc.RpcError:
                pass  # UNAVAILABLE: no ES behind; the uplink's math has run
            finally:
                done.set()

        thread = threading.Thread(target=probe)
        started = time.perf_counter()
        thread.start()
        while not done.is_set():
            t0 = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.01)
        thread.join()
        took = time.perf_counter() - started
        assert table.links["ue->es0"]["uplink"].counters.symbols == n  # the math did run
        # on the loop, one health check would wait for the whole math (worst ~ took); off it, a check waits at
        # most for a scheduling slice, also on a busy machine (relative, not a fixed wall-clock bound)
        assert worst < max(0.25, 0.3 * took), (worst, took)
        # a power allocation over more than MAX_POWER_BLOCKS blocks is refused, not computed
        over = air.to_air("x", np.ones(MAX_POWER_BLOCKS + 1, np.float32))
        over.block_length = 1
        over.block_power.extend([1.0] * (MAX_POWER_BLOCKS + 1))
        with pytest.raises(grpc.RpcError) as err:
            edge_pb2_grpc.EdgeServiceStub(ch).Probe(edge_pb2.ProbeRequest(tensors=[over]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"at most {MAX_POWER_BLOCKS}" in (err.value.details() or "")


# -- (12) finite in, finite out; no noise-free link for sale ---------------------------------------------------------
@pytest.mark.parametrize("profile", [ChannelProfile(model="awgn", snr_db=10),
                                     ChannelProfile(model="rayleigh", snr_db=10, coherence_symbols=64)])
def test_finite_input_never_comes_out_inf_or_nan(profile: ChannelProfile) -> None:
    x = np.full(1024, 3e37, np.float32)  # the float32 sum of squares overflows at ~1e19 per value
    x[::2] = -1e38
    out = transmit(x, profile, np.random.default_rng(0))
    assert np.isfinite(out.received).all()
    big = transmit(np.full(256, 1e20, np.float32), ChannelProfile(model="awgn", snr_db=40), np.random.default_rng(1))
    assert np.isfinite(big.received).all() and np.allclose(big.received, 1e20, rtol=0.05)


def test_per_block_power_is_capped_at_p_max_and_its_energy_counted_truly() -> None:
    x = np.random.default_rng(2).standard_normal(256).astype(np.float32)
    awgn0 = ChannelProfile(model="awgn", snr_db=0.0)
    bought = transmit(x, awgn0, np.random.default_rng(3), block_power=np.array([1e30, 1e30]), power_block_length=128)
    assert bought.effective_snr_db == pytest.approx(10 * math.log10(P_MAX), abs=1e-3)  # +6 dB, not +300
    assert bought.energy == pytest.approx(P_MAX * 256)
    fair = transmit(x, awgn0, np.random.default_rng(3), block_power=np.array([2.0, 0.5]), power_block_length=128)
    assert fair.energy == pytest.approx(2.5 * 128)  # under the cap: untouched
