"""The gRPC-level proxy: forwards every edge-service RPC to the ES as raw bytes, perturbing only the
over-the-air tensors (requests = uplink, responses = downlink), and serves the channel-control RPCs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf.message import Message

from channel_emulator.link import DIRECTIONS, Link
from channel_emulator.walker import carries_air
from shared.channel import ChannelConfigError
from shared.grpc_util import add_health_and_reflection, message_options, set_serving
from shared.pb import channel_pb2, channel_pb2_grpc, edge_pb2

log = logging.getLogger("meg.channel")
EDGE_SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"]
CONTROL_SERVICE_NAME = channel_pb2.DESCRIPTOR.services_by_name["ChannelControl"].full_name
#: Deadline given upstream when the caller sent none (every RPC has one).
DEFAULT_DEADLINE_S = 300.0
_HOP_HEADERS = {"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding", "grpc-encoding"}


def _message_class(desc: object) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)  # type: ignore[arg-type]


def _forwarder(method: str, in_desc: object, out_desc: object, link: Link,
               upstream: grpc.aio.Channel, upstream_addr: str) -> Callable[..., object]:
    """A raw-bytes unary handler for one method: parse only messages that can carry tensors."""
    in_cls, out_cls = _message_class(in_desc), _message_class(out_desc)
    perturb_in, perturb_out = carries_air(in_desc), carries_air(out_desc)  # type: ignore[arg-type]
    call = upstream.unary_unary(method)  # no serializers: bytes in, bytes out

    def through(direction: str, cls: type[Message], perturb: bool, raw: bytes) -> bytes:
        if not perturb:
            link.apply(direction, cls(), len(raw))  # counts the RPC and its bytes
            return raw
        msg = cls.FromString(raw)
        return msg.SerializeToString() if link.apply(direction, msg, len(raw)) else raw

    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            up = through("uplink", in_cls, perturb_in, request)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"channel: {exc}")
        remaining = context.time_remaining()
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k not in _HOP_HEADERS and not k.startswith(":"))
        try:
            response = await call(up, timeout=DEFAULT_DEADLINE_S if remaining is None else remaining, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                details = f"edge server at {upstream_addr} is unreachable through the channel proxy: {details}"
            await context.abort(exc.code(), details)
        try:
            return through("downlink", out_cls, perturb_out, response)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"channel: edge server sent a bad power allocation: {exc}")

    return handle


class ChannelControlServicer(channel_pb2_grpc.ChannelControlServicer):
    """Read and change the link's settings at runtime; read its counters."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def GetChannel(self, request: channel_pb2.GetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        return self.link.settings()

    async def SetChannel(self, request: channel_pb2.SetChannelRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelSettings:
        changes = [(d, getattr(request, d)) for d in DIRECTIONS if request.HasField(d)]
        try:
            # validate all first, so a bad request changes nothing
            from shared.channel import make_model

            for _, s in changes:
                make_model(s.model or "awgn", s.snr_db)
        except ChannelConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        for d, s in changes:
            self.link.set(d, s.model, s.snr_db)
            log.info("%s set to %s %.1f dB", d, s.model or "awgn", s.snr_db)
        return self.link.settings()

    async def GetStats(self, request: channel_pb2.GetStatsRequest, context: grpc.aio.ServicerContext) -> channel_pb2.ChannelStats:
        return self.link.stats()


async def create_proxy(listen: str, upstream: str, link: Link, max_message_bytes: int | None = None) -> tuple[grpc.aio.Server, int, object]:
    """Build and start the proxy; returns ``(server, port, health)``. Bind ``HOST:0`` for a free port."""
    options = message_options(max_message_bytes) if max_message_bytes else message_options()
    channel = grpc.aio.insecure_channel(upstream, options=options)
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            _forwarder(f"/{EDGE_SERVICE.full_name}/{m.name}", m.input_type, m.output_type, link, channel, upstream)
        )
        for m in EDGE_SERVICE.methods
        if not (m.client_streaming or m.server_streaming)
    }
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(EDGE_SERVICE.full_name, handlers),))
    channel_pb2_grpc.add_ChannelControlServicer_to_server(ChannelControlServicer(link), server)
    health = add_health_and_reflection(server, [CONTROL_SERVICE_NAME, EDGE_SERVICE.full_name])
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    await server.start()
    await set_serving(health, [CONTROL_SERVICE_NAME])
    log.info("meg-channel on port %d -> %s (uplink %s, downlink %s)", port, upstream,
             link.directions["uplink"].model, link.directions["downlink"].model)
    return server, port, health
