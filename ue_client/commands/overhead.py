"""``meg-ue overhead``: what each protocol sends, counted from the protocol data and a geometry (torch-free
with ``--geometry``; nothing is generated)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.protocol.stages import TASKS
from ue_client.commands import base


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
    ovh.add_argument("--json", action="store_true")
    ovh.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.protocol.geometry import GEOMETRIES
    from ue_client.overhead import TABLE_II_FCS, format_table, overhead_table, reduction_factor, table_ii

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
    if args.json:
        print(json.dumps({"geometry": source, "shape": geometry.__dict__, "table_ii": table_ii(geometry), "n_es": args.es_count,
                          "rows": [r.as_dict() for r in rows], "full_es_over_ciag": reductions}))
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
    return 0
