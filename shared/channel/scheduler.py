"""The slot scheduler of one cell direction, link delay and jitter, and the clocks (pure Python, times explicit).

A :class:`CellScheduler` hands the cell's resource grid (units of one PRB for one slot, :mod:`.cell`) to the
*flows* with data: one flow per link (``UE->ES``), each a FIFO of the link's messages, so a link's own
messages never overtake each other and no link waits behind another's (no head-of-line blocking between UEs).
A message is a list of *segments* (its digital part, then each over-the-air tensor) of so many resource
elements; a flow's segments are packed back to back into the units it is granted (one unit can end one
segment and start the next, as a transport block carries several SDUs).

- **Round robin** (``rr``, the default): the units of the grid are dealt to the active flows in turn, unit by
  unit across each slot's PRBs and on into the next slot. ``k`` backlogged flows get ``1/k`` of the grid each
  (± one unit): processor sharing at PRB granularity. Event driven: between events (an arrival, a flow
  running dry, a deadline, a cell change) flow ``j`` of ``k`` gets units ``j, j+k, j+2k, ...``, so an event costs
  ``O(k)`` and nothing is done per slot.
- **Proportional fair** (``pf``): Sionna's metric (``sionna.sys.PFSchedulerSUMIMO``): each slot the PRBs go
  to the flows in order of ``rate / average throughput``, the average an exponential one with ``β = 0.98``;
  stepped slot by slot, ``O(k log k)`` a slot.

Times are explicit arguments (seconds on any clock): the scheduler never reads a clock, so a test drives it
on a virtual timeline exactly and the proxy on :class:`MonotonicClock`. A message that arrives at ``t`` may use
the first slot that starts at or after ``t``; a segment is received at the end of the slot of its last unit.
A message whose deadline comes first is dropped at the deadline (:attr:`Ticket.state` ``"expired"``); a cell
change applies from the next slot boundary.

Per transmission the scheduler returns which units it got (:class:`Grant`): the seam where a channel that
varies in time and frequency puts each resource element's own fading.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.channel.cell import CellConfig, SlotGrid

#: Proportional fair: the averaging factor of the past throughput (Sionna's default).
PF_BETA = 0.98


@dataclass(frozen=True)
class Grant:
    """Units granted in one stretch: grid positions ``first, first+stride, ...`` (``count`` of them), where
    position ``p`` is PRB ``p mod prbs`` of the direction's usable slot ``p // prbs``."""

    first: int
    stride: int
    count: int
    prbs: int
    grid: SlotGrid

    def units(self) -> Iterator[tuple[int, int]]:
        """``(slot number, PRB index)`` of every unit (slot numbers count all slots from the cell's epoch)."""
        for i in range(self.count):
            v, prb = divmod(self.first + i * self.stride, self.prbs)
            yield self.grid.slot_of(v), prb


@dataclass
class Segment:
    """A piece of a message (its digital bits or one tensor) of ``re`` resource elements, once scheduled."""

    re: int
    start: int = 0  # offset of its first RE in its flow's stream
    first_start: float = math.nan  # when its first granted slot starts
    last_end: float = math.nan  # when its last granted slot ends
    slots: int = 0
    units: int = 0
    grants: list[Grant] = field(default_factory=list)
    #: REs of its first unit that belong to the segment before it (a unit can end one segment and start the next)
    lead: int = 0
    _last_slot: tuple[int, int] = (0, -1)  # (grid, usable slot) of the last unit counted: a slot counts once

    @property
    def end(self) -> int:
        return self.start + self.re


@dataclass(eq=False)
class Ticket:
    """One message in one direction: its segments, when it came, its deadline, what became of it."""

    flow: str
    segments: list[Segment]
    arrival: float
    deadline: float
    state: str = "queued"  # queued | done | expired | cancelled
    finished: float = math.nan  # done: the end of its last slot; expired: the deadline
    slots: int = 0  # distinct slots in which any of its segments got units
    _last_slot: tuple[int, int] = (0, -1)

    @property
    def re(self) -> int:
        return sum(s.re for s in self.segments)

    @property
    def first_start(self) -> float:
        starts = [s.first_start for s in self.segments if s.units]
        return min(starts) if starts else math.nan

    @property
    def queue_s(self) -> float:
        """Arrival to the start of its first granted slot (0 for a message of no REs)."""
        return max(0.0, self.first_start - self.arrival) if self.units else 0.0

    @property
    def air_s(self) -> float:
        """Start of its first granted slot to the end of its last."""
        return self.finished - self.first_start if self.units and self.state == "done" else 0.0

    @property
    def units(self) -> int:
        return sum(s.units for s in self.segments)


@dataclass(eq=False)
class _Flow:
    name: str
    queue: list[tuple[Ticket, Segment]] = field(default_factory=list)
    served: int = 0  # RE of its stream delivered (or dropped)
    tail: int = 0  # offset just past its last queued segment
    rate: float = 1.0  # PF: achievable rate (spectral efficiency)
    average: float = 0.0  # PF: average throughput, RE per slot
    averaged_at: int = 0  # PF: the usable slot its average was last brought up to


@dataclass
class SchedulerStats:
    re_delivered: int = 0  # REs of segments delivered
    units_granted: int = 0
    busy_units: int = 0  # grid units elapsed while some flow had data
    elapsed_units: int = 0  # grid units elapsed in all


class CellScheduler:
    """Round-robin scheduler of one direction of one cell (see the module docstring); :class:`PfScheduler`
    is the proportional-fair one. ``t0``: the time of slot 0."""

    def __init__(self, cell: CellConfig, direction: str, t0: float = 0.0) -> None:
        self.cell = cell
        self.direction = direction
        self.grid = SlotGrid.of(cell, direction, t0)
        self.prbs = cell.prbs
        self.rpp = cell.re_per_prb
        self.pos = 0  # grid position accounted up to (every unit before it is dealt)
        self.flows: dict[str, _Flow] = {}  # active flows in dealing order, the next to be dealt first
        self.idle: dict[str, _Flow] = {}  # flows that ran dry (PF keeps their averages)
        self.tickets: set[Ticket] = set()  # queued
        self.finished: list[tuple[float, int, Ticket]] = []  # heap by finish time
        self._deadlines: list[tuple[float, int, Ticket]] = []
        self._seq = 0
        self.stats = SchedulerStats()

    # -- the interface ----------------------------------------------------------------------------------
    def submit(self, flow: str, segments: list[int], t: float, deadline: float = math.inf,
               rate: float = 1.0) -> Ticket:
        """Queue a message of ``segments`` (REs each) on ``flow`` at time ``t``; it may use slots from the first
        one starting at or after ``t``. ``rate``: the flow's spectral efficiency (for PF)."""
        self._account(t)
        ticket = Ticket(flow, [Segment(int(r)) for r in segments], t, deadline)
        if any(s.re < 0 for s in ticket.segments):
            raise ValueError(f"negative resource elements in {segments}")
        self._run_to(self.grid.first_at_or_after(t) * self.prbs)
        if ticket.re == 0:  # nothing to send: done at once
            self._finish(ticket, t)
            return ticket
        f = self.flows.get(flow) or self.idle.pop(flow, None) or _Flow(flow)
        if flow not in self.flows:
            f.served = f.tail  # a flow that ran dry starts afresh (its last unit's rest was dropped)
            self._bring_average(f)
            self.flows[flow] = f
        f.rate = rate
        for s in ticket.segments:
            s.start = f.tail
            f.tail += s.re
            if s.re:
                f.queue.append((ticket, s))
        self.tickets.add(ticket)
        if math.isfinite(deadline):
            heapq.heappush(self._deadlines, (deadline, self._next(), ticket))
        return ticket

    def advance(self, t: float) -> list[Ticket]:
        """Account every slot that ended by ``t``; returns the tickets finished (done or expired) by ``t``,
        in order of finishing (each once)."""
        self._account(t)
        out = []
        while self.finished and self.finished[0][0] <= t:
            out.append(heapq.heappop(self.finished)[2])
        return out

    def _account(self, t: float) -> None:
        """Deadlines due by ``t``, then every slot that ended by ``t``."""
        while self._deadlines and self._deadlines[0][0] <= t:
            d, _, ticket = heapq.heappop(self._deadlines)
            if ticket.state == "queued":
                self._run_to(self.grid.first_at_or_after(d) * self.prbs)
                if ticket.state == "done" and ticket.finished > d:  # its last slot ends after the deadline
                    self._unfinish(ticket)
                if ticket.state == "queued":
                    self._drop(ticket, "expired", d)
        self._run_to(self._ended_by(t) * self.prbs)

    def cancel(self, ticket: Ticket, t: float) -> None:
        """Withdraw a queued message at ``t`` (its RPC was cancelled): its units end at the next slot."""
        if ticket.state != "queued":
            return
        self._account(t)
        self._run_to(self.grid.first_at_or_after(t) * self.prbs)
        if ticket.state == "queued":
            self._drop(ticket, "cancelled", t)

    def set_cell(self, cell: CellConfig, t: float) -> None:
        """Change the carrier from the first slot boundary at or after ``t``; the slot grid restarts there."""
        self._account(t)
        v = self.grid.first_at_or_after(t)
        self._run_to(v * self.prbs)
        boundary = self.grid.start(v)
        for f in [*self.flows.values(), *self.idle.values()]:
            self._bring_average(f)
            f.averaged_at = 0
        self.cell, self.prbs, self.rpp = cell, cell.prbs, cell.re_per_prb
        self.grid = SlotGrid.of(cell, self.direction, boundary)
        self.pos = 0

    def next_event(self) -> float | None:
        """The earliest time :meth:`advance` will finish a ticket if nothing else arrives (``None``: no work)."""
        while self._deadlines and self._deadlines[0][2].state != "queued":
            heapq.heappop(self._deadlines)
        times = [self.finished[0][0]] if self.finished else []
        times += [d for d, _, _ in self._deadlines[:1]]
        soon = self._next_completion()
        if soon is not None:
            times.append(soon)
        return min(times) if times else None

    def predict(self, ticket: Ticket) -> list[tuple[float, float, int]]:
        """``(first slot start, last slot end, slots)`` of each segment of a queued ``ticket`` if nothing else
        arrives (``account`` clock). Exact for round robin (the dealing order is known: flow ``f``'s ``m``-th
        unit comes after ``m`` units of every other flow that needs that many, and one more of each flow ahead
        of it in the turn); for PF the same estimate, within a slot per active flow."""
        f = self.flows.get(ticket.flow)
        if f is None or ticket.state != "queued":
            return [(s.first_start, s.last_end, s.slots) for s in ticket.segments]
        order = list(self.flows.values())
        j = order.index(f)
        needs = [self._need(g) for g in order]

        def position(m: int) -> int:  # grid position of f's m-th unit from now (0-based)
            ahead = sum(min(n, m) + (1 if i < j and n > m else 0) for i, n in enumerate(needs) if i != j)
            return self.pos + m + ahead

        out = []
        for s in ticket.segments:
            if not s.re:
                out.append((math.nan, math.nan, 0))
                continue
            m0 = max(s.start - f.served, 0) // self.rpp
            m1 = -(-(s.end - f.served) // self.rpp) - 1
            v0, v1 = position(m0) // self.prbs, position(m1) // self.prbs
            out.append((self.grid.start(v0), self.grid.end(v1), min(m1 - m0 + 1, v1 - v0 + 1)))
        return out

    def predict_segments(self, ticket: Ticket, max_events: int = 1_000_000) -> list[Segment]:
        """The segments of ``ticket`` as they will be served if nothing else arrives, with their grants (the
        ``account`` clock's units, as predicted at arrival): a copy of the scheduler run until the ticket is done
        (exact for both schedulers; this scheduler is left as it is)."""
        if ticket.state != "queued":
            return ticket.segments
        memo: dict[int, object] = {}
        twin = copy.deepcopy(self, memo)
        tk: Ticket = memo[id(ticket)]  # type: ignore[assignment]
        for _ in range(max_events):
            if tk.state != "queued":
                break
            t = twin.next_event()
            if t is None:
                break
            twin.advance(t)
        return tk.segments

    @property
    def backlog_re(self) -> int:
        """REs queued and not yet delivered."""
        return sum(f.tail - f.served for f in self.flows.values())

    def queued(self, flow: str) -> int:
        """Messages of ``flow`` waiting (not yet fully sent)."""
        f = self.flows.get(flow)
        return len({id(tk) for tk, _ in f.queue}) if f else 0

    # -- the mechanics ------------------------------------------------------------------------------------
    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _ended_by(self, t: float) -> int:
        """Usable slots that have ended by ``t``."""
        return self.grid.first_at_or_after(t - self.grid.slot_s * (1 - 1e-6))

    def _finish(self, ticket: Ticket, when: float) -> None:
        ticket.state, ticket.finished = "done", when
        self.tickets.discard(ticket)
        heapq.heappush(self.finished, (when, self._next(), ticket))

    def _unfinish(self, ticket: Ticket) -> None:
        """Take a done ticket back out of the finished heap (it is expired or cancelled after all)."""
        if ticket.state == "done":
            self.finished = [e for e in self.finished if e[2] is not ticket]
            heapq.heapify(self.finished)
            ticket.state = "queued"

    def _drop(self, ticket: Ticket, state: str, when: float) -> None:
        """Remove what is left of ``ticket`` from its flow's stream (later segments move up)."""
        f = self.flows.get(ticket.flow)
        if f is not None:
            removed = 0
            keep: list[tuple[Ticket, Segment]] = []
            for tk, s in f.queue:
                s.start -= removed
                if tk is ticket:
                    sent = min(max(f.served - s.start, 0), s.re)
                    removed += s.re - sent
                    s.re = sent
                else:
                    keep.append((tk, s))
            f.queue, f.tail = keep, f.tail - removed
            if not keep:
                self._retire(f)
        ticket.state, ticket.finished = state, when
        self.tickets.discard(ticket)
        if state == "expired":
            heapq.heappush(self.finished, (when, self._next(), ticket))

    def _retire(self, f: _Flow) -> None:
        f.served = f.tail
        self.flows.pop(f.name, None)
        self.idle[f.name] = f
        if len(self.idle) > 4096:  # PF averages of long-idle flows: forget the oldest
            self.idle.pop(next(iter(self.idle)))

    def _serve(self, f: _Flow, first: int, stride: int, count: int) -> None:
        """Give ``f`` ``count`` units at positions ``first + i·stride``; pack them into its segments in order."""
        if count <= 0:
            return
        self.stats.units_granted += count
        o0 = f.served
        end = o0 + count * self.rpp
        while f.queue:
            ticket, s = f.queue[0]
            lo, hi = max(s.start, o0), min(s.end, end)
            if lo >= hi:
                break
            i0, i1 = (lo - o0) // self.rpp, -(-(hi - o0) // self.rpp) - 1
            a = first + i0 * stride
            g = Grant(a, stride, i1 - i0 + 1, self.prbs, self.grid)
            if not s.grants:
                s.lead = (lo - o0) - i0 * self.rpp
            s.grants.append(g)
            s.units += g.count
            v_first, v_last = a // self.prbs, (first + i1 * stride) // self.prbs
            distinct = g.count if stride >= self.prbs else v_last - v_first + 1
            s.slots += distinct - (1 if s._last_slot == (id(self.grid), v_first) else 0)
            s._last_slot = (id(self.grid), v_last)
            ticket.slots += distinct - (1 if ticket._last_slot == (id(self.grid), v_first) else 0)
            ticket._last_slot = (id(self.grid), v_last)
            if math.isnan(s.first_start):
                s.first_start = self.grid.start(v_first)
            s.last_end = self.grid.end(v_last)
            self.stats.re_delivered += hi - lo
            if hi < s.end:
                break
            f.queue.pop(0)
            if not any(tk is ticket for tk, _ in f.queue):
                self._finish(ticket, max(x.last_end for x in ticket.segments if x.units))
        f.served = min(end, f.tail)
        if not f.queue:
            self._retire(f)

    def _need(self, f: _Flow) -> int:
        """Units ``f`` needs to run dry."""
        return -(-(f.tail - f.served) // self.rpp)

    def _run_to(self, target: int) -> None:
        """Deal every unit before grid position ``target`` (round robin; events inside handled in order)."""
        while self.pos < target:
            k = len(self.flows)
            if k == 0:
                self.stats.elapsed_units += target - self.pos
                self.pos = target
                return
            order = list(self.flows.values())
            # the first flow to run dry, and the position just after its last unit
            close = min(self.pos + j + (self._need(f) - 1) * k for j, f in enumerate(order)) + 1
            close = min(close, target)
            span = close - self.pos
            for j, f in enumerate(order):
                self._serve(f, self.pos + j, k, max(0, -(-(span - j) // k)))
            turn = span % k
            rotated = order[turn:] + order[:turn]
            self.flows = {f.name: f for f in rotated if f.name in self.flows}
            self.stats.elapsed_units += span
            self.stats.busy_units += span
            self.pos = close

    def _next_completion(self) -> float | None:
        """When the first segment now queued completes if nothing changes (round robin: O(k))."""
        k = len(self.flows)
        best = None
        for j, f in enumerate(self.flows.values()):
            ticket = f.queue[0][0]
            last_seg = max((seg for tk, seg in f.queue if tk is ticket), key=lambda x: x.end)
            units = -(-(last_seg.end - f.served) // self.rpp)
            v = (self.pos + j + (units - 1) * k) // self.prbs
            t = self.grid.end(v)
            best = t if best is None else min(best, t)
        return best

    def _bring_average(self, f: _Flow) -> None:
        """PF only."""


class PfScheduler(CellScheduler):
    """Proportional fair (Sionna's metric, ``β`` = :data:`PF_BETA`), stepped one usable slot at a time."""

    def _bring_average(self, f: _Flow) -> None:
        v = self.pos // self.prbs
        if v > f.averaged_at:
            f.average *= PF_BETA ** (v - f.averaged_at)
            f.averaged_at = v

    def _run_to(self, target: int) -> None:
        while self.pos < target:
            v, prb = divmod(self.pos, self.prbs)
            if not self.flows:
                self.stats.elapsed_units += target - self.pos
                self.pos = target
                return
            if prb:  # a partial slot (after a cell change mid-slot cannot happen; defensive): skip it
                self.stats.elapsed_units += self.prbs - prb
                self.pos += self.prbs - prb
                continue
            for f in self.flows.values():
                self._bring_average(f)
            order = sorted(self.flows.values(), key=lambda f: (-f.rate / max(f.average, 1e-9), f.name))
            got: dict[str, int] = {}
            free = self.prbs
            for f in order:
                if not free:
                    break
                n = min(self._need(f), free)
                self._serve(f, self.pos + self.prbs - free, 1, n)
                got[f.name] = n
                free -= n
            for f in order:  # Sionna updates every user's average each slot (0 for the unscheduled)
                f.average = PF_BETA * f.average + (1 - PF_BETA) * got.get(f.name, 0) * self.rpp * f.rate
                f.averaged_at = v + 1
            self.stats.elapsed_units += self.prbs
            self.stats.busy_units += self.prbs
            self.pos += self.prbs

    def _next_completion(self) -> float | None:
        """Stepping slot by slot, PF knows only that the current slot ends."""
        if not self.flows:
            return None
        return self.grid.end(self.pos // self.prbs)


def make_scheduler(cell: CellConfig, direction: str, t0: float = 0.0) -> CellScheduler:
    """The scheduler ``cell.scheduler`` names, for ``direction``."""
    return (PfScheduler if cell.scheduler == "pf" else CellScheduler)(cell, direction, t0)


# -- delay and jitter ----------------------------------------------------------------------------------------
#: Pareto jitter: the shape (finite variance and kurtosis; shifted to mean 0, scaled to the jitter's std).
PARETO_SHAPE = 8.0


class LinkDelay:
    """One link direction's one-way delay plus jitter, never reordering the link's own messages: a message
    leaves no earlier than the one before it (netem reorders with jitter; we hold instead)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.last = -math.inf

    def draw(self, delay_s: float, jitter_s: float, distribution: str) -> float:
        """One delay sample ``>= 0`` (seconds)."""
        if jitter_s <= 0:
            return delay_s
        if distribution == "uniform":
            j = self.rng.uniform(-math.sqrt(3) * jitter_s, math.sqrt(3) * jitter_s)
        elif distribution == "pareto":
            a = PARETO_SHAPE
            xm = jitter_s * (a - 1) * math.sqrt(a - 2) / math.sqrt(a)  # std of Pareto(a, xm) = jitter_s
            j = xm * self.rng.paretovariate(a) - a * xm / (a - 1)
        else:
            j = self.rng.gauss(0.0, jitter_s)
        return max(0.0, delay_s + j)

    def departure(self, ready: float, delay_s: float, jitter_s: float, distribution: str) -> float:
        """When a message whose air ended at ``ready`` leaves: ``ready`` + a delay draw, not before the last."""
        t = max(ready + self.draw(delay_s, jitter_s, distribution), self.last)
        self.last = t
        return t


# -- clocks --------------------------------------------------------------------------------------------------
class MonotonicClock:
    """The real clock: ``time.monotonic`` and asyncio sleeps.

    asyncio's timers wake up to 1 ms late (epoll's timeout is whole milliseconds, rounded up), so
    :meth:`sleep_until` sleeps to :data:`SPIN_S` before ``t`` and then yields to the loop until ``t`` has come:
    a message leaves within a few microseconds of its departure time, for at most ``SPIN_S`` of CPU each."""

    SPIN_S = 0.0012

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, t: float, precise: bool = True) -> None:
        """Until ``t``; ``precise=False``: a plain asyncio sleep (up to ~1 ms late, no CPU spent)."""
        coarse = t - time.monotonic() - (self.SPIN_S if precise else 0.0)
        if coarse > 0:
            await asyncio.sleep(coarse)
        while precise and time.monotonic() < t:
            await asyncio.sleep(0)


class VirtualClock:
    """A clock that moves only when told (tests): :meth:`sleep_until` waits until :meth:`advance_to` passes."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, t: float, precise: bool = True) -> None:
        if t <= self.t:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (t, self._seq, fut))
        await fut

    def next_wakeup(self) -> float | None:
        return self._waiters[0][0] if self._waiters else None

    def advance_to(self, t: float) -> None:
        """Move to ``t``, waking (in time order) every sleeper due by then."""
        while self._waiters and self._waiters[0][0] <= t:
            when, _, fut = heapq.heappop(self._waiters)
            self.t = max(self.t, when)
            if not fut.done():
                fut.set_result(None)
        self.t = max(self.t, t)
