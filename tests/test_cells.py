"""Time on the air on a virtual clock (exact): cells, MCS, the slot scheduler, delay and jitter, the header."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from pathlib import Path

import grpc
import pytest

from channel_emulator.cells import AirError, CellSet
from shared.channel.airtime import DirectionAirtime, airtime_value, parse_airtime
from shared.channel.cell import PRB_TABLE, CellConfig, SlotGrid, cell_from_mapping, prb_count, re_for_values
from shared.channel.mcs import MCS_TABLE, SNR_GAP_DB, digital_re, select_mcs
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import load_profiles
from shared.channel.scheduler import CellScheduler, LinkDelay, PfScheduler, Ticket, VirtualClock, make_scheduler
from shared.wire.headers import AIRTIME_HEADER


def test_airtime_header_round_trips_and_rejects_malformed_values() -> None:
    up = DirectionAirtime(0.0235, 0.001, 0.005, 47, 393_300, 1_200, 27, "es0")
    value = airtime_value(up, None)
    assert AIRTIME_HEADER == "meg-airtime"
    parsed = parse_airtime(value)
    assert set(parsed) == {"uplink"}
    assert parsed["uplink"] == {"air_s": 0.0235, "queue_s": 0.001, "delay_s": 0.005, "slots": 47,
                                "resource_elements": 393_300, "digital_bits": 1_200, "mcs": 27, "cell": "es0"}
    assert up.total_s == pytest.approx(0.0295)
    good = json.loads(value)["uplink"]
    for bad, needle in [
        ("not json", "not JSON"), ("[1]", "JSON object"), (json.dumps({"sideways": good}), "unknown direction"),
        (json.dumps({"uplink": {**good, "extra": 1}}), "exactly the keys"),
        (json.dumps({"uplink": {**good, "slots": 1.5}}), "slots must be int"),
        (json.dumps({"uplink": {**good, "air_s": -1.0}}), "air_s must be a finite time"),
        (json.dumps({"uplink": {**good, "cell": 3}}), "cell must be str"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_airtime(bad)


# -- the carrier and the MCS table -----------------------------------------------------------------------------
#: TS 38.101-1 Table 5.3.2-1 (FR1), copied row by row from the specification (V17): SCS kHz -> MHz -> N_RB.
SPEC_NRB = {
    15: [(5, 25), (10, 52), (15, 79), (20, 106), (25, 133), (30, 160), (35, 188), (40, 216), (45, 242), (50, 270)],
    30: [(5, 11), (10, 24), (15, 38), (20, 51), (25, 65), (30, 78), (35, 92), (40, 106), (45, 119), (50, 133),
         (60, 162), (70, 189), (80, 217), (90, 245), (100, 273)],
    60: [(10, 11), (15, 18), (20, 24), (25, 31), (30, 38), (35, 44), (40, 51), (45, 58), (50, 65), (60, 79),
         (70, 93), (80, 107), (90, 121), (100, 135)],
}


def test_prb_table_is_ts_38_101_1_table_5_3_2_1() -> None:
    assert {scs: sorted(t.items()) for scs, t in PRB_TABLE.items()} == SPEC_NRB
    assert prb_count(5, 0) == 25 and prb_count(20, 1) == 51 and prb_count(100, 1) == 273
    c = CellConfig(bandwidth_mhz=20, numerology=1, overhead=0.0)
    assert (c.scs_khz, c.slot_s, c.re_per_slot) == (30, 0.5e-3, 8568)  # 51 · 12 · 14
    assert c.capacity_re_per_s("uplink") == pytest.approx(17.136e6)
    assert CellConfig(bandwidth_mhz=5, numerology=0, overhead=0.0).capacity_re_per_s("downlink") == pytest.approx(4.2e6)
    assert CellConfig(bandwidth_mhz=20, numerology=1).re_per_prb == 144  # floor(168 · 0.86)
    assert re_for_values(786_432) == 393_216 and re_for_values(16_385) == 8_193 and re_for_values(0) == 0


#: TS 38.214 Table 5.1.3.1-2 (MCS index table 2, 256QAM): (Qm, R × 1024, spectral efficiency) for MCS 0-27.
SPEC_MCS = [(2, 120, 0.2344), (2, 193, 0.3770), (2, 308, 0.6016), (2, 449, 0.8770), (2, 602, 1.1758),
            (4, 378, 1.4766), (4, 434, 1.6953), (4, 490, 1.9141), (4, 553, 2.1602), (4, 616, 2.4063),
            (4, 658, 2.5703), (6, 466, 2.7305), (6, 517, 3.0293), (6, 567, 3.3223), (6, 616, 3.6094),
            (6, 666, 3.9023), (6, 719, 4.2129), (6, 772, 4.5234), (6, 822, 4.8164), (6, 873, 5.1152),
            (8, 682.5, 5.3320), (8, 711, 5.5547), (8, 754, 5.8906), (8, 797, 6.2266), (8, 841, 6.5703),
            (8, 885, 6.9141), (8, 916.5, 7.1602), (8, 948, 7.4063)]


def test_mcs_table_is_ts_38_214_table_5_1_3_1_2_and_thresholds_are_shannon_with_the_gap() -> None:
    assert [(m.qm, m.rate_x1024, m.efficiency) for m in MCS_TABLE] == SPEC_MCS
    for m in MCS_TABLE:  # the printed efficiency is Qm · R / 1024 rounded to 4 decimals
        assert m.efficiency == pytest.approx(m.qm * m.rate_x1024 / 1024, abs=6e-5)
        assert m.threshold_db == pytest.approx(SNR_GAP_DB + 10 * math.log10(2 ** m.efficiency - 1))
    thresholds = [m.threshold_db for m in MCS_TABLE]
    assert thresholds == sorted(thresholds)
    assert select_mcs(thresholds[0] - 0.01) is None  # outage below MCS 0
    assert [getattr(select_mcs(x), "index", None) for x in (thresholds[0], math.inf, thresholds[10] + 0.01)] == [0, 27, 10]
    assert digital_re(8 * 100, MCS_TABLE[27]) == math.ceil(800 / 7.4063) and digital_re(0, MCS_TABLE[0]) == 0


@pytest.mark.parametrize(("settings", "needle"), [
    ({"bandwidth_mhz": 0}, "bandwidth_mhz must be > 0"),
    ({"bandwidth_mhz": -5}, "bandwidth_mhz must be > 0"),
    ({"bandwidth_mhz": 7}, "bandwidth_mhz 7 is not in TS 38.101-1"),
    ({"bandwidth_mhz": 5, "numerology": 2}, "bandwidth_mhz 5 is not in TS 38.101-1 Table 5.3.2-1 at 60 kHz"),
    ({"numerology": 3}, "numerology 3 is not an FR1 numerology"),
    ({"duplex": "tdd", "tdd_pattern": "DDDSD"}, "tdd_pattern 'DDDSD' has no U slot"),
    ({"duplex": "tdd", "tdd_pattern": "UUSU"}, "has no D slot"),
    ({"tdd_pattern": "DDXU"}, "tdd_pattern must be a string of D, S and U"),
    ({"duplex": "half"}, "duplex must be fdd or tdd"),
    ({"delay_ms": -1}, "delay_ms must be a finite number"),
    ({"jitter_ms": math.nan}, "jitter_ms must be a finite number"),
    ({"jitter": "gamma"}, "jitter must be one of normal, uniform, pareto"),
    ({"scheduler": "max-rate"}, "scheduler must be rr"),
    ({"overhead": 1.0}, "overhead must be a fraction"),
    ({"queue_limit": 0}, "queue_limit must be"),
])
def test_bad_cell_settings_are_errors_naming_the_setting(settings: dict[str, object], needle: str) -> None:
    with pytest.raises(ChannelConfigError, match=re.escape(needle)):
        CellConfig(**settings)  # type: ignore[arg-type]
    with pytest.raises(ChannelConfigError, match=r"cells\.es0: "):
        cell_from_mapping("es0", settings)
    with pytest.raises(ChannelConfigError, match=r"unknown keys \['bandwidth'\]"):
        cell_from_mapping("es0", {"bandwidth": 20})


# -- the scheduler on a virtual timeline -----------------------------------------------------------------------
CELL20 = CellConfig(bandwidth_mhz=20, numerology=1, overhead=0.0)  # 51 PRB · 168 RE, 0.5 ms slots


def _run(s: CellScheduler, until: float = 1e3) -> list[Ticket]:
    return s.advance(until)


@pytest.mark.parametrize("re_count", [1, 168, 8_568, 8_569, 393_216, 1_000_000])
def test_one_message_alone_takes_ceil_re_over_re_per_slot_slots(re_count: int) -> None:
    s = CellScheduler(CELL20, "uplink", t0=10.0)
    t = s.submit("ue->es0", [re_count], 10.0)
    assert _run(s) == [t]
    slots = math.ceil(re_count / CELL20.re_per_slot)
    assert (t.state, t.slots, t.queue_s) == ("done", slots, 0.0)
    assert t.air_s == pytest.approx(slots * CELL20.slot_s, abs=1e-12)
    assert t.finished == pytest.approx(10.0 + slots * CELL20.slot_s, abs=1e-12)
    # arriving mid-slot waits for the next slot boundary
    s = CellScheduler(CELL20, "uplink")
    t = s.submit("ue->es0", [re_count], 0.2e-3)
    _run(s)
    assert t.queue_s == pytest.approx(0.3e-3) and t.finished == pytest.approx((1 + slots) * 0.5e-3)
    # with the link's delay: departure = arrival + queueing + air + delay, exactly
    assert LinkDelay(0).departure(t.finished, 0.005, 0.0, "normal") == pytest.approx(t.arrival + t.queue_s + t.air_s + 0.005)


def _jain(x: list[float]) -> float:
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x))


@pytest.mark.parametrize("kind", [CellScheduler, PfScheduler])
@pytest.mark.parametrize("n", [2, 7, 16, 64])
def test_n_backlogged_ues_share_the_cell_equally(kind: type[CellScheduler], n: int) -> None:
    size = 393_216
    # a message alone: 46 slots (45.9 slots' REs). N together pack the grid with no slot rounding per message,
    # only PRB rounding: N × the single message's PRBs, in slots
    units = math.ceil(size / CELL20.re_per_prb)
    n_single = math.ceil(n * units / CELL20.prbs) * CELL20.slot_s
    s = kind(CELL20, "downlink")
    tickets = [s.submit(f"ue{i}->es0", [size], 0.0) for i in range(n)]
    done = _run(s)
    assert len(done) == n and all(t.state == "done" for t in tickets)
    # round robin: each finishes at N × the single time ± one slot. PF gives a slot's PRBs to the best metric,
    # which on a flat channel is one flow per slot (TDMA, as Sionna's does), so its finishes spread over N slots
    slack = (1 if kind is CellScheduler else n) * CELL20.slot_s + 1e-12
    for t in tickets:
        assert abs(t.finished - n_single) <= slack, (t.flow, t.finished, n_single)
        if kind is CellScheduler:  # and the fluid processor-sharing time within 1 %
            assert t.finished == pytest.approx(n * size / CELL20.capacity_re_per_s("downlink"), rel=0.01)
    rate = CELL20.capacity_re_per_s("downlink")
    throughputs = [size / t.finished for t in tickets]
    for x in throughputs:
        assert x == pytest.approx(rate / n, rel=0.02)
    assert _jain(throughputs) >= 0.99
    busy = max(t.finished for t in tickets)
    assert s.stats.re_delivered == n * size
    assert s.stats.re_delivered == pytest.approx(rate * busy, rel=0.01)  # work conserving


def test_no_head_of_line_blocking_between_ues_and_a_links_messages_stay_in_order() -> None:
    s = CellScheduler(CELL20, "downlink")
    big = s.submit("a->es0", [CELL20.re_per_slot * 100], 0.0)
    small = s.submit("b->es0", [CELL20.re_per_slot], 0.0)
    a2 = s.submit("a->es0", [1], 0.0)
    _run(s)
    assert small.finished == pytest.approx(2 * CELL20.slot_s)  # half the cell for two slots, not behind a's 100
    assert a2.finished >= big.finished  # a's second message never overtakes its first


def test_a_bandwidth_change_mid_transfer_sends_the_rest_at_the_new_rate() -> None:
    narrow = CellConfig(bandwidth_mhz=5, numerology=1, overhead=0.0)  # 11 PRB
    s = CellScheduler(CELL20, "uplink")
    size = CELL20.re_per_slot * 40
    t = s.submit("ue->es0", [size], 0.0)
    s.set_cell(narrow, 10 * CELL20.slot_s + 1e-5)  # from the next slot boundary: slot 11
    _run(s)
    left = size - 11 * CELL20.re_per_slot
    expected = 11 * CELL20.slot_s + math.ceil(left / narrow.re_per_slot) * narrow.slot_s
    assert abs(t.finished - expected) <= narrow.slot_s
    # and back up again, to a different numerology
    s2 = CellScheduler(narrow, "uplink")
    t2 = s2.submit("ue->es0", [size], 0.0)
    wide15 = CellConfig(bandwidth_mhz=20, numerology=0, overhead=0.0)  # 106 PRB, 1 ms slots
    s2.set_cell(wide15, 0.01)
    _run(s2)
    left = size - 20 * narrow.re_per_slot
    assert abs(t2.finished - (0.01 + math.ceil(left / wide15.re_per_slot) * 1e-3)) <= 1e-3


def test_tdd_uplink_only_in_u_slots_and_downlink_only_in_d_slots() -> None:
    cell = CellConfig(bandwidth_mhz=20, numerology=1, overhead=0.0, duplex="tdd", tdd_pattern="DDDSU")
    for direction, role in (("uplink", "U"), ("downlink", "D")):
        s = CellScheduler(cell, direction)
        tickets = [s.submit(f"ue{i}->es0", [50_000 + 777 * i], 0.0) for i in range(5)]
        _run(s)
        used = [slot for t in tickets for seg in t.segments for g in seg.grants for slot, _ in g.units()]
        assert used and {cell.tdd_pattern[slot % 5] for slot in used} == {role}
    s = CellScheduler(cell, "uplink")
    t = s.submit("ue->es0", [CELL20.re_per_slot * 3], 0.0)
    _run(s)  # U slots are 4, 9, 14: three of them
    assert t.finished == pytest.approx(15 * cell.slot_s) and t.slots == 3
    assert cell.capacity_re_per_s("uplink") == pytest.approx(CELL20.capacity_re_per_s("uplink") / 5)


def test_grants_are_the_seam_disjoint_units_on_the_grid() -> None:
    s = CellScheduler(CELL20, "downlink")
    tickets = [s.submit(f"ue{i}->es0", [3_000 * (i + 1), 500], 0.0005 * i) for i in range(9)]
    _run(s)
    seen: set[tuple[int, int]] = set()
    for t in tickets:
        for seg in t.segments:
            units = [u for g in seg.grants for u in g.units()]
            assert len(units) == seg.units >= math.ceil(seg.re / CELL20.re_per_prb)
            assert all(0 <= prb < CELL20.prbs for _, prb in units)
            seen.update(units)
    # segments of one flow may share a unit (the end of one, the start of the next); of two flows never
    per_flow = [{u for seg in t.segments for g in seg.grants for u in g.units()} for t in tickets]
    assert sum(len(u) for u in per_flow) == len(seen)
    for t, flow_units in zip(tickets, per_flow, strict=True):  # a ticket's slots: the distinct slots of its units
        assert t.slots == len({slot for slot, _ in flow_units})


@pytest.mark.parametrize("kind", [CellScheduler, PfScheduler])
def test_predicted_grants_are_the_grants_when_nothing_else_arrives(kind: type[CellScheduler]) -> None:
    """predict_segments (the account clock's units, for trace replay) on a copy: equal to the units each segment
    then gets, leads included, and the scheduler itself is left as it was."""
    s = kind(CELL20, "downlink")
    tickets = [s.submit(f"ue{i}->es0", [37 * (i + 1), 3_000 * (i + 1), 500], 0.0002 * i) for i in range(4)]
    last = tickets[-1]
    predicted = s.predict_segments(last)
    assert last.state == "queued" and not any(seg.grants for seg in last.segments)  # untouched
    _run(s)
    assert last.state == "done"
    for want, got in zip(predicted, last.segments, strict=True):
        assert [u for g in want.grants for u in g.units()] == [u for g in got.grants for u in g.units()]
        assert want.lead == got.lead
    assert last.segments[1].lead == 37 * 4 % CELL20.re_per_prb  # the tensor starts where the digital part ended


def test_a_message_that_cannot_finish_before_its_deadline_expires_at_the_deadline() -> None:
    s = CellScheduler(CELL20, "uplink")
    slow = s.submit("a->es0", [CELL20.re_per_slot * 100], 0.0, deadline=0.0101)
    other = s.submit("b->es0", [CELL20.re_per_slot * 20], 0.0)
    assert s.advance(0.0100) == []
    assert s.next_event() == pytest.approx(0.0101)
    assert s.advance(0.0101) == [slow]
    assert (slow.state, slow.finished) == ("expired", 0.0101)
    _run(s)  # other had half the cell for 21 slots (10.5 slots' worth), then all of it
    assert other.finished == pytest.approx((21 + math.ceil((20 - 10.5))) * CELL20.slot_s)
    # cancelled: the rest is withdrawn
    s = CellScheduler(CELL20, "uplink")
    t = s.submit("a->es0", [CELL20.re_per_slot * 100], 0.0)
    s.cancel(t, 0.001)
    assert t.state == "cancelled" and s.backlog_re == 0 and _run(s) == []


def test_next_event_is_the_next_completion_exactly() -> None:
    s = CellScheduler(CELL20, "uplink")
    a = s.submit("a->es0", [CELL20.re_per_slot * 3], 0.0)
    b = s.submit("b->es0", [CELL20.re_per_slot * 10], 0.0)
    assert s.next_event() == pytest.approx(6 * CELL20.slot_s)
    assert s.advance(s.next_event() - 1e-9) == []  # type: ignore[operator]
    assert s.advance(s.next_event()) == [a]  # type: ignore[arg-type]
    assert s.next_event() == pytest.approx(13 * CELL20.slot_s)
    assert s.advance(1.0) == [b]


def test_a_thousand_active_links_in_one_cell() -> None:
    s = make_scheduler(CELL20, "uplink")
    start = time.perf_counter()
    tickets = [s.submit(f"ue{i}->es0", [8_192], i * 1e-5) for i in range(1_000)]
    done = _run(s)
    assert len(done) == 1_000 and time.perf_counter() - start < 5.0
    units = 1_000 * math.ceil(8_192 / CELL20.re_per_prb)
    assert max(t.finished for t in tickets) == pytest.approx(math.ceil(units / CELL20.prbs) * CELL20.slot_s)


def test_proportional_fair_favours_the_flow_with_the_better_rate_but_starves_none() -> None:
    s = PfScheduler(CELL20, "downlink")
    good = s.submit("near->es0", [CELL20.re_per_slot * 40], 0.0, rate=6.0)
    poor = s.submit("far->es0", [CELL20.re_per_slot * 40], 0.0, rate=1.0)
    _run(s)
    assert good.finished < poor.finished <= 80 * CELL20.slot_s + 1e-12


# -- delay and jitter --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["normal", "uniform", "pareto"])
def test_jitter_mean_and_std_over_ten_thousand_draws_and_no_reordering(distribution: str) -> None:
    delay, jitter = 0.020, 0.002
    link = LinkDelay(7)
    draws = [link.draw(delay, jitter, distribution) for _ in range(10_000)]
    mean = sum(draws) / len(draws)
    std = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1))
    assert mean == pytest.approx(delay, rel=0.02)
    assert std == pytest.approx(jitter, rel=0.05)
    # back to back messages (1 ms apart, jitter 2 ms) would reorder if each took its own draw: they never do
    link = LinkDelay(8)
    departures = [link.departure(i * 1e-3, delay, jitter, distribution) for i in range(10_000)]
    assert all(b >= a for a, b in itertools.pairwise(departures))
    assert all(d >= i * 1e-3 for i, d in enumerate(departures))


def test_slot_grid_maps_usable_slots() -> None:
    g = SlotGrid.of(CellConfig(duplex="tdd", tdd_pattern="DDSUU"), "uplink", t0=1.0)
    assert [g.slot_of(v) for v in range(4)] == [3, 4, 8, 9]
    assert g.first_at_or_after(1.0) == 0 and g.first_at_or_after(1.0 + 4 * 0.5e-3 + 1e-6) == 2


@pytest.mark.parametrize("n", [1, 3, 20])
def test_predicted_times_equal_the_round_robin_schedule(n: int) -> None:
    """The account clock reports predictions made at arrival: with nothing arriving later they are exact."""
    s = CellScheduler(CELL20, "downlink")
    tickets = [s.submit(f"ue{i}->es0", [700 * (i + 1) ** 2, 5_000 + 333 * i], 0.0003 * i) for i in range(n)]
    predicted = [s.predict(t) for t in tickets[-1:]]
    _run(s)
    last = tickets[-1]
    for (start, end, slots), seg in zip(predicted[0], last.segments, strict=True):
        assert start == pytest.approx(seg.first_start) and end == pytest.approx(seg.last_end)
        assert slots == seg.slots


def test_the_example_profiles_file_gives_cells_and_named_cells_start_from_the_default(tmp_path: Path) -> None:
    book = load_profiles(Path(__file__).resolve().parent.parent / "configs" / "cells.toml")
    assert set(book.cells) == {"default", "es1"}
    assert (book.cells["default"].prbs, book.cells["default"].delay_ms) == (51, 5.0)
    es1 = book.cells["es1"]
    assert (es1.prbs, es1.duplex, es1.delay_ms, es1.jitter_ms) == (25, "tdd", 5.0, 1.0)  # delay from the default
    bad = tmp_path / "bad.toml"
    bad.write_text("[cells.es0]\nbandwidth_mhz = 7\n")
    with pytest.raises(ChannelConfigError, match=r"bad.toml: cells.es0: bandwidth_mhz 7 is not in TS 38.101-1"):
        load_profiles(bad)


# -- the proxy's cells on a virtual clock ---------------------------------------------------------------------------
async def _settle(clock: VirtualClock, tasks: list[asyncio.Task[object]], until: float = 100.0) -> None:
    """Run the loop, moving the virtual clock to each next sleeper's time, until every task is done."""
    while not all(t.done() for t in tasks):
        for _ in range(50):
            await asyncio.sleep(0)
        nxt = clock.next_wakeup()
        if nxt is None or nxt > until:
            if all(t.done() for t in tasks):
                break
            raise AssertionError(f"stuck at t={clock.now()} with no sleeper due")
        clock.advance_to(nxt)


def _cells(clock: VirtualClock, mode: str = "enforce", **settings: object) -> CellSet:
    return CellSet({"default": CellConfig(bandwidth_mhz=20, numerology=1, overhead=0.0, **settings)}, mode, clock)  # type: ignore[arg-type]


def test_the_proxy_releases_a_message_at_arrival_plus_air_plus_delay_exactly() -> None:
    async def run() -> None:
        clock = VirtualClock(5.0)
        cells = _cells(clock, delay_ms=4.0)
        n = 2 * CELL20.re_per_slot * 10  # 10 slots of REs
        task = asyncio.ensure_future(cells.carry("ue->es0", "es0", "downlink", n * 4 + 100, [n], n * 4, lambda: math.inf,
                                                 deadline=10.0, arrival=5.0))
        await _settle(clock, [task])
        crossing = task.result()
        digital = math.ceil(800 / MCS_TABLE[27].efficiency)
        assert crossing.airtime.mcs == 27 and crossing.airtime.digital_bits == 800
        assert crossing.airtime.resource_elements == digital + n // 2
        slots = math.ceil((digital + n // 2) / CELL20.re_per_slot)
        assert crossing.airtime.air_s == pytest.approx(slots * CELL20.slot_s) and crossing.airtime.queue_s == 0
        assert crossing.departure == pytest.approx(5.0 + slots * CELL20.slot_s + 0.004)
        assert crossing.segments[1].resource_elements == n // 2
        await cells.close()

    asyncio.run(run())


def test_the_proxy_fails_a_late_message_at_the_deadline_and_a_full_queue_at_once() -> None:
    async def run() -> None:
        clock = VirtualClock(0.0)
        cells = _cells(clock, queue_limit=1)
        big = [CELL20.re_per_slot * 2 * 100]  # 100 slots = 50 ms

        def send(ue: str, deadline: float) -> asyncio.Task[object]:
            cells.admit(f"{ue}->es0", "es0", "uplink")  # as the proxy does, before its channel math
            return asyncio.ensure_future(cells.carry(f"{ue}->es0", "es0", "uplink", big[0] * 4, big, big[0] * 4,
                                                     lambda: math.inf, deadline=deadline, arrival=clock.now()))
        late = send("a", 0.0201)
        ended: list[float] = []
        late.add_done_callback(lambda _: ended.append(clock.now()))
        for _ in range(5):
            await asyncio.sleep(0)
        with pytest.raises(AirError) as full:
            cells.admit("a->es0", "es0", "uplink")
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and clock.now() == 0.0  # at once
        assert "queue_limit 1" in str(full.value)
        cells.admit("a->es0", "es0", "downlink")  # per direction
        other = send("b", 1.0)
        await _settle(clock, [late, other])
        assert isinstance(late.exception(), AirError) and late.exception().code == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]
        assert "before the RPC deadline" in str(late.exception()) and ended == [0.0201]  # at the deadline, not after
        # the deadline ended it at 20.1 ms; b had half the cell until the next slot boundary, then all of it
        assert other.result().airtime.air_s == pytest.approx((41 + math.ceil(100 - 41 / 2)) * CELL20.slot_s)  # type: ignore[attr-defined]
        await cells.close()

    asyncio.run(run())


def test_digital_bits_in_outage_wait_for_the_link_to_lift() -> None:
    async def run() -> None:
        clock = VirtualClock(0.0)
        cells = _cells(clock)
        snr = [-20.0]
        task = asyncio.ensure_future(cells.carry("ue->es0", "es0", "uplink", 1000, [], 0, lambda: snr[0],
                                                 deadline=1.0, arrival=0.0))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        clock.advance_to(0.3)
        snr[0] = 10.0
        cells.profiles_changed.set()
        await _settle(clock, [task])
        a = task.result().airtime
        assert a.mcs == 11 and a.queue_s == pytest.approx(0.3, abs=CELL20.slot_s)
        snr[0] = -20.0  # and one that never lifts ends at its deadline
        stuck = asyncio.ensure_future(cells.carry("ue->es0", "es0", "uplink", 1000, [], 0, lambda: snr[0],
                                                  deadline=2.0, arrival=clock.now()))
        await _settle(clock, [stuck])
        assert isinstance(stuck.exception(), AirError) and clock.now() == 2.0 and "outage" in str(stuck.exception())
        await cells.close()

    asyncio.run(run())


def test_the_account_clock_reports_the_same_times_without_waiting() -> None:
    async def run() -> None:
        clock = VirtualClock(0.0)
        cells = _cells(clock, "account", delay_ms=3.0)
        n = CELL20.re_per_slot * 2 * 7
        crossing = await cells.carry("ue->es0", "es0", "downlink", n * 4, [n], n * 4, lambda: math.inf, 1.0, 0.0)
        assert clock.now() == 0.0 and crossing.departure == 0.0  # nothing waited for
        assert crossing.airtime.air_s == pytest.approx(7 * CELL20.slot_s) and crossing.airtime.delay_s == pytest.approx(0.003)
        stats = cells.stats()
        assert [(s.cell, s.direction, s.messages, s.backlog_resource_elements) for s in stats] == [("es0", "downlink", 1, n // 2)]

    asyncio.run(run())


def test_cell_metrics_are_prometheus_families_per_cell_and_direction() -> None:
    from channel_emulator.metrics import CellCollector

    async def run() -> CellSet:
        clock = VirtualClock(0.0)
        cells = _cells(clock, "account")
        await cells.carry("ue->es0", "es0", "uplink", 40_000, [10_000], 40_000, lambda: math.inf, 1.0, 0.0)
        clock.advance_to(1.0)
        return cells

    cells = asyncio.run(run())
    families = {f.name: f for f in CellCollector(cells).collect()}
    util = families["meg_channel_cell_utilisation"].samples[0]
    assert util.labels == {"cell": "es0", "direction": "uplink"} and 0 < util.value < 0.01
    assert families["meg_channel_cell_messages"].samples[0].value == 1
    assert families["meg_channel_cell_resource_elements"].samples[0].value == 5_000
    assert families["meg_channel_cell_delivered_bits_per_second"].samples[0].value == pytest.approx(8 * 40_000)
