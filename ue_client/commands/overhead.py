"""``meg-ue overhead``: what each protocol sends, counted from the protocol data and a geometry (torch-free
with ``--geometry``; nothing is generated)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.channel.cell import DEFAULT_OVERHEAD, DUPLEXES, CellConfig
from shared.protocol.stages import TASKS
from ue_client.commands import base
from ue_client.overhead import DEFAULT_PROMPT_BYTES, DEFAULT_SNR_DB


def add_parser(sub: Any) -> None:
    ovh = sub.add_parser("overhead", help="symbols each protocol sends, without generating anything")
    src = ovh.add_mutually_exclusive_group()
    src.add_argument("--model", help="a StableDiffusionPipeline folder (default: embedded meg-tiny)")
    src.add_argument("--geometry", choices=["sd-v1-5"], help="a known model's geometry")
    ovh.add_argument("--fc", type=float, action="append", help="compression rate (repeat; default 1 and Table II's)")
    ovh.add_argument("--es-count", type=int, default=2, help="multi-ES protocols: how many edge servers (default 2)")
    ovh.add_argument("--broadcast", action="store_true", help="multi-ES: count a seed sent to every ES once")
    ovh.add_argument("--steps", type=base.STEPS, default=25, help="cooperative: DDIM steps of the generation (default 25)")
    ovh.add_argument("--sync-every", type=base.SYNC, help="cooperative: steps per round (default 5; 0 = one round)")
    air = ovh.add_argument_group("time on the air (a 5G NR cell per ES, docs/airtime.md)")
    air.add_argument("--bandwidth-mhz", type=float, help="the cell's bandwidth, TS 38.101-1 Table 5.3.2-1 (FDD: in each "
                     "direction); adds each protocol's air time and the cell's capacity in generations per second")
    air.add_argument("--numerology", type=int, default=1, help="mu: subcarrier spacing 15·2^mu kHz, slots of 1 ms / 2^mu "
                     "(default 1: 30 kHz)")
    air.add_argument("--duplex", choices=DUPLEXES, default="fdd", help="fdd (default) or tdd")
    air.add_argument("--tdd-pattern", default="DDDSU", help="TDD slot pattern of D, S, U (default DDDSU; S carries no data)")
    air.add_argument("--overhead", type=float, default=DEFAULT_OVERHEAD, help="fraction of REs for reference signals "
                     f"and control (default {DEFAULT_OVERHEAD}, TS 38.306)")
    air.add_argument("--prompt-bytes", type=int, default=DEFAULT_PROMPT_BYTES, help="the prompt's length: its bits go "
                     f"digitally at the MCS of --snr-db (default {DEFAULT_PROMPT_BYTES})")
    air.add_argument("--png-bytes", type=int, default=0, help="the digital baseline's image as PNG, bytes (default 0: "
                     "half the raw RGB bytes, H·W·3/2); its bits go at the MCS of --snr-db")
    air.add_argument("--snr-db", type=float, default=DEFAULT_SNR_DB, help="the link SNR that picks the prompt's MCS "
                     f"(TS 38.214 Table 5.1.3.1-2; default {DEFAULT_SNR_DB:g})")
    ovh.add_argument("--json", action="store_true")
    ovh.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.protocol.geometry import GEOMETRIES
    from ue_client.overhead import (
        TABLE_II_FCS,
        air_row,
        format_air,
        format_table,
        overhead_table,
        reduction_factor,
        table_ii,
    )

    if args.geometry:
        geometry, source = GEOMETRIES[args.geometry], args.geometry
    else:
        from shared.model.loader import default_model_path, folder_geometry  # torch only when a folder is read

        folder = args.model or default_model_path()
        geometry, source = folder_geometry(folder), str(folder)
    fcs = tuple(args.fc) if args.fc else (1.0, *TABLE_II_FCS)
    if args.es_count < 1:
        raise ValueError(f"--es-count must be at least 1, got {args.es_count}")
    rows = overhead_table(geometry, fcs, n_es=args.es_count, broadcast=args.broadcast, steps=args.steps or 25,
                          sync=args.sync_every)
    reductions = {
        f"{task} fc={fc:g}": round(reduction_factor(geometry, task, fc), 2) for task in TASKS for fc in fcs
    }
    cell = air = None
    if args.bandwidth_mhz is not None:
        if args.prompt_bytes < 0:
            raise ValueError(f"--prompt-bytes must be >= 0, got {args.prompt_bytes}")
        cell = CellConfig(bandwidth_mhz=args.bandwidth_mhz, numerology=args.numerology, overhead=args.overhead,
                          duplex=args.duplex, tdd_pattern=args.tdd_pattern)
        if args.png_bytes < 0:
            raise ValueError(f"--png-bytes must be >= 0, got {args.png_bytes}")
        png = args.png_bytes or geometry.image_size**2 * 3 // 2
        air = [air_row(r, cell, args.prompt_bytes, args.snr_db, png) for r in rows]
    if args.json:
        out: dict[str, object] = {"geometry": source, "shape": geometry.__dict__, "table_ii": table_ii(geometry),
                                  "n_es": args.es_count, "rows": [r.as_dict() for r in rows], "full_es_over_ciag": reductions}
        if cell is not None and air is not None:
            out["cell"] = {"bandwidth_mhz": cell.bandwidth_mhz, "numerology": cell.numerology, "prbs": cell.prbs,
                           "overhead": cell.overhead, "duplex": cell.duplex, "re_per_slot": cell.re_per_slot,
                           "slot_s": cell.slot_s, "uplink_re_per_s": cell.capacity_re_per_s("uplink"),
                           "downlink_re_per_s": cell.capacity_re_per_s("downlink")}
            out["air"] = [a.as_dict() for a in air]
            out["table_ii_air_s"] = table_ii_air(geometry, cell)
        print(json.dumps(out))
        return 0
    g = geometry
    print(f"geometry: {source} — image {g.image_size}²×3, latent {g.latent_channels}×{g.latent_size}², "
          f"prompt embedding {g.max_tokens}×{g.embed_dim} (real-valued symbols; the prompt text is lossless bytes)\n")
    print(format_table(rows))
    print("\nPaper 2, Table II (transmitted data, symbols):")
    for k, v in table_ii(geometry).items():
        print(f"  {k:16s} {v:>10,d}")
    print(f"  (the papers' 1,048,576 for the image is {g.image_size}×{g.image_size}×4; we count RGB pixels, "
          f"{g.image_size}×{g.image_size}×3 = {g.symbols('image'):,d})")
    print("\nFull-ES / CIAG total symbols:")
    for name, factor in reductions.items():
        print(f"  {name:16s} {factor:>8.2f}×")
    if cell is not None and air is not None:
        print("\n" + format_air(air, cell))
        print("\nPaper 2, Table II in seconds (one transmission alone, downlink):")
        for k, (slots, seconds) in table_ii_air(geometry, cell).items():
            print(f"  {k:16s} {slots:>5d} slots {seconds * 1e3:>9.2f} ms")
    return 0


def table_ii_air(geometry: object, cell: CellConfig) -> dict[str, tuple[int, float]]:
    """Table II's transmitted data as time on the downlink of ``cell``: ``(slots, seconds)`` each."""
    from shared.channel.cell import re_for_values
    from ue_client.overhead import message_air, table_ii

    return {k: message_air(cell, "downlink", re_for_values(v)) for k, v in table_ii(geometry).items()}  # type: ignore[arg-type]
