"""``meg-channel``: the channel-emulating gRPC proxy, and commands that talk to a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from channel_emulator.link import Link
from shared.channel import ChannelConfigError, make_model
from shared.grpc_util import serve_until_signal
from shared.pb import channel_pb2, channel_pb2_grpc

CONTROL_DEADLINE_S = 10.0


async def _serve(args: argparse.Namespace) -> None:
    from channel_emulator.proxy import create_proxy

    def model(snr: float | None) -> object:
        return make_model("ideal", math.inf) if snr is None else make_model(args.model, snr)

    link = Link(
        uplink=model(args.uplink_snr_db if args.uplink_snr_db is not None else args.snr_db),
        downlink=model(args.downlink_snr_db if args.downlink_snr_db is not None else args.snr_db),
        seed=args.seed,
    )
    server, port, health = await create_proxy(args.listen, args.upstream, link)
    print(f"meg-channel listening on port {port}", flush=True)
    await serve_until_signal(server, health, args.grace_s)


def _control(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.via) as channel:
        stub = channel_pb2_grpc.ChannelControlStub(channel)
        if args.command == "show":
            reply = stub.GetChannel(channel_pb2.GetChannelRequest(), timeout=CONTROL_DEADLINE_S)
        elif args.command == "stats":
            reply = stub.GetStats(channel_pb2.GetStatsRequest(), timeout=CONTROL_DEADLINE_S)
        else:
            setting = channel_pb2.DirectionSettings(model=args.model, snr_db=args.snr_db)
            dirs = ["uplink", "downlink"] if args.direction == "both" else [args.direction]
            reply = stub.SetChannel(channel_pb2.SetChannelRequest(**{d: setting for d in dirs}), timeout=CONTROL_DEADLINE_S)
    data = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if args.json:
        print(json.dumps(data))
    else:
        for direction, values in data.items():
            print(f"{direction:9s} " + "  ".join(f"{k}={v}" for k, v in values.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meg-channel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the channel proxy in front of an edge server")
    serve.add_argument("--listen", default="127.0.0.1:50052", help="HOST:PORT to bind (port 0 = any free port)")
    serve.add_argument("--upstream", required=True, help="HOST:PORT of the edge server")
    serve.add_argument("--snr-db", type=float, help="SNR of both directions (default: ideal link)")
    serve.add_argument("--uplink-snr-db", type=float, help="uplink SNR, overrides --snr-db")
    serve.add_argument("--downlink-snr-db", type=float, help="downlink SNR, overrides --snr-db")
    serve.add_argument("--model", default="awgn", help="channel model when an SNR is given (default awgn)")
    serve.add_argument("--seed", type=int, default=0, help="seed of the link's noise RNG")
    serve.add_argument("--grace-s", type=float, default=5.0)
    for name, help_ in (("show", "print a running proxy's channel settings"), ("stats", "print its counters"),
                        ("set", "change a direction's channel; applies from the next transmission")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--via", required=True, help="HOST:PORT of the proxy")
        p.add_argument("--json", action="store_true")
        if name == "set":
            p.add_argument("direction", choices=["uplink", "downlink", "both"])
            p.add_argument("--model", default="awgn")
            p.add_argument("--snr-db", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            asyncio.run(_serve(args))
            return 0
        return _control(args)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"cannot reach the channel proxy at {args.via}"
        print(f"meg-channel: error: {details}", file=sys.stderr)
        return 2
    except (ChannelConfigError, OSError, ValueError) as exc:
        print(f"meg-channel: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
