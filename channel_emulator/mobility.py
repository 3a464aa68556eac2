"""Mobility scenarios in the proxy: ``meg-channel serve --scenario FILE`` plays a :mod:`shared.channel.scenario` file on
the link table, and handovers move a UE's traffic to another ES.

- ``profile`` events set a link direction to a named profile of the proxy's book; ``trace`` and ``snr_db`` events
  change only that setting of the direction's current profile (a path's SNR steps are ``snr_db`` events). They
  apply from the next transmission, exactly as ``meg-channel set`` does.
- A ``handover`` makes ES ``es`` the serving ES of UE ``ue``: its requests that name no ES (no ``meg-es`` header:
  ``meg-ue`` without ``--es``) go there from then on, on the link ``ue->es`` (its own profiles and counters). A UE
  that names its ES keeps it.
- Each fired event is logged (``meg.channel``: scheduled and actual time); an event the table refuses (an unknown
  profile, a bad trace, an ES not behind the proxy) is logged as refused and play goes on.

``serve --scenario`` starts when the proxy starts; ``StartScenario`` (``meg-channel scenario start FILE``) starts
one at runtime, checked whole first (:func:`check_scenario`), and ``StopScenario`` stops it. Both play on the proxy's
clock (the cells' clock: virtual in tests), events at their times from the start. :data:`SCENARIOS` holds them and
says where each link is (``GetChannel``'s ``scenarios``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from channel_emulator.link import DIRECTIONS, LinkTable, LinkTableFull, check_link_name
from channel_emulator.replay import REPLAY
from shared.channel.cell import CellConfig
from shared.channel.models import ChannelConfigError
from shared.channel.scenario import Fired, Scenario, ScenarioError, ScenarioPlayer
from shared.channel.scheduler import MonotonicClock, VirtualClock
from shared.channel.trace import load_trace_cached
from shared.pb import channel_pb2
from shared.wire.limits import MAX_SCENARIO_LINKS, MAX_SCENARIOS

if TYPE_CHECKING:
    from channel_emulator.cells import CellSet

log = logging.getLogger("meg.channel")

#: UE -> its serving ES after a handover (what the proxy routes a request naming no ES to).
SERVING: dict[str, str] = {}


class LinkTableTarget:
    """A :class:`shared.channel.scenario.ScenarioTarget` acting on the proxy's link table."""

    def __init__(self, table: LinkTable, edge_servers: Callable[[], Iterable[str]], cells: CellSet | None = None) -> None:
        """``cells``: told of each change (a link in outage at its old SNR may lift)."""
        self.table = table
        self.edge_servers = edge_servers
        self.cells = cells

    def _changed(self, link: str) -> None:
        REPLAY.forget(link)
        if self.cells is not None:
            self.cells.profiles_changed.set()

    def _check(self, link: str) -> None:
        _, es = check_link_name(link)
        known = list(self.edge_servers())
        if es not in known:
            raise ChannelConfigError(f"link {link}: no edge server named {es!r} behind the proxy (known: "
                                     f"{', '.join(known)})")

    def _change(self, link: str, direction: str, **changes: object) -> None:
        """Change some settings of each direction's current profile; one whose model changes is no longer the
        named profile it was (its name goes)."""
        self._check(link)
        for d in DIRECTIONS if direction == "both" else (direction,):
            current = self.table.link(link)[d].profile
            mine = dict(changes)
            if current.model == "ideal" and "snr_db" in mine and "model" not in mine:
                mine["model"] = "awgn"  # an SNR needs noise: an ideal link becomes AWGN at that SNR
            if mine.get("model", current.model) != current.model:
                mine["name"] = ""
            self.table.set(link, d, replace(current, **mine))  # type: ignore[arg-type]
        self._changed(link)

    def scenario_profile(self, link: str, direction: str, profile: str) -> None:
        self._check(link)
        self.table.set(link, direction, self.table.book.get(profile))
        self._changed(link)

    def scenario_trace(self, link: str, direction: str, trace: str, offset_s: float) -> None:
        self._change(link, direction, trace=trace, trace_offset_s=offset_s, model="awgn")

    def scenario_snr(self, link: str, direction: str, snr_db: float) -> None:
        self._change(link, direction, snr_db=snr_db)  # each direction: an ideal one becomes AWGN at that SNR

    def scenario_handover(self, ue: str, es: str) -> None:
        self._check(f"{ue}->{es}")
        old = SERVING.get(ue)
        SERVING[ue] = es
        log.info("handover: %s served by %s (was %s)", ue, es, old or "the default ES")


class _Logged:
    """The target, logging each event as it fires."""

    def __init__(self, target: LinkTableTarget) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Callable[..., None]:
        method = getattr(self.target, name)

        def call(*args: object) -> None:
            try:
                try:
                    method(*args)
                except LinkTableFull as exc:  # a refusal like any other: play goes on
                    raise ChannelConfigError(str(exc)) from None
            except ChannelConfigError as exc:
                log.warning("scenario: %s(%s) refused: %s", name.removeprefix("scenario_"), ", ".join(map(str, args)), exc)
                raise
            log.info("scenario: %s(%s)", name.removeprefix("scenario_"), ", ".join(map(str, args)))

        return call


class ScenarioConflict(Exception):
    """A scenario of that name, or on the same links, is playing (the control service: FAILED_PRECONDITION)."""


class TooManyScenarios(Exception):
    """:data:`~shared.wire.limits.MAX_SCENARIOS` are playing (the control service: RESOURCE_EXHAUSTED)."""


@dataclass
class Playing:
    """One scenario started in this proxy: its player and task, where it came from, whether it was stopped."""

    name: str
    source: str
    player: ScenarioPlayer
    task: asyncio.Task[list[Fired]]
    stopped: bool = False

    @property
    def state(self) -> str:
        if self.stopped or (not self.task.done() and self.task.get_loop().is_closed()):  # its loop ended under it
            return "stopped"
        if not self.task.done():
            return "playing"
        return "failed" if not self.task.cancelled() and self.task.exception() is not None else "done"

    @property
    def keys(self) -> set[str]:
        """The links and handed-over UEs it acts on."""
        return {e.link or e.ue for e in self.player.scenario.events}

    def stop(self) -> None:
        if self.state == "playing":
            self.task.cancel()
            self.stopped = True
            self.player.end = self.player.clock.now()

    def status(self) -> channel_pb2.ScenarioStatus:
        """The ``ScenarioStatus`` of ``GetChannel``: where each of its links is."""
        out = channel_pb2.ScenarioStatus(
            name=self.name, source=self.source, state=self.state, elapsed_s=self.player.elapsed(),
            duration_s=self.player.scenario.duration_s, events=len(self.player.scenario.events),
            fired=len(self.player.fired))
        for p in self.player.positions():
            pos = out.positions.add(link=p.key, last_event=-1, next_event=-1)
            if p.last is not None:
                pos.last_event, pos.last, pos.last_at_s = p.last.event.index, p.last.event.describe(), p.last.at_s
                pos.last_error = p.last.error
            if p.next is not None:
                pos.next_event, pos.next, pos.next_at_s = p.next.index, p.next.describe(), p.next.at_s
            if p.path is not None:
                pos.snr_db, pos.distance_m = p.path
        return out


class Scenarios:
    """The scenarios of this proxy, by name (at most :data:`MAX_SCENARIOS`; finished ones are forgotten oldest first),
    and the traces its operator's files named (callers may name those: :mod:`channel_emulator.trace_access`)."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, Playing] = OrderedDict()
        self.loaded_traces: set[str] = set()

    def conflicts(self, name: str, scenario: Scenario) -> list[Playing]:
        """The playing scenarios ``scenario`` would clash with: the same name, or a link / UE in common."""
        keys = {e.link or e.ue for e in scenario.events}
        return [p for p in self.items.values() if p.state == "playing" and (p.name == name or p.keys & keys)]

    def play(self, name: str, source: str, scenario: Scenario, target: LinkTableTarget,
             clock: MonotonicClock | VirtualClock, replace: bool = False) -> Playing:
        """Start ``scenario`` now on ``clock`` (its events at their times from now). Raises ScenarioConflict (it
        clashes and not ``replace``: nothing changes) or TooManyScenarios."""
        clash = self.conflicts(name, scenario)
        if clash and not replace:
            what = "; ".join(f"{p.name!r} on {', '.join(sorted(p.keys)) or 'no links'}" for p in clash)
            raise ScenarioConflict(f"scenario {name!r} would act on links a playing scenario acts on ({what}): stop "
                                   "it first (meg-channel scenario stop), or start with replace")
        finished = [n for n, p in self.items.items() if p.state != "playing" and n != name]
        playing = sum(1 for p in self.items.values() if p.state == "playing" and p not in clash)
        if playing >= MAX_SCENARIOS:
            raise TooManyScenarios(f"{playing} scenarios are playing (at most {MAX_SCENARIOS}): stop one first")
        for p in clash:
            p.stop()
            log.info("scenario %s stopped: %s replaces it", p.name, name)
        self.items.pop(name, None)
        while len(self.items) >= MAX_SCENARIOS and finished:
            self.items.pop(finished.pop(0), None)
        player = ScenarioPlayer(scenario, _Logged(target), clock, start=clock.now())
        playing_ = Playing(name, source, player, asyncio.ensure_future(player.run()))
        self.items[name] = playing_  # held: a task nobody references may be collected
        self.loaded_traces.update(str(e.value) for e in scenario.events if e.kind == "trace" and source != "StartScenario")
        log.info("scenario %s (%s): %d events over %.1f s on %s", name, source, len(scenario.events),
                 scenario.duration_s, ", ".join(sorted(playing_.keys)) or "no links")
        return playing_

    def stop(self, name: str = "") -> list[Playing]:
        """Stop scenario ``name`` (``""``: every one playing); LookupError for a name never started."""
        if name and name not in self.items:
            raise LookupError(f"no scenario named {name!r} (scenarios: {', '.join(self.items) or 'none'})")
        stopped = [p for p in self.items.values() if (not name or p.name == name) and p.state == "playing"]
        for p in stopped:
            p.stop()
            log.info("scenario %s stopped at %.3f s (%d of %d events fired)", p.name, p.player.elapsed(),
                     len(p.player.fired), len(p.player.scenario.events))
        return stopped

    def status(self) -> list[channel_pb2.ScenarioStatus]:
        return [p.status() for p in self.items.values()]


#: This process's scenarios (one proxy per process, as :data:`SERVING`).
SCENARIOS = Scenarios()


def check_scenario(scenario: Scenario, table: LinkTable, edge_servers: Iterable[str]) -> None:
    """Everything about ``scenario`` that can be known before it plays, checked now (``StartScenario``: nothing starts
    unless it all holds): the links' and handovers' ESs are behind the proxy, named profiles are in its book, trace
    files load and fit the ES's carrier. Raises ScenarioError naming the event and field."""
    known = list(edge_servers)
    where = scenario.path
    keys = {e.link or e.ue for e in scenario.events}
    if len(keys) > MAX_SCENARIO_LINKS:
        raise ScenarioError(f"{where}: acts on {len(keys)} links and UEs, more than {MAX_SCENARIO_LINKS} a scenario may")
    seen: set[tuple[int, str]] = set()
    for e in scenario.events:
        if (e.index, e.kind) in seen:  # a path's steps share their event
            continue
        seen.add((e.index, e.kind))
        w = f"{where}: event[{e.index}]"
        try:
            if e.kind == "handover":
                check_link_name(f"{e.ue}->{e.value}")
                es, field_ = str(e.value), "handover"
            else:
                check_link_name(e.link)
                es, field_ = e.link.partition("->")[2], "link"
        except ChannelConfigError as exc:
            raise ScenarioError(f"{w}: {exc}") from None
        if es not in known:
            raise ScenarioError(f"{w}.{field_}: no edge server named {es!r} behind the proxy (upstreams: "
                                f"{', '.join(known) or 'none'})")
        try:
            if e.kind == "profile":
                table.book.get(str(e.value))
            elif e.kind == "trace":
                REPLAY.carrier(e.link, load_trace_cached(str(e.value)))  # loads it; its numerology fits the cell
        except ChannelConfigError as exc:
            raise ScenarioError(f"{w}.{e.kind}: {exc}") from None


def start_motion(scenario: Scenario | None, table: LinkTable, edge_servers: Callable[[], Iterable[str]],
                 clock: MonotonicClock | VirtualClock,
                 cell_of: Callable[[str], CellConfig | None]) -> tuple[ScenarioPlayer, asyncio.Task[list[Fired]]] | None:
    """What ``meg-channel serve`` starts once the proxy listens: trace replay counts slots from now on ``clock`` in
    the ES's cells (``cell_of``), and ``scenario`` (loaded before, so a bad file is a start-up error) plays from now."""
    REPLAY.restart(clock.now)
    REPLAY.cell_of = cell_of
    if scenario is None:
        return None
    playing = SCENARIOS.play(Path(scenario.path).stem or "scenario", scenario.path, scenario,
                             LinkTableTarget(table, edge_servers), clock)
    return playing.player, playing.task
