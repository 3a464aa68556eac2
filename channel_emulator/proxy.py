"""The gRPC-level proxy: forwards every edge-service RPC to an ES as raw bytes, perturbing only the
over-the-air tensors (requests = uplink, responses = downlink), and serves the channel-control RPCs.

Routing: the UE names itself in the ``meg-ue`` request header (default ``ue``) and picks an upstream ES
by name in ``meg-es`` (default: the first one); the pair is the link, ``"UE->ES"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from channel_emulator.link import (
    DIRECTIONS,
    MAX_PENDING_BLOCKS,
    NAME,
    LinkTable,
    check_link_name,
    profile_from_proto,
    profile_to_proto,
)
from channel_emulator.mobility import SERVING
from channel_emulator.replay import REPLAY
from channel_emulator.walker import carries_air
from shared.channel.models import ChannelConfigError
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2
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
from shared.wire.headers import CONTROL_HEADER, ES_HEADER, REQUEST_ID_HEADER, UE_HEADER

if TYPE_CHECKING:
    from channel_emulator.membership import Membership

log = logging.getLogger("meg.channel")
EDGE_SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
CONTROL_SERVICE_NAME = channel_pb2.DESCRIPTOR.services_by_name["ChannelControl"].full_name
#: Deadline given upstream when the caller sent none (every RPC has one).
DEFAULT_DEADLINE_S = 300.0
MAX_LINKS = 10_000
#: Most fading blocks one GetCSI may draw (also the most reported-but-unused draws a direction keeps).
MAX_CSI_BLOCKS = MAX_PENDING_BLOCKS
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


def _route(context: grpc.aio.ServicerContext, upstreams: Upstreams, table: LinkTable) -> tuple[str, str]:
    """``(link name, upstream name)`` from the request headers; raises ValueError for bad names."""
    md = dict(context.invocation_metadata() or ())
    ue = str(md.get(UE_HEADER, "ue"))
    es = str(md[ES_HEADER] if ES_HEADER in md else SERVING.get(ue) or upstreams.first or "")  # SERVING: handovers
    if not NAME.fullmatch(ue):
        raise ValueError(f"UE id {ue!r} in the {UE_HEADER} header must be 1-64 letters, digits or _.:-")
    if es in upstreams.gone or not es:
        now = ", ".join(upstreams.targets) or "none"
        raise UpstreamGone(f"edge server {es} has left the proxy ({upstreams.gone[es]}); upstreams now: {now}" if es
                           else "no edge server has joined the proxy yet (it follows --upstream-pattern)")
    if es not in upstreams.channels:
        raise ValueError(f"no upstream edge server named {es!r}; known: {', '.join(upstreams.channels)}")
    link = f"{ue}->{es}"
    if link not in table.links and len(table.links) >= MAX_LINKS:
        raise ValueError(f"the proxy already tracks {MAX_LINKS} links")
    return link, es


def _forwarder(method: object, table: LinkTable, upstreams: Upstreams, advertise: list[str]) -> Callable[..., object]:
    """A raw-bytes unary handler for one method: parse only messages that can carry tensors."""
    in_desc, out_desc = method.input_type, method.output_type  # type: ignore[attr-defined]
    in_cls: type[Message] = message_factory.GetMessageClass(in_desc)
    out_cls: type[Message] = message_factory.GetMessageClass(out_desc)
    perturb = {"uplink": carries_air(in_desc), "downlink": carries_air(out_desc)}
    classes = {"uplink": in_cls, "downlink": out_cls}
    method_name: str = method.name  # type: ignore[attr-defined]
    path = f"/{EDGE_SERVICE.full_name}/{method_name}"

    def through(link: str, direction: str, raw: bytes) -> bytes:
        if not perturb[direction]:
            table.apply(link, direction, classes[direction](), len(raw))  # counts the RPC and its bytes
            return raw
        msg = classes[direction].FromString(raw)
        return msg.SerializeToString() if table.apply(link, direction, msg, len(raw)) else raw

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            link, es = _route(context, upstreams, table)
            up = through(link, "uplink", request)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"channel proxy: the request does not parse as {in_desc.full_name}: {exc}")
        except (ValueError, ChannelConfigError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"channel proxy: {exc}")
        except UpstreamGone as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"channel proxy: {exc}")
        remaining = context.time_remaining()
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() or ()
            if k not in _HOP_HEADERS and not k.startswith(":") and k != CONTROL_HEADER
        ) + ((CONTROL_HEADER, advertise[0]),)
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
            return through(link, "downlink", response)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"channel proxy: the edge server's reply does not parse: {exc}")
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"channel proxy: the edge server sent a bad power allocation: {exc}")
        raise AssertionError("context.abort returned")  # it raises

    return handle


class ChannelControlServicer(channel_pb2_grpc.ChannelControlServicer):
    """Read and change the links' settings at runtime; CSI; counters."""

    def __init__(self, table: LinkTable, upstreams: Upstreams) -> None:
        self.table = table
        self.upstreams = upstreams

    def _settings(self) -> channel_pb2.ChannelSettings:
        return self.table.settings(list(self.upstreams.targets))

    def _known(self) -> str:
        names = sorted(self.table.links)
        return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "none yet"

    def _settable(self, link: str) -> None:
        """A link SetChannel may configure: a UE->ES name whose ES is behind this proxy (raises LookupError)."""
        _, es = check_link_name(link)
        if link not in self.table.links and es not in self.upstreams.targets:
            raise LookupError(f"no link {link!r}: no upstream edge server named {es!r} "
                              f"(upstreams: {', '.join(self.upstreams.targets)}; known links: {self._known()})")
        if link not in self.table.links and len(self.table.links) >= MAX_LINKS:
            raise ChannelConfigError(f"the proxy already tracks {MAX_LINKS} links")

    async def ListProfiles(self, request: channel_pb2.ListProfilesRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ProfileList:
        return channel_pb2.ProfileList(profiles=[profile_to_proto(p) for _, p in sorted(self.table.book.profiles.items())])

    async def GetChannel(self, request: channel_pb2.GetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        return self._settings()

    async def SetChannel(self, request: channel_pb2.SetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        try:
            which = request.WhichOneof("setting")
            if which is None:
                raise ChannelConfigError("say which profile (by name) or give a custom one")
            profile = self.table.book.get(request.profile) if which == "profile" else profile_from_proto(request.custom)
            if request.link:
                self._settable(request.link)
            self.table.set(request.link, request.direction or "both", profile)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        log.info("%s %s <- %s", request.link or "all links", request.direction or "both", profile)
        return self._settings()

    async def ResetChannel(self, request: channel_pb2.ResetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        self.table.reset(request.stats)
        return self._settings()

    async def GetStats(self, request: channel_pb2.GetStatsRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelStats:
        return self.table.stats()

    async def GetCSI(self, request: channel_pb2.CSIRequest, context: grpc.aio.ServicerContext) -> channel_pb2.CSIResponse:
        if request.direction not in DIRECTIONS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"direction must be uplink or downlink, got {request.direction!r}")
        if request.link not in self.table.links:
            try:
                check_link_name(request.link)
            except ChannelConfigError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no link {request.link!r} yet (a link exists once traffic or SetChannel used it); "
                                f"known links: {self._known()}")
        if request.symbols > air.MAX_VALUES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"symbols={request.symbols} is more than a tensor may hold ({air.MAX_VALUES})")
        d = self.table.links[request.link][request.direction]
        p = d.profile
        if p.trace:  # a trace link: the gains of the next transmission's PRBs, pinned for it (replay.py)
            try:
                h, lc = REPLAY.csi(request.link, request.direction, p, int(request.symbols), int(request.blocks))
            except ChannelConfigError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return channel_pb2.CSIResponse(gains=h.tolist(), coherence_symbols=lc, snr_db=p.snr_db, model=p.model)
        lc = p.block_length
        blocks = int(request.blocks) or ((1 if lc == 0 else -(-int(request.symbols) // lc)) if request.symbols else 0)
        if not 1 <= blocks <= MAX_CSI_BLOCKS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ask for 1 to {MAX_CSI_BLOCKS} blocks (or give symbols > 0 needing at most that many), "
                                f"got blocks={request.blocks} symbols={request.symbols}")
        gains = d.csi(blocks)
        return channel_pb2.CSIResponse(gains=np.asarray(gains).tolist(), coherence_symbols=lc, snr_db=p.snr_db, model=p.model)


async def create_proxy(
    listen: str, upstreams: Mapping[str, str], table: LinkTable, max_message_bytes: int | None = None,
    advertise_as: str | None = None, tls: TlsFiles | None = None, upstream_tls: TlsFiles | None = None,
    ue_token: str | None = None, admin_token: str | None = None, membership: Membership | None = None,
) -> tuple[grpc.aio.Server, int, object]:
    """Build and start the proxy; returns ``(server, port, health)``. Bind ``HOST:0`` for a free port.

    ``advertise_as``: the control address edge servers should use for CSI (default: the bound address).
    ``tls``: the server side (with a CA, clients must present certificates); ``upstream_tls``: the client side
    towards the edge servers. ``ue_token`` guards the edge service (and is forwarded upstream with each
    request), ``admin_token`` the ChannelControl service; ``None`` leaves that service open. ``membership``
    adds and drops discovered edge servers at runtime (started once the server is).
    """
    options = server_options(max_message_bytes) if max_message_bytes else server_options()
    ups = Upstreams(upstreams, [o for o in options if o[0] != "grpc.so_reuseport"], upstream_tls, dynamic=membership is not None)
    advertise: list[str] = [""]  # filled in once the port is bound
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(_forwarder(m, table, ups, advertise))
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
    add_guarded(server, channel_pb2_grpc.add_ChannelControlServicer_to_server, ChannelControlServicer(table, ups))
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
