"""The gRPC-level proxy: forwards every edge-service RPC to an ES as raw bytes, perturbing only the
over-the-air tensors (requests = uplink, responses = downlink), and serves the channel-control RPCs.

Routing: the UE names itself in the ``meg-ue`` request header (default ``ue``) and picks an upstream ES
by name in ``meg-es`` (default: the first one); the pair is the link, ``"UE->ES"``. With client certificates
required (mutual TLS), the UE id must be in the certificate's namespace (its name, or the name then one of
``-._:`` and more; the name itself without a header), else ``PERMISSION_DENIED``.

The channel math (parsing, noise, serializing) runs in one worker thread, off the event loop, in the order
the RPCs reach it (so a link's RNG draws keep their order and health checks never wait behind a large
tensor). With a cell (:mod:`channel_emulator.cells`) each message also takes its time on the air and the RPC
gets the ``meg-airtime`` trailing metadata; a trace link's message is scheduled first and its math done on the
resource elements its grant names (:mod:`channel_emulator.replay`), a block-fading link's math comes first.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from channel_emulator.cells import AirError, CellSet
from channel_emulator.control import ChannelControlServicer
from channel_emulator.link import (
    NAME,
    LinkTable,
    LinkTableFull,
)
from channel_emulator.mobility import SERVING
from channel_emulator.replay import REPLAY
from channel_emulator.walker import air_tensors, carries_air
from shared.channel.airtime import DirectionAirtime, airtime_value
from shared.channel.models import ChannelConfigError
from shared.channel.scheduler import Segment
from shared.channel.trace import check_power_allocation
from shared.pb import air_pb2, channel_pb2, channel_pb2_grpc, edge_pb2
from shared.rpc.security import TlsFiles, aio_channel, server_credentials, server_interceptors
from shared.rpc.server import (
    RECONNECT_OPTIONS,
    add_guarded,
    add_guarded_handlers,
    add_health_and_reflection,
    bind,
    server_options,
    set_serving,
)
from shared.wire import air
from shared.wire.headers import AIRTIME_HEADER, CONTROL_HEADER, ES_HEADER, REQUEST_ID_HEADER, UE_HEADER

if TYPE_CHECKING:
    from channel_emulator.membership import Membership

log = logging.getLogger("meg.channel")
EDGE_SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
CONTROL_SERVICE_NAME = channel_pb2.DESCRIPTOR.services_by_name["ChannelControl"].full_name
#: Deadline given upstream when the caller sent none (every RPC has one).
DEFAULT_DEADLINE_S = 300.0
_HOP_HEADERS = {"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding", "grpc-encoding"}


class UpstreamGone(LookupError):
    """The named edge server was an upstream and has left (channel_emulator.membership dropped it)."""


class Upstreams:
    """The edge servers behind the proxy, by name, each with one shared gRPC channel. Fixed ones come from
    ``--upstream``; :class:`channel_emulator.membership.Membership` adds and drops the discovered ones at runtime
    (``dynamic``: the table may be empty until the first one joins)."""

    def __init__(self, targets: Mapping[str, str], options: list[tuple[str, int]], tls: TlsFiles | None = None,
                 dynamic: bool = False) -> None:
        """``tls``: the proxy's client side (CA of the edge servers, its own cert/key for mutual TLS).
        The channels reconnect within ~1 s of an edge server coming back (RECONNECT_OPTIONS)."""
        if not targets and not dynamic:
            raise ValueError("the proxy needs at least one upstream edge server")
        self.options, self.tls = [*options, *RECONNECT_OPTIONS], tls
        self.targets: dict[str, str] = {}
        self.channels: dict[str, grpc.aio.Channel] = {}
        #: name -> why it left (kept for the error a UE that still asks for it gets)
        self.gone: dict[str, str] = {}
        #: every channel ever opened, by (name, address): a dropped ES's in-flight RPCs finish, a rejoin reuses it
        self._opened: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str, str], Callable[..., Any]] = {}
        for name, addr in targets.items():
            self.add(name, addr)

    @property
    def first(self) -> str | None:
        return next(iter(self.targets), None)

    def add(self, name: str, addr: str) -> None:
        """Route ``name`` to ``addr`` from the next RPC on."""
        key = (name, addr)
        if key not in self._opened:
            self._opened[key] = aio_channel(addr, self.tls, self.options)
        self.gone.pop(name, None)
        self.targets[name], self.channels[name] = addr, self._opened[key]

    def drop(self, name: str, reason: str) -> None:
        """Stop routing to ``name`` (its links and counters stay in the LinkTable)."""
        self.targets.pop(name, None)
        self.channels.pop(name, None)
        self.gone[name] = reason

    def call(self, name: str, path: str) -> Callable[..., Any]:
        """The raw-bytes unary callable of ``path`` on upstream ``name`` (cached per address)."""
        key = (name, self.targets[name], path)
        if key not in self._calls:
            self._calls[key] = self.channels[name].unary_unary(path)
        return self._calls[key]

    async def close(self) -> None:
        for ch in self._opened.values():
            await ch.close()


#: What may follow a certificate's name in the UE ids it may claim: certificate ``ue`` may claim ``ue``, ``ue-3``,
#: ``ue.7``, ``ue_a``, ``ue:1`` (its namespace), never ``bob`` or ``ue1``.
NAMESPACE_SEPARATORS = "-._:"


class NotYourUeId(PermissionError):
    """With client certificates required, the ``meg-ue`` header claims a UE id outside the certificate's namespace."""


def certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The names TLS verified for this call's client certificate: its common name, else (a certificate without
    one) its subject alternative names; ``[]`` without a client certificate."""
    ac = context.auth_context() or {}
    raw = ac.get("x509_common_name") or ac.get("x509_subject_alternative_name") or []
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw]


def in_namespace(ue: str, name: str) -> bool:
    """Whether UE id ``ue`` is certificate ``name``'s: ``name`` itself, or ``name`` then one of
    :data:`NAMESPACE_SEPARATORS` then more (Kubernetes' node authorizer: a node's credentials touch its own objects)."""
    return ue == name or (len(ue) > len(name) and ue.startswith(name) and ue[len(name)] in NAMESPACE_SEPARATORS)


def _ue_id(context: grpc.aio.ServicerContext, claimed: str | None, certified: bool) -> str:
    """The UE id of this call: the ``meg-ue`` header (``ue`` without one); with ``certified`` (client certificates
    required) only an id in the certificate's namespace, the certificate's name without a header (raises
    NotYourUeId)."""
    if not certified:
        return "ue" if claimed is None else claimed
    names = certificate_names(context)
    if not names:
        raise NotYourUeId("the proxy requires client certificates and found none verified on this call")
    if claimed is None:
        return names[0]
    if any(in_namespace(claimed, n) for n in names):
        return claimed
    shown = claimed if len(claimed) <= 80 else claimed[:80] + "..."
    raise NotYourUeId(f"the client certificate {names[0]!r} may claim the UE id {names[0]} or {names[0]} followed by "
                      f"one of {NAMESPACE_SEPARATORS} and more (e.g. {names[0]}-1), not {shown!r} (the {UE_HEADER} "
                      "header): another UE's link, counters and CSI are not its to use")


def _route(context: grpc.aio.ServicerContext, upstreams: Upstreams, table: LinkTable,
           certified: bool = False) -> tuple[str, str]:
    """``(link name, upstream name)`` from the request headers; raises ValueError for bad names, NotYourUeId for
    a UE id the client certificate may not claim (``certified``: the proxy requires client certificates)."""
    md = dict(context.invocation_metadata() or ())
    claimed = md.get(UE_HEADER)
    ue = _ue_id(context, None if claimed is None else str(claimed), certified)
    # an empty meg-es is no choice (the default), as an empty proto3 string; SERVING: handovers
    es = str(md.get(ES_HEADER) or SERVING.get(ue) or upstreams.first or "")
    if not NAME.fullmatch(ue):
        shown = ue if len(ue) <= 80 else ue[:80] + "..."
        raise ValueError(f"UE id {shown!r} in the {UE_HEADER} header must be 1-64 letters, digits or _.:-")
    if es in upstreams.gone or not es:
        now = ", ".join(upstreams.targets) or "none"
        raise UpstreamGone(f"edge server {es} has left the proxy ({upstreams.gone[es]}); upstreams now: {now}" if es
                           else "no edge server has joined the proxy yet (it follows --upstream-pattern)")
    if es not in upstreams.channels:
        shown_es = es if len(es) <= 80 else es[:80] + "..."
        raise ValueError(f"no upstream edge server named {shown_es!r}; known: {', '.join(upstreams.channels)}")
    link = f"{ue}->{es}"
    table.link(link)  # admitted (made, or the most recently used); LinkTableFull when no room can be made
    return link, es


def _forwarder(method: object, table: LinkTable, upstreams: Upstreams, advertise: list[str],
               pool: ThreadPoolExecutor, cells: CellSet | None, certified: bool = False) -> Callable[..., object]:
    """A raw-bytes unary handler for one method: parse only messages that can carry tensors. ``certified``: the
    proxy requires client certificates (a UE id must be in its certificate's namespace, :func:`_ue_id`)."""
    in_desc, out_desc = method.input_type, method.output_type  # type: ignore[attr-defined]
    in_cls: type[Message] = message_factory.GetMessageClass(in_desc)
    out_cls: type[Message] = message_factory.GetMessageClass(out_desc)
    perturb = {"uplink": carries_air(in_desc), "downlink": carries_air(out_desc)}
    classes = {"uplink": in_cls, "downlink": out_cls}
    method_name: str = method.name  # type: ignore[attr-defined]
    path = f"/{EDGE_SERVICE.full_name}/{method_name}"

    def through(link: str, direction: str, raw: bytes) -> tuple[Message | None, list[air_pb2.AirTensor]]:
        """(In the math thread.) The parsed message and the tensors the channel touched (None, [] if the
        message cannot carry any: only counted)."""
        if not perturb[direction]:
            table.apply(link, direction, classes[direction](), len(raw))  # counts the RPC and its bytes
            return None, []
        msg = classes[direction].FromString(raw)
        return msg, table.apply(link, direction, msg, len(raw))

    def snr_of(link: str, direction: str) -> Callable[[], float]:
        def snr() -> float:  # the link direction's SNR now (its MCS for the digital bits)
            p = table.link(link)[direction].profile
            return p.snr_db if p.noisy else math.inf
        return snr

    async def cross(link: str, es: str, direction: str, raw: bytes, deadline: float,
                    crossed: dict[str, DirectionAirtime], context: grpc.aio.ServicerContext) -> bytes:
        """One message through the channel (and the cell, if the ES has one): the bytes to pass on."""
        arrival = cells.clock.now() if cells is not None else 0.0  # the proxy's own work is inside the air time
        if cells is not None:
            cells.admit(link, es, direction)  # a full queue is refused before any work
        try:
            return await cross_admitted(link, es, direction, raw, deadline, crossed, context, arrival)
        finally:
            if cells is not None:
                cells.release(link, es, direction)

    def scan(direction: str, raw: bytes) -> tuple[Message, list[air_pb2.AirTensor]]:
        """(In the math thread.) The parsed message and the tensors the channel will touch, picked as
        :meth:`LinkTable.apply` picks them (well-formed, finite), before any is touched; a bad power allocation
        raises ChannelConfigError here, before the message takes any time on the air."""
        msg = classes[direction].FromString(raw)
        out = []
        for t in air_tensors(msg):
            try:
                x = air.air_array(t)
            except air.TensorError:
                continue
            if np.isfinite(x).all():
                check_power_allocation(np.asarray(t.block_power) if len(t.block_power) else None, x.size,
                                       int(t.block_length))
                out.append(t)
        return msg, out

    def through_granted(link: str, direction: str, msg: Message, message_bytes: int, served: list[Segment],
                        n_res: list[int], re_per_prb: int) -> list[air_pb2.AirTensor]:
        """(In the math thread.) :meth:`LinkTable.apply` with each tensor of a trace link received on the units
        the cell's scheduler granted its segment (``served``, one per tensor; :meth:`Replayer.grant`)."""
        REPLAY.grant(link, direction, served, n_res, re_per_prb)
        try:
            return table.apply(link, direction, msg, message_bytes)
        finally:
            REPLAY.ungrant(link, direction)

    async def cross_admitted(link: str, es: str, direction: str, raw: bytes, deadline: float,
                             crossed: dict[str, DirectionAirtime], context: grpc.aio.ServicerContext,
                             arrival: float) -> bytes:
        loop = asyncio.get_running_loop()
        cell = cells.cell_of(es) if cells is not None else None
        dirs = table.links.get(link)
        # a trace link in a cell: scheduled first, its math on the REs granted (block fading: math first, as ever)
        granted = cell is not None and perturb[direction] and dirs is not None and bool(dirs[direction].profile.trace)
        if granted:
            msg, touched = await loop.run_in_executor(pool, scan, direction, raw)
        else:
            msg, touched = await loop.run_in_executor(pool, through, link, direction, raw)
        crossing = None
        if cells is not None and cell is not None:
            try:
                crossing = await cells.carry(link, es, direction, len(raw), [air.symbols(t) for t in touched],
                                             sum(len(t.data) for t in touched), snr_of(link, direction), deadline,
                                             arrival, grants=granted)
            except AirError:
                if granted:  # never sent: counted as an RPC and its bytes, as a block-fading link's is
                    await loop.run_in_executor(pool, table.apply, link, direction, classes[direction](), len(raw))
                raise
            if granted:
                assert msg is not None
                n_res = [-(-air.symbols(t) // 2) for t in touched]
                touched = await loop.run_in_executor(pool, through_granted, link, direction, msg, len(raw),
                                                     crossing.served[1:], n_res, cell.re_per_prb)
            crossed[direction] = crossing.airtime
            context.set_trailing_metadata(((AIRTIME_HEADER, airtime_value(crossed.get("uplink"), crossed.get("downlink"))),))
            for t, seg in zip(touched, crossing.segments[1:], strict=True):
                t.applied.air_s, t.applied.queue_s = seg.air_s, seg.queue_s
                t.applied.slots, t.applied.resource_elements, t.applied.mcs = seg.slots, seg.resource_elements, -1
        out = raw if msg is None or not touched else await loop.run_in_executor(pool, msg.SerializeToString)
        if crossing is not None and cells is not None:
            await cells.clock.sleep_until(crossing.departure)  # enforce: released at its departure time
        return out

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            link, es = _route(context, upstreams, table, certified)
        except NotYourUeId as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"channel proxy: {exc}")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"channel proxy: {exc}")
        except UpstreamGone as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"channel proxy: {exc}")
        except LinkTableFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"channel proxy: {exc}")
        table.busy[link] = table.busy.get(link, 0) + 1
        try:
            return await forward(link, es, request, context)
        finally:
            left = table.busy.get(link, 1) - 1
            if left > 0:
                table.busy[link] = left
            else:
                table.busy.pop(link, None)

    async def forward(link: str, es: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        clock = cells.clock if cells is not None else None
        deadline = (clock.now() if clock else 0.0) + (DEFAULT_DEADLINE_S if remaining is None else remaining)
        crossed: dict[str, DirectionAirtime] = {}
        try:
            up = await cross(link, es, "uplink", request, deadline, crossed, context)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"channel proxy: the request does not parse as {in_desc.full_name}: {exc}")
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"channel proxy: {exc}")
        except AirError as exc:
            await context.abort(exc.code, f"channel proxy: {exc}")
        remaining = context.time_remaining()
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() or ()
            if k not in _HOP_HEADERS and not k.startswith(":") and k not in (CONTROL_HEADER, UE_HEADER)
        ) + ((UE_HEADER, link.partition("->")[0]), (CONTROL_HEADER, advertise[0]))  # the ES keys by the UE id decided here
        if log.isEnabledFor(logging.DEBUG):
            rid = next((v for k, v in metadata if k == REQUEST_ID_HEADER), "-")
            log.debug("forward %s %s -> %s request_id=%s uplink %d B", method_name, link, es, rid, len(up))
        address = upstreams.targets[es]
        try:
            response = await upstreams.call(es, path)(  # bytes in, bytes out
                up, timeout=DEFAULT_DEADLINE_S if remaining is None else remaining, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                details = f"edge server {es} at {address} is unreachable through the proxy: {details}"
            await context.abort(exc.code(), details)
        try:
            return await cross(link, es, "downlink", response, deadline, crossed, context)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"channel proxy: the edge server's reply does not parse: {exc}")
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"channel proxy: the edge server sent a bad power allocation: {exc}")
        except AirError as exc:
            await context.abort(exc.code, f"channel proxy: {exc}")
        raise AssertionError("context.abort returned")  # it raises

    return handle


async def create_proxy(
    listen: str, upstreams: Mapping[str, str], table: LinkTable, max_message_bytes: int | None = None,
    advertise_as: str | None = None, tls: TlsFiles | None = None, upstream_tls: TlsFiles | None = None,
    ue_token: str | None = None, admin_token: str | None = None, membership: Membership | None = None,
    cells: CellSet | None = None, insecure_open_control: bool = False, trace_dir: str | None = None,
) -> tuple[grpc.aio.Server, int, object]:
    """Build and start the proxy; returns ``(server, port, health)``. Bind ``HOST:0`` for a free port.

    ``advertise_as``: the control address edge servers should use for CSI (default: the bound address).
    ``tls``: the server side (with a CA, clients must present certificates, and each may claim only UE ids in its
    certificate's namespace: :func:`_ue_id`); ``upstream_tls``: the client side
    towards the edge servers. ``ue_token`` guards the edge service (and is forwarded upstream with each
    request), ``admin_token`` the ChannelControl service; ``None`` leaves that service open. A UE token without
    an admin token is refused (``ValueError``: the control service would be open to callers with no token at
    all) unless ``insecure_open_control``. ``membership`` adds and drops discovered edge servers at runtime
    (started once the server is). ``cells``: time on the air (None or no cell: transmissions take no time).
    ``trace_dir``: the folder control callers may name trace files under (channel_emulator.trace_access).
    """
    if ue_token and not admin_token and not insecure_open_control:
        raise ValueError("a UE token without an admin token would leave the control service (SetChannel, GetStats, "
                         "GetCSI...) open to callers with no token at all: give --admin-token-file too, or "
                         "--insecure-open-control to run it open on purpose")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meg-channel-math")
    cells = cells if cells is not None else CellSet({})  # no cell yet; SetCell may add one at runtime
    options = server_options(max_message_bytes) if max_message_bytes else server_options()
    ups = Upstreams(upstreams, [o for o in options if o[0] != "grpc.so_reuseport"], upstream_tls, dynamic=membership is not None)
    advertise: list[str] = [""]  # filled in once the port is bound
    certified = bool(tls and tls.enabled and tls.ca)  # client certificates required: UE ids tied to them
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(_forwarder(m, table, ups, advertise, pool, cells, certified))
        for m in EDGE_SERVICE.methods
        if not (m.client_streaming or m.server_streaming)
    }
    # GetChannel (the upstreams' names and the links' settings, read-only) is for whoever may use the edge
    # service: a multi-ES UE learns its ESs with it; every other control RPC needs the admin token
    interceptors = server_interceptors({
        f"/{CONTROL_SERVICE_NAME}/GetChannel": (ue_token, admin_token) if ue_token else None,
        f"/{EDGE_SERVICE.full_name}/": ue_token,
        f"/{CONTROL_SERVICE_NAME}/": admin_token,
    })
    server = grpc.aio.server(options=options, interceptors=interceptors)
    add_guarded_handlers(server, {EDGE_SERVICE.full_name: handlers})  # raw bytes: the forwarder parses
    add_guarded(server, channel_pb2_grpc.add_ChannelControlServicer_to_server, ChannelControlServicer(table, ups, cells, trace_dir))
    health = add_health_and_reflection(server, [CONTROL_SERVICE_NAME, EDGE_SERVICE.full_name])
    port = bind(server, listen, server_credentials(tls) if tls and tls.enabled else None)
    host = listen.rpartition(":")[0]
    advertise[0] = advertise_as or f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{port}"
    await server.start()
    if membership is not None:
        await membership.start(ups)  # one round first: the edge servers already up are routable once SERVING
    await set_serving(health, [CONTROL_SERVICE_NAME])
    log.info("meg-channel on port %d -> %s (default uplink %s, downlink %s)", port, dict(upstreams),
             table.default["uplink"], table.default["downlink"])
    return server, port, health
