"""``meg-edge``: the edge server daemon (the model and power-policy tools moved to ``meg-lab``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from edge_server.settings import EdgeSettings
from shared.cli.config import parse, plain
from shared.cli.errors import run_cli
from shared.cli.logs import add_log_flag, setup

#: Old subcommands now in ``meg-lab``; ``meg-edge NAME ...`` still runs them there.
MOVED_TO_LAB = ("train-model", "eval-model", "train-codec", "train-power", "eval-power")


def _settings(args: argparse.Namespace) -> EdgeSettings:
    values: dict[str, object] = {}
    if args.config:
        values.update(tomllib.loads(Path(args.config).read_text()).get("edge", {}))
    for f in fields(EdgeSettings):
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
    unknown = set(values) - {f.name for f in fields(EdgeSettings)}
    if unknown:
        raise ValueError(f"unknown settings in [edge]: {sorted(unknown)}")
    if "tls_client_names" in values:
        names = values["tls_client_names"]
        values["tls_client_names"] = tuple([names] if isinstance(names, str) else names)  # type: ignore[arg-type]
    return EdgeSettings(**values)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meg-edge", description=plain(__doc__))
    add_log_flag(parser, "info")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the edge server daemon")
    serve.add_argument("--listen", help="HOST:PORT to bind (port 0 = any free port; default 127.0.0.1:50051)")
    serve.add_argument("--model", help="StableDiffusionPipeline folder (default: the embedded meg-tiny)")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto = CUDA fp16 when present")
    serve.add_argument("--max-batch", type=int, help="requests the batching engine denoises together (default 16)")
    serve.add_argument("--max-queue", type=int, help="requests waiting beyond those; more get RESOURCE_EXHAUSTED at "
                                                     "once (default 64)")
    serve.add_argument("--orphan-grace-s", type=float, help="a generation whose callers all went away waits this "
                       "long for a retry (same request_id) before it stops (default 3; 0 = stop at once)")
    serve.add_argument("--max-concurrency", type=int, help=argparse.SUPPRESS)  # old name of --max-batch
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on http://HOST:PORT/metrics "
                                                        "(HOST: --metrics-listen; 0 = any free port)")
    serve.add_argument("--metrics-listen", help="host /metrics binds (default 127.0.0.1: loopback, as Prometheus "
                       "exporters default; 0.0.0.0 exposes every UE id and counter to the network)")
    serve.add_argument("--grace-s", type=float, help="drain time on SIGTERM/SIGINT (default 10)")
    serve.add_argument("--name", help="this ES's name on the channel proxy (default es0)")
    serve.add_argument("--power-policy", choices=["none", "uniform", "oracle", "ppo"],
                       help="power allocation of seed downlinks (default none: unit power, no CSI)")
    serve.add_argument("--power-budget", type=float, help="average transmit power per seed symbol (default 1)")
    serve.add_argument("--power-model", help="PPO policy file (default: the shipped one)")
    serve.add_argument("--csi-via", help="HOST:PORT of the channel proxy's control service, where --power-policy asks "
                       "for CSI with the admin token; 'advertised': the address in the meg-channel-control header "
                       "(loopback only). Default: the header, but only from a proxy whose certificate "
                       "--tls-client-name names; otherwise no CSI (unit power)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve TLS (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    serve.add_argument("--tls-client-name", action="append", dest="tls_client_names", metavar="NAME",
                       help="accept only client certificates with this common name (repeat for more; e.g. "
                            "meg-channel: only the proxy); others get PERMISSION_DENIED. Default: any the CA signed")
    serve.add_argument("--insecure-one-way-tls", action="store_true", default=None,
                       help="allow --tls-cert/--tls-key without --tls-ca (clients not authenticated by certificate)")
    serve.add_argument("--sessions-per-caller", type=int, help="cooperative generations one caller may keep "
                       "between rounds (default 16; its oldest makes room)")
    serve.add_argument("--token-file", help="bearer token UEs must send (default: $MEG_TOKEN; none = open)")
    serve.add_argument("--control-token-file", help="the channel proxy's admin token, sent with CSI requests of "
                       "--power-policy (default: $MEG_ADMIN_TOKEN)")
    serve.add_argument("--config", help="TOML file with an [edge] table; MEG_* variables and flags override it")

    rnd = sub.add_parser("make-random-model", help="write a random pipeline folder (tests, benchmarks, demos without weights)")
    rnd.add_argument("out")
    rnd.add_argument("--seed", type=int, default=0)
    rnd.add_argument("--image-size", type=int, help="image side in pixels (default 32; 256 with --size sd-v1-5)")
    rnd.add_argument("--size", default="tiny", choices=["tiny", "sd-v1-5"],
                     help="tiny (tests) or sd-v1-5 (SD-v1.5's UNet widths, compute-bound benchmarks)")

    for moved in MOVED_TO_LAB:
        sub.add_parser(moved, help=f"moved: meg-lab {moved} (this spelling forwards to it)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in MOVED_TO_LAB:
        from meg_lab.cli import forward

        return forward("meg-edge", argv)
    args = parse(parser, argv)
    setup(args.log_level)
    if args.command == "make-random-model":
        from shared.model.random_pipeline import save_random_pipeline

        size = args.image_size or (256 if args.size == "sd-v1-5" else 32)
        print(save_random_pipeline(args.out, seed=args.seed, image_size=size, size=args.size))
        return 0

    def body() -> int:
        settings = _settings(args)
        from edge_server.server import serve as serve_forever

        asyncio.run(serve_forever(settings))
        return 0

    return run_cli("meg-edge", body, lambda exc: str(exc) if isinstance(exc, (OSError, ValueError, RuntimeError)) else None)


if __name__ == "__main__":
    sys.exit(main())
