"""``meg-ue compare``: every single-ES (or ``--multi-es``) protocol on one prompt through the proxy; a panel
and the measured accounting beside the predicted one (:mod:`ue_client.compare`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.protocol.registry import check_prompt
from shared.rpc.security import tls_from_args
from shared.rpc.target import target
from ue_client.commands import base


def add_parser(sub: Any) -> None:
    cmp_ = sub.add_parser("compare", help="run every single-ES (or --multi-es) protocol on one prompt; write a panel and a table")
    cmp_.add_argument("prompt")
    cmp_.add_argument("--via", required=True, type=target, help="HOST:PORT of the channel proxy")
    cmp_.add_argument("--snr-db", type=float, help="set this UE's link(s) to AWGN at this SNR both ways while it runs "
                      "(the settings before are put back afterwards)")
    cmp_.add_argument("--multi-es", action="store_true", help="the multi-ES protocols over the proxy's ESs (--es picks)")
    cmp_.add_argument("--pick", help="--multi-es: first, best or an ES number (default first)")
    cmp_.add_argument("--overlap", type=int, help="--multi-es: cooperative overlap (latent columns per side)")
    cmp_.add_argument("--sync-every", type=base.SYNC, help="--multi-es: cooperative steps per round (default 5)")
    cmp_.add_argument("--broadcast", action="store_true", help="--multi-es: count a seed sent to every ES once")
    cmp_.add_argument("--out", required=True, help="folder for panel.png, the images and overhead.json")
    base.add_model_flags(cmp_)
    base.add_connection_flags(cmp_, admin_use="compare sets the links")
    cmp_.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ue_client.compare import run_compare
    from ue_client.edge_client import EdgeClient
    from ue_client.session import MultiOptions

    prompt = check_prompt(args.prompt)
    parts, image_in = base.load_model(args)
    clients: dict[str, EdgeClient] = {}
    if args.multi_es:
        clients = base.open_clients(args, parts)
        client = next(iter(clients.values()))
    else:
        client = base.open_client(args, parts)
    options = MultiOptions(pick=args.pick or "first", halo=args.overlap, sync=args.sync_every, broadcast=args.broadcast)
    try:
        report = run_compare(parts, client, prompt, args.task, base.params(args), image_in, Path(args.out),
                             args.snr_db, args.via, clients=clients or None, multi_es=args.multi_es,
                             options=options, tls=tls_from_args(args), admin_token=base.admin_token(args))
    finally:
        base.close_all([client, *clients.values()])
    print(json.dumps(report) if args.json else report["table"])
    return 0
