"""The gRPC-level proxy: forwards every edge-service RPC to an ES as raw bytes, perturbing only the
over-the-air tensors (requests = uplink, responses = downlink), and serves the channel-control RPCs.

Routing: the UE names itself in the ``meg-ue`` request header (default ``ue``) and picks an upstream ES
by name in ``meg-es`` (default: the first one); the pair is the link, ``"UE->ES"``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.message import Message

from channel_emulator.link import DIRECTIONS, LinkTable, profile_from_proto, profile_to_proto
from channel_emulator.walker import carries_air
from shared.channel import ChannelConfigError
from shared.grpc_util import add_health_and_reflection, message_options, set_serving
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2

log = logging.getLogger("meg.channel")
EDGE_SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
CONTROL_SERVICE_NAME = channel_pb2.DESCRIPTOR.services_by_name["ChannelControl"].full_name
#: Deadline given upstream when the caller sent none (every RPC has one).
DEFAULT_DEADLINE_S = 300.0
MAX_LINKS = 10_000
UE_HEADER, ES_HEADER = "meg-ue", "meg-es"
#: Added to every forwarded request: where the ES reaches this proxy's control service (for CSI).
CONTROL_HEADER = "meg-channel-control"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HOP_HEADERS = {"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding", "grpc-encoding"}


class Upstreams:
    """The edge servers behind the proxy, by name, each with one shared gRPC channel."""

    def __init__(self, targets: Mapping[str, str], options: list[tuple[str, int]]) -> None:
        if not targets:
            raise ValueError("the proxy needs at least one upstream edge server")
        self.targets = dict(targets)
        self.channels = {name: grpc.aio.insecure_channel(addr, options=options) for name, addr in targets.items()}
        self.first = next(iter(targets))

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


def _route(context: grpc.aio.ServicerContext, upstreams: Upstreams, table: LinkTable) -> tuple[str, str]:
    """``(link name, upstream name)`` from the request headers; raises ValueError for bad names."""
    md = dict(context.invocation_metadata() or ())
    ue, es = str(md.get(UE_HEADER, "ue")), str(md.get(ES_HEADER, upstreams.first))
    if not _NAME.match(ue):
        raise ValueError(f"UE id {ue!r} in the {UE_HEADER} header must be 1-64 letters, digits or _.:-")
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
    path = f"/{EDGE_SERVICE.full_name}/{method.name}"  # type: ignore[attr-defined]
    calls = {name: ch.unary_unary(path) for name, ch in upstreams.channels.items()}  # bytes in, bytes out

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
        except (ValueError, ChannelConfigError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"channel proxy: {exc}")
        remaining = context.time_remaining()
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() or ()
            if k not in _HOP_HEADERS and not k.startswith(":") and k != CONTROL_HEADER
        ) + ((CONTROL_HEADER, advertise[0]),)
        try:
            response = await calls[es](
                up, timeout=DEFAULT_DEADLINE_S if remaining is None else remaining, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                details = f"edge server {es} at {upstreams.targets[es]} is unreachable through the proxy: {details}"
            await context.abort(exc.code(), details)
        try:
            return through(link, "downlink", response)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"channel proxy: the edge server sent a bad power allocation: {exc}")

    return handle


class ChannelControlServicer(channel_pb2_grpc.ChannelControlServicer):
    """Read and change the links' settings at runtime; CSI; counters."""

    def __init__(self, table: LinkTable, upstreams: Upstreams) -> None:
        self.table = table
        self.upstreams = upstreams

    def _settings(self) -> channel_pb2.ChannelSettings:
        return self.table.settings(list(self.upstreams.targets))

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
            if request.link and not _NAME.match(request.link.replace(">", "")):
                raise ChannelConfigError(f"link name {request.link!r} is not UE->ES")
            self.table.set(request.link, request.direction or "both", profile)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
        if request.link not in self.table.links and not _NAME.match(request.link.replace(">", "")):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"link name {request.link!r} is not UE->ES")
        d = self.table.link(request.link)[request.direction]
        p = d.profile
        lc = p.coherence_symbols if p.model in ("rayleigh", "rician") else 0
        blocks = int(request.blocks) or ((1 if lc == 0 else -(-int(request.symbols) // lc)) if request.symbols else 0)
        if not 1 <= blocks <= 1_000_000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ask for 1 to 1000000 blocks (or give symbols > 0), got blocks={request.blocks} symbols={request.symbols}")
        gains = d.csi(blocks)
        return channel_pb2.CSIResponse(gains=np.asarray(gains).tolist(), coherence_symbols=lc, snr_db=p.snr_db, model=p.model)


async def create_proxy(
    listen: str, upstreams: Mapping[str, str], table: LinkTable, max_message_bytes: int | None = None,
    advertise_as: str | None = None,
) -> tuple[grpc.aio.Server, int, object]:
    """Build and start the proxy; returns ``(server, port, health)``. Bind ``HOST:0`` for a free port.

    ``advertise_as``: the control address edge servers should use for CSI (default: the bound address).
    """
    options = message_options(max_message_bytes) if max_message_bytes else message_options()
    ups = Upstreams(upstreams, options)
    advertise: list[str] = [""]  # filled in once the port is bound
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(_forwarder(m, table, ups, advertise))
        for m in EDGE_SERVICE.methods
        if not (m.client_streaming or m.server_streaming)
    }
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(EDGE_SERVICE.full_name, handlers),))
    channel_pb2_grpc.add_ChannelControlServicer_to_server(ChannelControlServicer(table, ups), server)
    health = add_health_and_reflection(server, [CONTROL_SERVICE_NAME, EDGE_SERVICE.full_name])
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    host = listen.rpartition(":")[0]
    advertise[0] = advertise_as or f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{port}"
    await server.start()
    await set_serving(health, [CONTROL_SERVICE_NAME])
    log.info("meg-channel on port %d -> %s (default uplink %s, downlink %s)", port, dict(upstreams),
             table.default["uplink"], table.default["downlink"])
    return server, port, health
