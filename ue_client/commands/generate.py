"""``meg-ue generate``: one image with one protocol (single- or multi-ES); the accounting per link."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.protocol.registry import PROTOCOLS, check_prompt
from shared.rpc.target import target
from ue_client.commands import base


def add_parser(sub: Any) -> None:
    gen = sub.add_parser("generate", help="generate one image with a protocol")
    gen.add_argument("prompt")
    gen.add_argument("--protocol", default="CIAG", type=str.upper, choices=list(PROTOCOLS))
    gen.add_argument("--via", type=target, help="HOST:PORT of the channel proxy (or of the ES directly); not for FULL-UE")
    gen.add_argument("--out", default="meg.png", help="PNG to write (default meg.png)")
    gen.add_argument("--save-sketch", help="ESUC: also write the received sketch here")
    multi = gen.add_argument_group("many edge servers (UIDG, DIUG, DSUC, UIDCG, DCSUC)")
    multi.add_argument("--pick", help="parallel protocols: first (to arrive), best (least noisy, see docs/multi-es.md), "
                       "an ES number, or ask (default: ask on a terminal, else first)")
    multi.add_argument("--overlap", type=int, help="cooperative: latent columns of overlap per window side "
                       "(default max(2, latent/8); 0 = naive tiling)")
    multi.add_argument("--sync-every", type=base.SYNC, help="cooperative: DDIM steps between two fusions of the windows "
                       "on the UE (default 5; 1 = every step; 0 = never, each window alone). Each fusion sends every "
                       "window over the air and back: on a noisy link fewer rounds keep the noise down")
    multi.add_argument("--head", type=base.HEAD, help="cooperative: fraction of the DDIM schedule every ES runs on the "
                       "whole latent before its window (default 0; 0.8 reproduces the single-ES layout, but every "
                       "ES repeats those steps)")
    multi.add_argument("--broadcast", action="store_true", help="count a seed sent to every ES once in the totals "
                       "(one broadcast transmission) instead of N unicasts")
    multi.add_argument("--fallback", action="store_true", help="cooperative: if an ES fails, run the single-ES "
                       "protocol (UIEG / ESUC) on one that answered instead of failing")
    base.add_model_flags(gen)
    base.add_connection_flags(gen)
    gen.set_defaults(run=run)


def _describe_link(acc: Any) -> str:
    channel, snr = acc.channel, acc.snr_db
    if channel is None:
        return "direct link" if acc.transmissions else "nothing sent"
    return channel + (f" {snr:g} dB" if snr is not None else "")


def run(args: argparse.Namespace) -> int:
    from shared.model.images import save_png
    from ue_client.edge_client import EdgeClient
    from ue_client.session import MultiOptions, generate

    prompt = check_prompt(args.prompt)
    spec = PROTOCOLS[args.protocol]
    parts, image_in = base.load_model(args)
    local = not any(s.actor == "ES" for s in spec.stages.get(args.task, ()))
    if not local and not args.via:
        raise ValueError(f"{args.protocol} needs an edge server: give --via HOST:PORT")
    out = Path(args.out)
    clients: dict[str, EdgeClient] = {}
    options = None
    client: EdgeClient | None
    if spec.multi_es:
        from ue_client.multi import make_chooser

        clients = base.open_clients(args, parts)
        options = MultiOptions(pick=make_chooser(args.pick, out), halo=args.overlap, head=args.head,
                               sync=args.sync_every, broadcast=args.broadcast, fallback=args.fallback)
        client = next(iter(clients.values()))
    else:
        if args.es and "," in args.es:
            raise ValueError(f"{args.protocol} is a single-ES protocol: give one --es name")
        client = None if local else base.open_client(args, parts)
    try:
        result = generate(parts, client, prompt, args.protocol, args.task, base.params(args), image_in,
                          clients=clients or None, options=options)
    finally:
        base.close_all([client, *clients.values()])
    if spec.multi_es:
        from ue_client.multi import shortfall

        if (line := shortfall(result.protocol, result)) is not None:
            print(line, file=sys.stderr)  # stdout may be --json
    save_png(result.image, out)
    if args.save_sketch and result.sketch is not None:
        save_png(result.sketch, args.save_sketch)
    summary = {**result.summary(), "out": str(out), "prompt": prompt, "seed": args.seed, "fc": args.fc or 1.0}
    if result.candidates:
        from ue_client.multi import write_candidates

        summary["candidate_files"] = write_candidates(out, result)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{result.protocol} {result.task}: wrote {out} in {result.seconds:.2f}s (ES {result.es_seconds:.2f}s)")
    if result.fallback_from:
        print(f"  {result.fallback_from} failed over to {result.protocol}")
    for es_name, why in result.failed.items():
        print(f"  {es_name} FAILED: {why}")
    links = [("", result.uplink, result.downlink)]
    if result.es is not None:
        links = [(f"{n} ", u, d) for n, (u, d) in result.es.items()] + [("total ", result.uplink, result.downlink)]
    for prefix, up, down in links:
        for name, acc in (("uplink", up), ("downlink", down)):
            print(f"  {prefix + name:14s} {acc.symbols:>9,d} symbols {acc.payload_bytes:>10,d} B tensors "
                  f"{acc.text_bytes:>5d} B text  ({_describe_link(acc)})")
    if result.candidates:
        print(f"  picked {result.picked} of {', '.join(c.es for c in result.candidates)}; candidates: "
              f"{summary['candidate_files']['sheet']}")
    return 0
