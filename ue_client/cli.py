"""``meg-ue``: send prompts from the UE to an edge server (usually through the channel proxy), count what
each protocol sends, and compare protocols side by side."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from shared.cli.config import parse, plain
from shared.cli.errors import describe_rpc_error, run_cli
from shared.cli.logs import add_log_flag, setup
from shared.protocol.registry import PROTOCOLS, check_prompt
from shared.protocol.stages import TASKS
from shared.rpc.security import ADMIN_TOKEN_ENV, UE_TOKEN_ENV, add_tls_flags, read_token, tls_from_args
from shared.rpc.target import target
from shared.wire.limits import MAX_STEPS  # the ES's bound, checked before sending


def _number(kind: type, lo: float, hi: float, what: str) -> Callable[[str], object]:
    """An argparse type: a ``kind`` number in ``[lo, hi]``, else a usage error saying ``what`` is allowed."""
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {what}") from None
        if not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range; {what}")
        return value

    return parse


STEPS = _number(int, 0, MAX_STEPS, f"steps is 0 (the model's default) or 1 to {MAX_STEPS}")
SEED = _number(int, 0, 2**64 - 1, "the seed is a whole number from 0 to 2^64-1")
GUIDANCE = _number(float, 0, 50, "guidance is 0 (the model's default) to 50")
FC = _number(float, 0, 1, "fc is a compression rate in (0, 1]; 0 = 1, the raw latent")
STRENGTH = _number(float, 0, 1, "strength is in [0, 1]; 0 = the default 0.6")
HEAD = _number(float, 0, 0.99, "the head is the fraction of the schedule every ES runs on the whole latent, 0 to 0.99")
SYNC = _number(int, 0, 1000, "sync is the number of DDIM steps between two fusions, 0 (never) to 1000")
TIMEOUT = _number(float, 0.001, 86400, "the timeout is a positive number of seconds")


def _params(args: argparse.Namespace) -> object:
    from shared.protocol.params import Params

    return Params(seed=args.seed, steps=args.steps, guidance=args.guidance, fc=args.fc, strength=args.strength)


def _load(args: argparse.Namespace) -> tuple[object, object]:
    from shared.model.images import load_png
    from shared.model.ops import ModelParts

    parts = ModelParts.load(args.model, args.device)
    image_in = load_png(args.image, parts.geometry.image_size) if args.image else None
    return parts, image_in


def _client(args: argparse.Namespace, parts: object) -> object:
    from ue_client.edge_client import EdgeClient, check_geometry

    client = EdgeClient(args.via, timeout_s=args.timeout, ue_id=args.ue_id, es_name=args.es, tls=tls_from_args(args),
                        token=read_token(getattr(args, "token_file", None), UE_TOKEN_ENV))
    remote = client.describe()
    check_geometry(parts, remote)  # type: ignore[arg-type]
    _check_fc(args, remote)
    return client


def _sends_seed(protocol: str, task: str) -> bool:
    from shared.protocol.geometry import SEED_KEYS

    stages = PROTOCOLS[protocol].stages.get(task, ())  # type: ignore[call-overload]  # task: a str from argparse
    return any(k in SEED_KEYS for st in stages for k in (*st.inputs, *st.outputs))


def _check_fc(args: argparse.Namespace, remote: object) -> None:
    """``--fc`` must be a rate the ES ships a codec for, where the protocol sends a seed (FULL-ES sends none)."""
    from shared.wire.air import unsupported_rate_message

    fc = round(float(args.fc or 1.0), 4)
    rates = [round(float(r), 4) for r in getattr(remote, "codec_fc", [])]
    protocols = [args.protocol] if getattr(args, "protocol", None) else list(PROTOCOLS)
    if fc != 1.0 and fc not in rates and any(_sends_seed(p, args.task) for p in protocols if p in PROTOCOLS):
        raise ValueError(unsupported_rate_message(fc, rates))


def _describe_link(acc: Any) -> str:
    channel, snr = acc.channel, acc.snr_db
    if channel is None:
        return "direct link" if acc.transmissions else "nothing sent"
    return channel + (f" {snr:g} dB" if snr is not None else "")


def _generate(args: argparse.Namespace) -> int:
    from shared.model.images import save_png
    from ue_client.session import MultiOptions, generate

    prompt = check_prompt(args.prompt)
    spec = PROTOCOLS[args.protocol]
    parts, image_in = _load(args)
    local = not any(s.actor == "ES" for s in spec.stages.get(args.task, ()))
    if not local and not args.via:
        raise ValueError(f"{args.protocol} needs an edge server: give --via HOST:PORT")
    out = Path(args.out)
    clients: dict[str, object] = {}
    options = None
    if spec.multi_es:
        from ue_client.multi import make_chooser, open_clients

        clients = open_clients(args.via, args.es, parts, args.timeout, args.ue_id,  # type: ignore[assignment,arg-type]
                               tls=tls_from_args(args), token=read_token(args.token_file, UE_TOKEN_ENV))
        options = MultiOptions(pick=make_chooser(args.pick, out), halo=args.overlap, head=args.head,
                               sync=args.sync_every, broadcast=args.broadcast, fallback=args.fallback)
        client = next(iter(clients.values()))
    else:
        if args.es and "," in args.es:
            raise ValueError(f"{args.protocol} is a single-ES protocol: give one --es name")
        client = None if local else _client(args, parts)
    try:
        result = generate(parts, client, prompt, args.protocol, args.task, _params(args), image_in,  # type: ignore[arg-type]
                          clients=clients or None, options=options)  # type: ignore[arg-type]
    finally:
        for c in {id(c): c for c in [client, *clients.values()] if c is not None}.values():
            c.close()  # type: ignore[attr-defined]
    save_png(result.image, out)
    if args.save_sketch and result.sketch is not None:
        save_png(result.sketch, args.save_sketch)
    summary = {**result.summary(), "out": str(out), "prompt": prompt, "seed": args.seed, "fc": args.fc or 1.0}
    if result.candidates:
        from ue_client.multi import write_candidates

        summary["candidate_files"] = write_candidates(out, result)
    if args.json:
        print(json.dumps(summary))
    else:
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


def _overhead(args: argparse.Namespace) -> int:
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


def _compare(args: argparse.Namespace) -> int:
    from ue_client.compare import run_compare
    from ue_client.session import MultiOptions

    prompt = check_prompt(args.prompt)
    parts, image_in = _load(args)
    clients: dict[str, object] = {}
    if args.multi_es:
        from ue_client.multi import open_clients

        clients = open_clients(args.via, args.es, parts, args.timeout, args.ue_id,  # type: ignore[assignment,arg-type]
                               tls=tls_from_args(args), token=read_token(args.token_file, UE_TOKEN_ENV))
        client = next(iter(clients.values()))
    else:
        client = _client(args, parts)
    options = MultiOptions(pick=args.pick or "first", halo=args.overlap, sync=args.sync_every, broadcast=args.broadcast)
    try:
        report = run_compare(parts, client, prompt, args.task, _params(args), image_in, Path(args.out),  # type: ignore[arg-type]
                             args.snr_db, args.via, clients=clients or None, multi_es=args.multi_es,  # type: ignore[arg-type]
                             options=options, tls=tls_from_args(args),
                             admin_token=read_token(args.admin_token_file, ADMIN_TOKEN_ENV))
    finally:
        for c in {id(c): c for c in [client, *clients.values()]}.values():
            c.close()  # type: ignore[attr-defined]
    print(json.dumps(report) if args.json else report["table"])
    return 0


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the UE's copy of the model folder (default: embedded meg-tiny)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--task", default=None, choices=list(TASKS), help="default: img2img with --image, else txt2img")
    p.add_argument("--image", help="input image for text-guided img2img")
    p.add_argument("--strength", type=STRENGTH, default=0.0, help="img2img strength (0 = default 0.6)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--steps", type=STEPS, default=0, help=f"ES DDIM steps, up to {MAX_STEPS} (0 = the model's default)")
    p.add_argument("--guidance", type=GUIDANCE, default=0.0, help="guidance scale (0 = the model's default)")
    p.add_argument("--fc", type=FC, default=0.0, help="seed compression rate (0 = 1: raw latent; others: see the "
                                                      "ES's codec rates)")
    p.add_argument("--timeout", type=TIMEOUT, default=120.0, help="deadline of the whole generation, seconds")
    p.add_argument("--ue-id", default="ue", help="this UE's name on the channel proxy (its link is UE->ES)")
    p.add_argument("--es", help="which edge server(s) behind the proxy, by name (single-ES protocols: one, default "
                   "its first; multi-ES: comma-separated, default all of them)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _connection_flags(p: argparse.ArgumentParser) -> None:
    """TLS and the bearer token towards the proxy / ES."""
    add_tls_flags(p, server=False)
    p.add_argument("--token-file", help=f"bearer token for the edge service (default: ${UE_TOKEN_ENV})")


def _load_test(args: argparse.Namespace) -> int:
    from ue_client.load import run_cli

    def connect(parts: object, ue_id: str) -> object:  # one virtual UE: its own client and UE id
        return _client(argparse.Namespace(**{**vars(args), "ue_id": ue_id, "protocol": None}), parts)

    return run_cli(args, _load, connect)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meg-ue", description=plain(__doc__))
    add_log_flag(parser, "warning")
    sub = parser.add_subparsers(dest="command", required=True)
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
    multi.add_argument("--sync-every", type=SYNC, help="cooperative: DDIM steps between two fusions of the windows "
                       "on the UE (default 5; 1 = every step; 0 = never, each window alone). Each fusion sends every "
                       "window over the air and back: on a noisy link fewer rounds keep the noise down")
    multi.add_argument("--head", type=HEAD, help="cooperative: fraction of the DDIM schedule every ES runs on the "
                       "whole latent before its window (default 0; 0.8 reproduces the single-ES layout, but every "
                       "ES repeats those steps)")
    multi.add_argument("--broadcast", action="store_true", help="count a seed sent to every ES once in the totals "
                       "(one broadcast transmission) instead of N unicasts")
    multi.add_argument("--fallback", action="store_true", help="cooperative: if an ES fails, run the single-ES "
                       "protocol (UIEG / ESUC) on one that answered instead of failing")
    _model_flags(gen)
    _connection_flags(gen)
    ovh = sub.add_parser("overhead", help="symbols each protocol sends, without generating anything")
    src = ovh.add_mutually_exclusive_group()
    src.add_argument("--model", help="a StableDiffusionPipeline folder (default: embedded meg-tiny)")
    src.add_argument("--geometry", choices=["sd-v1-5"], help="a known model's geometry")
    ovh.add_argument("--fc", type=float, action="append", help="compression rate (repeat; default 1 and Table II's)")
    ovh.add_argument("--es-count", type=int, default=2, help="multi-ES protocols: how many edge servers (default 2)")
    ovh.add_argument("--broadcast", action="store_true", help="multi-ES: count a seed sent to every ES once")
    ovh.add_argument("--steps", type=STEPS, default=25, help="cooperative: DDIM steps of the generation (default 25)")
    ovh.add_argument("--sync-every", type=SYNC, help="cooperative: steps per round (default 5; 0 = one round)")
    ovh.add_argument("--json", action="store_true")
    cmp_ = sub.add_parser("compare", help="run every single-ES (or --multi-es) protocol on one prompt; write a panel and a table")
    cmp_.add_argument("prompt")
    cmp_.add_argument("--via", required=True, type=target, help="HOST:PORT of the channel proxy")
    cmp_.add_argument("--snr-db", type=float, help="set this UE's link(s) to AWGN at this SNR both ways while it runs "
                      "(the settings before are put back afterwards)")
    cmp_.add_argument("--multi-es", action="store_true", help="the multi-ES protocols over the proxy's ESs (--es picks)")
    cmp_.add_argument("--pick", help="--multi-es: first, best or an ES number (default first)")
    cmp_.add_argument("--overlap", type=int, help="--multi-es: cooperative overlap (latent columns per side)")
    cmp_.add_argument("--sync-every", type=SYNC, help="--multi-es: cooperative steps per round (default 5)")
    cmp_.add_argument("--broadcast", action="store_true", help="--multi-es: count a seed sent to every ES once")
    cmp_.add_argument("--out", required=True, help="folder for panel.png, the images and overhead.json")
    cmp_.add_argument("--admin-token-file", help=f"the proxy's admin token: compare sets the links (default: "
                      f"${ADMIN_TOKEN_ENV})")
    _model_flags(cmp_)
    _connection_flags(cmp_)
    sub.add_parser("eval", help="moved: meg-lab eval (this spelling forwards to it)")
    from ue_client.load import add_load_parser

    def _load_flags(p: argparse.ArgumentParser) -> None:
        _model_flags(p)
        _connection_flags(p)
        p.add_argument("--admin-token-file", help=f"the proxy's admin token, to read its counters (default: "
                       f"${ADMIN_TOKEN_ENV})")

    add_load_parser(sub, _load_flags)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "eval":
        from meg_lab.cli import forward

        return forward("meg-ue", argv)
    args = parse(parser, argv)
    setup(args.log_level)
    if getattr(args, "task", "x") is None:
        args.task = "img2img" if args.image else "txt2img"
    if getattr(args, "task", None) == "img2img" and not args.image:
        parser.error("--task img2img edits a picture: give it with --image PNG")

    def describe(exc: BaseException) -> str | None:
        if isinstance(exc, grpc.RpcError):
            return describe_rpc_error(exc, f"cannot reach the edge server at {args.via}:")
        if isinstance(exc, (ValueError, RuntimeError, OSError, KeyError)):
            return str(exc)
        return None

    return run_cli("meg-ue", lambda: {"generate": _generate, "overhead": _overhead, "compare": _compare, "load": _load_test}[args.command](args),
                   describe)


if __name__ == "__main__":
    sys.exit(main())
