"""Protocols are data: a short list of stages per task, walked by one runner on both sides.

A :class:`Stage` names its actor (``UE`` or ``ES``), how it fans out over the session's edge servers
(``fan``), an operation of :class:`shared.model.ops.ModelOps`, and the workspace keys it reads and writes:

* ``one``: the UE, or the session's single ES (paper 1 §II: the six single-ES protocols);
* ES ``each``: every ES of the session runs the stage on its own, from its own seed (``seed + i``; paper 1
  §III-B, parallel: UIDG, DIUG, DSUC); ES ``share``: ES ``i`` of ``N`` runs it on its window of one
  generation, all from the same seed (§III-C, cooperative: UIDCG, DCSUC; windows in :mod:`shared.protocol.tiles`);
* UE ``each``: the UE runs the stage once per ES branch (per candidate, or per window it sends);
  UE ``gather``: one call with every branch's inputs as lists, and the branches end (``pick`` a candidate,
  ``merge`` windows).

Stages marked ``repeat`` (:func:`each_round`) are a cooperative protocol's *rounds*: :func:`plan` writes
them out once per round after the first (``rounds - 1`` times; none with one round), each copy knowing its
``round``, a context key like ``share``. That is how the windows are fused every few steps (on the UE,
between rounds) while the protocol stays data.

Consecutive stages of one actor (and, on the ES side, one fan) form a *segment*. A transmission happens at
every change of actor; what crosses is derived from the data by :func:`plan`: the keys a segment reads that
its actor does not hold yet (an actor keeps what it received and made for the whole generation: an ES
keeps its workspace between the segments of one request, :class:`Segment` ``held``). ``prompt`` crosses as lossless text;
the :data:`DIGITAL_KEYS` (a PNG image: the digital baseline) cross as lossless bytes, costed as digital bits at the
link's MCS; every other key is a tensor and crosses over the air (:mod:`shared.wire.air`); ``share`` (which window, of how many) is request metadata, not a tensor.

The UE drives (:func:`run_protocol`): it runs its own stages and calls the ES(s) once per ES segment
through a transport, concurrently for a fan-out; the ES servicer answers by running that same segment with
:func:`run_segment`. Adding a protocol is one entry in :data:`PROTOCOLS`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Actor = Literal["UE", "ES"]
Fan = Literal["one", "each", "share", "gather"]
Task = Literal["txt2img", "img2img"]
TASKS: tuple[Task, ...] = ("txt2img", "img2img")

#: Keys that cross losslessly as text rather than as noisy tensors.
TEXT_KEYS = frozenset({"prompt"})
#: Keys that cross losslessly as bytes (``SegmentRequest.digital`` / ``SegmentResponse.digital``): a compressed
#: image, as a network today would send it — perfect above the link's lowest MCS, an outage below (the cliff;
#: docs/airtime.md). ``image_png``: the generated image as PNG; ``image_in_png``: img2img's input image as PNG.
DIGITAL_KEYS = frozenset({"image_png", "image_in_png"})
#: Keys every actor holds from the start without a transmission: ``share`` is the ES's
#: :class:`shared.protocol.tiles.Share` (its index of N, and the overlap), sent as request metadata; ``round`` is the
#: index of the round a stage belongs to (0 outside rounds; the stage's own data).
CONTEXT_KEYS = frozenset({"share", "round"})
#: What the UE holds before any stage runs, per task.
UE_INITIAL: Mapping[Task, frozenset[str]] = {
    "txt2img": frozenset({"prompt"}),
    "img2img": frozenset({"prompt", "image_in"}),
}
#: What the UE must hold at the end.
RESULT_KEY = "image"


@dataclass(frozen=True)
class Stage:
    """One operation: ``outputs = op(*inputs)`` run by ``actor`` with ``fan`` (see ``ModelOps`` for each
    op's shapes; a ``gather`` op gets one list per input, a value per ES branch)."""

    actor: Actor
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fan: Fan = "one"
    #: part of the repeated body of a cooperative protocol's rounds (:func:`each_round`)
    repeat: bool = False
    #: which round this copy of a repeated stage is (set by :func:`plan`; 0 for every other stage)
    round: int = 0


def _stage(actor: Actor, fan: Fan, op: str, inputs: str, outputs: str) -> Stage:
    return Stage(actor, op, tuple(inputs.split()), tuple(outputs.split()), fan)


def each_round(*stages: Stage) -> tuple[Stage, ...]:
    """Mark ``stages`` as the body of every round after the first (see :func:`plan`)."""
    return tuple(replace(st, repeat=True) for st in stages)


def ue(op: str, inputs: str, outputs: str) -> Stage:
    """A UE stage; ``inputs``/``outputs`` are space-separated workspace keys."""
    return _stage("UE", "one", op, inputs, outputs)


def es(op: str, inputs: str, outputs: str) -> Stage:
    """A stage on the session's one ES."""
    return _stage("ES", "one", op, inputs, outputs)


def each_es(op: str, inputs: str, outputs: str) -> Stage:
    """A stage every ES runs on its own, from its own seed (parallel)."""
    return _stage("ES", "each", op, inputs, outputs)


def share_es(op: str, inputs: str, outputs: str) -> Stage:
    """A stage ES ``i`` runs on its share of one generation (cooperative)."""
    return _stage("ES", "share", op, inputs, outputs)


def ue_each(op: str, inputs: str, outputs: str) -> Stage:
    """A UE stage run once per ES branch."""
    return _stage("UE", "each", op, inputs, outputs)


def ue_gather(op: str, inputs: str, outputs: str) -> Stage:
    """A UE stage over all ES branches at once (inputs arrive as lists); the branches end here."""
    return _stage("UE", "gather", op, inputs, outputs)


@dataclass(frozen=True)
class ProtocolSpec:
    """A named protocol: its stages per task, a one-line summary for help texts, and (cooperative ones)
    the single-ES protocol to fall back to when an ES of the session fails."""

    name: str
    summary: str
    stages: Mapping[Task, tuple[Stage, ...]]
    fallback: str | None = None

    @property
    def multi_es(self) -> bool:
        """Whether it fans out over several ES (paper 1 §III)."""
        return any(s.fan != "one" for st in self.stages.values() for s in st)

    @property
    def cooperative(self) -> bool:
        return any(s.fan == "share" for st in self.stages.values() for s in st)

    @property
    def local(self) -> bool:
        """Whether it runs on the UE alone."""
        return all(s.actor == "UE" for st in self.stages.values() for s in st)


@dataclass(frozen=True)
class Segment:
    """A run of one actor's stages, with what it receives before and sends back after."""

    index: int
    actor: Actor
    stages: tuple[Stage, ...]
    receives: tuple[str, ...]  # keys the other side must send first (sorted)
    returns: tuple[str, ...] = field(default=())  # keys the other side needs from it later (sorted)
    fan: Fan = "one"  # ES segments: one, each (parallel) or share (cooperative); UE segments: "one"
    #: keys its stages read that its actor kept from an earlier segment of the same generation (sorted); an
    #: ES keeps them between requests (edge_server/sessions.py)
    held: tuple[str, ...] = field(default=())


def seed_of(segment: Segment, seed: int, index: int) -> int:
    """The seed ES ``index`` works from: ``seed + index`` in a parallel fan-out (N different candidates),
    ``seed`` otherwise (a cooperative share crops the one generation's starting noise)."""
    return seed + index if segment.fan == "each" else seed


class ProtocolError(ValueError):
    """Unknown protocol or task, or a request that does not fit the protocol's plan."""
