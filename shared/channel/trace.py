"""Channels that move: trace files of complex gains ``H[slot, element]`` and their replay on the resource
elements a transmission was given (numpy only: the proxy replays traces without torch).

**The file** (``.npz``, written by ``meg-lab make-trace``): ``h``, complex64 ``[slots, n]`` — one complex
gain per slot of the cell's numerology and per *element* — and ``meta``, a JSON string:

==================  ==========================================================================================
``format``          ``"meg-trace"``; ``version`` 1
``model``           ``TDL-A`` … ``TDL-E``, ``CDL-A`` … ``CDL-E`` (Sionna, TR 38.901), ``flat`` (an imported
                    SNR/rate trace: one gain per slot), ``block`` (block fading written as a trace)
``per``             what an element is: ``prb`` (``n`` = the cell's PRBs, the gain at each PRB's centre),
                    ``subcarrier`` (``n`` = 12 · PRBs) or ``flat`` (``n`` = 1, the same on every frequency)
``numerology``      μ of the slots (slot = 1 ms / 2^μ); must match the cell the trace is replayed in
``bandwidth_mhz``   the carrier it was made for (``prbs`` PRBs); a ``flat`` trace fits any bandwidth
``carrier_ghz``, ``speed_kmh``, ``delay_spread_ns``, ``seed``, ``seconds``: how it was made
``generator``       e.g. ``"sionna-no-rt 2.2.0"``, ``"mahimahi import"``, ``"csv import"``
``source``          the imported file, for imports
==================  ==========================================================================================

Gains are normalised so that the mean of ``|H|²`` over the whole trace is 1: the profile's ``snr_db`` is then
the mean SNR of the replay (an imported SNR trace keeps its shape and its recorded mean in ``mean_snr_db``).

**Replay.** A transmission of ``n`` real values occupies ``m = ⌈n/2⌉`` complex resource elements (I and Q
carry two real symbols; real symbol ``2j`` is the in-phase, ``2j+1`` the quadrature part of RE ``j``). An
:class:`Allocation` says, per RE, its slot and its subcarrier in the carrier (what the cell's scheduler granted;
:meth:`Allocation.contiguous` fills the whole carrier slot after slot, what a lone UE of a round-robin cell
gets). Each RE ``j`` is received as (per real component ``c`` of the power-normalised symbols ``s``)

    y_j = H_j · (sqrt(p_{2j}) s_{2j} + i·sqrt(p_{2j+1}) s_{2j+1}) + n_j,   n_j ~ CN(0, 2·N0)

(noise ``N0`` per real dimension, ``N0 = 10^(−SNR/10)``: with ``|H| = 1``, ``p = 1`` the SNR per real symbol is
the profile's, as in :func:`shared.channel.transmit.transmit`) and equalised by zero forcing with the
receiver's CSI ``Ĥ_j`` (``H_j`` plus ``CN(0, csi_error²)``): ``ŝ = y / Ĥ``, then each component over its
``sqrt(p)``. An RE with ``Ĥ = 0`` or a component with ``p = 0`` is received as 0.

Block fading is the special case of a flat, piecewise-constant, real trace (:func:`block_trace`): with the same
RNG, :func:`transmit_on_grid` reproduces :func:`~shared.channel.transmit.transmit` exactly (tested).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.channel.models import ChannelConfigError
from shared.channel.power import P_MAX
from shared.wire.limits import MAX_POWER_BLOCKS

TRACE_FORMAT = "meg-trace"
TRACE_VERSION = 1
#: TR 38.901 models Sionna generates (``TDL-A``...``CDL-E``), plus imported (``flat``) and ``block`` traces.
FADING_MODELS = tuple(f"{fam}-{x}" for fam in ("TDL", "CDL") for x in "ABCDE")
TRACE_MODELS = (*FADING_MODELS, "flat", "block")
PER = ("prb", "subcarrier", "flat")
SUBCARRIERS_PER_PRB = 12
#: A trace of more elements than this is refused (the largest FR1 carrier has 273 PRBs = 3,276 subcarriers).
MAX_ELEMENTS = 4096
#: Tolerance of the mean-|H|² normalisation a loaded trace must meet.
NORM_TOLERANCE = 0.02
_F32_MAX = float(np.finfo(np.float32).max)


class TraceError(ChannelConfigError):
    """A trace file (or a profile's use of it) is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class TraceMeta:
    """What a trace is and how it was made (the ``meta`` JSON of the file)."""

    model: str
    per: str
    numerology: int
    bandwidth_mhz: float = 0.0  # 0: fits any bandwidth (flat traces)
    prbs: int = 0
    carrier_ghz: float = 0.0
    speed_kmh: float = 0.0
    delay_spread_ns: float = 0.0
    seed: int = 0
    seconds: float = 0.0
    generator: str = ""
    source: str = ""
    mean_snr_db: float | None = None  # imported SNR traces: the recorded mean SNR
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slot_s(self) -> float:
        """Slot duration of the trace's numerology: ``1 ms / 2^μ``."""
        return 1e-3 / (1 << self.numerology)

    def to_json(self) -> str:
        return json.dumps({"format": TRACE_FORMAT, "version": TRACE_VERSION, **asdict(self)}, sort_keys=True)


def _meta_from(raw: Mapping[str, Any], where: str) -> TraceMeta:
    """Validate the metadata mapping of a file; raises TraceError naming ``where`` and the field."""
    if raw.get("format") != TRACE_FORMAT:
        raise TraceError(f"{where}: meta.format is {raw.get('format')!r}, not {TRACE_FORMAT!r}")
    if raw.get("version") != TRACE_VERSION:
        raise TraceError(f"{where}: meta.version {raw.get('version')!r} is not supported (this reads {TRACE_VERSION})")
    known = {f for f in TraceMeta.__dataclass_fields__}
    values = {k: v for k, v in raw.items() if k in known}
    for key in ("model", "per", "numerology"):
        if key not in values:
            raise TraceError(f"{where}: meta.{key} is missing")
    if values["model"] not in TRACE_MODELS:
        raise TraceError(f"{where}: meta.model {values['model']!r} is unknown; known: {', '.join(TRACE_MODELS)}")
    if values["per"] not in PER:
        raise TraceError(f"{where}: meta.per {values['per']!r} must be one of {', '.join(PER)}")
    mu = values["numerology"]
    if not isinstance(mu, int) or isinstance(mu, bool) or mu not in (0, 1, 2):
        raise TraceError(f"{where}: meta.numerology {mu!r} is not an FR1 numerology (0, 1 or 2)")
    for key in ("bandwidth_mhz", "carrier_ghz", "speed_kmh", "delay_spread_ns", "seconds"):
        v = values.get(key, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise TraceError(f"{where}: meta.{key} must be a finite number >= 0, got {v!r}")
    prbs = values.get("prbs", 0)
    if not isinstance(prbs, int) or isinstance(prbs, bool) or prbs < 0:
        raise TraceError(f"{where}: meta.prbs must be a whole number >= 0, got {prbs!r}")
    return TraceMeta(**values)


@dataclass(frozen=True)
class Trace:
    """A loaded, validated trace: ``h`` complex64 ``[slots, n]`` (read-only) and its metadata."""

    h: np.ndarray
    meta: TraceMeta
    path: str = ""

    @property
    def slots(self) -> int:
        return int(self.h.shape[0])

    @property
    def elements(self) -> int:
        return int(self.h.shape[1])

    @property
    def seconds(self) -> float:
        """Duration: slots × slot duration (a replay wraps around after it)."""
        return self.slots * self.meta.slot_s

    def check_cell(self, numerology: int, prbs: int | None = None) -> None:
        """Raise TraceError (naming the file and field) unless the trace can be replayed in a cell of
        ``numerology`` with ``prbs`` PRBs (``None``: any)."""
        where = self.path or "trace"
        if numerology != self.meta.numerology:
            raise TraceError(f"{where}: meta.numerology {self.meta.numerology} does not match the cell's numerology "
                             f"{numerology} (slots of {self.meta.slot_s * 1e3:g} ms vs {1 / (1 << numerology):g} ms)")
        if prbs is not None and self.meta.per != "flat" and self.meta.prbs < prbs:
            raise TraceError(f"{where}: meta.prbs {self.meta.prbs} ({self.meta.per} gains of a "
                             f"{self.meta.bandwidth_mhz:g} MHz carrier) is fewer than the cell's {prbs} PRBs")

    def element_of(self, subcarrier: np.ndarray) -> np.ndarray:
        """The trace element of each subcarrier index of the carrier (``[m]`` int64)."""
        sc = np.asarray(subcarrier, dtype=np.int64)
        if self.meta.per == "flat":
            return np.zeros_like(sc)
        if self.meta.per == "prb":
            return (sc // SUBCARRIERS_PER_PRB) % self.elements
        return sc % self.elements

    def gains(self, slots: np.ndarray | int, elements: np.ndarray | int, offset_slots: int = 0) -> np.ndarray:
        """``H[(slot + offset) mod slots, element]`` for broadcastable ``slots`` and ``elements`` (trace elements,
        wrapped modulo ``n``): complex64 of the broadcast shape. The trace repeats after its last slot."""
        s = (np.asarray(slots, dtype=np.int64) + int(offset_slots)) % self.slots
        e = np.asarray(elements, dtype=np.int64) % self.elements
        return self.h[s, e]

    def offset_slots(self, offset_s: float) -> int:
        """A start offset in seconds as whole slots of the trace."""
        return round(offset_s / self.meta.slot_s)


def validate(h: np.ndarray, meta: TraceMeta, where: str = "trace") -> np.ndarray:
    """Check ``h`` against ``meta``; returns it as a read-only complex64 ``[slots, n]``. Raises TraceError
    naming ``where`` and the field (``h``'s shape, NaN, normalisation, element count)."""
    if h.ndim != 2 or h.shape[0] < 1 or h.shape[1] < 1:
        raise TraceError(f"{where}: h must be a 2-D array [slots, elements], got shape {tuple(h.shape)}")
    if not np.iscomplexobj(h) and not np.issubdtype(h.dtype, np.floating):
        raise TraceError(f"{where}: h must hold complex (or real) gains, got dtype {h.dtype}")
    n = h.shape[1]
    if n > MAX_ELEMENTS:
        raise TraceError(f"{where}: h has {n} elements per slot, more than {MAX_ELEMENTS}")
    expected = {"flat": 1, "prb": meta.prbs, "subcarrier": meta.prbs * SUBCARRIERS_PER_PRB}[meta.per]
    if n != expected:
        raise TraceError(f"{where}: h has {n} elements per slot but meta.per = {meta.per!r} with meta.prbs = "
                         f"{meta.prbs} needs {expected}")
    if not np.isfinite(h).all():
        bad = np.argwhere(~np.isfinite(h))[0]
        raise TraceError(f"{where}: h has a NaN or infinite gain (first at slot {bad[0]}, element {bad[1]})")
    mean = float(np.mean(np.abs(h.astype(np.complex128)) ** 2))
    if abs(mean - 1.0) > NORM_TOLERANCE:
        raise TraceError(f"{where}: h has mean |H|^2 = {mean:.4g}; a trace is normalised to 1 (± {NORM_TOLERANCE:g})")
    out = np.ascontiguousarray(h, dtype=np.complex64)
    out.setflags(write=False)
    return out


def normalise(h: np.ndarray) -> np.ndarray:
    """``h`` scaled so that mean ``|H|²`` = 1 (complex64); an all-zero ``h`` is an error."""
    mean = float(np.mean(np.abs(np.asarray(h, dtype=np.complex128)) ** 2))
    if not mean > 0 or not math.isfinite(mean):
        raise TraceError(f"cannot normalise a trace whose mean |H|^2 is {mean}")
    return (np.asarray(h, dtype=np.complex128) / math.sqrt(mean)).astype(np.complex64)


def save_trace(path: str | Path, h: np.ndarray, meta: TraceMeta) -> Path:
    """Validate and write a trace file (``.npz``, atomically: a temporary file renamed into place)."""
    path = Path(path)
    hv = validate(np.asarray(h), meta, str(path))
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, h=hv, meta=np.array(meta.to_json()))
    os.replace(tmp, path)
    return path


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace file; raises TraceError naming the file and the field (nothing half-loaded:
    the trace is returned only once every check passed)."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if not {"h", "meta"} <= names:
                raise TraceError(f"{where}: a trace file holds arrays h and meta, found {sorted(names)}")
            h = z["h"]
            meta_raw = json.loads(str(z["meta"][()]))
    except TraceError:
        raise
    except FileNotFoundError:
        raise TraceError(f"{where}: no such trace file") from None
    except (OSError, ValueError, KeyError) as exc:  # not a zip, pickled objects, bad JSON
        raise TraceError(f"{where}: not a readable trace file ({exc})") from None
    if not isinstance(meta_raw, dict):
        raise TraceError(f"{where}: meta must be a JSON object")
    meta = _meta_from(meta_raw, where)
    return Trace(validate(h, meta, where), meta, where)


_CACHE: dict[tuple[str, int, int], Trace] = {}


def load_trace_cached(path: str | Path) -> Trace:
    """:func:`load_trace`, shared by every link that names the same unchanged file (keyed by path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        raise TraceError(f"{path}: no such trace file") from None
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        if len(_CACHE) >= 64:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load_trace(path)
    return _CACHE[key]


def check_trace_profile(profile: Any) -> None:
    """Validate a profile's trace settings (``shared.channel.profiles.ChannelProfile``: ``trace``,
    ``trace_offset_s``, ``trace_gain_db``) and load its file now, so a bad trace is a start-up or SetChannel error
    naming the file and field, never a failed transmission. Raises TraceError."""
    where = f"profile {profile.name!r}" if profile.name else "profile"
    if not isinstance(profile.trace, str):
        raise TraceError(f"{where}: trace must be a file name, got {profile.trace!r}")
    if profile.model != "awgn":
        raise TraceError(f"{where}: a trace brings its own fading; its model must be awgn (the noise), got "
                         f"{profile.model!r}")
    if not profile.noisy or not math.isfinite(profile.snr_db):
        raise TraceError(f"{where}: a trace needs snr_db, the mean SNR it is scaled to")
    for key in ("trace_offset_s", "trace_gain_db"):
        v = getattr(profile, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or (key == "trace_offset_s" and v < 0):
            raise TraceError(f"{where}: {key} must be a finite number{' >= 0' if key == 'trace_offset_s' else ''}, "
                             f"got {v!r}")
    load_trace_cached(profile.trace)


# --- special cases and imports -------------------------------------------------------------------------------


def flat_trace(gain_db: np.ndarray, numerology: int, **meta: Any) -> tuple[np.ndarray, TraceMeta]:
    """A flat trace from a per-slot power gain in dB ``[slots]`` (``-inf`` = no signal): ``h[slot, 0] =
    sqrt(10^(g/10))``, normalised; ``mean_snr_db`` = the mean of ``10^(g/10)`` in dB."""
    g = np.asarray(gain_db, dtype=np.float64).reshape(-1)
    if g.size == 0 or np.isnan(g).any():
        raise TraceError("a flat trace needs at least one slot and no NaN SNR")
    lin = np.power(10.0, g / 10.0)
    mean = float(lin.mean())
    h = normalise(np.sqrt(lin)[:, None].astype(np.complex128))
    m = TraceMeta(model="flat", per="flat", numerology=numerology, seconds=g.size * 1e-3 / (1 << numerology),
                  mean_snr_db=10 * math.log10(mean) if mean > 0 else None, **meta)
    return h, m


def block_trace(h_blocks: np.ndarray, numerology: int = 0) -> tuple[np.ndarray, TraceMeta]:
    """Block fading written as a trace: one real gain per slot (``[T]`` amplitudes), flat in frequency. With
    :meth:`Allocation.contiguous` of ``L/2`` REs a slot, slot ``t`` is fading block ``t`` of ``L`` real symbols.
    Not normalised (a handful of draws need not have mean 1): for replay, not for files."""
    h = np.asarray(h_blocks, dtype=np.float64).reshape(-1, 1).astype(np.complex64)
    return h, TraceMeta(model="block", per="flat", numerology=numerology, generator="block fading")


def snr_to_slots(times_s: np.ndarray, snr_db: np.ndarray, numerology: int, seconds: float | None = None) -> np.ndarray:
    """Sample-and-hold an SNR series (``time_s`` ascending, ``snr_db``) onto slots of ``numerology``: ``[slots]`` dB."""
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(snr_db, dtype=np.float64)
    if t.size == 0 or t.shape != v.shape:
        raise TraceError("an SNR trace needs matching, non-empty time_s and snr_db columns")
    if np.isnan(t).any() or np.isnan(v).any() or (np.diff(t) < 0).any():
        raise TraceError("an SNR trace's times must be ascending numbers and its SNRs numbers (no NaN)")
    slot_s = 1e-3 / (1 << numerology)
    total = seconds if seconds is not None else float(t[-1] - t[0]) + (float(np.median(np.diff(t))) if t.size > 1 else slot_s)
    n = max(1, round(total / slot_s))
    centres = t[0] + (np.arange(n) + 0.5) * slot_s
    idx = np.clip(np.searchsorted(t, centres, side="right") - 1, 0, t.size - 1)
    return v[idx]


# --- replay -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """The resource elements of one transmission: ``slots[j]`` and ``subcarriers[j]`` (index in the carrier,
    ``12·prb + k``) of RE ``j``, both int64 ``[m]``."""

    slots: np.ndarray
    subcarriers: np.ndarray

    def __len__(self) -> int:
        return int(self.slots.size)

    @classmethod
    def contiguous(cls, n_re: int, first_slot: int, prbs: int, re_per_prb: int) -> Allocation:
        """``n_re`` REs filling the whole carrier (``prbs`` PRBs of ``re_per_prb`` REs each) slot after slot from
        ``first_slot``: what one UE alone in a round-robin cell gets. REs of a PRB go over its 12 subcarriers."""
        per_slot = prbs * re_per_prb
        n_slots = -(-int(n_re) // per_slot)
        k = np.arange(per_slot, dtype=np.int64)  # one slot's pattern, repeated
        pattern = (k // re_per_prb) * SUBCARRIERS_PER_PRB + (k % re_per_prb) % SUBCARRIERS_PER_PRB
        slots = np.repeat(np.arange(first_slot, first_slot + n_slots, dtype=np.int64), per_slot)[:n_re]
        return cls(slots, np.tile(pattern, n_slots)[:n_re])

    @classmethod
    def from_units(cls, units: Iterable[tuple[int, int]], n_re: int, re_per_prb: int, lead: int = 0) -> Allocation:
        """REs from the scheduler's grant units ``(slot, prb)`` in order (``shared.channel.scheduler.Grant.units``):
        the transmission's REs start ``lead`` REs into the first unit (a unit can end one segment and start the
        next) and run on unit by unit. Raises TraceError when the units hold fewer than ``n_re`` REs."""
        u = np.asarray(units if isinstance(units, np.ndarray) else list(units), dtype=np.int64).reshape(-1, 2)
        n, lead = int(n_re), int(lead)
        if n and (lead + n - 1) // re_per_prb >= len(u):
            raise TraceError(f"{len(u)} grant units of {re_per_prb} REs cannot carry {n_re} REs from offset {lead}")
        used = u[: -(-(lead + n) // re_per_prb)] if n else u[:0]  # the units it touches, each unit's REs in turn
        pattern = np.arange(re_per_prb, dtype=np.int64) % SUBCARRIERS_PER_PRB
        slots = np.repeat(used[:, 0], re_per_prb)[lead:lead + n]
        subcarriers = (np.repeat(used[:, 1] * SUBCARRIERS_PER_PRB, re_per_prb) + np.tile(pattern, len(used)))[lead:lead + n]
        return cls(slots, subcarriers)


def element_gains(trace: Trace, allocation: Allocation, offset_slots: int = 0) -> np.ndarray:
    """The complex gain ``[m]`` of every RE of ``allocation`` (complex64)."""
    return trace.gains(allocation.slots, trace.element_of(allocation.subcarriers), offset_slots)


def block_gains(trace: Trace, n_values: int, block_length: int, start_slot: int, prbs: int, re_per_prb: int) -> np.ndarray:
    """Real per-block amplitudes ``[T]`` a tensor of ``n_values`` sees on a trace, for block-level code (power
    control, its training and evaluation): its REs laid over the carrier from ``start_slot`` as
    :meth:`Allocation.contiguous` does, block ``t`` (real symbols ``t·L .. t·L+L−1``, ``L = block_length``) the RMS
    ``|H|`` of its REs. Exact for the replay when each block's REs share one gain (per-PRB traces, blocks within a
    PRB); otherwise the block's mean power."""
    m = -(-int(n_values) // 2)
    alloc = Allocation.contiguous(m, start_slot, prbs, re_per_prb)
    g2 = np.abs(element_gains(trace, alloc)).astype(np.float64) ** 2
    per_symbol = np.repeat(g2, 2)[: int(n_values)]
    length = int(block_length) or int(n_values)
    blocks = -(-int(n_values) // length)
    padded = np.zeros(blocks * length)
    padded[: per_symbol.size] = per_symbol
    counts = np.full(blocks, float(length))
    counts[-1] = n_values - length * (blocks - 1)
    return np.sqrt(padded.reshape(blocks, length).sum(axis=1) / counts)


def estimate_gains(h: np.ndarray, csi_error: float, rng: np.random.Generator) -> np.ndarray:
    """The receiver's CSI of complex gains ``h``: ``h + e``, ``e ~ CN(0, csi_error²)``; exact when 0."""
    if csi_error == 0:
        return np.array(h, dtype=np.complex128)
    e = rng.normal(0.0, csi_error / math.sqrt(2), size=(*np.shape(h), 2))
    return np.asarray(h, dtype=np.complex128) + e[..., 0] + 1j * e[..., 1]


@dataclass(frozen=True)
class GridTransmission:
    """What :func:`transmit_on_grid` did: received values (input shape, float32) and the accounting."""

    received: np.ndarray
    symbols: int  # real symbols
    resource_elements: int
    energy: float  # sum over real symbols of p
    effective_snr_db: float  # 10·log10(mean_i |H|² p_i / N0); inf for a noiseless link
    h: np.ndarray  # [m] complex gains applied
    h_hat: np.ndarray  # [m] the receiver's CSI
    blocks: int = 1  # slots spanned (set by the caller that knows the allocation)


def check_power_allocation(block_power: np.ndarray | None, n: int, block_length: int) -> np.ndarray | None:
    """The per-block powers ``[T]`` (float64) of a tensor of ``n`` values, or ``None`` for none (unit power); raises
    ChannelConfigError unless there are at most :data:`MAX_POWER_BLOCKS`, one per block of ``block_length``, all
    finite and >= 0 (the proxy checks a trace link's before the message takes its time on the air)."""
    if block_power is None or len(block_power) == 0:
        return None
    if block_length < 0:
        raise ChannelConfigError(f"block length must be >= 0 symbols, got {block_length}")
    lp = block_length or n
    tp = 1 if block_length == 0 or n == 0 else math.ceil(n / block_length)
    if tp > MAX_POWER_BLOCKS:
        raise ChannelConfigError(f"{tp} power blocks of {lp} symbols: at most {MAX_POWER_BLOCKS} per transmission")
    p = np.asarray(block_power, dtype=np.float64)
    if p.shape != (tp,):
        raise ChannelConfigError(f"power allocation has {p.size} entries for {tp} blocks of {lp} symbols")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ChannelConfigError("power allocation entries must be finite and >= 0")
    return p


def _power_per_symbol(block_power: np.ndarray | None, n: int, block_length: int) -> np.ndarray:
    """``[n]`` float32 powers from a per-block allocation (blocks of ``block_length`` real symbols; 0 = one), each
    capped at :data:`~shared.channel.power.P_MAX` (:func:`check_power_allocation`'s checks), as
    :func:`shared.channel.transmit.transmit` takes them."""
    p = check_power_allocation(block_power, n, block_length)
    if p is None:
        return np.ones(n, dtype=np.float32)
    lp = block_length or n
    return np.repeat(np.minimum(p, P_MAX).astype(np.float32), lp)[:n]


def transmit_on_grid(
    x: np.ndarray,
    h: np.ndarray,
    snr_db: float,
    rng: np.random.Generator,
    h_hat: np.ndarray | None = None,
    csi_error: float = 0.0,
    block_power: np.ndarray | None = None,
    power_block_length: int = 0,
    noisy: bool = True,
) -> GridTransmission:
    """Send ``x`` (any shape, ``n`` real values) on ``m = ⌈n/2⌉`` resource elements of complex gains ``h``
    ``[m]`` (:func:`element_gains`); returns the zero-forcing-equalised, de-normalised estimate.

    ``h_hat``: the receiver's CSI ``[m]`` (default: ``h`` with ``csi_error``). ``block_power``: powers over
    blocks of ``power_block_length`` real symbols, as in :func:`shared.channel.transmit.transmit`. ``noisy``:
    whether noise at ``snr_db`` is added (False: only the gains act). RNG use: the CSI error (when ``h_hat`` is
    not given and ``csi_error > 0``), then ``n`` standard normals of noise in real-symbol order.
    """
    xf = np.asarray(x, dtype=np.float32)
    flat = xf.reshape(-1)
    n = flat.size
    m = -(-n // 2)
    hh = np.asarray(h).reshape(-1).astype(np.complex64, copy=False)
    if hh.size != m:
        raise ChannelConfigError(f"{n} real values need {m} resource elements, got gains for {hh.size}")
    raw_hat = estimate_gains(hh, csi_error, rng) if h_hat is None else np.asarray(h_hat).reshape(-1)
    hh_hat = raw_hat.astype(np.complex64, copy=False)
    if hh_hat.size != m:
        raise ChannelConfigError(f"CSI for {hh_hat.size} resource elements, the transmission has {m}")
    allocated = block_power is not None and len(block_power) > 0
    p = _power_per_symbol(block_power, n, power_block_length) if allocated else None
    energy = float(n) if p is None else float(p.sum(dtype=np.float64))
    if n == 0:
        return GridTransmission(xf.copy(), 0, 0, 0.0, math.inf, hh, hh_hat)
    # in float64: the float32 sum of squares overflows for values beyond ~1e19
    scale = math.sqrt(float(np.einsum("i,i->", flat, flat, dtype=np.float64)) / n)
    scale = scale if 0 < scale < math.inf else 1.0
    big = scale > 1e30  # scale / Ĥ could overflow float32: equalise at unit power, rescale in float64
    n0 = 10.0 ** (-snr_db / 10.0) if noisy else 0.0
    # real symbols 2j, 2j+1 are the I and Q of RE j: a float32 buffer of 2m viewed as m complex64 values
    buf = np.zeros(2 * m, dtype=np.float32)
    buf[:n] = flat
    sqrt_p = None
    buf *= np.float32(1.0 / scale)  # unit power per real symbol (first: values at float32's limit stay finite)
    if p is not None:
        sqrt_p = np.zeros(2 * m, dtype=np.float32)
        sqrt_p[:n] = np.sqrt(p)
        buf *= sqrt_p
    y = buf.view(np.complex64)
    y *= hh
    if n0 > 0:
        noise = np.zeros(2 * m, dtype=np.float32)
        noise[:n] = rng.standard_normal(n, dtype=np.float32)
        noise *= np.float32(math.sqrt(n0))
        y += noise.view(np.complex64)
    known = hh_hat != 0
    inverse = np.zeros(m, dtype=np.complex64)
    with np.errstate(over="ignore", invalid="ignore"):
        inverse[known] = np.complex64(1.0 if big else scale) / hh_hat[known]
        y *= inverse  # zero forcing with the receiver's CSI, and back to the tensor's scale
        out = buf[:n]
        if sqrt_p is not None:
            sp = sqrt_p[:n]
            out = np.where(sp > 0, out / np.where(sp > 0, sp, np.float32(1.0)), np.float32(0.0)).astype(np.float32)
        if big:
            out = np.clip(out.astype(np.float64) * scale, -_F32_MAX, _F32_MAX).astype(np.float32)
    # finite input never comes out Inf or NaN (a near-zero Ĥ, values at float32's limit): saturate
    out = np.nan_to_num(out, copy=False, nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX)
    g2 = hh.real.astype(np.float64) ** 2 + hh.imag.astype(np.float64) ** 2
    if p is None:  # every RE carries 2 symbols, the last one 1 if n is odd
        mean_gain = float((2 * g2.sum() - (2 * m - n) * g2[-1]) / n)
    else:
        mean_gain = float(np.mean(np.repeat(g2, 2)[:n] * p))
    eff = math.inf if n0 == 0 else (10 * math.log10(mean_gain / n0) if mean_gain > 0 else -math.inf)
    return GridTransmission(out.reshape(xf.shape), n, m, energy, eff, hh, hh_hat)


@dataclass(frozen=True)
class TraceReplay:
    """A trace as one link direction replays it: the trace, the mean SNR it is scaled to, a start offset (so many
    UEs can share one file at different times) and an extra gain (a path-loss offset), both from the profile."""

    trace: Trace
    snr_db: float
    offset_s: float = 0.0
    gain_db: float = 0.0

    @property
    def offset_slots(self) -> int:
        return self.trace.offset_slots(self.offset_s)

    @property
    def effective_snr_db(self) -> float:
        """The mean SNR of the replay: ``snr_db + gain_db``."""
        return self.snr_db + self.gain_db

    def gains(self, allocation: Allocation) -> np.ndarray:
        """The complex gains ``[m]`` of the REs of ``allocation`` (the trace's own H; CSI adds the error)."""
        return element_gains(self.trace, allocation, self.offset_slots)

    def transmit(self, x: np.ndarray, allocation: Allocation, rng: np.random.Generator, csi_error: float = 0.0,
                 h_hat: np.ndarray | None = None, block_power: np.ndarray | None = None,
                 power_block_length: int = 0) -> GridTransmission:
        """:func:`transmit_on_grid` of ``x`` on ``allocation``'s REs at this replay's SNR."""
        return transmit_on_grid(x, self.gains(allocation), self.effective_snr_db, rng, h_hat=h_hat,
                                csi_error=csi_error, block_power=block_power, power_block_length=power_block_length)
