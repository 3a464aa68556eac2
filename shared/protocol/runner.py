"""The one runner: :func:`run_segment` (either side) and :func:`run_protocol` (the UE's walk, ES segments
handed to a transport, fan-outs concurrent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol as TypingProtocol

from shared.protocol.stages import RESULT_KEY, Segment, Stage


class Ops(TypingProtocol):
    """What the runner needs from the model side: ``call(op, *inputs) -> tuple of outputs``."""

    def call(self, op: str, *inputs: object) -> tuple[object, ...]: ...


def _run_stage(stage: Stage, workspace: dict[str, object], ops: Ops) -> None:
    outputs = ops.call(stage.op, *(stage.round if k == "round" else workspace[k] for k in stage.inputs))
    if len(outputs) != len(stage.outputs):
        raise RuntimeError(f"op {stage.op} returned {len(outputs)} values for {stage.outputs}")
    workspace.update(zip(stage.outputs, outputs))


def run_segment(segment: Segment, workspace: dict[str, object], ops: Ops) -> dict[str, object]:
    """Run one segment's stages in order on ``workspace`` (mutated), return the keys it sends back."""
    for stage in segment.stages:
        _run_stage(stage, workspace, ops)
    return {k: workspace[k] for k in segment.returns}


#: ``remote(segment, sent)``: ``sent`` holds one dict per ES addressed (one for a ``one`` segment, N for a
#: fan-out, in ES order); returns, per ES, what arrived back (the segment's ``returns``) or the exception
#: that ES failed with. Independent ES calls of one fan-out run concurrently.
Transport = Callable[[Segment, Sequence[dict[str, object]]], Sequence["dict[str, object] | BaseException"]]


def run_protocol(
    segments: tuple[Segment, ...], workspace: dict[str, object], ops: Ops, remote: Transport,
    shares: Sequence[object] = (),
) -> dict[str, object]:
    """The UE's walk: run UE stages locally and hand each ES segment to ``remote``.

    ``shares``: one :class:`shared.protocol.tiles.Share` per ES of the session (a fan-out addresses all of them; a
    ``one`` segment only the first). Branch ``i`` of a fan-out holds the common workspace, ES ``i``'s
    results and ``share``. A parallel (``each``) fan-out goes on with the ESs that answered (at least one);
    any other failed ES segment raises its exception. Returns the final workspace.
    """
    branches: list[dict[str, object]] | None = None
    for segment in segments:
        if segment.actor == "UE":
            for stage in segment.stages:
                if stage.fan == "gather":
                    assert branches is not None
                    gathered = [[stage.round if k == "round" else b[k] for b in branches] for k in stage.inputs]
                    outputs = ops.call(stage.op, *gathered)
                    if len(outputs) != len(stage.outputs):
                        raise RuntimeError(f"op {stage.op} returned {len(outputs)} values for {stage.outputs}")
                    workspace.update(zip(stage.outputs, outputs))
                    branches = None
                elif stage.fan == "each":
                    if branches is None:
                        branches = [{**workspace, "share": sh} for sh in shares]
                    for b in branches:
                        _run_stage(stage, b, ops)
                else:
                    _run_stage(stage, workspace, ops)
            continue
        if segment.fan == "one":
            sources = [workspace]
        else:
            sources = branches if branches is not None else [{**workspace, "share": sh} for sh in shares]
        sent = [{k: src[k] for k in segment.receives} for src in sources]
        results = remote(segment, sent)
        if segment.fan == "each":
            kept = [(src, r) for src, r in zip(sources, results) if not isinstance(r, BaseException)]
            if not kept:
                raise next(r for r in results if isinstance(r, BaseException))
            branches = [{**src, **r} for src, r in kept]
            continue
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if segment.fan == "one":
            workspace.update(results[0])  # type: ignore[arg-type]
        else:
            branches = [{**src, **r} for src, r in zip(sources, results)]  # type: ignore[dict-item]
    if RESULT_KEY not in workspace:
        raise RuntimeError("protocol finished without an image on the UE")
    return workspace
