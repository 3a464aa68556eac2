"""Trace replay in the proxy: which resource elements a tensor of a trace link gets, its CSI, the math (numpy only).

A profile with ``trace = "FILE"`` (``shared.channel.profiles``) replays that file's ``H[slot, element]``
(:mod:`shared.channel.trace`) instead of drawing block fading. The carrier is the ES's cell when it has one
(``[cells.*]`` / ``--bandwidth-mhz``), else the carrier the trace was made for (a flat trace without a cell: 20 MHz
at its numerology); the trace's numerology must match it and a per-PRB or per-subcarrier trace must cover its PRBs
(else the transmission is refused, naming the file and the field).

**Which elements.** A tensor of ``n`` values takes ``⌈n/2⌉`` REs, laid over the whole carrier PRB after PRB, slot
after slot, from the slot in which it reaches the proxy (:meth:`Allocation.contiguous`: what a lone UE of a
round-robin cell is granted), from the first slot starting at or after its arrival (the scheduler's rule). The
slot counts from the proxy's start on its clock, plus the profile's
``trace_offset_s``; the trace wraps around at its end. This is the lone-UE allocation *predicted at arrival*: the
proxy perturbs a message before the cell's scheduler has dealt its units (it must, to count its REs), so with
several UEs active in one cell the replayed elements are those of the full carrier rather than the interleaved ones
the scheduler grants (the seam for those, :meth:`Allocation.from_units`, exists and is tested).

**CSI.** ``GetCSI`` on a trace link reports one gain per *unit* (one PRB for one slot: ``2 · RE per PRB`` real
symbols, the ``coherence_symbols`` it answers) of the next transmission from the next slot on, and pins that
transmission's start slot:
the next tensor of that link direction starts there and its receiver equalises with exactly the reported CSI (per
PRB and flat traces; a per-subcarrier trace reports each unit's RMS gain and equalises each RE with its own
estimate).
"""

from __future__ import annotations

import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.channel.cell import CellConfig
from shared.channel.models import ChannelConfigError
from shared.channel.profiles import ChannelProfile
from shared.channel.trace import (
    Allocation,
    Trace,
    estimate_gains,
    load_trace_cached,
    transmit_on_grid,
)
from shared.channel.transmit import Transmission

#: Most units (PRB × slot) one GetCSI of a trace link may report.
MAX_CSI_UNITS = 1 << 16
#: Pinned CSI kept per link direction at most (least recently pinned forgotten first).
MAX_PINS = 20_000


@dataclass(frozen=True)
class Pin:
    """CSI handed out for the next transmission: its start slot, and the complex Ĥ of each reported unit
    (``None`` for a per-subcarrier trace, whose REs are estimated one by one)."""

    start_slot: int
    h_hat_units: np.ndarray | None
    trace: str


class Replayer:
    """The proxy's trace replay: the clock and epoch slots count from, the ES's cells, the pinned CSI."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, seed: int = 0) -> None:
        self.clock = clock
        self.epoch = clock()
        self.seed = seed
        #: the cell of an ES (``channel_emulator.cells.CellSet.cell_of``); none: the trace's own carrier
        self.cell_of: Callable[[str], CellConfig | None] = lambda es: None
        self.pins: OrderedDict[tuple[str, str], Pin] = OrderedDict()

    def restart(self, clock: Callable[[], float] | None = None) -> None:
        """Count slots from now (on ``clock`` if given) and forget pinned CSI."""
        if clock is not None:
            self.clock = clock
        self.epoch = self.clock()
        self.pins.clear()

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
    def transmit(self, link: str, direction: str, x: np.ndarray, profile: ChannelProfile, noise_seed: int,
                 block_power: np.ndarray | None = None, power_block_length: int = 0) -> Transmission:
        """Send ``x`` over the link direction's trace (see the module docstring): what
        :func:`shared.channel.transmit.transmit` returns, with ``blocks`` = the slots spanned."""
        trace = self._trace(profile)
        cell = self.carrier(link, trace)
        n_re = -(-int(x.size) // 2)
        pin = self.pins.pop((link, direction), None)
        if pin is not None and pin.trace != profile.trace:
            pin = None
        start = pin.start_slot if pin is not None else self.next_slot(cell)
        alloc = Allocation.contiguous(n_re, start, cell.prbs, cell.re_per_prb)
        offset = trace.offset_slots(profile.trace_offset_s)
        h = trace.gains(alloc.slots, trace.element_of(alloc.subcarriers), offset)
        rng = np.random.default_rng(noise_seed)
        h_hat = estimate_gains(h, profile.csi_error, rng)
        if pin is not None and pin.h_hat_units is not None:
            unit = (np.arange(n_re) // cell.re_per_prb)
            known = unit < pin.h_hat_units.size
            h_hat[known] = pin.h_hat_units[unit[known]]
        snr = profile.snr_db + profile.trace_gain_db
        result = transmit_on_grid(x, h, snr, rng, h_hat=h_hat, block_power=block_power,
                                  power_block_length=power_block_length)
        slots = int(alloc.slots[-1] - alloc.slots[0] + 1) if n_re else 1
        return Transmission(result.received, result.symbols, slots, result.energy, result.effective_snr_db)

    def csi(self, link: str, direction: str, profile: ChannelProfile, symbols: int = 0,
            blocks: int = 0) -> tuple[np.ndarray, int]:
        """``(|Ĥ| per unit [T], coherence_symbols)`` of the next transmission's units, pinned for it: ``blocks``
        units, or as many as ``symbols`` real values need. Raises ChannelConfigError for no size."""
        trace = self._trace(profile)
        cell = self.carrier(link, trace)
        units = int(blocks) or math.ceil(math.ceil(int(symbols) / 2) / cell.re_per_prb)
        if not 1 <= units <= MAX_CSI_UNITS:
            raise ChannelConfigError(f"ask for 1 to {MAX_CSI_UNITS} blocks (or give symbols > 0 needing at most that "
                                     f"many PRBs of {cell.re_per_prb} REs), got blocks={blocks} symbols={symbols}")
        start = self.next_slot(cell)
        alloc = Allocation.contiguous(units * cell.re_per_prb, start, cell.prbs, cell.re_per_prb)
        h = trace.gains(alloc.slots, trace.element_of(alloc.subcarriers),
                        trace.offset_slots(profile.trace_offset_s)).reshape(units, cell.re_per_prb)
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{link}/{direction}".encode()), start])
        if trace.meta.per == "subcarrier":
            reported = np.sqrt(np.mean(np.abs(estimate_gains(h, profile.csi_error, rng)) ** 2, axis=1))
            pin = Pin(start, None, profile.trace)
        else:  # one gain per PRB and slot: the unit's gain is every one of its REs' gain
            h_hat = estimate_gains(h[:, 0], profile.csi_error, rng)
            reported = np.abs(h_hat)
            pin = Pin(start, h_hat, profile.trace)
        self.pins[(link, direction)] = pin
        self.pins.move_to_end((link, direction))
        while len(self.pins) > MAX_PINS:
            self.pins.popitem(last=False)
        return reported, 2 * cell.re_per_prb

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

