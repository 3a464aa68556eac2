"""The one ChannelControl client (:mod:`shared.rpc.control`) against a real proxy on a free port."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from shared.pb import channel_pb2
from shared.rpc.control import AsyncControlClient, ControlClient, set_request, stats_by_direction


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    """A proxy alone (its upstream is a closed port: control calls need no ES)."""
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from shared.channel.profiles import IDEAL, load_profiles
    from tests.conftest import BackgroundLoop

    bg = BackgroundLoop()
    table = LinkTable(load_profiles(None), IDEAL, IDEAL, seed=0)
    server, port, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": "127.0.0.1:9", "es1": "127.0.0.1:9"}, table))  # type: ignore[misc]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        bg.run(server.stop(0))
        bg.close()


def test_get_set_links_reset(proxy: str) -> None:
    with ControlClient(proxy) as control:
        assert control.upstreams() == ["es0", "es1"]
        awgn = channel_pb2.Profile(model="awgn", snr_db=7.0)
        ideal = channel_pb2.Profile(model="ideal")
        control.set_link("a->es0", awgn, ideal)
        links = control.links(["a->es0", "never->es1"])
        assert (links["a->es0"][0].model, links["a->es0"][0].snr_db, links["a->es0"][1].model) == ("awgn", 7.0, "ideal")
        assert links["never->es1"][0].model == "ideal"  # the default, for a link not seen yet
        control.set(set_request("b->es1", "both", custom=channel_pb2.Profile(model="awgn", snr_db=3.0)))
        assert {ls.link for ls in control.get_channel().links} >= {"a->es0", "b->es1"}
        csi = control.csi("a->es0", "downlink", blocks=3)
        assert len(csi.gains) == 3
        assert stats_by_direction(control.stats()) == {d: dict.fromkeys(
            ("rpcs", "transmissions", "symbols", "payload_bytes", "message_bytes"), 0) for d in ("uplink", "downlink")}
        control.reset(stats=True)
        assert "a->es0" not in {ls.link for ls in control.get_channel().links}
        assert len(control.list_profiles().profiles) >= 1


def test_set_request_takes_exactly_one_setting() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        set_request("x->es0")
    with pytest.raises(ValueError, match="exactly one"):
        set_request("x->es0", profile="awgn10", custom=channel_pb2.Profile(model="ideal"))
    assert set_request("x->es0", "uplink", profile="p").WhichOneof("setting") == "profile"


def test_every_call_has_a_deadline() -> None:
    """A peer that accepts the connection and never speaks HTTP/2: the call ends at the client's deadline."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        with ControlClient(f"127.0.0.1:{mute.getsockname()[1]}", timeout_s=0.3) as control:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                control.get_channel()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 3


def test_async_client_csi(proxy: str) -> None:
    with ControlClient(proxy) as sync:
        sync.set(set_request("z->es0", "both", custom=channel_pb2.Profile(model="rayleigh", snr_db=10,
                                                                           coherence_symbols=4)))

    async def go() -> tuple[int, list[str]]:
        control = AsyncControlClient(proxy, timeout_s=5)
        try:
            csi = await control.csi("z->es0", "downlink", blocks=2)
            return len(csi.gains), list((await control.get_channel()).upstreams)
        finally:
            await control.close()

    assert asyncio.run(go()) == (2, ["es0", "es1"])


def test_start_and_stop_a_scenario(proxy: str) -> None:
    """``start_scenario`` / ``stop_scenario``: the scenario shows in the settings; a bad file is INVALID_ARGUMENT."""
    toml = '[[event]]\nat_s = 0.0\nlink = "s->es0"\nsnr_db = 4.0\n[[event]]\nat_s = 3600.0\nue = "s"\nhandover = "es1"\n'
    with ControlClient(proxy) as control:
        started = control.start_scenario("cc", toml)
        (s,) = [x for x in started.scenarios if x.name == "cc"]
        assert s.state == "playing" and s.events == 2 and s.duration_s == 3600.0
        with pytest.raises(grpc.RpcError) as err:
            control.start_scenario("cc", toml)  # playing: refused unless replace
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert [x.state for x in control.start_scenario("cc", toml, replace=True).scenarios if x.name == "cc"] == ["playing"]
        with pytest.raises(grpc.RpcError) as err:
            control.start_scenario("bad", '[[event]]\nat_s = "soon"\n')
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bad: event[0]" in (err.value.details() or "")
        stopped = control.stop_scenario("cc")
        assert [x.state for x in stopped.scenarios if x.name == "cc"] == ["stopped"]
        assert all(x.state != "playing" for x in control.stop_scenario().scenarios)
    from channel_emulator.mobility import SCENARIOS

    SCENARIOS.items.clear()  # this process's scenarios: the next test's proxy starts with none
