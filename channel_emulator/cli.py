"""``meg-channel``: the channel-emulating gRPC proxy, and commands that talk to a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from channel_emulator.membership import DEFAULT_INTERVAL_S, DEFAULT_MAX_UPSTREAMS, Membership, Pattern
from shared.channel.cell import DUPLEXES, JITTER_DISTRIBUTIONS, SCHEDULERS, CellConfig
from shared.channel.models import MODELS, ChannelConfigError
from shared.channel.profiles import IDEAL, ChannelProfile, ProfileBook, load_profiles
from shared.cli.config import DeprecatedAlias, parse, plain
from shared.cli.errors import describe_rpc_error, run_cli
from shared.cli.logs import add_log_flag, setup
from shared.pb import channel_pb2
from shared.rpc.control import ControlClient, set_request
from shared.rpc.security import (
    ADMIN_TOKEN_ENV,
    UE_TOKEN_ENV,
    TlsFiles,
    add_tls_flags,
    read_token,
    tls_from_args,
)
from shared.rpc.server import serve_until_signal
from shared.rpc.target import split_hostport, target

CONTROL_DEADLINE_S = 10.0


def _upstreams(values: list[str]) -> dict[str, str]:
    """``[NAME=]HOST:PORT`` items -> {name: address}; unnamed ones are es0, es1, ..."""
    out: dict[str, str] = {}
    for i, value in enumerate(values):
        name, sep, addr = value.rpartition("=")
        name = name if sep else f"es{i}"
        split_hostport(addr)
        if name in out:
            raise ValueError(f"upstream name {name!r} given twice")
        out[name] = addr
    return out


def _direction_profile(args: argparse.Namespace, direction: str, book: object) -> ChannelProfile:
    named = getattr(args, f"{direction}_profile")
    if named:
        return book.get(named)  # type: ignore[attr-defined]
    snr = getattr(args, f"{direction}_snr_db")
    snr = args.snr_db if snr is None else snr
    if snr is None:
        return IDEAL
    return ChannelProfile(model=args.channel_model, snr_db=snr, coherence_symbols=args.coherence, k_factor=args.k_factor,
                          csi_error=args.csi_error)


def _membership(args: argparse.Namespace, fixed: dict[str, str], tls: TlsFiles | None) -> Membership | None:
    """The ``--upstream-pattern`` follower (channel_emulator.membership), or None for fixed upstreams only."""
    if not args.upstream_pattern:
        if not fixed:
            raise ValueError("give --upstream NAME=HOST:PORT (fixed) or --upstream-pattern 'es{i}=HOST:PORT' (followed)")
        return None
    patterns = [Pattern.parse(p) for p in args.upstream_pattern]
    return Membership(patterns, args.max_upstreams, args.membership_interval_s, tls=tls, fixed=list(fixed))


#: ``serve`` flags of the default cell: flag attribute -> CellConfig field.
_CELL_FLAGS = {"bandwidth_mhz": "bandwidth_mhz", "numerology": "numerology", "overhead": "overhead", "duplex": "duplex",
               "tdd_pattern": "tdd_pattern", "scheduler": "scheduler", "delay_ms": "delay_ms", "jitter_ms": "jitter_ms",
               "jitter": "jitter", "queue_limit": "queue_limit"}


def _cells(args: argparse.Namespace, book: ProfileBook) -> dict[str, CellConfig]:
    """The cells: the profiles file's ``[cells.*]``, the default one changed (or made) by the serve flags."""
    cells = dict(book.cells)
    flags = {field: getattr(args, attr) for attr, field in _CELL_FLAGS.items() if getattr(args, attr) is not None}
    if flags:
        if "default" not in cells and "bandwidth_mhz" not in flags:
            raise ChannelConfigError(f"cell settings ({', '.join('--' + f.replace('_', '-') for f in flags)}) need a "
                                     "cell: give --bandwidth-mhz (or [cells.default] in --profiles)")
        base = cells.get("default")
        cells["default"] = base.with_changes(**flags) if base else CellConfig(**flags)  # named cells keep theirs
    return cells


async def _serve(args: argparse.Namespace) -> None:
    from channel_emulator.cells import CellSet
    from channel_emulator.link import LinkTable
    from channel_emulator.mobility import check_scenario, start_motion
    from channel_emulator.proxy import create_proxy
    from channel_emulator.replay import REPLAY
    from shared.channel.scenario import load_scenario

    book = load_profiles(args.profiles)
    scenario = load_scenario(args.scenario) if args.scenario else None  # a bad file: a start-up error
    cells = CellSet(_cells(args, book), args.clock, seed=args.seed)
    table = LinkTable(book, _direction_profile(args, "uplink", book), _direction_profile(args, "downlink", book), args.seed)
    tls = tls_from_args(args)
    upstream_ca = args.upstream_tls_ca or args.tls_ca
    upstream_tls = None if args.upstream_plaintext or not upstream_ca else \
        TlsFiles(args.tls_cert, args.tls_key, upstream_ca, args.upstream_tls_server_name)
    fixed = _upstreams(args.upstream or [])
    membership = _membership(args, fixed, upstream_tls)
    if scenario is not None and membership is None:  # fixed upstreams: the file's ESs, profiles, traces known now
        REPLAY.cell_of = cells.cell_of  # a trace must fit its ES's carrier
        check_scenario(scenario, table, fixed)
    server, port, health = await create_proxy(
        args.listen, fixed, table, advertise_as=args.advertise, tls=tls, upstream_tls=upstream_tls,
        ue_token=read_token(args.token_file, UE_TOKEN_ENV), admin_token=read_token(args.admin_token_file, ADMIN_TOKEN_ENV),
        membership=membership, cells=cells, insecure_open_control=args.insecure_open_control, trace_dir=args.trace_dir,
    )
    start_motion(scenario, table, lambda: membership.upstreams.targets if membership and membership.upstreams
                 else fixed, cells.clock, cells.cell_of)  # trace replay's slots and the scenario start now
    for name, cell in cells.settings_by_name().items():
        logging.getLogger("meg.channel").info("cell %s: %s (%s clock)", name, cell.describe(), cells.clock_mode)
    if args.metrics_port is not None:
        from channel_emulator.metrics import CellCollector, serve_link_metrics

        _, metrics_port = serve_link_metrics(table, args.metrics_listen, args.metrics_port,
                                             [*([membership.collector()] if membership else []), CellCollector(cells)])
        logging.getLogger("meg.channel").info("meg-channel metrics bound to %s", args.metrics_listen)
        logging.getLogger("meg.channel").info("meg-channel metrics on port %d", metrics_port)
    print(f"meg-channel listening on port {port}", flush=True)
    await serve_until_signal(server, health, args.grace_s)


def _fmt_profile(p: dict[str, object]) -> str:
    name = f"{p.get('name')}: " if p.get("name") else ""
    model = str(p.get("model", ""))
    if model == "ideal":
        return f"{name}ideal"
    extra = ""
    if model in MODELS and MODELS[model].fading:
        extra += f", coherence {p.get('coherence_symbols', 0)} symbols"
    if model == "rician":
        extra += f", K {p.get('k_factor')}"
    if p.get("csi_error"):
        extra += f", CSI error {p.get('csi_error')}"
    if p.get("trace"):
        extra += f", trace {p['trace']} from {p.get('trace_offset_s') or 0:g} s"
        if p.get("trace_gain_db"):
            extra += f", gain {p['trace_gain_db']:+g} dB"
    snr = p.get("snr_db")
    return f"{name}{model} {round(snr, 2) if isinstance(snr, float) else snr} dB{extra}"


def _fmt_scenarios(scenarios: list[dict[str, Any]]) -> list[str]:
    """``meg-channel show``'s lines of each scenario: its state and clock, then where each of its links is."""
    lines = []
    for s in scenarios:
        lines.append(f"scenario {s['name']} ({s['source']}): {s['state']}, t={s['elapsed_s']:.2f} of "
                     f"{s['duration_s']:.2f} s, {s['fired']}/{s['events']} events fired")
        for p in s.get("positions", []):
            last = (f"last #{p['last_event']} at {p['last_at_s']:.2f} s: {p['last']}"
                    + (f" (refused: {p['last_error']})" if p.get("last_error") else "")) if p["last_event"] >= 0 \
                else "not started"
            nxt = f"next #{p['next_event']} at {p['next_at_s']:.2f} s: {p['next']}" if p["next_event"] >= 0 else "done"
            lines.append(f"  {p['link']:16s} {last}; {nxt}")  # a path step's last says its SNR and distance
    return lines


def _print(command: str, data: dict[str, Any]) -> None:
    if command == "profiles":
        for p in data.get("profiles", []):
            print(_fmt_profile(p))
    elif command == "stats":
        print(f"{'link':16s} {'dir':8s} {'rpcs':>5s} {'tx':>5s} {'symbols':>10s} {'bytes':>10s} {'snr dB':>7s} {'energy':>10s}")
        for e in data.get("entries", []):
            snr = e.get("mean_snr_db")
            snr_s = f"{snr:7.2f}" if isinstance(snr, float) and math.isfinite(snr) else "      -"
            print(f"{e['link']:16s} {e['direction']:8s} {int(e['rpcs']):5d} {int(e['transmissions']):5d} "
                  f"{int(e['symbols']):10d} {int(e['payload_bytes']):10d} {snr_s} {float(e['energy']):10.1f}")
        if data.get("cells"):
            print(f"\n{'cell':16s} {'dir':8s} {'util':>6s} {'backlog RE':>11s} {'queued':>6s} {'links':>5s} {'Mbit/s':>8s}")
            for c in data["cells"]:
                print(f"{c['cell']:16s} {c['direction']:8s} {float(c['utilisation']):6.1%} "
                      f"{int(c['backlog_resource_elements']):11d} {int(c['backlog_messages']):6d} "
                      f"{int(c['active_links']):5d} {float(c['delivered_bits_per_s']) / 1e6:8.3f}")
    elif command == "csi":
        print(f"{data.get('model')} {data.get('snr_db')} dB, coherence {data.get('coherence_symbols')} symbols")
        print(f"{'block':>5s} {'|h| reported':>12s}")
        for i, g in enumerate(data.get("gains", [])):
            print(f"{i:5d} {g:12.4f}")
    else:
        print(f"upstreams: {', '.join(data.get('upstreams', []))}")
        for ls in [data["default"], *data.get("links", [])]:
            print(f"{ls['link']:16s} uplink   {_fmt_profile(ls['uplink'])}")
            print(f"{'':16s} downlink {_fmt_profile(ls['downlink'])}")
        for c in data.get("cells", []):
            duplex = f"TDD {c['tdd_pattern']}" if c["duplex"] == "tdd" else "FDD"
            print(f"cell {c['cell']:11s} {c['bandwidth_mhz']:g} MHz, mu {c['numerology']}, {c['prbs']} PRB, "
                  f"{c['re_per_slot']} RE/slot, {duplex}, {c['scheduler']}, delay {c['delay_ms']:g} ms "
                  f"± {c['jitter_ms']:g} ({c['jitter']}), queue {c['queue_limit']} ({data.get('clock')} clock)")
        for line in _fmt_scenarios(data.get("scenarios", [])):
            print(line)


def to_plain(msg: Message) -> dict[str, object]:
    """A message as JSON-ready Python values: every field present, 64-bit integers as numbers (not
    strings as in proto3 JSON), non-finite floats (``mean_snr_db`` of a link with no noisy symbol) as None, an
    ``optional`` field not set as None."""
    def value(f: FieldDescriptor, v: object) -> object:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return to_plain(v)
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        return v

    out: dict[str, object] = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        if f.containing_oneof is not None and f.containing_oneof.name == f"_{f.name}" and not msg.HasField(f.name):
            out[f.name] = None  # proto3 optional, not set
            continue
        out[f.name] = [value(f, x) for x in v] if f.is_repeated else value(f, v)
    return out


def _control(args: argparse.Namespace) -> int:
    token = read_token(args.admin_token_file, ADMIN_TOKEN_ENV)
    with ControlClient(args.via, tls_from_args(args), token, timeout_s=CONTROL_DEADLINE_S) as control:
        reply: Message
        if args.command == "profiles":
            reply = control.list_profiles()
        elif args.command == "show":
            reply = control.get_channel()
        elif args.command == "stats":
            reply = control.stats()
        elif args.command == "reset":
            reply = control.reset(stats=args.stats)
        elif args.command == "csi":
            reply = control.csi(args.link, args.direction, blocks=args.blocks)
        elif args.command == "scenario" and args.action == "start":
            if not args.file:
                raise ValueError("scenario start needs the scenario FILE")
            text = _scenario_text(args.file)
            reply = control.start_scenario(args.name or Path(args.file).stem, text, replace=args.replace)
        elif args.command == "scenario":
            reply = control.stop_scenario(args.name or "")
        elif args.command == "set-cell":
            cell = channel_pb2.CellSettings(cell=args.cell)
            for attr, fieldname in _CELL_FLAGS.items():
                if getattr(args, attr) is not None:
                    setattr(cell, fieldname, getattr(args, attr))
            reply = control.set_cell(cell)
        elif args.profile:
            reply = control.set(set_request(args.link, args.direction, profile=args.profile))
        elif args.snr_db is not None:
            reply = control.set(set_request(args.link, args.direction, custom=channel_pb2.Profile(
                model=args.channel_model, snr_db=args.snr_db, coherence_symbols=args.coherence,
                k_factor=args.k_factor, csi_error=args.csi_error, trace=args.trace or "",
                trace_offset_s=args.trace_offset_s, trace_gain_db=args.trace_gain_db)))
        else:
            raise ValueError("set needs a PROFILE name or --snr-db")
    data = to_plain(reply)
    if args.json:
        print(json.dumps(data))
    else:
        _print(args.command, data)
    return 0


def _scenario_text(path: str) -> str:
    """A scenario file's text for ``StartScenario`` (it travels in the request: at most MAX_SCENARIO_BYTES)."""
    from shared.wire.limits import MAX_SCENARIO_BYTES

    size = Path(path).stat().st_size
    if size > MAX_SCENARIO_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_SCENARIO_BYTES} a proxy takes")
    try:
        return Path(path).read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _custom_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel-model", default="awgn", help="ideal | awgn | rayleigh | rician (default awgn)")
    p.add_argument("--model", dest="channel_model", action=DeprecatedAlias, new="--channel-model", help=argparse.SUPPRESS)
    p.add_argument("--coherence", type=int, default=256, help="fading block length in symbols (default 256)")
    p.add_argument("--k-factor", type=float, default=0.0, help="Rician K (linear)")
    p.add_argument("--csi-error", type=float, default=0.0, help="std of the CSI estimation error")


def _cell_flags(p: argparse.ArgumentParser, serve: bool) -> None:
    """The cell settings (docs/airtime.md); on ``serve`` they make or change the default cell."""
    where = "the default cell's" if serve else "the cell's"
    p.add_argument("--bandwidth-mhz", type=float, help=f"{where} bandwidth, TS 38.101-1 Table 5.3.2-1 (FDD: in each "
                                                       "direction); on serve, giving it turns time on the air on")
    p.add_argument("--numerology", type=int, help="mu: subcarrier spacing 15·2^mu kHz, slots of 1 ms / 2^mu (default 1)")
    p.add_argument("--overhead", type=float, help="fraction of REs for reference signals and control (default 0.14)")
    p.add_argument("--duplex", choices=DUPLEXES, help="fdd (default) or tdd")
    p.add_argument("--tdd-pattern", help="TDD slot pattern of D, S, U (default DDDSU; S slots carry no data)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="rr = round robin (default) | pf = proportional fair")
    p.add_argument("--delay-ms", type=float, help="one-way delay of every link, after the air (default 0)")
    p.add_argument("--jitter-ms", type=float, help="standard deviation of the delay (default 0)")
    p.add_argument("--jitter", choices=JITTER_DISTRIBUTIONS, help="the jitter's distribution (default normal)")
    p.add_argument("--queue-limit", type=int, help="messages a link may have waiting per direction (default 64)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meg-channel", description=plain(__doc__))
    add_log_flag(parser, "info")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the channel proxy in front of one or more edge servers")
    serve.add_argument("--listen", default="127.0.0.1:50052", help="HOST:PORT to bind (port 0 = any free port)")
    serve.add_argument("--upstream", action="append", metavar="[NAME=]HOST:PORT",
                       help="a fixed edge server (repeat for several; unnamed ones are es0, es1, ...)")
    serve.add_argument("--upstream-pattern", action="append", metavar="NAME=HOST:PORT",
                       help="follow edge servers at runtime: for i = 0..--max-upstreams-1, e.g. 'es{i}=es{i}:50051' "
                            "(compose), 'es{i}=es-{i}.es:50051' (StatefulSet), 'es{i}=127.0.0.1:{i+50061}'; one that "
                            "resolves and answers health SERVING joins, one that stops is dropped (repeat for several)")
    serve.add_argument("--max-upstreams", type=int, default=DEFAULT_MAX_UPSTREAMS,
                       help=f"slots i per --upstream-pattern (default {DEFAULT_MAX_UPSTREAMS})")
    serve.add_argument("--membership-interval-s", type=float, default=DEFAULT_INTERVAL_S,
                       help=f"seconds between --upstream-pattern probes (default {DEFAULT_INTERVAL_S:g}; "
                            "dropped after 2 failed ones)")
    serve.add_argument("--profiles", help="TOML file of named profiles and per-link settings")
    serve.add_argument("--scenario", help="TOML file of timed events per link (docs/channels.md), played from start-up")
    serve.add_argument("--trace-dir", help="folder of trace files control callers may name (SetChannel custom "
                                           "profiles, meg-channel scenario start); without it they may name only "
                                           "the traces --profiles and --scenario loaded")
    serve.add_argument("--advertise", help="HOST:PORT edge servers reach this proxy's control service at, for CSI "
                                           "(default: the listen address)")
    serve.add_argument("--uplink-profile", help="named profile of every uplink")
    serve.add_argument("--downlink-profile", help="named profile of every downlink")
    serve.add_argument("--snr-db", type=float, help="SNR of both directions with --channel-model (default: ideal link)")
    serve.add_argument("--uplink-snr-db", type=float, help="uplink SNR, overrides --snr-db")
    serve.add_argument("--downlink-snr-db", type=float, help="downlink SNR, overrides --snr-db")
    _custom_flags(serve)
    serve.add_argument("--seed", type=int, default=0, help="seed of the links' RNGs")
    add_tls_flags(serve, server=True)
    serve.add_argument("--upstream-tls-ca", help="PEM CA of the edge servers' certificates (default: --tls-ca); "
                                                 "the proxy presents --tls-cert/--tls-key to them")
    serve.add_argument("--upstream-tls-server-name", help="name in the edge servers' certificates, if not their host")
    serve.add_argument("--upstream-plaintext", action="store_true", help="plaintext to the edge servers even with --tls-ca")
    serve.add_argument("--token-file", help=f"bearer token UEs must send (default: ${UE_TOKEN_ENV}; none = open)")
    serve.add_argument("--admin-token-file", help=f"bearer token of the control service (default: ${ADMIN_TOKEN_ENV}; "
                                                  "required with --token-file)")
    serve.add_argument("--insecure-open-control", action="store_true",
                       help="with --token-file but no --admin-token-file, leave the control service open to anyone "
                            "(refused otherwise)")
    _cell_flags(serve, serve=True)
    serve.add_argument("--clock", choices=["enforce", "account"], default="enforce",
                       help="with a cell: enforce = release each message at its computed departure time (default); "
                            "account = compute and report the times without waiting")
    serve.add_argument("--grace-s", type=float, default=5.0)
    serve.add_argument("--metrics-port", type=int, help="serve per-link Prometheus metrics on http://HOST:PORT/metrics "
                                                        "(HOST: --metrics-listen; 0 = any free port)")
    serve.add_argument("--metrics-listen", default="127.0.0.1",
                       help="host /metrics binds (default 127.0.0.1: loopback, as Prometheus exporters do; the "
                            "per-link counters name every UE; 0.0.0.0 exposes them to anyone who can reach the host)")
    helps = {
        "profiles": "list the named profiles", "show": "print the links' settings", "stats": "print the counters",
        "set": "change a link direction; applies from the next transmission", "reset": "back to start-up settings",
        "csi": "draw and print the CSI of a link direction's next blocks",
        "set-cell": "change a cell (time on the air) from the next slot on",
        "scenario": "start a scenario file (timed events per link) from now, or stop one",
    }
    for name, help_ in helps.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument("--via", required=True, type=target, help="HOST:PORT of the proxy")
        p.add_argument("--json", action="store_true")
        add_tls_flags(p, server=False)
        p.add_argument("--admin-token-file", help=f"the proxy's admin token (default: ${ADMIN_TOKEN_ENV})")
        if name == "set":
            p.add_argument("direction", choices=["uplink", "downlink", "both"])
            p.add_argument("profile", nargs="?", help="a named profile (or give --snr-db and the model flags)")
            p.add_argument("--link", default="", help="UE->ES link (default: every link and the default)")
            p.add_argument("--snr-db", type=float, help="the SNR (with --trace: the trace's mean SNR)")
            _custom_flags(p)
            p.add_argument("--trace", help="replay this trace file (one the proxy loaded, or under its --trace-dir; "
                                           "needs --snr-db and the awgn model)")
            p.add_argument("--trace-offset-s", type=float, default=0.0, help="where in the trace to start")
            p.add_argument("--trace-gain-db", type=float, default=0.0, help="an SNR offset on top of --snr-db")
        if name == "scenario":
            p.add_argument("action", choices=["start", "stop"])
            p.add_argument("file", nargs="?", help="start: the scenario TOML file (it travels to the proxy as text)")
            p.add_argument("--name", help="the scenario's name (start: default the file's stem; stop: default every "
                                          "scenario playing)")
            p.add_argument("--replace", action="store_true",
                           help="start: stop a scenario of this name or on the same links instead of being refused")
        if name == "reset":
            p.add_argument("--stats", action="store_true", help="also zero the counters")
        if name == "set-cell":
            p.add_argument("--cell", default="default", help="the ES whose cell to change (default: the default cell)")
            _cell_flags(p, serve=False)
        if name == "csi":
            p.add_argument("--link", default="ue->es0")
            p.add_argument("--direction", default="downlink", choices=["uplink", "downlink"])
            p.add_argument("--blocks", type=int, default=4)
    args = parse(parser, argv)
    setup(args.log_level)

    def body() -> int:
        if args.command == "serve":
            asyncio.run(_serve(args))
            return 0
        return _control(args)

    def describe(exc: BaseException) -> str | None:
        if isinstance(exc, grpc.RpcError):
            return describe_rpc_error(exc, f"cannot reach the channel proxy at {args.via}")
        if isinstance(exc, (ChannelConfigError, OSError, ValueError)):
            return str(exc)
        return None

    return run_cli("meg-channel", body, describe)


if __name__ == "__main__":
    sys.exit(main())
