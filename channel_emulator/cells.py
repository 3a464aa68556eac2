"""Time on the air in the proxy: every ES's cell, the two schedulers of each, the links' delays, the clock.

Every UE↔ES link of a cell shares that ES's cell (``[cells.ES]`` in the profiles file, else ``[cells.default]``,
else ``meg-channel serve --bandwidth-mhz``); requests go on its uplink scheduler, responses on its downlink one
(:mod:`shared.channel.scheduler`). A message of so many resource elements (its digital bits at the link's MCS,
then each over-the-air tensor's ``ceil(n/2)``) queues on its link's flow; with the ``enforce`` clock the proxy
releases it at its departure time (arrival + queueing + air + the link's delay and jitter), so the proxy's own
work is absorbed; with ``account`` it is forwarded at once and the same times are computed (as predicted at
arrival: exact unless later messages in the cell take a share of the same slots) and reported. ``carry(...,
grants=True)`` also hands back each segment's grant units (:attr:`Crossing.served`), where the proxy replays a
trace link's tensors (:mod:`channel_emulator.replay`).

No cell configured: :meth:`CellSet.cell_of` is ``None`` for every ES and the proxy takes no time, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from shared.channel.airtime import DirectionAirtime
from shared.channel.cell import DIRECTIONS, CellConfig
from shared.channel.mcs import MCS_TABLE, digital_re, select_mcs
from shared.channel.models import ChannelConfigError
from shared.channel.scheduler import (
    CellScheduler,
    LinkDelay,
    MonotonicClock,
    PfScheduler,
    Segment,
    Ticket,
    VirtualClock,
    make_scheduler,
)
from shared.pb import channel_pb2

CLOCKS = ("enforce", "account")
DEFAULT_CELL = "default"
#: Link delays kept (least recently used forgotten first): as many as the link table's links, both directions.
MAX_DELAYS = 2 * 10_000


class AirError(Exception):
    """A message that cannot cross: ``code`` is the gRPC status the RPC ends with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SegmentAir:
    """What one segment (the digital part or one tensor) got: the ``ChannelApplied`` air fields."""

    air_s: float
    queue_s: float
    slots: int
    resource_elements: int


@dataclass(frozen=True)
class Crossing:
    """One message's time on the air in one direction: the header's fields, and per segment."""

    airtime: DirectionAirtime
    segments: list[SegmentAir]
    #: when the message may be passed on (enforce: the proxy sleeps until then; account: now)
    departure: float
    #: with ``grants``: each segment as the scheduler served it (enforce) or will (account, predicted at arrival),
    #: its :attr:`~shared.channel.scheduler.Segment.grants` the units its REs are on; else empty
    served: list[Segment] = field(default_factory=list)


@dataclass
class _Counters:
    messages: int = 0
    bytes: int = 0
    units: int = 0  # scheduler units granted at the last reset
    elapsed: int = 0  # scheduler units elapsed at the last reset
    since: float = 0.0


@dataclass
class CellDirection:
    """One scheduler, the futures of the messages that wait on it, and its driver task (enforce clock)."""

    name: str
    direction: str
    scheduler: CellScheduler
    waiting: dict[Ticket, asyncio.Future[Ticket]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    counters: _Counters = field(default_factory=_Counters)


class CellSet:
    """The cells behind one proxy (see the module docstring)."""

    def __init__(self, cells: dict[str, CellConfig], clock_mode: str = "enforce",
                 clock: MonotonicClock | VirtualClock | None = None, seed: int = 0) -> None:
        if clock_mode not in CLOCKS:
            raise ChannelConfigError(f"clock must be enforce or account, got {clock_mode!r}")
        self.initial = dict(cells)
        self.cells = dict(cells)
        self.clock_mode = clock_mode
        self.clock = clock or MonotonicClock()
        self.seed = seed
        self.directions: dict[tuple[str, str], CellDirection] = {}
        self.delays: OrderedDict[tuple[str, str], LinkDelay] = OrderedDict()
        #: set whenever a link's profile changes (a link in outage may lift)
        self.profiles_changed = asyncio.Event()
        #: messages held per (link, es, direction): admitted and not yet released (the queue limit counts them)
        self.held: dict[tuple[str, str, str], int] = {}
        #: the event loop the data path runs on (set by the first message)
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- settings -------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.cells)

    def cell_name(self, es: str) -> str | None:
        """Which cell ES ``es`` serves (its own or the default), ``None`` if no cell applies."""
        return es if es in self.cells else (DEFAULT_CELL if DEFAULT_CELL in self.cells else None)

    def cell_of(self, es: str) -> CellConfig | None:
        name = self.cell_name(es)
        return None if name is None else self.cells[name]

    def set_cell(self, name: str, cell: CellConfig) -> None:
        """Replace cell ``name`` (``default``: every ES without its own); running schedulers change from the
        next slot boundary."""
        self.cells[name] = cell
        now = self.clock.now()
        for (es, _), cd in self.directions.items():
            if self.cell_name(es) == name and cd.scheduler.cell != cell:
                cd.scheduler.set_cell(cell, now)
                cd.wake.set()

    def changed(self, name: str, settings: channel_pb2.CellSettings) -> CellConfig:
        """Cell ``name`` with the fields ``settings`` sets changed (raises ChannelConfigError)."""
        base = self.cells.get(name) or self.cells.get(DEFAULT_CELL) or CellConfig()
        changes = {f: getattr(settings, f) for f in ("bandwidth_mhz", "numerology", "overhead", "duplex", "tdd_pattern",
                                                     "scheduler", "delay_ms", "jitter_ms", "jitter", "queue_limit")
                   if settings.HasField(f)}
        return base.with_changes(**changes)

    def reset(self, stats: bool) -> None:
        """Back to the start-up cells; with ``stats`` zero the counters."""
        for name in list(self.cells):
            if name not in self.initial:
                del self.cells[name]
        for name, cell in self.initial.items():
            self.set_cell(name, cell)
        if stats:
            now = self.clock.now()
            for cd in self.directions.values():
                cd.scheduler.advance(now)  # brings its counters up to now (finished tickets are resolved below)
                self._settle(cd)
                st = cd.scheduler.stats
                cd.counters = _Counters(units=st.units_granted, elapsed=st.elapsed_units, since=now)

    def stats_from_any_thread(self, timeout: float = 2.0) -> list[channel_pb2.CellStats]:
        """:meth:`stats` computed on the event loop the cells run on (the metrics thread asks here), or here
        when no loop runs them."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self.stats()

        async def on_loop() -> list[channel_pb2.CellStats]:
            return self.stats()
        return asyncio.run_coroutine_threadsafe(on_loop(), loop).result(timeout)

    def settings_by_name(self) -> dict[str, CellConfig]:
        """The cells, the default one first."""
        return {n: self.cells[n] for n in sorted(self.cells, key=lambda n: (n != DEFAULT_CELL, n))}

    def settings(self) -> list[channel_pb2.CellSettings]:
        return [cell_to_proto(n, c) for n, c in self.settings_by_name().items()]

    def stats(self, advance: bool = True) -> list[channel_pb2.CellStats]:
        """Per cell and direction since the counters were zeroed. ``advance``: bring the schedulers up to now
        first (on the event loop only; the metrics thread reads them as they are)."""
        now = self.clock.now()
        out = []
        for (es, direction), cd in sorted(self.directions.items()):
            s = cd.scheduler
            if advance:
                for tk in s.advance(now):
                    self._resolve(cd, tk)
            c = cd.counters
            elapsed = s.stats.elapsed_units - c.elapsed
            seconds = max(now - c.since, 1e-9)
            out.append(channel_pb2.CellStats(
                cell=es, direction=direction,
                utilisation=(s.stats.units_granted - c.units) / elapsed if elapsed > 0 else 0.0,
                backlog_resource_elements=s.backlog_re, backlog_messages=len(s.tickets),
                delivered_bits_per_s=8 * c.bytes / seconds, resource_elements=s.stats.re_delivered,
                messages=c.messages, active_links=len(s.flows)))
        return out

    # -- the data path ------------------------------------------------------------------------------------------
    def _direction(self, es: str, direction: str, cell: CellConfig, since: float | None = None) -> CellDirection:
        """The scheduler of ``es``'s cell in ``direction``, made on first use with its slot 0 at ``since`` (the
        first message's arrival: the slot grid must not start after a message it carries came)."""
        key = (es, direction)
        cd = self.directions.get(key)
        if cd is None:
            now = self.clock.now() if since is None else since
            cd = self.directions[key] = CellDirection(es, direction, make_scheduler(cell, direction, now),
                                                      counters=_Counters(since=now))
        return cd

    def _delay(self, link: str, direction: str) -> LinkDelay:
        key = (link, direction)
        d = self.delays.get(key)
        if d is None:
            d = self.delays[key] = LinkDelay(zlib.crc32(f"{self.seed}:{link}:{direction}".encode()))
            if len(self.delays) > MAX_DELAYS:
                self.delays.popitem(last=False)
        self.delays.move_to_end(key)
        return d

    def _resolve(self, cd: CellDirection, tk: Ticket) -> None:
        fut = cd.waiting.pop(tk, None)
        if fut is not None and not fut.done():
            fut.set_result(tk)

    def _settle(self, cd: CellDirection) -> None:
        for tk in cd.scheduler.advance(self.clock.now()):
            self._resolve(cd, tk)

    async def _drive(self, cd: CellDirection) -> None:
        """Wake at each next event of ``cd``'s scheduler (or when woken: an arrival, a change) and resolve."""
        while True:
            self._settle(cd)
            if not cd.waiting:
                cd.task = None
                return
            t = cd.scheduler.next_event()
            cd.wake.clear()
            if t is None:
                await cd.wake.wait()
                continue
            # round robin wakes once per completion (precisely); PF once a slot (a plain sleep, no spin)
            sleeper = asyncio.ensure_future(self.clock.sleep_until(t, not isinstance(cd.scheduler, PfScheduler)))
            waker = asyncio.ensure_future(cd.wake.wait())
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            for task in (sleeper, waker):
                task.cancel()

    async def _outage(self, snr_db: Callable[[], float], deadline: float, what: str) -> int:
        """The MCS of the link once out of outage; waits for a profile change until the deadline."""
        while True:
            mcs = select_mcs(snr_db())
            if mcs is not None:
                return mcs.index
            if self.clock_mode == "account" or self.clock.now() >= deadline:
                raise AirError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"{what}: the link is in outage (SNR {snr_db():g} dB is below MCS 0's threshold) and "
                               "its digital bits could not go before the RPC deadline")
            self.profiles_changed.clear()
            waiter = asyncio.ensure_future(self.profiles_changed.wait())
            sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, sleeper):
                task.cancel()

    def admit(self, link: str, es: str, direction: str) -> None:
        """Take a message of ``link`` into ``es``'s cell, or refuse it at once (before any channel math) when the
        link already has ``queue_limit`` messages held in that direction (being computed, queued or on the air):
        :class:`AirError` RESOURCE_EXHAUSTED. Pair with :meth:`release`. No cell: nothing to check."""
        cell = self.cell_of(es)
        if cell is None:
            return
        key = (link, es, direction)
        held = self.held.get(key, 0)
        if held >= cell.queue_limit:
            raise AirError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{direction} of {link} in the cell of {es}: {held} messages already queued "
                           f"(queue_limit {cell.queue_limit})")
        self.held[key] = held + 1

    def release(self, link: str, es: str, direction: str) -> None:
        """The message :meth:`admit` took has left (delivered or failed)."""
        key = (link, es, direction)
        left = self.held.get(key, 0) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)

    async def carry(self, link: str, es: str, direction: str, message_bytes: int, tensor_values: list[int],
                    tensor_bytes: int, snr_db: Callable[[], float], deadline: float, arrival: float,
                    grants: bool = False) -> Crossing:
        """Send one message of ``message_bytes`` that came at ``arrival`` (its over-the-air tensors:
        ``tensor_values`` real values each, ``tensor_bytes`` of data in all) over ``es``'s cell in ``direction``;
        returns once its last slot has ended (enforce) or at once (account), with the departure time the caller
        waits for (so its own work after the air is absorbed in the delay). ``snr_db``: the link direction's SNR
        now (for the MCS). ``grants``: also return which units each segment got (:attr:`Crossing.served`; the proxy
        replays a trace on them). Raises :class:`AirError` (RESOURCE_EXHAUSTED at once: the link's queue is full;
        DEADLINE_EXCEEDED: at the deadline)."""
        cell = self.cell_of(es)
        name = self.cell_name(es)
        assert cell is not None and name is not None
        self.loop = asyncio.get_running_loop()
        cd = self._direction(es, direction, cell, arrival)
        sched = cd.scheduler
        what = f"{direction} of {link} in the cell of {es}"
        bits = 8 * max(message_bytes - tensor_bytes, 0)
        now_mcs = select_mcs(snr_db())
        submit_at = arrival
        if not bits:
            mcs = -1
        elif now_mcs is not None:
            mcs = now_mcs.index
        else:  # in outage: the bits wait for the link to lift (or the deadline)
            mcs = await self._outage(snr_db, deadline, what)
            submit_at = self.clock.now()
        digital = digital_re(bits, MCS_TABLE[mcs]) if bits else 0
        segments = [digital] + [-(-n // 2) for n in tensor_values]
        account = self.clock_mode == "account"
        tk = sched.submit(link, segments, submit_at, math.inf if account else deadline)
        if account:
            predicted = sched.predict(tk)
            served = sched.predict_segments(tk) if grants else []
            for done in sched.advance(self.clock.now()):
                self._resolve(cd, done)
            finished = max((e for _, e, _ in predicted if not math.isnan(e)), default=arrival)
            first = min((s for s, _, _ in predicted if not math.isnan(s)), default=arrival)
            per = [SegmentAir(e - s if seg.re else 0.0, max(s - arrival, 0.0) if seg.re else 0.0, n, seg.re)
                   for (s, e, n), seg in zip(predicted, tk.segments, strict=True)]
            used = [(a, e, n) for a, e, n in predicted if n]
            # consecutive segments share a slot where one ends inside the slot the next starts in
            slots = sum(n for _, _, n in used) - sum(1 for x, y in itertools.pairwise(used) if x[1] > y[0])
        else:
            fut: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
            cd.waiting[tk] = fut
            cd.wake.set()
            if cd.task is None:
                cd.task = asyncio.ensure_future(self._drive(cd))
            try:
                await fut
            except asyncio.CancelledError:
                cd.waiting.pop(tk, None)
                sched.cancel(tk, self.clock.now())
                raise
            if tk.state != "done":
                raise AirError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"{what}: {tk.re} resource elements could not be sent before the RPC deadline "
                               f"({deadline - arrival:.4f} s after the message came)")
            finished, first = tk.finished, tk.first_start if tk.units else arrival
            per = [SegmentAir(s.last_end - s.first_start if s.units else 0.0,
                              max(s.first_start - arrival, 0.0) if s.units else 0.0, s.slots, s.re) for s in tk.segments]
            slots = tk.slots
            served = tk.segments if grants else []
        departure = self._delay(link, direction).departure(finished, cell.delay_ms / 1e3, cell.jitter_ms / 1e3, cell.jitter)
        if departure > deadline:
            if not account:
                await self.clock.sleep_until(deadline)
            else:
                sched.cancel(tk, self.clock.now())
            raise AirError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"{what}: it would arrive {departure - arrival:.4f} s after it came, past the RPC deadline")
        cd.counters.messages += 1
        cd.counters.bytes += message_bytes
        queue_s = max(first - arrival, 0.0) if tk.re else 0.0
        air = DirectionAirtime(air_s=max(finished - first, 0.0) if tk.re else 0.0, queue_s=queue_s,
                               delay_s=departure - finished, slots=slots, resource_elements=tk.re,
                               digital_bits=bits, mcs=mcs, cell=es)
        return Crossing(air, per, arrival if account else departure, served)

    async def close(self) -> None:
        for cd in self.directions.values():
            if cd.task is not None:
                cd.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cd.task


def cell_to_proto(name: str, c: CellConfig) -> channel_pb2.CellSettings:
    return channel_pb2.CellSettings(
        cell=name, bandwidth_mhz=c.bandwidth_mhz, numerology=c.numerology, overhead=c.overhead, duplex=c.duplex,
        tdd_pattern=c.tdd_pattern, scheduler=c.scheduler, delay_ms=c.delay_ms, jitter_ms=c.jitter_ms, jitter=c.jitter,
        queue_limit=c.queue_limit, prbs=c.prbs, re_per_slot=c.re_per_slot)


__all__ = ["CLOCKS", "DIRECTIONS", "AirError", "CellSet", "Crossing", "SegmentAir", "cell_to_proto"]
