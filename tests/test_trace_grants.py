"""Issue 20: a trace link's tensors are received on the resource elements the cell's scheduler granted them.

Two UEs share one round-robin cell: the second one's tensor is dealt every other unit while the first is backlogged,
and the replay must apply the trace's ``H[slot, element]`` at exactly those units (the scheduler's grants, then
:func:`channel_emulator.replay.granted_allocation`); a lone UE gets the whole carrier slot after slot, as before.
Times run on a virtual clock (the proxy in process, a real edge server behind it)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from channel_emulator.cells import CellSet
from channel_emulator.replay import REPLAY, granted_allocation
from shared.channel.airtime import parse_airtime
from shared.channel.cell import CellConfig
from shared.channel.profiles import BUILTIN_PROFILES, IDEAL, ChannelProfile, ProfileBook, profile_from_mapping
from shared.channel.scheduler import VirtualClock
from shared.channel.trace import (
    Allocation,
    TraceMeta,
    estimate_gains,
    load_trace,
    normalise,
    save_trace,
    transmit_on_grid,
)
from shared.pb import air_pb2, edge_pb2, edge_pb2_grpc
from shared.wire import air
from shared.wire.headers import AIRTIME_HEADER, UE_HEADER
from tests.conftest import BackgroundLoop

CELL = CellConfig(bandwidth_mhz=5, numerology=0, overhead=0.0)  # 25 PRBs of 168 REs, 1 ms slots


def _trace(path: Path, slots: int = 64, prbs: int = 25, seed: int = 7) -> Path:
    rng = np.random.default_rng(seed)
    h = (rng.normal(size=(slots, prbs)) + 1j * rng.normal(size=(slots, prbs))) / np.sqrt(2)
    return save_trace(path, normalise(h), TraceMeta(model="TDL-A", per="prb", numerology=0, bandwidth_mhz=5.0,
                                                    prbs=prbs, generator="test"))


def _units(positions: list[int], prbs: int = CELL.prbs) -> list[tuple[int, int]]:
    """Grid positions -> (slot, PRB) of an FDD cell whose slot 0 is the replay's slot 0."""
    return [divmod(p, prbs) for p in positions]


def test_enforce_grants_of_two_ues_interleave_and_a_lone_ue_fills_the_carrier() -> None:
    """The enforce clock: two messages in one cell at once are dealt alternate units (round robin) and the replay's
    allocation of each tensor is exactly its share, shifted by the digital REs before it on its flow."""

    async def run() -> tuple[list[Allocation], list[int]]:
        clock = VirtualClock(3.0)
        cells = CellSet({"default": CELL}, "enforce", clock)
        REPLAY.restart(clock.now)
        big, small = 168 * 2 * 40, 168 * 2 * 10  # 40 and 10 units of tensor
        tasks = [asyncio.ensure_future(cells.carry(f"{ue}->es0", "es0", "downlink", 4 * n + 60, [n], 4 * n,
                                                   lambda: 20.0, 10.0, 3.0, grants=True))
                 for ue, n in (("a", big), ("b", small))]
        while not all(t.done() for t in tasks):
            for _ in range(20):
                await asyncio.sleep(0)
            nxt = clock.next_wakeup()
            if nxt is not None:
                clock.advance_to(nxt)
        out, leads = [], []
        for t, n in zip(tasks, (big, small), strict=True):
            seg = t.result().served[1]
            leads.append(seg.lead)
            out.append(granted_allocation(seg, n // 2, CELL.re_per_prb, REPLAY.epoch))
        await cells.close()
        return out, leads

    try:
        (a, b), (lead_a, lead_b) = asyncio.run(run())
    finally:
        REPLAY.restart(__import__("time").monotonic)
    assert lead_a == lead_b and 0 < lead_a < CELL.re_per_prb  # the digital bits' REs come first on each flow
    # both start at position 0/1 and alternate while both have data: b's 11 units (its lead spills into an 11th)
    # are the odd positions 1..21; a's are the even ones, then the rest of the grid once b ran dry
    want_b = Allocation.from_units(_units([2 * m + 1 for m in range(11)]), 168 * 10, CELL.re_per_prb, lead_b)
    np.testing.assert_array_equal(b.slots, want_b.slots)
    np.testing.assert_array_equal(b.subcarriers, want_b.subcarriers)
    a_positions = [2 * m for m in range(11)] + list(range(22, 22 + 30))
    want_a = Allocation.from_units(_units(a_positions), 168 * 40, CELL.re_per_prb, lead_a)
    np.testing.assert_array_equal(a.slots, want_a.slots)
    np.testing.assert_array_equal(a.subcarriers, want_a.subcarriers)
    assert not np.array_equal(b.subcarriers, Allocation.contiguous(len(b), 0, CELL.prbs, CELL.re_per_prb).subcarriers)


@dataclass
class Stack:
    proxy: str
    clock: VirtualClock
    trace: Path
    profile: ChannelProfile


@pytest.fixture()
def stack(tmp_path: Path, random_model_dir: Path) -> Iterator[Stack]:
    """A real ES (Probe echoes) behind an in-process proxy: uplink ideal, downlink a per-PRB trace in a 5 MHz
    round-robin cell, the ``account`` clock on a virtual time that stands still (so both UEs' messages share it)."""
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy
    from edge_server.server import create_server
    from edge_server.settings import EdgeSettings
    from shared.model.ops import ModelParts

    path = _trace(tmp_path / "t.npz")
    profile = profile_from_mapping("moving", {"trace": str(path), "snr_db": 12, "csi_error": 0.3})
    clock = VirtualClock(50.0)
    cells = CellSet({"default": CELL}, "account", clock)
    REPLAY.restart(clock.now)
    REPLAY.cell_of = cells.cell_of
    bg = BackgroundLoop()
    es, es_port, _ = bg.run(create_server(EdgeSettings(listen="127.0.0.1:0"),  # type: ignore[misc]
                                          ModelParts.load(str(random_model_dir), "cpu")))
    table = LinkTable(ProfileBook({**BUILTIN_PROFILES, profile.name: profile}, {}), IDEAL, profile)
    proxy, port, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": f"127.0.0.1:{es_port}"}, table, cells=cells))  # type: ignore[misc]
    try:
        yield Stack(f"127.0.0.1:{port}", clock, path, profile)
    finally:
        bg.run(proxy.stop(0))
        bg.run(es.stop(0))
        es.meg_servicer.close()  # type: ignore[attr-defined]
        bg.close()
        REPLAY.restart(__import__("time").monotonic)
        REPLAY.cell_of = lambda es: None


def _probe(stub: edge_pb2_grpc.EdgeServiceStub, ue: str, x: np.ndarray) -> tuple[air_pb2.AirTensor, dict[str, object]]:
    reply, call = stub.Probe.with_call(edge_pb2.ProbeRequest(tensors=[air.to_air("x", x)]), timeout=60,
                                       metadata=((UE_HEADER, ue),))
    md = dict(call.trailing_metadata() or ())
    return reply.tensors[0], parse_airtime(md[AIRTIME_HEADER])["downlink"]  # type: ignore[return-value]


def _expected(stack: Stack, x: np.ndarray, t: air_pb2.AirTensor, alloc: Allocation) -> np.ndarray:
    """What the replay gives ``x`` on ``alloc``: the trace's H there, the CSI error and noise from the stamped seed."""
    trace = load_trace(stack.trace)
    h = trace.gains(alloc.slots, trace.element_of(alloc.subcarriers))
    rng = np.random.default_rng(t.applied.noise_seed)
    return transmit_on_grid(x, h, stack.profile.snr_db, rng, h_hat=estimate_gains(h, stack.profile.csi_error, rng)).received


def test_two_ues_in_one_cell_are_received_on_their_own_granted_units(stack: Stack) -> None:
    """Through the proxy: UE a (alone) gets the whole carrier slot after slot from its arrival; UE b, arriving while
    a's downlink is still on the air, is dealt every other unit and each of its REs carries the trace's gain of
    that unit's slot and PRB (and not the full-carrier layout a lone UE would get)."""
    rng = np.random.default_rng(1)
    xa = rng.standard_normal(168 * 2 * 40).astype(np.float32)  # 40 units
    xb = rng.standard_normal(168 * 2 * 10).astype(np.float32)  # 10 units
    with grpc.insecure_channel(stack.proxy) as ch:
        stub = edge_pb2_grpc.EdgeServiceStub(ch)
        ta, aira = _probe(stub, "a", xa)
        tb, airb = _probe(stub, "b", xb)
    assert stack.clock.now() == 50.0  # the account clock: nothing waited, both are queued at t = 50 s
    lead_a = int(aira["resource_elements"]) - xa.size // 2  # type: ignore[call-overload]
    lead_b = int(airb["resource_elements"]) - xb.size // 2  # type: ignore[call-overload]
    assert 0 < lead_a < 168 and 0 < lead_b < 168  # the digital bits (framing) come first on each flow
    # a alone: positions 0, 1, 2, ... (the carrier PRB by PRB, slot by slot from slot 0), after its digital REs
    alone = Allocation.from_units(_units(list(range(41))), xa.size // 2, 168, lead_a)
    np.testing.assert_array_equal(air.air_array(ta), _expected(stack, xa, ta, alone))
    assert ta.applied.blocks == 2 and ta.applied.resource_elements == xa.size // 2
    # b shares with a: a is ahead in the turn, so b's m-th unit is at position 2m + 1 (a's 41 units outlast b's 11)
    shared = Allocation.from_units(_units([2 * m + 1 for m in range(11)]), xb.size // 2, 168, lead_b)
    got_b = air.air_array(tb)
    np.testing.assert_array_equal(got_b, _expected(stack, xb, tb, shared))
    lone = Allocation.from_units(_units(list(range(11))), xb.size // 2, 168, lead_b)
    assert not np.allclose(got_b, _expected(stack, xb, tb, lone))  # the lone-UE layout is not what b got
    assert math.isclose(float(airb["air_s"]), 1e-3)  # type: ignore[arg-type]  # positions 1..21: slot 0 only


def test_a_bad_power_allocation_on_a_trace_link_is_refused_before_any_air_time(tmp_path: Path) -> None:
    """The enforce clock on a virtual time nobody advances: a trace link's request with a NaN power allocation is
    INVALID_ARGUMENT at once, checked before the message is queued (it would otherwise wait for its slots)."""
    from channel_emulator.link import LinkTable
    from channel_emulator.proxy import create_proxy

    profile = profile_from_mapping("moving", {"trace": str(_trace(tmp_path / "t.npz")), "snr_db": 12})
    clock = VirtualClock(0.0)
    cells = CellSet({"default": CELL}, "enforce", clock)
    REPLAY.restart(clock.now)
    REPLAY.cell_of = cells.cell_of
    bg = BackgroundLoop()
    table = LinkTable(ProfileBook({**BUILTIN_PROFILES, profile.name: profile}, {}), profile, IDEAL)
    proxy, port, _ = bg.run(create_proxy("127.0.0.1:0", {"es0": "127.0.0.1:1"}, table, cells=cells))  # type: ignore[misc]
    try:
        t = air.to_air("x", np.ones(64, np.float32))
        t.block_length = 8
        t.block_power.extend([1.0] * 7 + [math.nan])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError) as err:
            edge_pb2_grpc.EdgeServiceStub(ch).Probe(edge_pb2.ProbeRequest(tensors=[t]), timeout=10,
                                                    metadata=((UE_HEADER, "u"),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "power allocation entries must be finite" in (err.value.details() or "")
        assert clock.now() == 0.0 and not cells.directions  # nothing was queued on the cell
    finally:
        bg.run(proxy.stop(0))
        bg.close()
        REPLAY.restart(__import__("time").monotonic)
        REPLAY.cell_of = lambda es: None
