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
from shared.pb import air_pb2, edge_pb2
from ue_client.edge_client import EdgeClient, GeometryMismatch, check_geometry  # noqa: F401  (re-exported)
from shared.protocols import TEXT_KEYS, Segment, get_protocol, plan, run_protocol


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
        response = client.run_segment(request, timeout=max(deadline - time.monotonic(), 0.001))
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
