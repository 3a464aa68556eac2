"""The UE side of a generation: walk the protocol, call the ES for its segments, account every transmission."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict, dataclass, field

import grpc
import torch

from shared import air
from shared.model_ops import ModelOps, ModelParts, Params
from shared.pb import air_pb2, edge_pb2, edge_pb2_grpc
from shared.protocols import TEXT_KEYS, Segment, get_protocol, plan, run_protocol


class GeometryMismatch(RuntimeError):
    """The UE's model and the ES's model do not have the same tensor shapes."""


@dataclass
class LinkAccount:
    """What crossed one direction during a generation."""

    transmissions: int = 0
    symbols: int = 0  # real-valued symbols over the air
    payload_bytes: int = 0  # bytes of over-the-air tensor data
    text_bytes: int = 0  # lossless prompt text (UTF-8)
    snr_db: float | None = None  # the SNR the channel applied (None: ideal or direct link)
    channel: str | None = None  # channel profile (or model) applied (None: direct link, no proxy)
    energy: float = 0.0  # transmit energy the channel accounted (normalised units)

    def add_tensor(self, t: air_pb2.AirTensor) -> None:
        self.transmissions += 1
        self.symbols += air.symbols(t)
        self.payload_bytes += len(t.data)

    def saw(self, applied: air_pb2.ChannelApplied) -> None:
        self.channel = applied.profile or applied.model
        self.snr_db = applied.snr_db if math.isfinite(applied.snr_db) and applied.model != "ideal" else None
        self.energy += applied.energy


@dataclass
class GenerationResult:
    protocol: str
    task: str
    image: torch.Tensor = field(repr=False)  # [1, 3, H, W] in [0, 1]
    seconds: float
    es_seconds: float
    uplink: LinkAccount
    downlink: LinkAccount
    sketch: torch.Tensor | None = field(default=None, repr=False)  # ESUC: the sketch as received

    def summary(self) -> dict[str, object]:
        return {
            "protocol": self.protocol, "task": self.task, "seconds": round(self.seconds, 4),
            "es_seconds": round(self.es_seconds, 4), "uplink": asdict(self.uplink), "downlink": asdict(self.downlink),
        }


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


def generate(
    parts: ModelParts, client: EdgeClient | None, prompt: str, protocol: str = "CIAG", task: str = "txt2img",
    params: Params = Params(), image_in: torch.Tensor | None = None,
) -> GenerationResult:
    """Run one generation with ``protocol``; the UE-side stages run on ``parts``, the ES's through ``client``
    (``None`` is fine for Full-UE, which never transmits).

    ``image_in``: ``[1, 3, H, W]`` in [0, 1] for img2img. Raises ``grpc.RpcError`` from the ES/proxy.
    """
    spec, stages = get_protocol(protocol, task)
    segments = plan(stages, task)  # type: ignore[arg-type]
    request_id = uuid.uuid4().hex[:12]
    up, down = LinkAccount(), LinkAccount()
    started = time.perf_counter()
    deadline = time.monotonic() + (client.timeout_s if client else 600.0)
    es_seconds = 0.0

    def remote(segment: Segment, sent: dict[str, object]) -> dict[str, object]:
        nonlocal es_seconds
        if client is None:
            raise RuntimeError(f"{spec.name} needs an edge server: give --via HOST:PORT")
        prompt_text = str(sent["prompt"]) if "prompt" in sent else ""
        tensors = [air.to_air(k, v) for k, v in sent.items() if k not in TEXT_KEYS]  # type: ignore[arg-type]
        for t in tensors:
            up.add_tensor(t)
        up.text_bytes += len(prompt_text.encode())
        request = edge_pb2.SegmentRequest(
            protocol=spec.name, segment=segment.index, task=task, prompt=prompt_text, tensors=tensors,
            request_id=request_id,
            params=edge_pb2.GenerationParams(seed=params.seed, steps=params.steps, guidance=params.guidance,
                                             fc=params.fc, strength=params.strength),
        )
        response = client.stub.RunSegment(
            request, timeout=max(deadline - time.monotonic(), 0.001), metadata=client.metadata
        )
        es_seconds += response.es_seconds
        for applied in response.uplink_seen:
            up.saw(applied)
        received: dict[str, object] = {}
        for t in response.tensors:
            down.add_tensor(t)
            if t.HasField("applied"):
                down.saw(t.applied)
            received[t.name] = air.from_air(t, parts.geometry.shape_of(t.name, params.fc))
        if set(received) != set(segment.returns):
            raise RuntimeError(f"the ES returned {sorted(received)}, expected {list(segment.returns)}")
        return received

    workspace: dict[str, object] = {"prompt": prompt}
    if image_in is not None:
        workspace["image_in"] = image_in
    ops = ModelOps(parts, params, deadline)
    run_protocol(segments, workspace, ops, remote)
    image = workspace["image"]
    assert isinstance(image, torch.Tensor)
    sketch = workspace.get("sketch")
    return GenerationResult(spec.name, task, image, time.perf_counter() - started, es_seconds, up, down,
                            sketch if isinstance(sketch, torch.Tensor) else None)
