"""Protocols are data: a short list of stages per task, walked by one runner on both sides.

A :class:`Stage` names its actor (``UE`` or ``ES``), an operation of :class:`shared.model_ops.ModelOps`,
and the workspace keys it reads and writes. Consecutive stages of one actor form a *segment*. A
transmission happens at every change of actor; what crosses is derived from the data by :func:`plan`:
the keys a segment reads that its actor does not hold yet. ``prompt`` crosses as lossless text; every
other key is a tensor and crosses over the air (:mod:`shared.air`).

The UE drives (:func:`run_protocol`): it runs its own segments and calls the ES once per ES segment
through a transport; the ES servicer answers by running that same segment with :func:`run_segment`.
Adding a protocol is one entry in :data:`PROTOCOLS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol as TypingProtocol

Actor = Literal["UE", "ES"]
Task = Literal["txt2img", "img2img"]
TASKS: tuple[Task, ...] = ("txt2img", "img2img")

#: Keys that cross losslessly as text rather than as noisy tensors.
TEXT_KEYS = frozenset({"prompt"})
#: What the UE holds before any stage runs, per task.
UE_INITIAL: Mapping[Task, frozenset[str]] = {
    "txt2img": frozenset({"prompt"}),
    "img2img": frozenset({"prompt", "image_in"}),
}
#: What the UE must hold at the end.
RESULT_KEY = "image"


@dataclass(frozen=True)
class Stage:
    """One operation: ``outputs = op(*inputs)`` run by ``actor`` (see ``ModelOps`` for each op's shapes)."""

    actor: Actor
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def ue(op: str, inputs: str, outputs: str) -> Stage:
    """A UE stage; ``inputs``/``outputs`` are space-separated workspace keys."""
    return Stage("UE", op, tuple(inputs.split()), tuple(outputs.split()))


def es(op: str, inputs: str, outputs: str) -> Stage:
    """An ES stage; ``inputs``/``outputs`` are space-separated workspace keys."""
    return Stage("ES", op, tuple(inputs.split()), tuple(outputs.split()))


@dataclass(frozen=True)
class ProtocolSpec:
    """A named protocol: its stages per task, and a one-line summary for help texts."""

    name: str
    summary: str
    stages: Mapping[Task, tuple[Stage, ...]]


@dataclass(frozen=True)
class Segment:
    """A run of one actor's stages, with what it receives before and sends back after."""

    index: int
    actor: Actor
    stages: tuple[Stage, ...]
    receives: tuple[str, ...]  # keys the other side must send first (sorted)
    returns: tuple[str, ...] = field(default=())  # keys the other side needs from it later (sorted)


class ProtocolError(ValueError):
    """Unknown protocol or task, or a request that does not fit the protocol's plan."""


# Stage lists follow the protocol table of DESIGN.md §3 (paper 1 §II-C): T = encode_prompt, E = encode_image,
# U = denoise (denoise_ue: the UE's weaker budget), D = decode, C / C⁻¹ = compress / decompress, S = sketch,
# K = complete. In txt2img the UE's task inference is the prompt embedding ``cond``; in img2img it is the
# input image's latent ``init_latent`` (sent as the compressed ``init_seed``, with the prompt as text).
PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        ProtocolSpec(
            "FULL-UE",
            "local: the UE runs everything with its weaker budget; nothing crosses the air",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    ue("denoise_ue", "cond", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    ue("encode_image", "image_in", "init_latent"),
                    ue("denoise_ue", "cond init_latent", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "FULL-ES",
            "centralized: prompt (and input pixels) up, the ES generates, image pixels down",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "image"),
                ),
                "img2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "UIEG",
            "UE infers the task (seed up), the ES generates, image pixels down",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue("compress", "init_latent", "init_seed"),
                    es("decompress", "init_seed", "init_latent"),
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "EIUG",
            "ES infers the latent (prompt up), its seed comes down, the UE decodes",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "CIAG",
            "co-inference: UE's task seed up, the ES denoises, latent seed down, the UE decodes",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue("compress", "init_latent", "init_seed"),
                    es("decompress", "init_seed", "init_latent"),
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond init_latent", "latent"),
                    es("compress", "latent", "seed"),
                    ue("decompress", "seed", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "ESUC",
            "ES generates and sends a low-resolution sketch, the UE completes it with its own model",
            {
                "txt2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("denoise", "cond", "latent"),
                    es("decode", "latent", "es_image"),
                    es("sketch", "es_image", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
                "img2img": (
                    es("encode_prompt", "prompt", "cond"),
                    es("encode_image", "image_in", "init_latent"),
                    es("denoise", "cond init_latent", "latent"),
                    es("decode", "latent", "es_image"),
                    es("sketch", "es_image", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
            },
        ),
    )
}


#: Longest prompt accepted, in characters (the tokenizer keeps only its first tokens anyway).
MAX_PROMPT_CHARS = 1000


def check_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The stripped prompt, or :class:`ProtocolError` if it is empty or longer than ``max_chars``."""
    text = prompt.strip()
    if not text:
        raise ProtocolError("the prompt is empty; say what to draw")
    if len(text) > max_chars:
        raise ProtocolError(f"the prompt has {len(text)} characters; the limit is {max_chars}")
    return text


def get_protocol(name: str, task: str) -> tuple[ProtocolSpec, tuple[Stage, ...]]:
    """Look a protocol up by name (case-insensitive) for a task; raises :class:`ProtocolError`."""
    spec = PROTOCOLS.get(name.upper())
    if spec is None:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if task not in spec.stages:
        raise ProtocolError(
            f"protocol {spec.name} has no {task!r} variant; it supports: {', '.join(spec.stages)}"
        )
    return spec, spec.stages[task]  # type: ignore[index]


def plan(stages: tuple[Stage, ...], task: Task) -> tuple[Segment, ...]:
    """Split stages into segments and derive, from the data alone, what crosses at each actor change."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and groups[-1][0].actor == stage.actor:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    held: dict[Actor, set[str]] = {"UE": set(UE_INITIAL[task]), "ES": set()}
    receives: list[tuple[str, ...]] = []
    for group in groups:
        actor = group[0].actor
        need: set[str] = set()
        made: set[str] = set()
        for stage in group:
            need |= {k for k in stage.inputs if k not in made and k not in held[actor]}
            made |= set(stage.outputs)
        receives.append(tuple(sorted(need)))
        held[actor] |= need | made
    if RESULT_KEY not in held["UE"]:
        receives.append((RESULT_KEY,))  # a final downlink of the result
    segments: list[Segment] = []
    for i, group in enumerate(groups):
        # the other side's later segments (and the final result on the UE) may need what this one made
        later = {k for j in range(i + 1, len(receives)) for k in receives[j]}
        made = {k for s in group for k in s.outputs}
        segments.append(Segment(i, group[0].actor, tuple(group), receives[i], tuple(sorted(later & made))))
    if segments and segments[0].actor == "UE" and segments[0].receives:
        raise ProtocolError(f"UE stages need keys nobody holds: {segments[0].receives}")
    return tuple(segments)


class Ops(TypingProtocol):
    """What the runner needs from the model side: ``call(op, *inputs) -> tuple of outputs``."""

    def call(self, op: str, *inputs: object) -> tuple[object, ...]: ...


def run_segment(segment: Segment, workspace: dict[str, object], ops: Ops) -> dict[str, object]:
    """Run one segment's stages in order on ``workspace`` (mutated), return the keys it sends back."""
    for stage in segment.stages:
        outputs = ops.call(stage.op, *(workspace[k] for k in stage.inputs))
        if len(outputs) != len(stage.outputs):
            raise RuntimeError(f"op {stage.op} returned {len(outputs)} values for {stage.outputs}")
        workspace.update(zip(stage.outputs, outputs))
    return {k: workspace[k] for k in segment.returns}


Transport = Callable[[Segment, dict[str, object]], dict[str, object]]


def run_protocol(
    segments: tuple[Segment, ...], workspace: dict[str, object], ops: Ops, remote: Transport
) -> dict[str, object]:
    """The UE's walk: run UE segments locally and hand each ES segment to ``remote``.

    ``remote(segment, sent)`` delivers ``sent`` (the segment's ``receives``) to the ES and returns what
    arrived back (the segment's ``returns``, after the channel). Returns the final workspace.
    """
    for segment in segments:
        if segment.actor == "UE":
            run_segment(segment, workspace, ops)
        else:
            sent = {k: workspace[k] for k in segment.receives}
            workspace.update(remote(segment, sent))
    if RESULT_KEY not in workspace:
        raise RuntimeError("protocol finished without an image on the UE")
    return workspace
