"""``meg-ue load``: N virtual UEs against an ES through the proxy (the run itself: :mod:`ue_client.load`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ue_client.commands import base
from ue_client.load import ATTACH


def add_parser(sub: Any) -> None:
    p = sub.add_parser("load", help="load-test: N virtual UEs against an ES through the proxy; latency percentiles, "
                                    "throughput, plots")
    p.add_argument("--via", required=True, help="HOST:PORT of the channel proxy (or an ES directly)")
    p.add_argument("--ues", type=int, required=True, help="virtual UEs (each its own link: UE ids {--ue-id}0..N-1)")
    stop = p.add_mutually_exclusive_group(required=True)
    stop.add_argument("--requests", type=int, help="measured requests in all (after --warmup)")
    stop.add_argument("--duration", type=float, help="seconds to send for (after --warmup)")
    p.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second over all UEs; latency counts "
                                              "from the intended send time (default: closed loop)")
    p.add_argument("--protocol", default="FULL-ES", help="P[:WEIGHT],... mix of protocols (default FULL-ES)")
    p.add_argument("--warmup", type=int, default=0, help="requests sent first and left out of the statistics")
    p.add_argument("--prompt", action="append", help="prompt (repeat; default: a built-in list the UEs cycle)")
    p.add_argument("--out", required=True, help="folder for results.json, requests.csv (streamed as requests end), "
                   "timeline.csv (streamed as bins close), latency.png, timeline.png; must be empty or new")
    p.add_argument("--timeline-s", type=float, help="the timeline's bin width in seconds: per bin requests sent, "
                   "finished, failed, latency p50/p99, the SNR applied, air time and the link state the proxy "
                   "reports (serving ES, profile, SNR) (default 1; a --duration over 600 s: at most 600 bins)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.add_argument("--attach", choices=ATTACH, default="round-robin", help="with several --es (comma-separated): "
                   "round-robin puts UE i in cell i mod N; least-loaded sends each request to the cell with the fewest "
                   "of this run's requests in flight (default round-robin)")
    base.add_model_flags(p)
    base.add_connection_flags(p, admin_use="to read its counters")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.protocol.registry import PROTOCOLS, check_prompt
    from shared.rpc.security import tls_from_args
    from ue_client.edge_client import EdgeClient
    from ue_client.load import (
        DEFAULT_PROMPTS,
        LoadConfig,
        RequestLog,
        format_summary,
        parse_protocols,
        prepare_out,
        run_load,
        write_outputs,
    )
    from ue_client.load_timeline import TimelineLog, TimelineRow, format_timeline

    cells = tuple(n.strip() for n in args.es.split(",") if n.strip()) if args.es and "," in args.es else ()
    cfg = LoadConfig(
        via=args.via, ues=args.ues, requests=args.requests, duration_s=args.duration, rate=args.rate,
        protocols=parse_protocols(args.protocol, PROTOCOLS), task=args.task, steps=args.steps, fc=args.fc,
        guidance=args.guidance, strength=args.strength, warmup=args.warmup, seed=args.seed, timeout_s=args.timeout,
        ue_id=base.ue_id_of(args, prefix=True), es=cells, attach=args.attach, prompts=tuple(check_prompt(p) for p in args.prompt) if args.prompt else DEFAULT_PROMPTS,
        control_tls=tls_from_args(args), admin_token=base.admin_token(args), timeline_s=args.timeline_s,
    )
    out = Path(args.out)
    prepare_out(out, args.overwrite)
    parts, image_in = base.load_model(args)

    shared: dict[str | None, EdgeClient] = {}  # per ES, one checked connection that every virtual UE shares

    def connect(ue_id: str, es: str | None = None) -> EdgeClient:  # one virtual UE: its own UE id (its own link)
        if es not in shared:
            shared[es] = base.open_client(argparse.Namespace(**{**vars(args), "es": es or args.es, "protocol": None}),
                                          parts)
        return shared[es].for_ue(ue_id, es or args.es)

    try:
        with RequestLog(out / "requests.csv") as log, TimelineLog(out / "timeline.csv") as bins:
            summary, records = run_load(parts, cfg, connect, image_in, progress=sys.stderr, on_record=log, on_bin=bins)
    finally:
        base.close_all(shared.values())
    paths = write_outputs(out, summary, records)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
        timeline: Any = summary["timeline"]
        print(format_timeline([TimelineRow(**r) for r in timeline["rows"]]))
        print("wrote " + ", ".join(str(p) for p in paths))
    if summary["interrupted"]:
        print("meg-ue load: interrupted; the results cover the requests that ended", file=sys.stderr)
        return 130
    return 0
