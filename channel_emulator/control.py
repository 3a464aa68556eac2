"""The proxy's ChannelControl service: read and change the links' settings and cells at runtime, start and stop
scenarios, CSI, counters."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
import numpy as np

from channel_emulator.cells import CellSet
from channel_emulator.link import (
    DIRECTIONS,
    NAME,
    LinkTable,
    LinkTableFull,
    check_link_name,
    profile_from_proto,
    profile_to_proto,
)
from channel_emulator.mobility import (
    SCENARIOS,
    LinkTableTarget,
    ScenarioConflict,
    Scenarios,
    TooManyScenarios,
    check_scenario,
)
from channel_emulator.replay import REPLAY
from channel_emulator.trace_access import TraceAccess
from shared.channel.models import ChannelConfigError
from shared.channel.scenario import parse_scenario_text
from shared.channel.scheduler import MonotonicClock
from shared.pb import channel_pb2, channel_pb2_grpc
from shared.wire import air
from shared.wire.limits import MAX_PENDING_BLOCKS, MAX_SCENARIO_BYTES

if TYPE_CHECKING:
    from channel_emulator.proxy import Upstreams

log = logging.getLogger("meg.channel")
#: Most fading blocks one GetCSI may draw (also the most reported-but-unused draws a direction keeps).
MAX_CSI_BLOCKS = MAX_PENDING_BLOCKS


class ChannelControlServicer(channel_pb2_grpc.ChannelControlServicer):
    """Read and change the links' settings at runtime; CSI; counters."""

    def __init__(self, table: LinkTable, upstreams: Upstreams, cells: CellSet | None = None,
                 trace_dir: str | None = None, scenarios: Scenarios | None = None) -> None:
        """``trace_dir``: the operator's folder callers may name trace files under (None: only the traces the
        proxy's own files loaded: :mod:`channel_emulator.trace_access`); ``scenarios``: where scenarios play
        (default: this process's :data:`~channel_emulator.mobility.SCENARIOS`)."""
        self.table = table
        self.upstreams = upstreams
        self.cells = cells
        self.scenarios = SCENARIOS if scenarios is None else scenarios
        self.traces = TraceAccess(trace_dir, self._loaded_traces)

    def _loaded_traces(self) -> set[str]:
        """Traces the operator's files named: the profiles file's, the serve-time scenario's."""
        return {p.trace for p in self.table.book.profiles.values() if p.trace} | self.scenarios.loaded_traces

    def _settings(self) -> channel_pb2.ChannelSettings:
        out = self.table.settings(list(self.upstreams.targets))
        if self.cells is not None and self.cells.enabled:
            out.cells.extend(self.cells.settings())
            out.clock = self.cells.clock_mode
        out.scenarios.extend(self.scenarios.status())
        return out

    def _known(self) -> str:
        names = sorted(self.table.links)
        return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "none yet"

    def _settable(self, link: str) -> None:
        """A link SetChannel may configure: a UE->ES name whose ES is behind this proxy (raises LookupError)."""
        _, es = check_link_name(link)
        if link not in self.table.links and es not in self.upstreams.targets:
            raise LookupError(f"no link {link!r}: no upstream edge server named {es!r} "
                              f"(upstreams: {', '.join(self.upstreams.targets)}; known links: {self._known()})")

    async def ListProfiles(self, request: channel_pb2.ListProfilesRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ProfileList:
        return channel_pb2.ProfileList(profiles=[profile_to_proto(p) for _, p in sorted(self.table.book.profiles.items())])

    async def GetChannel(self, request: channel_pb2.GetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        return self._settings()

    async def SetChannel(self, request: channel_pb2.SetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        try:
            which = request.WhichOneof("setting")
            if which is None:
                raise ChannelConfigError("say which profile (by name) or give a custom one")
            profile = (self.table.book.get(request.profile) if which == "profile"
                       else profile_from_proto(request.custom, self.traces.resolve))
            if request.link:
                self._settable(request.link)
            self.table.set(request.link, request.direction or "both", profile)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except LinkTableFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if self.cells is not None:
            self.cells.profiles_changed.set()  # a link in outage may lift
        log.info("%s %s <- %s", request.link or "all links", request.direction or "both", profile)
        return self._settings()

    async def SetCell(self, request: channel_pb2.SetCellRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        assert self.cells is not None  # create_proxy always gives one (empty: no cell yet)
        name = request.cell.cell or "default"
        try:
            if name != "default":
                check_link_name(f"ue->{name}")  # an ES name: 1-64 letters, digits or _.:-
            if name != "default" and name not in self.upstreams.targets and name not in self.cells.cells:
                raise LookupError(f"no edge server named {name!r} (upstreams: {', '.join(self.upstreams.targets)}); "
                                  "name one, or 'default' for every ES without its own cell")
            cell = self.cells.changed(name, request.cell)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cell {name}: {exc}")
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        self.cells.set_cell(name, cell)
        log.info("cell %s <- %s", name, cell.describe())
        return self._settings()

    async def StartScenario(self, request: channel_pb2.StartScenarioRequest,
                            context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        name = request.name
        if not NAME.fullmatch(name):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"name {name!r} must be 1-64 letters, digits or _.:- (it names the scenario)")
        size = len(request.toml.encode())
        if size > MAX_SCENARIO_BYTES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"toml: the scenario file is {size} bytes, more than {MAX_SCENARIO_BYTES} a proxy takes")
        try:  # parsed and checked whole: nothing changes unless every event can be played
            scenario = parse_scenario_text(request.toml, name, self.traces.resolve)
            check_scenario(scenario, self.table, self.upstreams.targets)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        clock = self.cells.clock if self.cells is not None else MonotonicClock()
        target = LinkTableTarget(self.table, lambda: self.upstreams.targets, self.cells)
        try:
            self.scenarios.play(name, "StartScenario", scenario, target, clock, replace=request.replace)
        except ScenarioConflict as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except TooManyScenarios as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return self._settings()

    async def StopScenario(self, request: channel_pb2.StopScenarioRequest,
                           context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        try:
            self.scenarios.stop(request.name)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return self._settings()

    async def ResetChannel(self, request: channel_pb2.ResetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        self.table.reset(request.stats)
        if self.cells is not None:
            self.cells.reset(request.stats)
        return self._settings()

    async def GetStats(self, request: channel_pb2.GetStatsRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelStats:
        out = self.table.stats()
        if self.cells is not None:
            out.cells.extend(self.cells.stats())
        return out

    async def GetCSI(self, request: channel_pb2.CSIRequest, context: grpc.aio.ServicerContext) -> channel_pb2.CSIResponse:
        if request.direction not in DIRECTIONS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"direction must be uplink or downlink, got {request.direction!r}")
        if request.link not in self.table.links:
            try:
                check_link_name(request.link)
            except ChannelConfigError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no link {request.link!r} yet (a link exists once traffic or SetChannel used it); "
                                f"known links: {self._known()}")
        if request.symbols > air.MAX_VALUES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"symbols={request.symbols} is more than a tensor may hold ({air.MAX_VALUES})")
        d = self.table.links[request.link][request.direction]
        p = d.profile
        if p.trace:  # a trace link: the gains of the next transmission's REs (per subcarrier) or PRBs, pinned (replay.py)
            try:
                h, lc = REPLAY.csi(request.link, request.direction, p, int(request.symbols), int(request.blocks))
            except ChannelConfigError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return channel_pb2.CSIResponse(gains=h.tolist(), coherence_symbols=lc, snr_db=p.snr_db, model=p.model)
        lc = p.block_length
        blocks = int(request.blocks) or ((1 if lc == 0 else -(-int(request.symbols) // lc)) if request.symbols else 0)
        if not 1 <= blocks <= MAX_CSI_BLOCKS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ask for 1 to {MAX_CSI_BLOCKS} blocks (or give symbols > 0 needing at most that many), "
                                f"got blocks={request.blocks} symbols={request.symbols}")
        gains = d.csi(blocks)
        return channel_pb2.CSIResponse(gains=np.asarray(gains).tolist(), coherence_symbols=lc, snr_db=p.snr_db, model=p.model)
