"""``meg-ue``: send prompts from the UE to an edge server (usually through the channel proxy), count what
each protocol sends, and compare protocols side by side."""

from __future__ import annotations

import argparse
import sys

import grpc

from shared.cli.config import parse, plain
from shared.cli.errors import describe_rpc_error, run_cli
from shared.cli.logs import add_log_flag, setup
from ue_client.commands import modules
from ue_client.commands.base import check_fc as _check_fc  # noqa: F401  (its old home; tests import it here)


def build_parser() -> argparse.ArgumentParser:
    """The ``meg-ue`` parser: one subparser per module of :mod:`ue_client.commands` (each sets ``run``)."""
    parser = argparse.ArgumentParser(prog="meg-ue", description=plain(__doc__))
    add_log_flag(parser, "warning")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in modules():
        module.add_parser(sub)
    sub.add_parser("eval", help="moved: meg-lab eval (this spelling forwards to it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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

    return run_cli("meg-ue", lambda: int(args.run(args)), describe)


if __name__ == "__main__":
    sys.exit(main())
