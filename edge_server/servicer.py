"""The edge service: decode the call -> one segment handler -> map its typed errors to statuses. No per-protocol
code, no state: the handler (:mod:`edge_server.segments`) owns sessions, power and the result cache, and the
engine (:mod:`edge_server.engine`) alone admits."""

from __future__ import annotations

import asyncio
import logging

import grpc

from edge_server.engine import Cancelled, EngineClosed, EngineFailed, QueueFull
from edge_server.idempotency import IdempotencyConflict
from edge_server.metrics import EdgeMetrics
from edge_server.power_control import PowerControl
from edge_server.segments import Caller, SegmentHandler, protocol_label
from edge_server.sessions import SessionGone, SessionsFull
from edge_server.settings import EdgeSettings
from shared.model.ops import DeadlineExceeded, ModelParts
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.protocol.registry import PROTOCOLS
from shared.protocol.serde import RequestError
from shared.rpc.server import peer_name
from shared.wire import air
from shared.wire.headers import CONTROL_HEADER, UE_HEADER

log = logging.getLogger("meg.edge")

#: The one map from the handler's typed errors to gRPC statuses (first match wins: subclasses first).
STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),  # a request a person must fix
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),  # the request_id names another request of this caller
    (SessionGone, grpc.StatusCode.FAILED_PRECONDITION),  # a later round without its generation on this ES
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),  # the engine is at capacity
    (SessionsFull, grpc.StatusCode.RESOURCE_EXHAUSTED),  # no room for another cooperative generation
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (EngineFailed, grpc.StatusCode.UNAVAILABLE),  # the batched step failed: a retry may succeed
    (EngineClosed, grpc.StatusCode.UNAVAILABLE),  # shutting down, or the engine gave up
    (Cancelled, grpc.StatusCode.UNAVAILABLE),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),  # a job that cannot run (img2img with no step at its strength)
)


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status for ``exc`` (:data:`STATUS`); INTERNAL for anything else (a defect: logged with its trace)."""
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    log.error("RunSegment failed unexpectedly", exc_info=exc)
    return grpc.StatusCode.INTERNAL


class EdgeServicer(edge_pb2_grpc.EdgeServiceServicer):
    """Thin: every protocol goes through :meth:`RunSegment` and :class:`~edge_server.segments.SegmentHandler`."""

    def __init__(self, parts: ModelParts, settings: EdgeSettings, power: PowerControl | None = None,
                 metrics: EdgeMetrics | None = None) -> None:
        self.parts = parts
        self.settings = settings
        self.metrics = metrics or EdgeMetrics()
        self.segments = SegmentHandler(parts, settings, power, self.metrics)
        self.engine = self.segments.engine
        self.metrics_http: object | None = None  # the Prometheus HTTP server (set by create_server)
        self.metrics_port: int | None = None

    def close(self) -> None:
        """Stop the handler (its engine and worker threads) and the metrics endpoint."""
        self.segments.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()  # type: ignore[attr-defined]

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """Who is calling: the client certificate's common name (TLS), the ``meg-ue`` header, and the CSI address
        the operator lets this call name (``--csi-via advertised``, or a peer whose name ``--tls-client-name``
        lists: the proxy whose identity TLS proves); a caller's header alone never decides where the admin token
        goes."""
        metadata = dict(context.invocation_metadata() or ())
        peer = peer_name(context)
        s = self.settings
        trusted = s.csi_via == "advertised" or (bool(peer) and peer in s.tls_client_names)
        control = metadata.get(CONTROL_HEADER) if trusted else None
        return Caller(peer, str(metadata.get(UE_HEADER, "ue")), str(control) if control else None)

    async def RunSegment(self, request: edge_pb2.SegmentRequest,
                         context: grpc.aio.ServicerContext) -> edge_pb2.SegmentResponse:
        remaining = context.time_remaining()
        budget = self.settings.default_deadline_s if remaining is None else remaining
        protocol = protocol_label(request)
        try:
            return await self.segments.run(request, self.caller(context), budget)
        except asyncio.CancelledError:
            self.metrics.finished(protocol, "CANCELLED")
            raise
        except Exception as exc:  # noqa: BLE001  (STATUS maps it; INTERNAL for a defect, never UNKNOWN)
            code = status_of(exc)
            self.metrics.finished(protocol, code.name)
            await context.abort(code, str(exc) if code != grpc.StatusCode.INTERNAL else
                                f"the edge server failed ({type(exc).__name__}); see its log")
        raise AssertionError("context.abort returned")  # it raises

    async def Describe(self, request: edge_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> edge_pb2.DescribeResponse:
        g = self.parts.geometry
        return edge_pb2.DescribeResponse(
            model=self.parts.name, image_size=g.image_size, latent_channels=g.latent_channels,
            latent_size=g.latent_size, max_tokens=g.max_tokens, embed_dim=g.embed_dim, protocols=list(PROTOCOLS),
            device=str(self.parts.device), codec_fc=self.parts.codec_rates(),
        )

    async def Probe(self, request: edge_pb2.ProbeRequest, context: grpc.aio.ServicerContext) -> edge_pb2.ProbeResponse:
        """Check and echo the tensors (the applied-channel stamps are dropped so the downlink stamps anew).

        Malformed or non-finite (NaN/Inf) tensors are INVALID_ARGUMENT."""
        for t in request.tensors:
            try:
                air.air_array(t, finite=True)
            except air.TensorError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reply = edge_pb2.ProbeResponse(tensors=request.tensors)
        for t in reply.tensors:
            t.ClearField("applied")
        return reply
