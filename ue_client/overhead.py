"""Exact over-the-air accounting per protocol, derived from the protocol data and a model's geometry.

Nothing is generated: for every ES segment of a protocol's plan, the uplink is what the segment receives
and the downlink what it returns (:func:`shared.protocols.plan`); each tensor key's symbol count comes from
:class:`shared.geometry.Geometry`. The prompt crosses losslessly and is counted in bytes, apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from shared.geometry import SEED_KEYS, Geometry
from shared.protocols import PROTOCOLS, TASKS, TEXT_KEYS, plan

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

    @property
    def total_symbols(self) -> int:
        return self.uplink_symbols + self.downlink_symbols

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "total_symbols": self.total_symbols}


def protocol_overhead(name: str, task: str, geometry: Geometry, fc: float = 1.0) -> OverheadRow:
    spec = PROTOCOLS[name]
    segments = plan(spec.stages[task], task)  # type: ignore[index,arg-type]
    up_keys = [k for s in segments if s.actor == "ES" for k in s.receives]
    down_keys = [k for s in segments if s.actor == "ES" for k in s.returns]
    up = sum(geometry.symbols(k, fc) for k in up_keys if k not in TEXT_KEYS)
    down = sum(geometry.symbols(k, fc) for k in down_keys)
    return OverheadRow(name, task, fc, up, down, tuple(k for k in up_keys if k not in TEXT_KEYS), tuple(down_keys),
                       any(k in TEXT_KEYS for k in up_keys))


def uses_seeds(name: str, task: str) -> bool:
    """Whether any transmission of the protocol carries a seed (so fc matters)."""
    row = protocol_overhead(name, task, Geometry(8, 1, 1, 1, 1))
    return bool(SEED_KEYS & set(row.uplink_keys + row.downlink_keys))


def overhead_table(geometry: Geometry, fcs: tuple[float, ...] = (1.0,), tasks: tuple[str, ...] = TASKS) -> list[OverheadRow]:
    """Every protocol × task; protocols that send seeds get one row per fc."""
    rows = []
    for task in tasks:
        for name, spec in PROTOCOLS.items():
            if task not in spec.stages:
                continue
            for fc in fcs if uses_seeds(name, task) else (1.0,):
                rows.append(protocol_overhead(name, task, geometry, fc))
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
    lines = [f"{'task':8s} {'protocol':8s} {'fc':>4s} {'uplink':>10s} {'downlink':>10s} {'total':>10s}  crosses"]
    for r in rows:
        up = " + ".join([*(["prompt text"] if r.prompt_uplink else []), *r.uplink_keys]) or "-"
        down = " + ".join(r.downlink_keys) or "-"
        lines.append(f"{r.task:8s} {r.protocol:8s} {r.fc:4g} {r.uplink_symbols:10,d} {r.downlink_symbols:10,d} "
                     f"{r.total_symbols:10,d}  ↑ {up}  ↓ {down}")
    return "\n".join(lines)
