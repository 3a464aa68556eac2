"""A 5G NR carrier: bandwidth, numerology, PRBs, duplex, and its resource grid (slots × PRBs).

Numerology ``μ``: subcarrier spacing ``15·2^μ`` kHz, slots of ``1 ms / 2^μ``, 14 OFDM symbols a slot. The PRB
count comes from TS 38.101-1 Table 5.3.2-1 (FR1, maximum transmission bandwidth configuration N_RB). A PRB
is 12 subcarriers, so one slot of one PRB holds ``12 · 14`` resource elements, of which a fraction
``overhead`` (reference signals, control) is not for data::

    RE per PRB per slot = floor(12 · 14 · (1 − overhead))       RE per slot = PRB · RE per PRB per slot

(floored to whole REs per PRB, so that a grant of PRBs is a whole number of REs). The default overhead
0.14 is TS 38.306 §4.1.2's FR1 downlink value (its uplink value is 0.08).

**The grid.** Resources are handed out in *units* of one PRB for one slot: unit ``(slot, prb)`` with
``0 ≤ prb < PRB``. A scheduler returns, per transmission, which units it got (:class:`Grant`), so a channel
that varies in time and frequency can put each resource element's own fading on exactly those (DESIGN §12).

**Duplex.** FDD: separate uplink and downlink carriers of the same bandwidth, every slot usable in each
direction. TDD: one carrier, slot ``k`` has role ``pattern[k mod len(pattern)]``: ``D`` downlink only,
``U`` uplink only, ``S`` (special: DL symbols, guard, UL symbols) counted as *neither* direction — a
conservative choice that leaves its few data symbols unused. A TDD pattern needs at least one ``U`` and one
``D`` slot.

Pure Python (no numpy): ``meg-ue overhead`` and the proxy use the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from shared.channel.models import ChannelConfigError

#: TS 38.101-1 Table 5.3.2-1 (FR1): N_RB by subcarrier spacing (kHz) and channel bandwidth (MHz).
PRB_TABLE: dict[int, dict[int, int]] = {
    15: {5: 25, 10: 52, 15: 79, 20: 106, 25: 133, 30: 160, 35: 188, 40: 216, 45: 242, 50: 270},
    30: {5: 11, 10: 24, 15: 38, 20: 51, 25: 65, 30: 78, 35: 92, 40: 106, 45: 119, 50: 133, 60: 162, 70: 189,
         80: 217, 90: 245, 100: 273},
    60: {10: 11, 15: 18, 20: 24, 25: 31, 30: 38, 35: 44, 40: 51, 45: 58, 50: 65, 60: 79, 70: 93, 80: 107,
         90: 121, 100: 135},
}
#: FR1 numerologies: μ -> subcarrier spacing in kHz.
NUMEROLOGIES = {0: 15, 1: 30, 2: 60}
SUBCARRIERS_PER_PRB = 12
SYMBOLS_PER_SLOT = 14
#: TS 38.306 §4.1.2: overhead for control channels and reference signals, FR1 downlink.
DEFAULT_OVERHEAD = 0.14
DIRECTIONS = ("uplink", "downlink")
DUPLEXES = ("fdd", "tdd")
SCHEDULERS = ("rr", "pf")
JITTER_DISTRIBUTIONS = ("normal", "uniform", "pareto")


def re_for_values(n: int) -> int:
    """Complex resource elements an over-the-air tensor of ``n`` real values takes: ``ceil(n / 2)`` (I and Q
    carry two real symbols)."""
    return -(-int(n) // 2)


def prb_count(bandwidth_mhz: float, numerology: int) -> int:
    """N_RB of TS 38.101-1 Table 5.3.2-1; raises ChannelConfigError naming the setting otherwise."""
    if numerology not in NUMEROLOGIES:
        raise ChannelConfigError(f"numerology {numerology!r} is not an FR1 numerology; use one of {sorted(NUMEROLOGIES)} "
                                 f"(subcarrier spacing 15, 30, 60 kHz)")
    scs = NUMEROLOGIES[numerology]
    if not isinstance(bandwidth_mhz, (int, float)) or isinstance(bandwidth_mhz, bool) or not bandwidth_mhz > 0:
        raise ChannelConfigError(f"bandwidth_mhz must be > 0 MHz, got {bandwidth_mhz!r}")
    table = PRB_TABLE[scs]
    if float(bandwidth_mhz) not in {float(b) for b in table}:
        raise ChannelConfigError(f"bandwidth_mhz {bandwidth_mhz:g} is not in TS 38.101-1 Table 5.3.2-1 at {scs} kHz "
                                 f"(numerology {numerology}); use one of {', '.join(str(b) for b in table)} MHz")
    return table[int(bandwidth_mhz)]


@dataclass(frozen=True)
class CellConfig:
    """One cell: the carrier, its scheduler, and what each of its links adds (delay, jitter, queue limit).

    ``delay_ms`` is one-way, added after the air time; ``jitter_ms`` is the jitter's standard deviation
    (``normal``: truncated at ``-delay``; ``uniform``: ``±sqrt(3)·jitter``; ``pareto``: shape 3, shifted to
    mean 0). ``queue_limit``: messages a link may have waiting in one direction (more → RESOURCE_EXHAUSTED).
    """

    bandwidth_mhz: float = 20.0
    numerology: int = 1
    overhead: float = DEFAULT_OVERHEAD
    duplex: str = "fdd"
    tdd_pattern: str = "DDDSU"
    scheduler: str = "rr"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter: str = "normal"
    queue_limit: int = 64
    prbs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.numerology, int) or isinstance(self.numerology, bool):
            raise ChannelConfigError(f"numerology must be a whole number, got {self.numerology!r}")
        object.__setattr__(self, "prbs", prb_count(self.bandwidth_mhz, self.numerology))
        if not isinstance(self.overhead, (int, float)) or not 0 <= self.overhead < 1:
            raise ChannelConfigError(f"overhead must be a fraction in [0, 1), got {self.overhead!r}")
        if self.re_per_prb < 1:
            raise ChannelConfigError(f"overhead {self.overhead} leaves no resource element for data")
        if self.duplex not in DUPLEXES:
            raise ChannelConfigError(f"duplex must be fdd or tdd, got {self.duplex!r}")
        pattern = self.tdd_pattern
        if not isinstance(pattern, str) or not pattern or set(pattern) - set("DSU"):
            raise ChannelConfigError(f"tdd_pattern must be a string of D, S and U slots (e.g. DDDSU), got {pattern!r}")
        if self.duplex == "tdd" and "U" not in pattern:
            raise ChannelConfigError(f"tdd_pattern {pattern!r} has no U slot: the uplink could never send")
        if self.duplex == "tdd" and "D" not in pattern:
            raise ChannelConfigError(f"tdd_pattern {pattern!r} has no D slot: the downlink could never send")
        if self.scheduler not in SCHEDULERS:
            raise ChannelConfigError(f"scheduler must be rr (round robin) or pf (proportional fair), got {self.scheduler!r}")
        for key in ("delay_ms", "jitter_ms"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ChannelConfigError(f"{key} must be a finite number of milliseconds >= 0, got {v!r}")
            if v > 60_000:
                raise ChannelConfigError(f"{key} {v} ms is more than a minute")
        if self.jitter not in JITTER_DISTRIBUTIONS:
            raise ChannelConfigError(f"jitter must be one of {', '.join(JITTER_DISTRIBUTIONS)}, got {self.jitter!r}")
        if not isinstance(self.queue_limit, int) or isinstance(self.queue_limit, bool) or not 1 <= self.queue_limit <= 1_000_000:
            raise ChannelConfigError(f"queue_limit must be a whole number of messages in [1, 1000000], got {self.queue_limit!r}")

    # -- the numerology -----------------------------------------------------------------------------------
    @property
    def scs_khz(self) -> int:
        return NUMEROLOGIES[self.numerology]

    @property
    def slot_s(self) -> float:
        """Slot duration: ``1 ms / 2^μ``."""
        return 1e-3 / (1 << self.numerology)

    @property
    def re_per_prb(self) -> int:
        """Data REs in one PRB for one slot: ``floor(12 · 14 · (1 − overhead))``."""
        return math.floor(SUBCARRIERS_PER_PRB * SYMBOLS_PER_SLOT * (1.0 - self.overhead) + 1e-9)

    @property
    def re_per_slot(self) -> int:
        """Data REs of the whole carrier in one slot."""
        return self.prbs * self.re_per_prb

    # -- duplex ---------------------------------------------------------------------------------------------
    def usable(self, direction: str) -> tuple[int, ...]:
        """Positions within the duplex period whose slots ``direction`` may use (FDD: ``(0,)``, period 1)."""
        if self.duplex == "fdd":
            return (0,)
        role = "U" if direction == "uplink" else "D"
        return tuple(i for i, r in enumerate(self.tdd_pattern) if r == role)

    @property
    def period(self) -> int:
        """Slots in one duplex period (1 for FDD)."""
        return 1 if self.duplex == "fdd" else len(self.tdd_pattern)

    def capacity_re_per_s(self, direction: str) -> float:
        """REs per second the carrier offers ``direction`` (after overhead and the TDD share)."""
        return self.re_per_slot * len(self.usable(direction)) / self.period / self.slot_s

    def with_changes(self, **changes: Any) -> CellConfig:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    def describe(self) -> str:
        duplex = f"TDD {self.tdd_pattern}" if self.duplex == "tdd" else "FDD"
        return (f"{self.bandwidth_mhz:g} MHz at {self.scs_khz} kHz ({self.prbs} PRB, {self.re_per_slot} RE per "
                f"{self.slot_s * 1e3:g} ms slot), {duplex}, {self.scheduler}, delay {self.delay_ms:g} ms")


#: Keys a ``[cells.NAME]`` table may set.
CELL_KEYS = tuple(f.name for f in fields(CellConfig) if f.init)


def cell_from_mapping(name: str, raw: dict[str, Any], base: CellConfig | None = None) -> CellConfig:
    """A cell from a TOML table (keys of :data:`CELL_KEYS`; unset keys from ``base``, else the defaults).
    Raises ChannelConfigError naming the cell and the setting."""
    unknown = set(raw) - set(CELL_KEYS)
    if unknown:
        raise ChannelConfigError(f"cells.{name}: unknown keys {sorted(unknown)}; known: {list(CELL_KEYS)}")
    values = dict(raw)
    if isinstance(values.get("numerology"), float) and values["numerology"].is_integer():
        values["numerology"] = int(values["numerology"])
    try:
        return (base or CellConfig()).with_changes(**values)
    except ChannelConfigError as exc:
        raise ChannelConfigError(f"cells.{name}: {exc}") from None


@dataclass(frozen=True)
class SlotGrid:
    """Slot timing of one direction of a cell from a time origin: which slots it may use and when they are.

    Slots are numbered from the cell's epoch ``t0`` (slot ``k`` spans ``[t0 + k·T, t0 + (k+1)·T)``). The
    direction's *usable* slots are numbered ``v = 0, 1, 2, ...``; :meth:`slot_of` maps ``v`` to the slot."""

    slot_s: float
    period: int
    positions: tuple[int, ...]
    t0: float = 0.0

    @classmethod
    def of(cls, cell: CellConfig, direction: str, t0: float = 0.0) -> SlotGrid:
        return cls(cell.slot_s, cell.period, cell.usable(direction), t0)

    def slot_of(self, v: int) -> int:
        """The slot number of usable slot ``v``."""
        q, r = divmod(v, len(self.positions))
        return q * self.period + self.positions[r]

    def start(self, v: int) -> float:
        """When usable slot ``v`` starts."""
        return self.t0 + self.slot_of(v) * self.slot_s

    def end(self, v: int) -> float:
        """When usable slot ``v`` ends."""
        return self.start(v) + self.slot_s

    def first_at_or_after(self, t: float) -> int:
        """The first usable slot that starts at or after ``t`` (a slot already begun cannot be scheduled)."""
        k = max(0, math.ceil((t - self.t0) / self.slot_s - 1e-9))  # first slot starting at or after t
        q, r = divmod(k, self.period)
        for i, pos in enumerate(self.positions):
            if pos >= r:
                return q * len(self.positions) + i
        return (q + 1) * len(self.positions)
