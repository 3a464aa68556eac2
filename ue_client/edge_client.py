"""The UE's connection to an edge server (directly or through the channel proxy): every call has a deadline,
TLS and a bearer token when configured, and ``UNAVAILABLE`` is retried with backoff under the same
``request_id`` (the ES answers a repeated id from its result cache instead of generating twice)."""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Callable
from typing import Self, TypeVar

import grpc

from shared.model.ops import ModelParts
from shared.pb import edge_pb2, edge_pb2_grpc
from shared.rpc.security import UE_TOKEN_ENV, TlsFiles, read_token, secure_channel
from shared.wire.headers import AIRTIME_HEADER, ES_HEADER, REQUEST_ID_HEADER, UE_HEADER

log = logging.getLogger("meg.ue")
T = TypeVar("T")
#: First and largest wait between retries of an UNAVAILABLE call (doubling in between).
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 2.0


#: One RPC's time on the air: direction -> its ``meg-airtime`` fields (``air_s``, ``queue_s``, ``delay_s``, ...).
Airtime = dict[str, dict[str, float | int | str]]


def airtime_of(trailing: object) -> Airtime | None:
    """The ``meg-airtime`` value in a call's trailing metadata, parsed; None when absent. A value that does
    not parse is logged and ignored (the generation's result does not depend on it)."""
    from shared.channel.airtime import parse_airtime

    for key, value in trailing or ():  # type: ignore[attr-defined]
        if key == AIRTIME_HEADER:
            try:
                return parse_airtime(value.decode() if isinstance(value, bytes) else str(value))
            except ValueError as exc:
                log.warning("ignoring the proxy's %s: %s", AIRTIME_HEADER, exc)
    return None


class GeometryMismatch(RuntimeError):
    """The UE's model and the ES's model do not have the same tensor shapes."""


class EdgeClient:
    """A gRPC connection to an ES (directly or through the channel proxy); every call has a deadline."""

    def __init__(self, target: str, timeout_s: float = 120.0, ue_id: str = "ue", es_name: str | None = None,
                 tls: TlsFiles | None = None, token: str | None = None, retry: bool = True) -> None:
        """``ue_id`` names this UE to the channel proxy (its link is ``ue_id->ES``); ``es_name`` picks an
        upstream ES behind the proxy by name (default: its first). ``tls``: connect with (mutual) TLS;
        ``token``: the bearer token (default: ``$MEG_TOKEN``, none if unset). ``retry``: retry UNAVAILABLE
        with backoff until the call's deadline."""
        from shared.rpc.server import message_options
        from shared.rpc.target import target as check_target

        self.target = check_target(target)
        self.timeout_s = timeout_s
        self.retry = retry
        self.ue_id, self.es_name = ue_id, es_name
        self.metadata: tuple[tuple[str, str], ...] = ((UE_HEADER, ue_id),) + (((ES_HEADER, es_name),) if es_name else ())
        token = token if token is not None else read_token(None, UE_TOKEN_ENV)
        self.channel = secure_channel(self.target, tls, token, options=message_options())
        self.stub = edge_pb2_grpc.EdgeServiceStub(self.channel)
        self.retries = 0  # UNAVAILABLE answers retried so far (for logs and tests)
        self._owns_channel = True

    def for_ue(self, ue_id: str, es_name: str | None = None) -> EdgeClient:
        """Another UE id (and ES) over this client's connection: one HTTP/2 connection carries many virtual
        UEs' calls at once (each call still names its UE and ES), so ``meg-ue load`` with N UEs holds one
        connection per ES, not N. Closing the view leaves the connection to this client."""
        view = copy.copy(self)
        view.ue_id, view.es_name = ue_id, es_name
        view.metadata = ((UE_HEADER, ue_id),) + (((ES_HEADER, es_name),) if es_name else ())
        view.retries, view._owns_channel = 0, False
        return view

    def _call(self, call: Callable[[float], T], timeout: float) -> T:
        """``call(remaining_s)``, retried on UNAVAILABLE (1/4 s doubling to 2 s) until ``timeout`` is spent."""
        deadline = time.monotonic() + timeout
        wait = RETRY_FIRST_S
        while True:
            try:
                return call(max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                left = deadline - time.monotonic()
                if not self.retry or exc.code() != grpc.StatusCode.UNAVAILABLE or left <= wait:
                    raise
                log.info("edge server unavailable (%s); retrying in %.2fs", exc.details(), wait)
                self.retries += 1
                time.sleep(wait)
                wait = min(wait * 2, RETRY_MAX_S)

    def run_segment(self, request: edge_pb2.SegmentRequest, timeout: float) -> edge_pb2.SegmentResponse:
        """One ES segment (``request.request_id`` names the generation; one is made up if empty so that a
        retry is recognised as the same request)."""
        return self.run_segment_timed(request, timeout)[0]

    def run_segment_timed(self, request: edge_pb2.SegmentRequest,
                          timeout: float) -> tuple[edge_pb2.SegmentResponse, Airtime | None]:
        """:meth:`run_segment`, and what its messages spent on the air: the proxy's ``meg-airtime`` trailing
        metadata parsed (:func:`shared.channel.airtime.parse_airtime`; None: no cell, or no proxy)."""
        if not request.request_id:
            request.request_id = uuid.uuid4().hex
        metadata = (*self.metadata, (REQUEST_ID_HEADER, request.request_id))  # the proxy logs it (debug)
        response, call = self._call(lambda t: self.stub.RunSegment.with_call(request, timeout=t, metadata=metadata),
                                    timeout)
        return response, airtime_of(call.trailing_metadata())

    def describe(self) -> edge_pb2.DescribeResponse:
        return self._call(
            lambda t: self.stub.Describe(edge_pb2.DescribeRequest(), timeout=t, metadata=self.metadata),
            min(self.timeout_s, 30.0),
        )

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_geometry(parts: ModelParts, remote: edge_pb2.DescribeResponse) -> None:
    g = parts.geometry
    mine = (g.image_size, g.latent_channels, g.latent_size, g.max_tokens, g.embed_dim)
    theirs = (remote.image_size, remote.latent_channels, remote.latent_size, remote.max_tokens, remote.embed_dim)
    if mine != theirs:
        raise GeometryMismatch(
            f"the UE model ({parts.name}) and the ES model ({remote.model}) differ: "
            f"(image, latent ch, latent size, tokens, embed) {mine} vs {theirs}; load the same model on both"
        )
