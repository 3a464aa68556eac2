"""Scenarios started and stopped through the control service (``StartScenario`` / ``StopScenario``), where each link
is in its scenario (``GetChannel``'s ``scenarios``), and which trace files a caller may name (``Profile.trace``).

The in-process tests run the real gRPC proxy (``create_proxy``) on a virtual clock (the CellSet clock): events fire
at exactly their times from the start. A real ``meg-channel`` process is timed on the real clock (within 50 ms)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from channel_emulator.cells import CellSet
from channel_emulator.link import LinkTable
from channel_emulator.mobility import SCENARIOS, SERVING
from channel_emulator.proxy import create_proxy
from channel_emulator.trace_access import TraceAccess
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import IDEAL, load_profiles
from shared.channel.scheduler import VirtualClock
from shared.channel.trace import TraceMeta, normalise, save_trace
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.wire.headers import AUTH_HEADER
from shared.wire.limits import MAX_SCENARIO_BYTES, MAX_SCENARIO_LINKS

DRIVE = """
step_s = 0.25

[[event]]
at_s = 0.5
link = "ue1->es0"
direction = "uplink"
profile = "awgn-30"

[[event]]
at_s = 1.0
link = "ue1->es0"
direction = "downlink"
path = { from_m = 50, to_m = 100, speed_kmh = 180, scenario = "UMa-LOS", carrier_ghz = 3.5, snr_db = 20, ref_m = 50 }

[[event]]
at_s = 3.0
ue = "ue1"
handover = "es1"
"""


def write_trace(path: Path, slots: int = 40) -> Path:
    rng = np.random.default_rng(0)
    h = normalise((rng.normal(size=(slots, 25)) + 1j * rng.normal(size=(slots, 25))) / np.sqrt(2))
    return save_trace(path, h, TraceMeta(model="TDL-A", per="prb", numerology=0, bandwidth_mhz=5.0, prbs=25))


@dataclass
class Proxy:
    stub: channel_pb2_grpc.ChannelControlStub
    clock: VirtualClock
    table: LinkTable

    async def settings(self) -> channel_pb2.ChannelSettings:
        reply: channel_pb2.ChannelSettings = await self.stub.GetChannel(channel_pb2.GetChannelRequest(), timeout=5)
        return reply

    async def at(self, t: float) -> channel_pb2.ChannelSettings:
        """Move the virtual clock to ``t``, stopping at each wake-up due by then (the scenario tasks run what is due at
        its exact time), then the settings."""
        while True:
            for _ in range(10):
                await asyncio.sleep(0)
            nxt = self.clock.next_wakeup()
            if nxt is None or nxt > t:
                break
            self.clock.advance_to(nxt)
        self.clock.advance_to(t)
        for _ in range(10):
            await asyncio.sleep(0)
        return await self.settings()

    def profile(self, link: str, direction: str) -> str:
        known = self.table.links.get(link)
        return (known[direction].profile if known else self.table.default[direction]).name


@asynccontextmanager
async def proxy(profiles: Path | None = None, trace_dir: Path | None = None, admin_token: str | None = None,
                t0: float = 10.0) -> AsyncIterator[Proxy]:
    clock = VirtualClock(t0)
    SCENARIOS.items.clear()  # this process's scenarios (one proxy per process): none from an earlier test
    table = LinkTable(load_profiles(profiles), IDEAL, IDEAL)
    # two upstream names, nothing behind them: these tests use only the control service
    server, port, _ = await create_proxy("127.0.0.1:0", {"es0": "127.0.0.1:9", "es1": "127.0.0.1:9"}, table,
                                         cells=CellSet({}, clock=clock), admin_token=admin_token,
                                         trace_dir=str(trace_dir) if trace_dir else None)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Proxy(channel_pb2_grpc.ChannelControlStub(channel), clock, table)
    finally:
        SCENARIOS.stop()
        SCENARIOS.items.clear()
        SCENARIOS.loaded_traces.clear()
        SERVING.clear()
        await channel.close()
        await server.stop(None)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def start(name: str, toml: str, replace: bool = False) -> channel_pb2.StartScenarioRequest:
    return channel_pb2.StartScenarioRequest(name=name, toml=toml, replace=replace)


def test_started_scenario_fires_exactly_on_the_virtual_clock_and_says_where_each_link_is() -> None:
    async def body() -> None:
        async with proxy() as p:
            reply = await p.stub.StartScenario(start("drive", DRIVE), timeout=5)
            (s,) = reply.scenarios
            assert (s.name, s.source, s.state, s.elapsed_s, s.fired) == ("drive", "StartScenario", "playing", 0.0, 0)
            assert s.events == 1 + 5 + 1 and s.duration_s == 3.0  # the path: 50 m at 50 m/s in steps of 0.25 s
            pos = {q.link: q for q in s.positions}
            assert set(pos) == {"ue1->es0", "ue1"}
            assert pos["ue1->es0"].last_event == -1 and pos["ue1->es0"].next_event == 0
            assert pos["ue1->es0"].next_at_s == 0.5 and pos["ue1->es0"].next == "ue1->es0 uplink: profile awgn-30"
            assert not pos["ue1->es0"].HasField("snr_db")

            await p.at(10.4999)
            assert p.profile("ue1->es0", "uplink") == "ideal"  # not yet
            s = (await p.at(10.5)).scenarios[0]
            assert p.profile("ue1->es0", "uplink") == "awgn-30"
            q = s.positions[1]
            assert (q.link, q.last_event, q.last_at_s, q.next_event, q.next_at_s) == ("ue1->es0", 0, 0.5, 1, 1.0)
            s = (await p.at(11.5)).scenarios[0]  # half way along the path: 75 m
            q = s.positions[1]
            assert q.last_at_s == 1.5 and q.HasField("snr_db") and q.distance_m == pytest.approx(75.0)
            assert q.snr_db == pytest.approx(p.table.links["ue1->es0"]["downlink"].profile.snr_db)
            assert q.snr_db < 20.0 and q.next_at_s == 1.75 and s.elapsed_s == 1.5 and s.fired == 4
            assert SERVING.get("ue1") is None
            s = (await p.at(13.0)).scenarios[0]
            assert SERVING["ue1"] == "es1" and s.state == "done" and s.fired == s.events
            pos = {q.link: q for q in s.positions}
            assert pos["ue1"].last == "handover of ue1 to es1" and pos["ue1"].last_at_s == 3.0
            assert pos["ue1"].next_event == -1
            s = (await p.at(20.0)).scenarios[0]
            assert s.elapsed_s == 3.0  # frozen once done
            assert [f.at_s for f in SCENARIOS.items["drive"].player.fired] == [0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0]

    run(body)


@pytest.mark.parametrize(("name", "toml", "needle"), [
    ("bad", "[[event]\n", "bad: "),
    ("bad", ('[[event]]\nat_s = 0.0\nlink = "ue1->es0"\nsnr_db = 3.0\n[[event]]\nat_s = 1.0\nlink = "ue1->es0"\n'
            'profile = "no-such"\n'), "bad: event[1].profile: unknown profile 'no-such'"),
    ("bad", '[[event]]\nat_s = 0.0\nlink = "ue1->es9"\nsnr_db = 3.0\n', "bad: event[0].link: no edge server named 'es9'"),
    ("bad", '[[event]]\nat_s = 0.0\nue = "ue1"\nhandover = "es7"\n', "bad: event[0].handover: no edge server named 'es7'"),
    ("bad", '[[event]]\nat_s = 0.0\nlink = "ue1->es0"\ntrace = "/etc/passwd"\n',
     "bad: event[0].trace '/etc/passwd' is not a trace this proxy loaded"),
    ("bad", '[[event]]\nat_s = 0.0\nlink = "ue1->es0"\nsnr_db = "x"\n', "bad: event[0].snr_db must be a finite number"),
    ("bad name", '[[event]]\nat_s = 0.0\nlink = "ue1->es0"\nsnr_db = 3.0\n', "name 'bad name' must be 1-64"),
    ("bad", "#" * (MAX_SCENARIO_BYTES + 1), f"more than {MAX_SCENARIO_BYTES}"),
    ("bad", "".join(f'[[event]]\nat_s = 0.0\nlink = "u{i}->es0"\nsnr_db = 3.0\n' for i in range(MAX_SCENARIO_LINKS + 1)),
     f"bad: acts on {MAX_SCENARIO_LINKS + 1} links and UEs, more than {MAX_SCENARIO_LINKS}"),
])
def test_a_bad_scenario_is_refused_whole_and_changes_nothing(name: str, toml: str, needle: str) -> None:
    async def body() -> None:
        async with proxy() as p:
            before = await p.settings()
            err = await refused(p.stub.StartScenario(start(name, toml), timeout=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (err.details() or ""), err.details()
            after = await p.at(100.0)
            assert after == before and not after.scenarios and not SCENARIOS.items  # nothing half-started

    run(body)


def test_one_scenario_per_link_unless_replaced_and_a_stopped_one_fires_no_more() -> None:
    later = '[[event]]\nat_s = 5.0\nlink = "ue1->es0"\nprofile = "awgn-10"\n'
    other = '[[event]]\nat_s = 1.0\nlink = "ue2->es0"\nprofile = "awgn-0"\n'

    async def body() -> None:
        async with proxy() as p:
            await p.stub.StartScenario(start("a", DRIVE), timeout=5)
            err = await refused(p.stub.StartScenario(start("b", later), timeout=5))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "'a' on ue1, ue1->es0" in (err.details() or "")
            err = await refused(p.stub.StartScenario(start("a", other), timeout=5))  # the name is taken
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            await p.stub.StartScenario(start("c", other), timeout=5)  # other links: both play
            reply = await p.stub.StartScenario(start("b", later, replace=True), timeout=5)
            assert [(s.name, s.state) for s in reply.scenarios] == [("a", "stopped"), ("c", "playing"), ("b", "playing")]
            s = (await p.at(11.0)).scenarios
            assert p.profile("ue1->es0", "uplink") == "ideal"  # a's 0.5 s event never fired: a was stopped at 0 s
            assert p.profile("ue2->es0", "uplink") == "awgn-0" and s[1].state == "done"
            reply = await p.stub.StopScenario(channel_pb2.StopScenarioRequest(name="b"), timeout=5)
            assert [(x.name, x.state, x.elapsed_s) for x in reply.scenarios][2] == ("b", "stopped", 1.0)
            await p.at(30.0)
            assert p.profile("ue1->es0", "uplink") == "ideal"  # b's 5 s event never fired
            err = await refused(p.stub.StopScenario(channel_pb2.StopScenarioRequest(name="nope"), timeout=5))
            assert err.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in (err.details() or "")
            await p.stub.StartScenario(start("b", later), timeout=5)  # a stopped one's name may be used again

    run(body)


def test_scenario_rpcs_need_the_admin_token() -> None:
    toml = '[[event]]\nat_s = 0.0\nlink = "ue1->es0"\nsnr_db = 3.0\n'

    async def body() -> None:
        async with proxy(admin_token="s3cret") as p:
            for call in (p.stub.StartScenario(start("x", toml), timeout=5),
                         p.stub.StopScenario(channel_pb2.StopScenarioRequest(), timeout=5)):
                err = await refused(call)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert not SCENARIOS.items
            md = ((AUTH_HEADER, "Bearer s3cret"),)
            reply = await p.stub.StartScenario(start("x", toml), timeout=5, metadata=md)
            assert reply.scenarios[0].name == "x"

    run(body)


# --- trace files a caller may name ------------------------------------------------------------------------------


def test_trace_access_refuses_paths_outside_the_trace_dir(tmp_path: Path) -> None:
    inside = tmp_path / "traces"
    inside.mkdir()
    write_trace(inside / "a.npz")
    write_trace(tmp_path / "outside.npz")
    os.symlink(tmp_path / "outside.npz", inside / "link.npz")
    access = TraceAccess(inside, lambda: {"loaded/b.npz"})
    assert access.resolve("a.npz", "f") == str((inside / "a.npz").resolve())
    assert access.resolve(str(inside / "a.npz"), "f") == str((inside / "a.npz").resolve())  # absolute, inside
    assert access.resolve("loaded/b.npz", "f") == "loaded/b.npz"  # the operator's own
    for bad in ("../outside.npz", str(tmp_path / "outside.npz"), "link.npz", "/etc/passwd", "sub/../../outside.npz"):
        with pytest.raises(ChannelConfigError, match=r"^f '.*' is outside the proxy's trace directory"):
            access.resolve(bad, "f")
    with pytest.raises(ChannelConfigError, match="not a trace this proxy loaded"):
        TraceAccess(None, lambda: ()).resolve("a.npz", "custom.trace")
    with pytest.raises(ChannelConfigError, match="not a directory"):
        TraceAccess(tmp_path / "none")


def test_set_channel_with_a_trace_profile_shows_it_and_refuses_other_files(tmp_path: Path) -> None:
    dir_ = tmp_path / "traces"
    dir_.mkdir()
    write_trace(dir_ / "a.npz")
    loaded = write_trace(tmp_path / "loaded.npz")
    (tmp_path / "p.toml").write_text(f'[profiles.replayed]\ntrace = "{loaded}"\nsnr_db = 12.0\n')

    def custom(trace: str, link: str = "ue1->es0") -> channel_pb2.SetChannelRequest:
        return channel_pb2.SetChannelRequest(link=link, direction="downlink", custom=channel_pb2.Profile(
            model="awgn", snr_db=15.0, trace=trace, trace_offset_s=0.25, trace_gain_db=-3.0))

    async def body() -> None:
        async with proxy(tmp_path / "p.toml", trace_dir=dir_) as p:
            listed = await p.stub.ListProfiles(channel_pb2.ListProfilesRequest(), timeout=5)
            assert [x.trace for x in listed.profiles if x.name == "replayed"] == [str(loaded)]
            reply = await p.stub.SetChannel(custom("a.npz"), timeout=5)
            (ls,) = [x for x in reply.links if x.link == "ue1->es0"]
            d = ls.downlink
            assert (d.trace, d.trace_offset_s, d.trace_gain_db, d.snr_db) == (str((dir_ / "a.npz").resolve()), 0.25, -3.0, 15.0)
            prof = p.table.links["ue1->es0"]["downlink"].profile
            assert (prof.trace, prof.trace_offset_s, prof.trace_gain_db) == (d.trace, 0.25, -3.0)
            # what show prints can be set back as it is (the round trip of GetChannel -> SetChannel custom)
            again = await p.stub.SetChannel(channel_pb2.SetChannelRequest(link="ue2->es0", direction="uplink",
                                                                         custom=d), timeout=5)
            assert next(x.uplink for x in again.links if x.link == "ue2->es0") == d
            await p.stub.SetChannel(custom(str(loaded), "ue3->es0"), timeout=5)  # the profiles file loaded it
            for bad in ("../loaded.npz", str(tmp_path / "p.toml"), "/etc/passwd"):
                err = await refused(p.stub.SetChannel(custom(bad, "ue4->es0"), timeout=5))
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (err.details() or "").startswith(f"custom.trace {bad!r} is outside"), err.details()
            err = await refused(p.stub.SetChannel(custom("missing.npz"), timeout=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "no such trace file" in (err.details() or "")
            assert "ue4->es0" not in p.table.links
            # a scenario's trace resolves under the trace dir too, and plays
            toml = '[[event]]\nat_s = 1.0\nlink = "ue5->es0"\ndirection = "downlink"\nsnr_db = 9.0\n' \
                   '[[event]]\nat_s = 2.0\nlink = "ue5->es0"\ndirection = "downlink"\ntrace = "a.npz"\n' \
                   'trace_offset_s = 0.5\n'
            await p.stub.StartScenario(start("t", toml), timeout=5)
            s = await p.at(12.0)
            (ls,) = [x for x in s.links if x.link == "ue5->es0"]
            assert (ls.downlink.trace, ls.downlink.trace_offset_s, ls.downlink.snr_db) == (d.trace, 0.5, 9.0)
            bad = toml.replace('"a.npz"', '"../loaded.npz"')
            err = await refused(p.stub.StartScenario(start("t2", bad), timeout=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "t2: event[1].trace '../loaded.npz' is outside" in (err.details() or "")
            err = await refused(p.stub.StartScenario(start("t3", toml.replace('"a.npz"', '"missing.npz"')), timeout=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "t3: event[1].trace: " in (err.details() or "") and "no such trace file" in (err.details() or "")
            assert [x.name for x in (await p.settings()).scenarios] == ["t"]

    run(body)


def test_without_a_trace_dir_a_caller_names_only_loaded_traces(tmp_path: Path) -> None:
    other = write_trace(tmp_path / "other.npz")

    async def body() -> None:
        async with proxy() as p:
            err = await refused(p.stub.SetChannel(channel_pb2.SetChannelRequest(
                link="ue1->es0", direction="both", custom=channel_pb2.Profile(snr_db=10, trace=str(other))), timeout=5))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.details() or "").startswith(f"custom.trace {str(other)!r} is not a trace this proxy loaded")

    run(body)


# --- a real meg-channel process ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scenario_start_and_stop_on_a_real_proxy_fire_within_50_ms(tmp_path: Path) -> None:
    """``meg-channel scenario start FILE`` against a running proxy; its events seen through GetChannel within 50 ms of
    their times from the start; ``show`` (text and ``--json``) says where each link is; ``scenario stop`` stops it."""
    from shared.rpc.control import ControlClient
    from tests.support.procs import running, script

    (tmp_path / "timed.toml").write_text("".join(
        f'[[event]]\nat_s = {t}\nlink = "ue1->es0"\ndirection = "downlink"\nsnr_db = {snr}\n'
        for t, snr in ((0.3, 11.0), (0.6, 22.0), (0.9, 5.0))))
    (tmp_path / "long.toml").write_text('[[event]]\nat_s = 0.0\nlink = "ue2->es1"\nsnr_db = 7.0\n'
                                        '[[event]]\nat_s = 600.0\nue = "ue2"\nhandover = "es0"\n')
    proxy_argv = [script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", "es0=127.0.0.1:9",
                  "--upstream", "es1=127.0.0.1:9"]
    with running(proxy_argv, "meg.v1.ChannelControl") as (proc, port), ControlClient(f"127.0.0.1:{port}") as ctl:
        def downlink_snr(link: str) -> float | None:
            for ls in ctl.get_channel().links:
                if ls.link == link:
                    return ls.downlink.snr_db
            return None

        sent = time.monotonic()
        ctl.start_scenario("timed", (tmp_path / "timed.toml").read_text())
        rtt = time.monotonic() - sent
        for at_s, snr in ((0.3, 11.0), (0.6, 22.0), (0.9, 5.0)):
            while downlink_snr("ue1->es0") != snr:
                assert time.monotonic() - sent < at_s + 5, f"SNR {snr} not seen"
                time.sleep(0.002)
            late = time.monotonic() - sent - at_s
            assert -0.001 <= late < 0.05 + rtt, (at_s, late, rtt)  # not before its time, within 50 ms after it
        (s,) = [x for x in ctl.get_channel().scenarios if x.name == "timed"]
        assert s.state == "done" and [abs(q.last_at_s - 0.9) < 0.05 for q in s.positions] == [True]

        def cli(*args: str) -> str:
            out = subprocess.run([script("meg-channel"), *args, "--via", f"127.0.0.1:{port}"], capture_output=True,
                                 text=True, timeout=60, check=False)
            assert out.returncode == 0, out.stderr
            return out.stdout

        text = cli("scenario", "start", str(tmp_path / "long.toml"))
        assert "scenario long (StartScenario): playing" in text
        shown = cli("show")
        assert "ue2->es1" in shown and "next #1 at 600.00 s: handover of ue2 to es0" in shown, shown
        data = json.loads(cli("show", "--json"))
        (long,) = [x for x in data["scenarios"] if x["name"] == "long"]
        ue2 = next(q for q in long["positions"] if q["link"] == "ue2")
        assert ue2["next_at_s"] == 600.0 and ue2["last_event"] == -1 and ue2["snr_db"] is None
        assert long["elapsed_s"] > 0
        refused_ = subprocess.run([script("meg-channel"), "scenario", "start", str(tmp_path / "long.toml"), "--name",
                                   "again", "--via", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                                  check=False)
        assert refused_.returncode != 0 and "FAILED_PRECONDITION" in refused_.stderr + refused_.stdout
        stopped = json.loads(cli("scenario", "stop", "--name", "long", "--json"))
        assert [x["state"] for x in stopped["scenarios"] if x["name"] == "long"] == ["stopped"]
        assert "Traceback" not in "".join(proc.tail)  # type: ignore[attr-defined]


def test_an_snr_event_on_both_directions_makes_each_ideal_one_awgn() -> None:
    """Each direction on its own: an ideal uplink becomes AWGN (and loses the name 'ideal'), a noisy downlink keeps
    its model and name."""
    from channel_emulator.mobility import LinkTableTarget
    from shared.channel.profiles import BUILTIN_PROFILES

    table = LinkTable(load_profiles(None), IDEAL, BUILTIN_PROFILES["awgn-30"])
    LinkTableTarget(table, lambda: ["es0"]).scenario_snr("ue1->es0", "both", 7.0)
    up, down = (table.links["ue1->es0"][d].profile for d in ("uplink", "downlink"))
    assert (up.name, up.model, up.snr_db) == ("", "awgn", 7.0)
    assert (down.name, down.model, down.snr_db) == ("awgn-30", "awgn", 7.0)


def test_serve_refuses_a_scenario_file_naming_an_unknown_profile_at_start_up(tmp_path: Path) -> None:
    """With fixed upstreams the ``serve --scenario`` file is checked whole at start-up, as StartScenario checks it."""
    from tests.support.procs import script

    (tmp_path / "s.toml").write_text('[[event]]\nat_s = 0.0\nlink = "ue1->es0"\nsnr_db = 3.0\n'
                                     '[[event]]\nat_s = 1.0\nlink = "ue1->es0"\nprofile = "no-such"\n')
    out = subprocess.run([script("meg-channel"), "serve", "--listen", "127.0.0.1:0", "--upstream", "es0=127.0.0.1:9",
                          "--scenario", str(tmp_path / "s.toml")], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 1 and "listening" not in out.stdout
    assert f"{tmp_path / 's.toml'}: event[1].profile: unknown profile 'no-such'" in out.stderr, out.stderr


def test_an_event_the_full_link_table_refuses_is_shown_refused_and_play_goes_on() -> None:
    toml = ('[[event]]\nat_s = 1.0\nlink = "ue1->es0"\nsnr_db = 3.0\n'
            '[[event]]\nat_s = 2.0\nue = "ue9"\nhandover = "es1"\n')

    async def body() -> None:
        async with proxy() as p:
            p.table.link("busy->es0")
            p.table.busy["busy->es0"] = 1  # an RPC in flight: never evicted
            p.table.max_links = 1
            await p.stub.StartScenario(start("full", toml), timeout=5)
            s = (await p.at(13.0)).scenarios[0]
            pos = {q.link: q for q in s.positions}
            assert s.state == "done" and "every one is in use or configured" in pos["ue1->es0"].last_error
            assert SERVING["ue9"] == "es1" and "ue1->es0" not in p.table.links

    run(body)
