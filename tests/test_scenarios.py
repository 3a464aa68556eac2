"""Mobility scenarios (``shared.channel.scenario``): TR 38.901 path loss, the TOML file, events fired at their times
on a virtual clock (exact), bad files refused with the file, event and field named."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from shared.channel.models import ChannelConfigError
from shared.channel.scenario import (
    Road,
    ScenarioError,
    ScenarioPlayer,
    load_scenario,
    parse_scenario,
    path_loss_db,
)
from shared.channel.scheduler import VirtualClock


class Recorder:
    """A scenario target that records what it was told and when (on the clock it shares with the player)."""

    def __init__(self, clock: VirtualClock, refuse: str = "") -> None:
        self.clock, self.refuse = clock, refuse
        self.calls: list[tuple[float, str, tuple[Any, ...]]] = []

    def _log(self, kind: str, *args: Any) -> None:
        if self.refuse and self.refuse in args:
            raise ChannelConfigError(f"unknown profile {self.refuse!r}")
        self.calls.append((self.clock.now(), kind, args))

    def scenario_profile(self, link: str, direction: str, profile: str) -> None:
        self._log("profile", link, direction, profile)

    def scenario_trace(self, link: str, direction: str, trace: str, offset_s: float) -> None:
        self._log("trace", link, direction, trace, offset_s)

    def scenario_snr(self, link: str, direction: str, snr_db: float) -> None:
        self._log("snr", link, direction, snr_db)

    def scenario_handover(self, ue: str, es: str) -> None:
        self._log("handover", ue, es)


def play_virtually(player: ScenarioPlayer, clock: VirtualClock) -> None:
    """Run the player, moving the virtual clock to each wake-up it asks for (no real waiting)."""

    async def go() -> None:
        task = asyncio.create_task(player.run())
        while not task.done():
            await asyncio.sleep(0)
            nxt = clock.next_wakeup()
            if nxt is not None:
                clock.advance_to(nxt)
        await task

    asyncio.run(go())


SCENARIO = """
step_s = 0.5

[[event]]
at_s = 0.0
link = "ue1->es0"
profile = "awgn-30"

[[event]]
at_s = 1.25
link = "ue1->es0"
direction = "downlink"
trace = "traces/tdl.npz"
trace_offset_s = 0.5

[[event]]
at_s = 2.0
link = "ue2->es0"
direction = "uplink"
snr_db = 5.0

[[event]]
at_s = 3.0
link = "ue1->es0"
path = { from_m = 50, to_m = 200, speed_kmh = 360, scenario = "UMa-LOS", carrier_ghz = 3.5, snr_db = 25, ref_m = 50 }

[[event]]
at_s = 5.0
ue = "ue1"
handover = "es1"
"""


def test_events_fire_at_their_times_on_a_virtual_clock(tmp_path: Path) -> None:
    (tmp_path / "drive.toml").write_text(SCENARIO)
    scenario = load_scenario(tmp_path / "drive.toml")
    clock = VirtualClock(100.0)
    target = Recorder(clock)
    player = ScenarioPlayer(scenario, target, clock)
    play_virtually(player, clock)
    assert player.done
    times = [t - 100.0 for t, _, _ in target.calls]
    kinds = [k for _, k, _ in target.calls]
    # the path: 150 m at 100 m/s = 1.5 s, SNR updated every 0.5 s: 3.0, 3.5, 4.0, 4.5
    assert times == [0.0, 1.25, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0]  # exact: the virtual clock
    assert kinds == ["profile", "trace", "snr", "snr", "snr", "snr", "snr", "handover"]
    assert target.calls[0][2] == ("ue1->es0", "both", "awgn-30")
    assert target.calls[1][2] == ("ue1->es0", "downlink", str(tmp_path / "traces/tdl.npz"), 0.5)  # relative to the file
    assert target.calls[2][2] == ("ue2->es0", "uplink", 5.0)
    path_snrs = [args[2] for _, k, args in target.calls[3:7]]
    road = Road(50, 200, 360, "UMa-LOS", 3.5, 25, 50)
    assert path_snrs[0] == pytest.approx(25.0)
    assert path_snrs == pytest.approx([road.snr_at(t) for t in (0, 0.5, 1.0, 1.5)])
    # moving away under UMa LOS (PL1 = 28 + 22 log10(d3D) + 20 log10(fc)): the SNR falls by 22 log10 of the d3D ratio
    d3 = [math.hypot(d, 23.5) for d in (50, 200)]
    assert path_snrs[0] - path_snrs[-1] == pytest.approx(22 * math.log10(d3[1] / d3[0]), abs=1e-9)
    assert target.calls[-1][2] == ("ue1", "es1")
    assert [f.at_s for f in player.fired] == times
    pos = player.position()
    assert pos["ue1"].endswith("done") and "last: handover of ue1 to es1 at 5.00 s" in pos["ue1"]
    assert "last: ue1->es0 both: SNR" in pos["ue1->es0"] and "at 200 m" in pos["ue1->es0"]


def test_position_mid_scenario_and_a_refused_event_does_not_stop_play() -> None:
    scenario = parse_scenario({"event": [
        {"at_s": 1.0, "link": "a->es0", "profile": "no-such"},
        {"at_s": 2.0, "link": "a->es0", "snr_db": 3.0},
        {"at_s": 4.0, "link": "a->es0", "snr_db": 9.0},
    ]})
    clock = VirtualClock()
    target = Recorder(clock, refuse="no-such")
    player = ScenarioPlayer(scenario, target, clock)

    async def go() -> dict[str, str]:
        task = asyncio.create_task(player.run())
        for t in (1.0, 2.0, 3.0):
            await asyncio.sleep(0)
            clock.advance_to(t)
            await asyncio.sleep(0)
        pos = player.position()
        clock.advance_to(4.0)
        await task
        return pos

    pos = asyncio.run(go())
    assert pos["a->es0"] == ("t=3.00 s; last: a->es0 both: SNR 3.00 dB at 2.00 s; "
                             "next: a->es0 both: SNR 9.00 dB at 4.00 s")
    assert player.fired[0].error == "unknown profile 'no-such'" and player.fired[1].error == ""
    assert [c[2][2] for c in target.calls] == [3.0, 9.0]


def test_every_kind_of_event_describes_itself_and_a_path_step_says_where() -> None:
    scenario = parse_scenario({"step_s": 1.0, "event": [
        {"at_s": 0.0, "link": "a->es0", "profile": "awgn-10"},
        {"at_s": 1.0, "link": "a->es0", "direction": "downlink", "trace": "t.npz", "trace_offset_s": 0.5},
        {"at_s": 2.0, "link": "a->es0", "path": {"from_m": 100, "to_m": 110, "speed_kmh": 36}},
        {"at_s": 4.0, "ue": "a", "handover": "es1"},
    ]})
    assert [e.describe() for e in scenario.events] == [
        "a->es0 both: profile awgn-10", "a->es0 downlink: trace t.npz from 0.5 s",
        f"a->es0 both: SNR {scenario.events[2].value:.2f} dB at 100 m",
        f"a->es0 both: SNR {scenario.events[3].value:.2f} dB at 110 m", "handover of a to es1"]
    clock = VirtualClock()
    player = ScenarioPlayer(scenario, Recorder(clock), clock)
    play_virtually(player, clock)
    (a, link) = player.positions()
    assert (a.key, a.next, a.path) == ("a", None, None)
    assert link.key == "a->es0" and link.path == (scenario.events[3].value, 110.0) and link.next is None
    assert player.elapsed() == 4.0 and player.end == 4.0


def test_path_loss_tables() -> None:
    """TR 38.901 Table 7.4.1-1 at hand-computed points; continuous at the breakpoint; NLOS never below LOS."""
    fc = 3.5
    d3 = math.hypot(100, 23.5)
    assert path_loss_db("UMa-LOS", 100, fc) == pytest.approx(28 + 22 * math.log10(d3) + 20 * math.log10(fc))
    assert path_loss_db("UMa-NLOS", 100, fc) == pytest.approx(13.54 + 39.08 * math.log10(d3) + 20 * math.log10(fc))
    d3u = math.hypot(100, 8.5)
    assert path_loss_db("UMi-LOS", 100, fc) == pytest.approx(32.4 + 21 * math.log10(d3u) + 20 * math.log10(fc))
    dbp = 4 * 24 * 0.5 * 3.5e9 / 299_792_458.0  # UMa d'BP = 560 m at 3.5 GHz
    assert path_loss_db("UMa-LOS", dbp - 1e-6, fc) == pytest.approx(path_loss_db("UMa-LOS", dbp + 1e-6, fc), abs=1e-3)
    for sc in ("UMa", "UMi", "RMa"):
        ds = [10, 50, 100, 300, 1000, 3000]
        los = [path_loss_db(f"{sc}-LOS", d, fc) for d in ds]
        nlos = [path_loss_db(f"{sc}-NLOS", d, fc) for d in ds]
        assert los == sorted(los) and all(n >= ll for n, ll in zip(nlos, los, strict=True))
    assert path_loss_db("UMa-LOS", 1, fc) == path_loss_db("UMa-LOS", 10, fc)  # clipped to the tables' 10 m
    with pytest.raises(ScenarioError, match="path-loss scenario 'Moon' is unknown"):
        path_loss_db("Moon", 100, fc)


def test_a_drive_by_passes_closest_at_the_offset() -> None:
    road = Road(-300, 300, 72, "UMi-LOS", 3.5, 20, 100, offset_m=40)
    assert road.seconds == pytest.approx(30.0)
    assert road.distance_at(15.0) == pytest.approx(40.0)
    snrs = [road.snr_at(t) for t in range(31)]
    assert max(snrs) == snrs[15] and snrs[0] == pytest.approx(snrs[30])


@pytest.mark.parametrize(("raw", "message"), [
    ({"event": [{"at_s": 0, "link": "a->b"}]}, "event[0]: give exactly one of profile, trace, snr_db, path, handover"),
    ({"event": [{"at_s": -1, "link": "a->b", "snr_db": 1}]}, "event[0].at_s must be >= 0, got -1"),
    ({"event": [{"at_s": 0, "link": "ab", "snr_db": 1}]}, "event[0].link 'ab' is not UE->ES"),
    ({"event": [{"at_s": 0, "link": "a->b", "snr_db": 1, "direction": "sideways"}]},
     "event[0].direction must be uplink, downlink or both"),
    ({"event": [{"at_s": 0, "link": "a->b", "snr_db": 1}, {"at_s": 1, "link": "a->b", "snr_db": "x"}]},
     "event[1].snr_db must be a finite number, got 'x'"),
    ({"event": [{"at_s": 0, "link": "a->b", "path": {"from_m": 0, "to_m": 10}}]}, "event[0].path.speed_kmh is missing"),
    ({"event": [{"at_s": 0, "link": "a->b", "path": {"from_m": 0, "to_m": 10, "speed_kmh": 0}}]},
     "event[0].path.speed_kmh must be > 0"),
    ({"event": [{"at_s": 0, "link": "a->b", "path": {"from_m": 0, "to_m": 10, "speed_kmh": 3, "scenario": "x"}}]},
     "event[0].path.scenario 'x' is unknown"),
    ({"event": [{"at_s": 0, "link": "a->b", "handover": "es1"}]}, "a handover names the ue"),
    ({"event": [{"at_s": 0, "ue": "a", "snr_db": 3}]}, "ue is for a handover"),
    ({"event": [{"at_s": 0, "link": "a->b", "snr_db": 3, "speed": 3}]}, "event[0]: unknown keys ['speed']"),
    ({"step_s": 0, "event": []}, "step_s must be > 0"),
    ({"events": []}, "unknown keys ['events']"),
    ({"step_s": 1e-6, "event": [{"at_s": 0, "link": "a->b", "path": {"from_m": 0, "to_m": 1000, "speed_kmh": 3}}]},
     "more than 100000 events"),
])
def test_bad_scenarios_name_the_event_and_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw, "s.toml")
    assert str(info.value).startswith("s.toml") and message in str(info.value), str(info.value)


def test_unreadable_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="missing.toml"):
        load_scenario(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[[event]\n")
    with pytest.raises(ScenarioError, match="bad.toml"):
        load_scenario(tmp_path / "bad.toml")


# --- through real processes ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scenario_in_a_running_proxy_fires_on_time_and_hands_over(random_model_dir: Path, tmp_path: Path) -> None:
    """``meg-channel serve --scenario``: SNR events seen through GetChannel within 50 ms of their times; a handover
    moves the UE's traffic (no ``meg-es`` header) to es1, whose downlink the scenario sets to a trace; GetCSI of
    that trace link is what the next Probe gets."""
    import time

    import grpc
    import numpy as np

    from shared.channel.trace import TraceMeta, load_trace, normalise, save_trace
    from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2, edge_pb2_grpc
    from shared.wire import air
    from shared.wire.headers import UE_HEADER
    from tests.support.procs import running, script

    rng = np.random.default_rng(0)
    h = normalise((rng.normal(size=(400, 25)) + 1j * rng.normal(size=(400, 25))) / np.sqrt(2))
    trace_file = save_trace(tmp_path / "t.npz", h, TraceMeta(model="TDL-A", per="prb", numerology=0,
                                                             bandwidth_mhz=5.0, prbs=25))
    (tmp_path / "p.toml").write_text('[profiles.clean]\nmodel = "awgn"\nsnr_db = 150\n'
                                     '[links.default]\nuplink = "ideal"\ndownlink = "clean"\n')
    (tmp_path / "drive.toml").write_text("""
[[event]]
at_s = 0.4
link = "mover->es0"
direction = "downlink"
snr_db = 11.0

[[event]]
at_s = 0.8
link = "mover->es0"
direction = "downlink"
snr_db = 22.0

[[event]]
at_s = 1.2
ue = "mover"
handover = "es1"

[[event]]
at_s = 1.2
link = "mover->es1"
direction = "downlink"
trace = "t.npz"
""")
    edge = [script("meg-edge"), "serve", "--listen", "127.0.0.1:0", "--model", str(random_model_dir), "--device", "cpu"]
    with running(edge, "meg.v1.EdgeService") as (_, es0):
        es1 = es0  # two upstream names, one process: a handover is the proxy's routing and links, not the ES's
        proxy = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", f"es0=127.0.0.1:{es0}",
                 "--upstream", f"es1=127.0.0.1:{es1}", "--profiles", str(tmp_path / "p.toml"),
                 "--scenario", str(tmp_path / "drive.toml")]
        with running(proxy, "meg.v1.ChannelControl") as (proc, port), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            t0 = time.monotonic()  # the scenario started just before the proxy said it listens
            ctl = channel_pb2_grpc.ChannelControlStub(ch)
            edge_stub = edge_pb2_grpc.EdgeServiceStub(ch)

            def downlink(link: str) -> channel_pb2.Profile | None:
                for ls in ctl.GetChannel(channel_pb2.GetChannelRequest(), timeout=5).links:
                    if ls.link == link:
                        return ls.downlink
                return None

            def seen(link: str, ok: object, limit_s: float = 5.0) -> float:
                deadline = time.monotonic() + limit_s
                while time.monotonic() < deadline:
                    p = downlink(link)
                    if p is not None and ok(p):  # type: ignore[operator]
                        return time.monotonic() - t0
                    time.sleep(0.002)
                raise AssertionError(f"{link}: not seen in {limit_s} s")

            x = np.random.default_rng(1).normal(size=2 * 144 * 30).astype(np.float32)
            probe = edge_pb2.ProbeRequest(tensors=[air.to_air("x", x)])
            before = edge_stub.Probe(probe, timeout=30, metadata=((UE_HEADER, "mover"),))
            assert before.tensors[0].applied.link == "mover->es0"
            t11 = seen("mover->es0", lambda p: p.snr_db == 11.0)
            t22 = seen("mover->es0", lambda p: p.snr_db == 22.0)
            assert abs(t11 - 0.4) < 0.05 and abs(t22 - 0.8) < 0.05, (t11, t22)
            seen("mover->es1", lambda p: True)  # the trace event made the link
            deadline = time.monotonic() + 5
            while (reply := edge_stub.Probe(probe, timeout=30, metadata=((UE_HEADER, "mover"),))
                   ).tensors[0].applied.link != "mover->es1":
                assert time.monotonic() < deadline, "the handover did not move mover's traffic"
            assert reply.tensors[0].applied.profile == "clean" and reply.tensors[0].applied.blocks >= 1
            # CSI of the trace link, then the next Probe gets exactly those PRBs' gains
            csi = ctl.GetCSI(channel_pb2.CSIRequest(link="mover->es1", direction="downlink", symbols=x.size), timeout=5)
            assert csi.coherence_symbols == 288 and len(csi.gains) == 30
            got = air.air_array(edge_stub.Probe(probe, timeout=30, metadata=((UE_HEADER, "mover"),)).tensors[0])
            # noiseless (150 dB) ZF with the reported Ĥ: each PRB's |x̂| / |x| = |H| / |Ĥ|
            ratio = np.linalg.norm(got.reshape(30, 288), axis=1) / np.linalg.norm(x.reshape(30, 288), axis=1)
            h_units = ratio * np.array(csi.gains)  # = |H| of the units used
            mags = np.abs(load_trace(trace_file).h).reshape(-1)  # slot-major: unit u of start slot s = s*25 + u
            units = np.arange(30)
            starts = [s for s in range(400) if np.allclose(mags[(s * 25 + units) % mags.size], h_units, rtol=2e-3)]
            assert len(starts) == 1, starts  # one start slot explains every unit: the CSI was the channel applied
            assert "Traceback" not in "".join(proc.tail)  # type: ignore[attr-defined]
            maps = Path(f"/proc/{proc.pid}/maps")
            if maps.exists():  # a proxy replaying traces has not loaded torch (its shared library is not mapped)
                assert "libtorch" not in maps.read_text()


def test_the_example_scenario_parses() -> None:
    scenario = load_scenario(Path(__file__).resolve().parent.parent / "configs" / "scenarios" / "drive-by.toml")
    assert scenario.links == ["phone->es0", "phone->es1"]
    handover = [e for e in scenario.events if e.kind == "handover"]
    assert [(e.at_s, e.ue, e.value) for e in handover] == [(40.0, "phone", "es1")]
    snrs = [e.value for e in scenario.events if e.link == "phone->es0"]
    assert len(snrs) == 81 and max(snrs) == snrs[40] and snrs[0] == pytest.approx(snrs[80])  # closest at 20 s


def test_the_runtime_example_scenario_parses_with_its_trace_under_the_trace_dir() -> None:
    """configs/scenarios/handover.toml (README): started at runtime, its trace name resolves as the proxy says."""
    from shared.channel.scenario import parse_scenario_text

    path = Path(__file__).resolve().parent.parent / "configs" / "scenarios" / "handover.toml"
    scenario = parse_scenario_text(path.read_text(), "handover", lambda name, field: f"/srv/traces/{name}")
    assert scenario.links == ["phone->es0", "phone->es1"] and scenario.duration_s == 6.0
    assert [(e.kind, e.value) for e in scenario.events if e.at_s == 6.0 and e.link != "phone->es0"] == [
        ("snr", 15.0), ("trace", "/srv/traces/tdl-a-30.npz"), ("handover", "es1")]
