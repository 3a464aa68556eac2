"""Exact over-the-air accounting per protocol, derived from the protocol data and a model's geometry.

Nothing is generated: for every ES segment of a protocol's plan, the uplink is what the segment receives
and the downlink what it returns (:func:`shared.protocol.plan.plan`); each tensor key's symbol count comes from
:class:`shared.protocol.geometry.Geometry`. The prompt crosses losslessly and is counted in bytes, apart.

Multi-ES protocols (paper 1 §III) are counted for ``n_es`` edge servers, summed over their links: a
parallel fan-out sends and returns its keys once per ES (the uplink once in all with ``broadcast``); a
cooperative share sends and returns each ES's window (:mod:`shared.protocol.tiles`, overlap ``halo``), once per round
(``rounds``: with the windows fused every step, as many rounds as steps; :func:`cooperative_rounds`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from shared.channel.cell import CellConfig, SlotGrid, re_for_values
from shared.channel.mcs import digital_re, select_mcs
from shared.protocol.geometry import SEED_KEYS, Geometry
from shared.protocol.plan import plan
from shared.protocol.registry import PROTOCOLS
from shared.protocol.schedule import cooperative_schedule
from shared.protocol.stages import DIGITAL_KEYS, TASKS, TEXT_KEYS
from shared.protocol.tiles import DEFAULT_SYNC, Share, default_halo

#: Paper 2's Table II compression rates.
TABLE_II_FCS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class OverheadRow:
    protocol: str
    task: str
    fc: float
    uplink_symbols: int
    downlink_symbols: int
    uplink_keys: tuple[str, ...]
    downlink_keys: tuple[str, ...]
    prompt_uplink: bool  # the prompt text also goes up (lossless, counted in bytes)
    n_es: int = 1  # edge servers the row is counted for (multi-ES protocols)
    #: every message of one generation: (direction, ES number, complex REs of its tensors, carries the prompt,
    #: how many digital images (PNG, the digital baseline) it carries)
    messages: tuple[tuple[str, int, int, bool, int], ...] = field(default=(), repr=False, compare=False)

    @property
    def total_symbols(self) -> int:
        return self.uplink_symbols + self.downlink_symbols

    def as_dict(self) -> dict[str, object]:
        out = {**asdict(self), "total_symbols": self.total_symbols}
        del out["messages"]
        return out


def cooperative_rounds(steps: int, sync: int | None = None, task: str = "txt2img") -> int:
    """Rounds of a cooperative generation of ``steps`` steps fused every ``sync`` (None: the default; 0: one
    round; img2img at the default strength) — :func:`shared.protocol.schedule.cooperative_schedule` without a head."""
    share = Share(0, 2, sync=DEFAULT_SYNC if sync is None else sync)
    return len(cooperative_schedule(steps, 0.0, share, task == "img2img"))


def protocol_overhead(name: str, task: str, geometry: Geometry, fc: float = 1.0, n_es: int = 2,
                      halo: int | None = None, broadcast: bool = False, rounds: int = 1) -> OverheadRow:
    """Symbols each way for one generation (multi-ES protocols: over ``n_es`` links; cooperative ones in
    ``rounds`` rounds; see the module doc)."""
    spec = PROTOCOLS[name]
    segments = plan(spec.stages[task], task, rounds)  # type: ignore[index,arg-type]
    n = n_es if spec.multi_es else 1
    h = default_halo(geometry.latent_size) if halo is None else halo
    up = down = 0
    up_keys: list[str] = []
    down_keys: list[str] = []
    messages: list[tuple[str, int, int, bool, int]] = []
    for seg in segments:
        if seg.actor != "ES":
            continue
        shares = [Share(i, n, h if seg.fan == "share" else 0) for i in range(n)] if seg.fan != "one" else [None]
        tensors_up = [k for k in seg.receives if k not in TEXT_KEYS | DIGITAL_KEYS]
        tensors_down = [k for k in seg.returns if k not in DIGITAL_KEYS]
        prompt = any(k in TEXT_KEYS for k in seg.receives)
        png_up, png_down = (sum(k in DIGITAL_KEYS for k in keys) for keys in (seg.receives, seg.returns))
        for i, sh in enumerate(shares):
            part = sh if seg.fan == "share" else None
            if not (broadcast and seg.fan == "each" and i > 0):
                up += sum(geometry.symbols(k, fc, part) for k in tensors_up)
            down += sum(geometry.symbols(k, fc, part) for k in tensors_down)
            messages.append(("uplink", i, sum(re_for_values(geometry.symbols(k, fc, part)) for k in tensors_up), prompt,
                             png_up))
            messages.append(("downlink", i, sum(re_for_values(geometry.symbols(k, fc, part)) for k in tensors_down),
                             False, png_down))
        mark = "" if seg.fan == "one" else f" ×{n}"
        up_keys += [_label(k) + mark for k in seg.receives if _label(k) + mark not in up_keys]
        down_keys += [_label(k) + mark for k in seg.returns if _label(k) + mark not in down_keys]
    return OverheadRow(name, task, fc, up, down, tuple(k for k in up_keys if k.split(" ")[0] not in TEXT_KEYS),
                       tuple(down_keys), any(k.split(" ")[0] in TEXT_KEYS for k in up_keys), n, tuple(messages))


def _label(key: str) -> str:
    """A key as the table names it: digital ones (bytes, no symbols) marked."""
    return f"{key} (digital)" if key in DIGITAL_KEYS else key


def uses_seeds(name: str, task: str) -> bool:
    """Whether any transmission of the protocol carries a seed (so fc matters)."""
    row = protocol_overhead(name, task, Geometry(8, 1, 1, 1, 1))
    return bool(SEED_KEYS & {k.split(" ")[0] for k in row.uplink_keys + row.downlink_keys})


def overhead_table(geometry: Geometry, fcs: tuple[float, ...] = (1.0,), tasks: tuple[str, ...] = TASKS,
                   n_es: int = 2, broadcast: bool = False, steps: int = 25, sync: int | None = None) -> list[OverheadRow]:
    """Every protocol × task (multi-ES ones for ``n_es`` ES; cooperative ones fused every ``sync`` of ``steps``
    steps, :func:`cooperative_rounds`); protocols that send seeds get one row per fc."""
    rows = []
    for task in tasks:
        for name, spec in PROTOCOLS.items():
            if task not in spec.stages:
                continue
            for fc in fcs if uses_seeds(name, task) else (1.0,):
                rows.append(protocol_overhead(name, task, geometry, fc, n_es, broadcast=broadcast,
                                              rounds=cooperative_rounds(steps, sync, task)))
    return rows


def table_ii(geometry: Geometry, fcs: tuple[float, ...] = TABLE_II_FCS) -> dict[str, int]:
    """Paper 2, Table II's 'transmitted data': the image, the raw latent and the seeds at each fc."""
    out = {"image (H·W·3)": geometry.symbols("image"), "raw latent": geometry.latent_values}
    out |= {f"seed fc={fc:g}": geometry.seed_values(fc) for fc in fcs}
    return out


def reduction_factor(geometry: Geometry, task: str, fc: float = 1.0, over: str = "CIAG") -> float:
    """Full-ES total symbols / ``over``'s total symbols (paper 1's headline comparison)."""
    return protocol_overhead("FULL-ES", task, geometry).total_symbols / protocol_overhead(over, task, geometry, fc).total_symbols


def format_table(rows: list[OverheadRow]) -> str:
    lines = [f"{'task':8s} {'protocol':11s} {'ES':>2s} {'fc':>4s} {'uplink':>10s} {'downlink':>10s} {'total':>10s}  crosses"]
    for r in rows:
        up = " + ".join([*(["prompt text"] if r.prompt_uplink else []), *r.uplink_keys]) or "-"
        down = " + ".join(r.downlink_keys) or "-"
        lines.append(f"{r.task:8s} {r.protocol:11s} {r.n_es:2d} {r.fc:4g} {r.uplink_symbols:10,d} {r.downlink_symbols:10,d} "
                     f"{r.total_symbols:10,d}  ↑ {up}  ↓ {down}")
    return "\n".join(lines)


# --- time on the air -------------------------------------------------------------------------------------
#: What ``meg-ue overhead --bandwidth-mhz`` assumes of the prompt (it crosses as digital bits).
DEFAULT_PROMPT_BYTES = 64
DEFAULT_SNR_DB = 20.0


@dataclass(frozen=True)
class AirRow:
    """One generation's time on the air in one cell, alone (an idle cell, no other UE), per direction, and
    how many generations per second the cell could carry back to back.

    ``slots`` and ``air_s`` count the busiest ES's cell (each ES of a multi-ES protocol has its own cell):
    every message of the generation there, each from the first slot its direction may use (a message takes
    ``ceil(RE / RE per slot)`` whole slots). ``gen_per_s``: the cell's resource elements per second over the
    REs one generation needs there, the tighter direction (None: nothing crosses)."""

    protocol: str
    task: str
    fc: float
    n_es: int
    uplink_re: int
    downlink_re: int
    uplink_slots: int
    downlink_slots: int
    uplink_air_s: float
    downlink_air_s: float
    gen_per_s: float | None

    @property
    def air_s(self) -> float:
        return self.uplink_air_s + self.downlink_air_s

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "air_s": self.air_s}


def message_air(cell: CellConfig, direction: str, re: int) -> tuple[int, float]:
    """``(slots, seconds)`` one message of ``re`` resource elements takes alone in ``direction`` of ``cell``:
    ``ceil(re / RE per slot)`` slots from the direction's first usable slot to the end of its last (TDD:
    the slots of the other direction in between count as time)."""
    if re <= 0:
        return 0, 0.0
    slots = math.ceil(re / cell.re_per_slot)
    grid = SlotGrid.of(cell, direction)
    return slots, grid.end(slots - 1) - grid.start(0)


def air_row(row: OverheadRow, cell: CellConfig, prompt_bytes: int = DEFAULT_PROMPT_BYTES,
            snr_db: float = DEFAULT_SNR_DB, png_bytes: int = 0) -> AirRow:
    """``row``'s generation on the air of ``cell`` (see :class:`AirRow`): its tensors' REs (``ceil(n/2)``
    each) plus, on a message that carries it, the prompt's ``8 · prompt_bytes`` bits and each digital
    image's ``8 · png_bytes`` bits at the MCS ``snr_db`` affords (TS 38.214; other framing bits are left
    out). Raises ValueError below the lowest MCS (outage: no digital bit goes)."""
    mcs = select_mcs(snr_db)
    if mcs is None:
        raise ValueError(f"--snr-db {snr_db:g}: below MCS 0's threshold the prompt's bits cannot go (outage)")
    prompt_re = digital_re(8 * prompt_bytes, mcs)
    per: dict[tuple[str, int], list[int]] = {}
    for direction, es, re, prompt, pngs in row.messages:
        total = re + (prompt_re if prompt else 0) + (digital_re(8 * png_bytes * pngs, mcs) if pngs else 0)
        if total:
            per.setdefault((direction, es), []).append(total)
    out: dict[str, tuple[int, int, float]] = {}
    for direction in ("uplink", "downlink"):
        cells = [msgs for (d, _), msgs in per.items() if d == direction]
        busiest = max(cells, key=sum, default=[])
        spans = [message_air(cell, direction, re) for re in busiest]
        out[direction] = (sum(busiest), sum(n for n, _ in spans), sum(t for _, t in spans))
    rates = [cell.capacity_re_per_s(d) / out[d][0] for d in out if out[d][0]]
    return AirRow(row.protocol, row.task, row.fc, row.n_es, out["uplink"][0], out["downlink"][0], out["uplink"][1],
                  out["downlink"][1], round(out["uplink"][2], 9), round(out["downlink"][2], 9),
                  round(min(rates), 3) if rates else None)


def format_air(rows: list[AirRow], cell: CellConfig) -> str:
    """The air-time table: per protocol the REs, slots and milliseconds each way, and generations per second."""
    lines = [f"time on the air: one generation alone in a cell of {cell.describe()}",
             (f"{'task':8s} {'protocol':11s} {'ES':>2s} {'fc':>4s} {'up RE':>9s} {'down RE':>9s} {'up ms':>8s} "
             f"{'down ms':>8s} {'slots':>9s} {'gen/s':>9s}")]
    for r in rows:
        gps = "-" if r.gen_per_s is None else f"{r.gen_per_s:,.1f}"
        lines.append(f"{r.task:8s} {r.protocol:11s} {r.n_es:2d} {r.fc:4g} {r.uplink_re:9,d} {r.downlink_re:9,d} "
                     f"{r.uplink_air_s * 1e3:8.2f} {r.downlink_air_s * 1e3:8.2f} "
                     f"{f'{r.uplink_slots}+{r.downlink_slots}':>9s} {gps:>9s}")
    return "\n".join(lines)
