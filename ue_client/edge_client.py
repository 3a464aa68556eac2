"""The UE's connection to an edge server (directly or through the channel proxy): every call has a deadline."""

from __future__ import annotations

import grpc

from shared.model_ops import ModelParts
from shared.pb import edge_pb2, edge_pb2_grpc


class GeometryMismatch(RuntimeError):
    """The UE's model and the ES's model do not have the same tensor shapes."""


class EdgeClient:
    """A gRPC connection to an ES (directly or through the channel proxy); every call has a deadline."""

    def __init__(self, target: str, timeout_s: float = 120.0, ue_id: str = "ue", es_name: str | None = None) -> None:
        """``ue_id`` names this UE to the channel proxy (its link is ``ue_id->ES``); ``es_name`` picks an
        upstream ES behind the proxy by name (default: its first)."""
        from shared.grpc_util import message_options

        self.target = target
        self.timeout_s = timeout_s
        self.metadata: tuple[tuple[str, str], ...] = (("meg-ue", ue_id),) + ((("meg-es", es_name),) if es_name else ())
        self.channel = grpc.insecure_channel(target, options=message_options())
        self.stub = edge_pb2_grpc.EdgeServiceStub(self.channel)

    def run_segment(self, request: edge_pb2.SegmentRequest, timeout: float) -> edge_pb2.SegmentResponse:
        """One ES segment (``request.request_id`` names the generation)."""
        return self.stub.RunSegment(request, timeout=timeout, metadata=self.metadata)

    def describe(self) -> edge_pb2.DescribeResponse:
        return self.stub.Describe(edge_pb2.DescribeRequest(), timeout=min(self.timeout_s, 30.0), metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "EdgeClient":
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
