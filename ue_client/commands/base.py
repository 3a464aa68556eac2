"""What ``meg-ue``'s subcommands share: argparse types with readable ranges, the model and connection
flags, and the typed helpers that load the UE's model and open its clients (torch only inside them)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from shared.protocol.registry import PROTOCOLS
from shared.protocol.stages import TASKS
from shared.rpc.security import ADMIN_TOKEN_ENV, UE_TOKEN_ENV, add_tls_flags, read_token, tls_from_args
from shared.wire.limits import MAX_SEED, MAX_STEPS  # the ES's bounds, checked before sending

if TYPE_CHECKING:
    import torch

    from shared.model.ops import ModelParts
    from shared.pb import edge_pb2
    from shared.protocol.params import Params
    from ue_client.edge_client import EdgeClient

N = TypeVar("N", int, float)


def number(kind: Callable[[str], N], lo: float, hi: float, what: str) -> Callable[[str], N]:
    """An argparse type: a ``kind`` number in ``[lo, hi]``, else a usage error saying ``what`` is allowed."""
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {what}") from None
        if not (isinstance(value, int) or math.isfinite(value)) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range; {what}")
        return value

    return parse


STEPS = number(int, 0, MAX_STEPS, f"steps is 0 (the model's default) or 1 to {MAX_STEPS}")
SEED = number(int, 0, MAX_SEED, "the seed is a whole number from 0 to 2^64-1")
GUIDANCE = number(float, 0, 50, "guidance is 0 (the model's default) to 50")
FC = number(float, 0, 1, "fc is a compression rate in (0, 1]; 0 = 1, the raw latent")
STRENGTH = number(float, 0, 1, "strength is in [0, 1]; 0 = the default 0.6")
HEAD = number(float, 0, 0.99, "the head is the fraction of the schedule every ES runs on the whole latent, 0 to 0.99")
SYNC = number(int, 0, 1000, "sync is the number of DDIM steps between two fusions, 0 (never) to 1000")
TIMEOUT = number(float, 0.001, 86400, "the timeout is a positive number of seconds")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The UE's model, the generation's parameters, its deadline and the UE/ES names."""
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
    p.add_argument("--ue-id", default=None, help="this UE's name on the channel proxy (its link is UE->ES; default: "
                   "with --tls-cert the certificate's name, which a proxy requiring client certificates ties ids to; "
                   "else 'ue')")
    p.add_argument("--es", help="which edge server(s) behind the proxy, by name (single-ES protocols: one, default "
                   "its first; multi-ES: comma-separated, default all of them)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_connection_flags(p: argparse.ArgumentParser, admin_use: str | None = None) -> None:
    """TLS and the bearer token towards the proxy / ES; ``admin_use``: why the command needs the proxy's admin
    token too (adds ``--admin-token-file``)."""
    add_tls_flags(p, server=False)
    p.add_argument("--token-file", help=f"bearer token for the edge service (default: ${UE_TOKEN_ENV})")
    if admin_use:
        p.add_argument("--admin-token-file", help=f"the proxy's admin token, {admin_use} (default: ${ADMIN_TOKEN_ENV})")


def ue_id_of(args: argparse.Namespace, prefix: bool = False) -> str:
    """``--ue-id``, or its default: the client certificate's name when there is one (a proxy that requires
    client certificates accepts only ids in that name's namespace: the name, or the name + ``-._:`` ...), else
    ``ue``. ``prefix``: the id is a prefix of several UEs' ids (``meg-ue load``: ``{prefix}0``, ``{prefix}1``...),
    so a certificate's name gets a ``-``."""
    from shared.rpc.security import certificate_name

    if getattr(args, "ue_id", None):
        return str(args.ue_id)
    cert = getattr(args, "tls_cert", None)
    name = certificate_name(cert) if cert else None
    if name is None:
        return "ue"
    return f"{name}-" if prefix else name


def ue_token(args: argparse.Namespace) -> str | None:
    return read_token(getattr(args, "token_file", None), UE_TOKEN_ENV)


def admin_token(args: argparse.Namespace) -> str | None:
    return read_token(getattr(args, "admin_token_file", None), ADMIN_TOKEN_ENV)


def params(args: argparse.Namespace) -> Params:
    from shared.protocol.params import Params

    return Params(seed=args.seed, steps=args.steps, guidance=args.guidance, fc=args.fc, strength=args.strength)


def load_model(args: argparse.Namespace) -> tuple[ModelParts, torch.Tensor | None]:
    """The UE's model parts and the img2img input (``[1, 3, H, W]`` in [0, 1], or None)."""
    from shared.model.images import load_png
    from shared.model.ops import ModelParts

    parts = ModelParts.load(args.model, args.device)
    image_in = load_png(args.image, parts.geometry.image_size) if args.image else None
    return parts, image_in


def open_client(args: argparse.Namespace, parts: ModelParts) -> EdgeClient:
    """One checked client towards ``--via`` (``--es``, ``--ue-id``): same geometry, a rate the ES has."""
    from ue_client.edge_client import EdgeClient, check_geometry

    client = EdgeClient(args.via, timeout_s=args.timeout, ue_id=ue_id_of(args), es_name=args.es, tls=tls_from_args(args),
                        token=ue_token(args))
    try:
        remote = client.describe()
        check_geometry(parts, remote)
        check_fc(args, remote)
    except BaseException:
        client.close()
        raise
    return client


def open_clients(args: argparse.Namespace, parts: ModelParts) -> dict[str, EdgeClient]:
    """The multi-ES session's clients (:func:`ue_client.multi.open_clients`)."""
    from ue_client.multi import open_clients as open_all

    return open_all(args.via, args.es, parts, args.timeout, ue_id_of(args), tls=tls_from_args(args), token=ue_token(args))


def close_all(clients: Iterable[EdgeClient | None]) -> None:
    """Close each distinct client once."""
    for c in {id(c): c for c in clients if c is not None}.values():
        c.close()


def sends_seed(protocol: str, task: str) -> bool:
    from shared.protocol.geometry import SEED_KEYS

    stages = PROTOCOLS[protocol].stages.get(task, ())  # type: ignore[call-overload]  # task: a str from argparse
    return any(k in SEED_KEYS for st in stages for k in (*st.inputs, *st.outputs))


def check_fc(args: argparse.Namespace, remote: edge_pb2.DescribeResponse) -> None:
    """``--fc`` must be a rate the ES ships a codec for, where the protocol sends a seed (FULL-ES sends none)."""
    from shared.wire.air import unsupported_rate_message

    fc = round(float(args.fc or 1.0), 4)
    rates = [round(float(r), 4) for r in remote.codec_fc]
    protocols = [args.protocol] if getattr(args, "protocol", None) else list(PROTOCOLS)
    if fc != 1.0 and fc not in rates and any(sends_seed(p, args.task) for p in protocols if p in PROTOCOLS):
        raise ValueError(unsupported_rate_message(fc, rates))
