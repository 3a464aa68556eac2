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

from dataclasses import asdict, dataclass

from shared.protocol.geometry import SEED_KEYS, Geometry
from shared.protocol.plan import plan
from shared.protocol.registry import PROTOCOLS
from shared.protocol.schedule import cooperative_schedule
from shared.protocol.stages import TASKS, TEXT_KEYS
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

    @property
    def total_symbols(self) -> int:
        return self.uplink_symbols + self.downlink_symbols

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "total_symbols": self.total_symbols}


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
    for seg in segments:
        if seg.actor != "ES":
            continue
        shares = [Share(i, n, h if seg.fan == "share" else 0) for i in range(n)] if seg.fan != "one" else [None]
        tensors_up = [k for k in seg.receives if k not in TEXT_KEYS]
        for i, sh in enumerate(shares):
            part = sh if seg.fan == "share" else None
            if not (broadcast and seg.fan == "each" and i > 0):
                up += sum(geometry.symbols(k, fc, part) for k in tensors_up)
            down += sum(geometry.symbols(k, fc, part) for k in seg.returns)
        mark = "" if seg.fan == "one" else f" ×{n}"
        up_keys += [k + mark for k in seg.receives if k + mark not in up_keys]
        down_keys += [k + mark for k in seg.returns if k + mark not in down_keys]
    return OverheadRow(name, task, fc, up, down, tuple(k for k in up_keys if k.split(" ")[0] not in TEXT_KEYS),
                       tuple(down_keys), any(k.split(" ")[0] in TEXT_KEYS for k in up_keys), n)


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
    lines = [f"{'task':8s} {'protocol':8s} {'ES':>2s} {'fc':>4s} {'uplink':>10s} {'downlink':>10s} {'total':>10s}  crosses"]
    for r in rows:
        up = " + ".join([*(["prompt text"] if r.prompt_uplink else []), *r.uplink_keys]) or "-"
        down = " + ".join(r.downlink_keys) or "-"
        lines.append(f"{r.task:8s} {r.protocol:8s} {r.n_es:2d} {r.fc:4g} {r.uplink_symbols:10,d} {r.downlink_symbols:10,d} "
                     f"{r.total_symbols:10,d}  ↑ {up}  ↓ {down}")
    return "\n".join(lines)
