"""Trace replay in the proxy: which resource elements a tensor of a trace link gets, its CSI, the math (numpy only).

A profile with ``trace = "FILE"`` (``shared.channel.profiles``) replays that file's ``H[slot, element]``
(:mod:`shared.channel.trace`) instead of drawing block fading. The carrier is the ES's cell when it has one
(``[cells.*]`` / ``--bandwidth-mhz``), else the carrier the trace was made for (a flat trace without a cell: 20 MHz
at its numerology); the trace's numerology must match it and a per-PRB or per-subcarrier trace must cover its PRBs
(else the transmission is refused, naming the file and the field).

**Which elements.** A tensor of ``n`` values takes ``⌈n/2⌉`` REs. When its ES has a cell, they are the REs the
cell's scheduler granted it (:attr:`channel_emulator.cells.Crossing.served`: its segment's units ``(slot, PRB)``,
:func:`granted_allocation`): the proxy schedules a message on a trace link first and does its math afterwards, so
with several UEs in one cell each tensor is received on its own interleaved units, each RE with the trace's gain
``H[slot, element]`` of that slot (``enforce``: the units it got; ``account``: those predicted at arrival, if
nothing else arrives). Without a cell it is laid over the whole carrier PRB after PRB, slot after slot, from the
first slot starting at or after its arrival (:meth:`Allocation.contiguous`: what a lone UE of a round-robin cell
is granted). Slots count from the proxy's start on its clock (a cell grid's slot maps to the replay slot holding
its middle), plus the profile's ``trace_offset_s``; the trace wraps around at its end.

**CSI.** ``GetCSI`` on a trace link reports the receiver's estimate ``|Ĥ|`` of the next transmission's REs from
the next slot on (as :meth:`Allocation.contiguous` lays them) and pins it: per-PRB and flat traces one gain per
*unit* (one PRB for one slot: ``coherence_symbols`` = ``2 · RE per PRB`` real symbols), per-subcarrier traces one
gain per RE (``coherence_symbols`` = 2). Without a cell the next tensor of that link direction starts in the
pinned slot whatever the clock says by then, so it gets exactly the reported REs and its receiver equalises with
exactly the reported CSI. In a cell the scheduler decides: the pinned estimate is used on the REs it granted that
were reported (same slot and subcarrier; a lone UE asking just before it sends), a fresh one elsewhere.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.channel.cell import CellConfig
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import ChannelProfile
from shared.channel.scheduler import Segment
from shared.channel.trace import (
    Allocation,
    Trace,
    TraceError,
    estimate_gains,
    load_trace_cached,
    transmit_on_grid,
)
from shared.channel.transmit import Transmission
from shared.wire.limits import MAX_POWER_BLOCKS

#: Most units (PRB × slot) one GetCSI of a trace link may report.
MAX_CSI_UNITS = 1 << 16
#: Most gains one GetCSI of a per-subcarrier trace may report (one per RE: each is a power block of 2 symbols).
MAX_CSI_ELEMENTS = MAX_POWER_BLOCKS
#: Pinned CSI kept per link direction at most (least recently pinned forgotten first).
MAX_PINS = 20_000


@dataclass(frozen=True)
class Pin:
    """CSI handed out for the next transmission: its start slot, the REs it was reported for (``alloc``) and the
    receiver's complex estimate ``h_hat`` ``[m]`` of each of them."""

    start_slot: int
    alloc: Allocation
    h_hat: np.ndarray
    trace: str

    def apply(self, alloc: Allocation, h_hat: np.ndarray) -> None:
        """Overwrite ``h_hat`` ``[len(alloc)]`` in place where ``alloc``'s REs are the pinned ones (same slot, same
        subcarrier, the same one of the REs a unit has on it, in order): there the receiver equalises with exactly
        the reported CSI."""
        if not len(alloc) or not len(self.alloc):
            return
        key, want = _re_keys(self.alloc), _re_keys(alloc)
        order = np.argsort(key, kind="stable")
        at = np.clip(np.searchsorted(key[order], want), 0, key.size - 1)
        hit = key[order][at] == want
        h_hat[hit] = self.h_hat[order[at[hit]]]


def _re_keys(alloc: Allocation) -> np.ndarray:
    """One int64 per RE of ``alloc``, equal for the same RE of the grid: its slot, subcarrier, and its rank among
    the allocation's REs on that slot and subcarrier (a PRB has several symbols on each subcarrier)."""
    base = alloc.slots * (1 << 16) + alloc.subcarriers
    order = np.argsort(base, kind="stable")
    sorted_base = base[order]
    starts = np.flatnonzero(np.r_[True, sorted_base[1:] != sorted_base[:-1]])
    rank = np.arange(base.size) - np.repeat(starts, np.diff(np.r_[starts, base.size]))
    out = np.empty_like(base)
    out[order] = sorted_base * (1 << 10) + rank
    return out


def granted_allocation(segment: Segment, n_re: int, re_per_prb: int, epoch: float) -> Allocation:
    """The REs a tensor's scheduler segment was granted (:class:`~shared.channel.scheduler.Segment`: its grants'
    units ``(slot, PRB)`` in order, its first RE ``lead`` REs into the first unit), with slots counted as the
    replay counts them: from ``epoch`` in slots of the cell's grid (the trace slot holding each granted slot's
    middle, so a cell grid not aligned with the replay's rounds to the nearest)."""
    slots: list[np.ndarray] = []
    prbs: list[np.ndarray] = []
    for g in segment.grants:
        pos = g.first + g.stride * np.arange(g.count, dtype=np.int64)
        v, prb = np.divmod(pos, g.prbs)
        q, r = np.divmod(v, len(g.grid.positions))
        slot = q * g.grid.period + np.asarray(g.grid.positions, dtype=np.int64)[r]
        start = g.grid.t0 + slot * g.grid.slot_s
        slots.append(np.floor((start - epoch) / g.grid.slot_s + 0.5).astype(np.int64))
        prbs.append(prb)
    units = np.stack([np.concatenate(slots), np.concatenate(prbs)], axis=1) if slots else np.zeros((0, 2), np.int64)
    return Allocation.from_units(units, n_re, re_per_prb, segment.lead)


class Replayer:
    """The proxy's trace replay: the clock and epoch slots count from, the ES's cells, the pinned CSI, and the REs
    the cell's scheduler granted the tensors the math thread is about to send."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, seed: int = 0) -> None:
        self.clock = clock
        self.epoch = clock()
        self.seed = seed
        #: the cell of an ES (``channel_emulator.cells.CellSet.cell_of``); none: the trace's own carrier
        self.cell_of: Callable[[str], CellConfig | None] = lambda es: None
        self.pins: OrderedDict[tuple[str, str], Pin] = OrderedDict()
        #: per link direction, the granted REs of its next tensors in order (set around one message's math)
        self.granted: dict[tuple[str, str], deque[Allocation | None]] = {}

    def restart(self, clock: Callable[[], float] | None = None) -> None:
        """Count slots from now (on ``clock`` if given) and forget pinned CSI."""
        if clock is not None:
            self.clock = clock
        self.epoch = self.clock()
        self.pins.clear()
        self.granted.clear()

    # -- the grid --------------------------------------------------------------------------------------------
    def carrier(self, link: str, trace: Trace) -> CellConfig:
        """The carrier the link's REs are on (its ES's cell, else the trace's); TraceError when they disagree."""
        es = link.partition("->")[2]
        cell = self.cell_of(es)
        if cell is None:
            bw = trace.meta.bandwidth_mhz or 20.0
            cell = CellConfig(bandwidth_mhz=bw, numerology=trace.meta.numerology)
        trace.check_cell(cell.numerology, cell.prbs)
        return cell

    def next_slot(self, cell: CellConfig) -> int:
        """The first slot that starts at or after now, counted from the proxy's start (a transmission cannot start
        in a slot already begun: the cell's scheduler's rule)."""
        return max(0, math.ceil((self.clock() - self.epoch) / cell.slot_s - 1e-9))

    @staticmethod
    def _trace(profile: ChannelProfile) -> Trace:
        return load_trace_cached(profile.trace)

    # -- the data path -----------------------------------------------------------------------------------------
    def grant(self, link: str, direction: str, segments: list[Segment], n_res: list[int], re_per_prb: int) -> None:
        """Before one message's math (in the math thread): its tensors (``n_res`` REs each, in order) are received on
        the units the scheduler gave ``segments`` (one per tensor). :meth:`transmit` takes them in order;
        :meth:`ungrant` afterwards."""
        allocs: deque[Allocation | None] = deque()
        for s, n in zip(segments, n_res, strict=True):
            try:
                allocs.append(granted_allocation(s, n, re_per_prb, self.epoch))
            except TraceError:  # fewer units than REs (a prediction cut short): the lone-UE layout instead
                allocs.append(None)
        self.granted[(link, direction)] = allocs

    def ungrant(self, link: str, direction: str) -> None:
        self.granted.pop((link, direction), None)

    def allocation(self, link: str, direction: str, n_re: int, cell: CellConfig, pin: Pin | None) -> Allocation:
        """The REs of the link direction's next tensor: those the scheduler granted it (:meth:`grant`), else a lone
        UE's from the pinned CSI's start slot or the next slot (:meth:`Allocation.contiguous`)."""
        queue = self.granted.get((link, direction))
        if queue:
            alloc = queue.popleft()
            if alloc is not None and len(alloc) == n_re:
                return alloc
        start = pin.start_slot if pin is not None else self.next_slot(cell)
        return Allocation.contiguous(n_re, start, cell.prbs, cell.re_per_prb)

    def transmit(self, link: str, direction: str, x: np.ndarray, profile: ChannelProfile, noise_seed: int,
                 block_power: np.ndarray | None = None, power_block_length: int = 0) -> Transmission:
        """Send ``x`` over the link direction's trace (see the module docstring): what
        :func:`shared.channel.transmit.transmit` returns, with ``blocks`` = the slots it was received in."""
        trace = self._trace(profile)
        cell = self.carrier(link, trace)
        n_re = -(-int(x.size) // 2)
        pin = self.pins.pop((link, direction), None)
        if pin is not None and pin.trace != profile.trace:
            pin = None
        alloc = self.allocation(link, direction, n_re, cell, pin)
        offset = trace.offset_slots(profile.trace_offset_s)
        h = trace.gains(alloc.slots, trace.element_of(alloc.subcarriers), offset)
        rng = np.random.default_rng(noise_seed)
        h_hat = estimate_gains(h, profile.csi_error, rng)
        if pin is not None:
            pin.apply(alloc, h_hat)
        snr = profile.snr_db + profile.trace_gain_db
        result = transmit_on_grid(x, h, snr, rng, h_hat=h_hat, block_power=block_power,
                                  power_block_length=power_block_length)
        slots = int(np.unique(alloc.slots).size) if n_re else 1
        return Transmission(result.received, result.symbols, slots, result.energy, result.effective_snr_db)

    def csi(self, link: str, direction: str, profile: ChannelProfile, symbols: int = 0,
            blocks: int = 0) -> tuple[np.ndarray, int]:
        """``(|Ĥ| [T], coherence_symbols)`` of the next transmission's REs from the next slot on, pinned for it.

        Per-subcarrier traces: one gain per RE (``coherence_symbols`` 2: each gain covers the RE's two real
        symbols), ``blocks`` of them or as many as ``symbols`` real values need. Per-PRB and flat traces: one gain per
        unit (a PRB for one slot, ``2 · RE per PRB`` real symbols), ``blocks`` units or as many as ``symbols`` need.
        Raises ChannelConfigError for no size or too many."""
        trace = self._trace(profile)
        cell = self.carrier(link, trace)
        start = self.next_slot(cell)
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{link}/{direction}".encode()), start])
        offset = trace.offset_slots(profile.trace_offset_s)
        if trace.meta.per == "subcarrier":
            n_re = int(blocks) or math.ceil(int(symbols) / 2)
            if not 1 <= n_re <= MAX_CSI_ELEMENTS:
                raise ChannelConfigError(f"a per-subcarrier trace reports one gain per resource element: ask for 1 to "
                                         f"{MAX_CSI_ELEMENTS} (blocks, or symbols > 0 needing at most that many REs), "
                                         f"got blocks={blocks} symbols={symbols}")
            alloc = Allocation.contiguous(n_re, start, cell.prbs, cell.re_per_prb)
            h_hat = estimate_gains(trace.gains(alloc.slots, trace.element_of(alloc.subcarriers), offset),
                                   profile.csi_error, rng)
            reported, coherence = np.abs(h_hat), 2
        else:  # one gain per PRB and slot: the unit's gain is every one of its REs' gain
            units = int(blocks) or math.ceil(math.ceil(int(symbols) / 2) / cell.re_per_prb)
            if not 1 <= units <= MAX_CSI_UNITS:
                raise ChannelConfigError(f"ask for 1 to {MAX_CSI_UNITS} blocks (or give symbols > 0 needing at most "
                                         f"that many PRBs of {cell.re_per_prb} REs), got blocks={blocks} "
                                         f"symbols={symbols}")
            alloc = Allocation.contiguous(units * cell.re_per_prb, start, cell.prbs, cell.re_per_prb)
            h = trace.gains(alloc.slots, trace.element_of(alloc.subcarriers), offset).reshape(units, cell.re_per_prb)
            unit_hat = estimate_gains(h[:, 0], profile.csi_error, rng)
            h_hat = np.repeat(unit_hat, cell.re_per_prb)
            reported, coherence = np.abs(unit_hat), 2 * cell.re_per_prb
        self.pins[(link, direction)] = Pin(start, alloc, h_hat, profile.trace)
        self.pins.move_to_end((link, direction))
        while len(self.pins) > MAX_PINS:
            self.pins.popitem(last=False)
        return reported, coherence

    def forget(self, link: str = "") -> None:
        """Drop pinned CSI (of one link, or all) after its settings changed."""
        if not link:
            self.pins.clear()
            return
        for key in [k for k in self.pins if k[0] == link]:
            del self.pins[key]


#: The proxy's replayer (``meg-channel serve`` sets its clock and the cells it reads).
REPLAY = Replayer()


def check_profile_trace(profile: ChannelProfile) -> None:
    """Load (and so validate) a profile's trace now: a bad file is a start-up / SetChannel error, not a failed RPC."""
    if profile.trace:
        load_trace_cached(profile.trace)

