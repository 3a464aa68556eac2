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

The scenario starts when the proxy starts, on the proxy's clock (the cells' clock: virtual in tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from channel_emulator.link import DIRECTIONS, LinkTable, check_link_name
from channel_emulator.replay import REPLAY
from shared.channel.cell import CellConfig
from shared.channel.models import ChannelConfigError
from shared.channel.scenario import Fired, Scenario, ScenarioPlayer
from shared.channel.scheduler import MonotonicClock, VirtualClock

log = logging.getLogger("meg.channel")

#: The scenarios playing in this process (the player, its task).
PLAYING: list[tuple[ScenarioPlayer, asyncio.Task[list[Fired]]]] = []
#: UE -> its serving ES after a handover (what the proxy routes a request naming no ES to).
SERVING: dict[str, str] = {}


class LinkTableTarget:
    """A :class:`shared.channel.scenario.ScenarioTarget` acting on the proxy's link table."""

    def __init__(self, table: LinkTable, edge_servers: Callable[[], Iterable[str]]) -> None:
        self.table = table
        self.edge_servers = edge_servers

    def _check(self, link: str) -> None:
        _, es = check_link_name(link)
        known = list(self.edge_servers())
        if es not in known:
            raise ChannelConfigError(f"link {link}: no edge server named {es!r} behind the proxy (known: "
                                     f"{', '.join(known)})")

    def _change(self, link: str, direction: str, **changes: object) -> None:
        self._check(link)
        for d in DIRECTIONS if direction == "both" else (direction,):
            current = self.table.link(link)[d].profile
            self.table.set(link, d, replace(current, **changes))  # type: ignore[arg-type]
        REPLAY.forget(link)

    def scenario_profile(self, link: str, direction: str, profile: str) -> None:
        self._check(link)
        self.table.set(link, direction, self.table.book.get(profile))
        REPLAY.forget(link)

    def scenario_trace(self, link: str, direction: str, trace: str, offset_s: float) -> None:
        self._change(link, direction, trace=trace, trace_offset_s=offset_s, model="awgn")

    def scenario_snr(self, link: str, direction: str, snr_db: float) -> None:
        current = self.table.link(link)["downlink" if direction == "both" else direction].profile
        changes: dict[str, object] = {"snr_db": snr_db}
        if current.model == "ideal":  # an SNR needs noise: an ideal link becomes AWGN at that SNR
            changes["model"] = "awgn"
        self._change(link, direction, **changes)

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
                method(*args)
            except ChannelConfigError as exc:
                log.warning("scenario: %s(%s) refused: %s", name.removeprefix("scenario_"), ", ".join(map(str, args)), exc)
                raise
            log.info("scenario: %s(%s)", name.removeprefix("scenario_"), ", ".join(map(str, args)))

        return call


def start_motion(scenario: Scenario | None, table: LinkTable, edge_servers: Callable[[], Iterable[str]],
                 clock: MonotonicClock | VirtualClock,
                 cell_of: Callable[[str], CellConfig | None]) -> tuple[ScenarioPlayer, asyncio.Task[list[Fired]]] | None:
    """What ``meg-channel serve`` starts once the proxy listens: trace replay counts slots from now on ``clock`` in
    the ES's cells (``cell_of``), and ``scenario`` (loaded before, so a bad file is a start-up error) plays from now."""
    REPLAY.restart(clock.now)
    REPLAY.cell_of = cell_of
    if scenario is None:
        return None
    player = ScenarioPlayer(scenario, _Logged(LinkTableTarget(table, edge_servers)), clock)
    log.info("scenario %s: %d events over %.1f s on %s", scenario.path, len(scenario.events), scenario.duration_s,
             ", ".join(scenario.links) or "no links")
    task = asyncio.ensure_future(player.run())
    PLAYING.append((player, task))  # held: a task nobody references may be collected
    return player, task
