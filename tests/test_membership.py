"""The proxy follows its edge servers (channel_emulator.membership, issue 21).

Fast tests drive membership round by round (``probe_round``; no clock, no sleep) against real gRPC health
servers in this process, and a real proxy in front of them. The slow test runs the real processes: a proxy
with ``--upstream-pattern``, one ES, then a second, UIDG over both, one stopped, UIDG again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from channel_emulator.link import LinkTable
from channel_emulator.membership import Membership, Pattern
from channel_emulator.proxy import Upstreams, create_proxy
from shared.channel.profiles import IDEAL, ProfileBook
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
from tests.support.procs import running, script

# -- patterns -------------------------------------------------------------------------------------------------

def test_pattern_expands_slots() -> None:
    assert Pattern.parse("es{i}=es{i}:50051").expand(3) == ("es3", "es3:50051")
    assert Pattern.parse("es{i}=es-{i}.es:50051").expand(0) == ("es0", "es-0.es:50051")
    assert Pattern.parse("es{i}=127.0.0.1:{i+50061}").expand(2) == ("es2", "127.0.0.1:50063")


@pytest.mark.parametrize("bad, why", [
    ("es=es:50051", "with {i} in NAME"),
    ("es{i}", "with {i} in NAME"),
    ("es{i}=es{i}", "is not HOST:PORT"),
    ("bad name{i}=h:1", "must be 1-64 letters"),
    ("es{i}=h:{i+70000}", "is not HOST:PORT"),
])
def test_bad_patterns_say_why(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("{", r"\{").replace("}", r"\}")):
        Pattern.parse(bad)


def test_bad_pattern_is_a_one_line_cli_error() -> None:
    res = subprocess.run([script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream-pattern", "es=es:1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode != 0 and "{i} in NAME" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([script("meg-channel"), "serve", "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode != 0 and "--upstream-pattern" in res.stderr and "Traceback" not in res.stderr


# -- membership against real health servers ----------------------------------------------------------------

class FakeES:
    """A real gRPC server with the health service (and nothing of the edge service) on 127.0.0.N:PORT."""

    def __init__(self, server: grpc.aio.Server, servicer: health.aio.HealthServicer) -> None:
        self.server, self.servicer = server, servicer

    async def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.servicer.set("", status)


async def _health_server(address: str) -> tuple[FakeES, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    await server.start()
    es = FakeES(server, servicer)
    await es.set(True)
    return es, port


@asynccontextmanager
async def _two_hosts() -> AsyncIterator[tuple[int, Callable[[int], object]]]:
    """``(port, start)``: ``await start(i)`` serves health on 127.0.0.{10+i}:port (one port, one address per
    slot, so the pattern ``es{i}=127.0.0.{i+10}:PORT`` names them). The port comes from binding port 0."""
    started: list[FakeES] = []
    first, port = await _health_server("127.0.0.10:0")
    started.append(first)

    async def start(i: int) -> FakeES:
        es, _ = await _health_server(f"127.0.0.{10 + i}:{port}")
        started.append(es)
        return es

    try:
        yield port, start
    finally:
        for es in started:
            await es.server.stop(None)


def test_members_join_and_leave_round_by_round() -> None:
    async def body() -> None:
        async with _two_hosts() as (port, start):
            m = Membership([Pattern.parse(f"es{{i}}=127.0.0.{{i+10}}:{port}")], max_upstreams=3, misses=2,
                           probe_timeout_s=10.0)  # a loaded machine may take seconds to connect
            ups = Upstreams({}, [], dynamic=True)
            m.attach(ups)
            assert await m.probe_round() == [f"edge server es0 joined at 127.0.0.10:{port}"]
            assert list(ups.targets) == ["es0"]
            es1 = await start(1)  # type: ignore[misc]
            assert await m.probe_round() == [f"edge server es1 joined at 127.0.0.11:{port}"]
            assert list(ups.targets) == ["es0", "es1"]
            assert await m.probe_round() == []  # nothing changed
            await es1.set(False)  # draining (what meg-edge says on SIGTERM)
            assert await m.probe_round() == [] and "es1" in ups.targets  # one miss is not yet a leave
            left = await m.probe_round()
            assert left == [f"edge server es1 at 127.0.0.11:{port} left: health says NOT_SERVING"]
            assert list(ups.targets) == ["es0"] and "NOT_SERVING" in ups.gone["es1"]
            await es1.set(True)
            assert await m.probe_round() == [f"edge server es1 joined at 127.0.0.11:{port}"]
            assert "es1" not in ups.gone
            await es1.server.stop(None)  # gone for good: unreachable
            await m.probe_round()
            assert "es1" in ups.targets
            await m.probe_round()
            assert "es1" not in ups.targets and "health check UNAVAILABLE" in ups.gone["es1"]
            assert (m.members["es1"].joins, m.members["es1"].leaves) == (2, 2)
            metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for fam in m.collector().collect() for s in fam.samples}
            assert metrics[("meg_channel_upstreams", ())] == 1
            assert metrics[("meg_channel_upstream_up", (("es", "es0"),))] == 1
            assert metrics[("meg_channel_upstream_up", (("es", "es1"),))] == 0
            assert metrics[("meg_channel_upstream_changes_total", (("change", "left"), ("es", "es1")))] == 2
            await ups.close()

    asyncio.run(body())


class SlowHealth(health_pb2_grpc.HealthServicer):
    """A health service that answers SERVING, or (``hang``) not at all: an ES too busy to answer."""

    def __init__(self) -> None:
        self.hang = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if self.hang:
            await asyncio.sleep(30)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_a_busy_es_is_kept_longer_than_a_gone_one() -> None:
    """Probes that only time out count against slow_misses (5), not misses (2): a loaded ES is not dropped
    at once; one that never answers is, and the reason says so."""
    async def body() -> None:
        server = grpc.aio.server()
        servicer = SlowHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            m = Membership([Pattern.parse(f"es{{i}}=127.0.0.1:{port}")], max_upstreams=1, probe_timeout_s=0.2)
            ups = Upstreams({}, [], dynamic=True)
            m.attach(ups)
            assert await m.probe_round() == [f"edge server es0 joined at 127.0.0.1:{port}"]
            servicer.hang = True
            for _ in range(4):
                assert await m.probe_round() == []
            assert "es0" in ups.targets
            servicer.hang = False
            await m.probe_round()  # answered again: the count starts over
            servicer.hang = True
            for _ in range(4):
                assert await m.probe_round() == []
            left = await m.probe_round()
            assert left == [f"edge server es0 at 127.0.0.1:{port} left: no health answer within 0.2 s"], left
            assert "after 5 failed probes" in ups.gone["es0"]
            await ups.close()
            await m.stop()
        finally:
            await server.stop(None)

    asyncio.run(body())


def test_a_name_that_does_not_resolve_never_joins_and_fixed_ones_are_left_alone() -> None:
    async def body() -> None:
        m = Membership([Pattern.parse("es{i}=no-such-es-{i}.invalid:50051")], max_upstreams=2, fixed=["es0"])
        ups = Upstreams({"es0": "127.0.0.1:1"}, [])
        m.attach(ups)
        assert [n for n, _ in m.candidates()] == ["es1"]  # es0 is a fixed --upstream: never probed
        assert await m.probe_round() == []
        assert list(ups.targets) == ["es0"] and m.members == {}
        await ups.close()

    asyncio.run(body())


def test_a_ue_asking_for_a_dropped_es_gets_unavailable_naming_it() -> None:
    """A real proxy with membership: its upstream table follows; GetChannel lists the members; an RPC routed
    to a dropped ES is UNAVAILABLE with its name and why; the proxy keeps serving and keeps the link's counters."""
    async def body() -> None:
        async with _two_hosts() as (port, start):
            m = Membership([Pattern.parse(f"es{{i}}=127.0.0.{{i+10}}:{port}")], max_upstreams=2, misses=1,
                           interval_s=3600)  # rounds driven by hand below
            table = LinkTable(ProfileBook({}), IDEAL, IDEAL)
            server, proxy_port, _ = await create_proxy("127.0.0.1:0", {}, table, membership=m)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy_port}") as ch:
                    ctl = channel_pb2_grpc.ChannelControlStub(ch)
                    edge = edge_pb2_grpc.EdgeServiceStub(ch)
                    assert list((await ctl.GetChannel(channel_pb2.GetChannelRequest())).upstreams) == ["es0"]
                    es1 = await start(1)  # type: ignore[misc]
                    await m.probe_round()
                    assert list((await ctl.GetChannel(channel_pb2.GetChannelRequest())).upstreams) == ["es0", "es1"]
                    with pytest.raises(grpc.aio.AioRpcError) as reached:  # es1 is only a health server
                        await edge.Describe(edge_pb2.DescribeRequest(), metadata=(("meg-es", "es1"),), timeout=10)
                    assert reached.value.code() == grpc.StatusCode.UNIMPLEMENTED
                    await es1.set(False)
                    await m.probe_round()
                    assert list((await ctl.GetChannel(channel_pb2.GetChannelRequest())).upstreams) == ["es0"]
                    with pytest.raises(grpc.aio.AioRpcError) as gone:
                        await edge.Describe(edge_pb2.DescribeRequest(), metadata=(("meg-es", "es1"),), timeout=10)
                    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "edge server es1 has left the proxy" in gone.value.details()
                    assert "NOT_SERVING" in gone.value.details() and "upstreams now: es0" in gone.value.details()
                    stats = await ctl.GetStats(channel_pb2.GetStatsRequest())
                    assert any(e.link == "ue->es1" and e.rpcs >= 1 for e in stats.entries)  # counters kept
                    with pytest.raises(grpc.aio.AioRpcError) as unknown:
                        await edge.Describe(edge_pb2.DescribeRequest(), metadata=(("meg-es", "es7"),), timeout=10)
                    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "es7" in unknown.value.details()
            finally:
                await m.stop()
                await server.stop(None)

    asyncio.run(body())


def test_no_member_yet_is_unavailable_not_unknown() -> None:
    async def body() -> None:
        m = Membership([Pattern.parse("es{i}=no-such-es-{i}.invalid:50051")], max_upstreams=1, interval_s=3600)
        server, port, _ = await create_proxy("127.0.0.1:0", {}, LinkTable(ProfileBook({}), IDEAL, IDEAL), membership=m)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await edge_pb2_grpc.EdgeServiceStub(ch).Describe(edge_pb2.DescribeRequest(), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "no edge server has joined" in err.value.details()
        finally:
            await m.stop()
            await server.stop(None)

    asyncio.run(body())


# -- real processes -----------------------------------------------------------------------------------------

def _two_free_ports() -> int:
    """A port P with P and P+1 free on 127.0.0.1 now (what a person starting ESs by hand picks)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
                return int(p)
    raise RuntimeError("no two consecutive free ports")


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.slow
def test_proxy_follows_edge_servers_started_and_stopped_by_hand(random_model_dir: Path, tmp_path: Path) -> None:
    base = _two_free_ports()

    def edge(i: int) -> list[str]:
        return [script("meg-edge"), "serve", "--listen", f"127.0.0.1:{base + i}", "--model", str(random_model_dir),
                "--device", "cpu", "--name", f"es{i}"]

    def upstreams(via: str) -> list[str]:
        with grpc.insecure_channel(via) as ch:
            return list(channel_pb2_grpc.ChannelControlStub(ch).GetChannel(channel_pb2.GetChannelRequest(), timeout=10).upstreams)

    def uidg(via: str, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script("meg-ue"), "generate", "a red circle", "--protocol", "UIDG", "--via", via,
                               "--model", str(random_model_dir), "--steps", "2", "--out", str(tmp_path / out),
                               "--json", *extra], capture_output=True, text=True, timeout=300, check=False)

    proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream-pattern",
             f"es{{i}}=127.0.0.1:{{i+{base}}}", "--max-upstreams", "4", "--membership-interval-s", "0.5",
             "--metrics-port", "0"]
    with running(edge(0), "meg.v1.EdgeService"), running(proxy, "meg.v1.ChannelControl") as (pproc, pport):
        via = f"127.0.0.1:{pport}"
        assert upstreams(via) == ["es0"]  # the first round ran before the proxy said SERVING
        with running(edge(1), "meg.v1.EdgeService") as _:
            joined = _wait(lambda: upstreams(via) == ["es0", "es1"], 10, "es1 joins")
            print(f"es1 joined {joined:.1f} s after it said SERVING")
            res = uidg(via, "both.png")
            assert res.returncode == 0, res.stdout + res.stderr
            report = json.loads(res.stdout.strip().splitlines()[-1])
            assert sorted(report["es"]) == ["es0", "es1"], report
        # es1 stopped (SIGTERM: it says NOT_SERVING, drains, exits)
        left = _wait(lambda: upstreams(via) == ["es0"], 10, "es1 is dropped")
        print(f"es1 dropped {left:.1f} s after it exited")
        res = uidg(via, "again.png", "--es", "es0,es1")  # a UE that asks for it by name
        assert res.returncode != 0 and "es1" in (res.stdout + res.stderr), res.stdout + res.stderr
        print(f"meg-ue --es es0,es1 after es1 left: {(res.stdout + res.stderr).strip().splitlines()[-1]}")
        # a UE that learnt both before es1 left: its UIDG goes on with es0 and names es1 as gone
        from shared.model.ops import ModelParts
        from shared.protocol.params import Params
        from ue_client.session import MultiOptions, generate
        from ue_client.transport import connect

        clients = connect(via, ["es0", "es1"], ue_id="early")
        try:
            r = generate(ModelParts.load(str(random_model_dir), "cpu"), None, "a red circle", "UIDG", "txt2img",
                         Params(seed=1, steps=2), None, clients=clients, options=MultiOptions(pick="first"))  # type: ignore[arg-type]
        finally:
            for c in clients.values():
                c.close()
        assert set(r.failed) == {"es1"} and "edge server es1 has left the proxy" in r.failed["es1"], r.failed
        assert "UNAVAILABLE" in r.failed["es1"]
        tail = "".join(pproc.tail)  # type: ignore[attr-defined]
        assert "edge server es1 joined at" in tail and "edge server es1 at" in tail and "left" in tail
        metrics_port = int(next(line.rsplit(" ", 1)[1] for line in tail.splitlines() if "metrics on port" in line))
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'meg_channel_upstream_up{es="es1"} 0.0' in text and "meg_channel_upstreams 1.0" in text
