"""Protocols are data: a short list of stages per task, walked by one runner on both sides.

A :class:`Stage` names its actor (``UE`` or ``ES``), how it fans out over the session's edge servers
(``fan``), an operation of :class:`shared.model_ops.ModelOps`, and the workspace keys it reads and writes:

* ``one``: the UE, or the session's single ES (paper 1 §II: the six single-ES protocols);
* ES ``each``: every ES of the session runs the stage on its own, from its own seed (``seed + i``; paper 1
  §III-B, parallel: UIDG, DIUG, DSUC); ES ``share``: ES ``i`` of ``N`` runs it on its window of one
  generation, all from the same seed (§III-C, cooperative: UIDCG, DCSUC; windows in :mod:`shared.tiles`);
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
keeps its workspace between the segments of one request, :class:`Segment` ``held``). ``prompt`` crosses as lossless text; every other key is a tensor and crosses
over the air (:mod:`shared.air`); ``share`` (which window, of how many) is request metadata, not a tensor.

The UE drives (:func:`run_protocol`): it runs its own stages and calls the ES(s) once per ES segment
through a transport, concurrently for a fan-out; the ES servicer answers by running that same segment with
:func:`run_segment`. Adding a protocol is one entry in :data:`PROTOCOLS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal
from typing import Protocol as TypingProtocol

Actor = Literal["UE", "ES"]
Fan = Literal["one", "each", "share", "gather"]
Task = Literal["txt2img", "img2img"]
TASKS: tuple[Task, ...] = ("txt2img", "img2img")

#: Keys that cross losslessly as text rather than as noisy tensors.
TEXT_KEYS = frozenset({"prompt"})
#: Keys every actor holds from the start without a transmission: ``share`` is the ES's
#: :class:`shared.tiles.Share` (its index of N, and the overlap), sent as request metadata; ``round`` is the
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


#: The body of every cooperative round after the first: the UE fuses the ES windows of the previous round
#: (cross-fade, :func:`shared.tiles.merge`), cuts each ES its window of the fused latent, and ES i runs the
#: round's steps on it (``cond`` stays on the ES from round 0). Written out ``rounds - 1`` times by :func:`plan`.
FUSE_ROUND: tuple[Stage, ...] = each_round(
    ue_gather("merge", "latent_part share", "latent"),
    ue_each("window", "latent share", "latent_in"),
    share_es("denoise_round", "cond share round latent_in", "latent_part"),
)

# Stage lists follow the README's protocol table (paper 1 §II-C, §III): T = encode_prompt, E = encode_image,
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
        # --- paper 1 §III-B, parallel: every ES generates on its own from seed + i, the UE picks -------------
        ProtocolSpec(
            "UIDG",
            "UIEG to N ES: the UE's seed goes to every ES, each generates from its own seed, N images down, pick",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond", "latent"),
                    each_es("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue("compress", "init_latent", "init_seed"),
                    each_es("decompress", "init_seed", "init_latent"),
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond init_latent", "latent"),
                    each_es("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "DIUG",
            "EIUG from N ES: the prompt to every ES, N seeds down, the UE decodes each and picks",
            {
                "txt2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond", "latent"),
                    each_es("compress", "latent", "seed"),
                    ue_each("decompress", "seed", "latent"),
                    ue_each("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
                "img2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("encode_image", "image_in", "init_latent"),
                    each_es("denoise", "cond init_latent", "latent"),
                    each_es("compress", "latent", "seed"),
                    ue_each("decompress", "seed", "latent"),
                    ue_each("decode", "latent", "image"),
                    ue_gather("pick", "image share", "image"),
                ),
            },
        ),
        ProtocolSpec(
            "DSUC",
            "ESUC from N ES: N sketches down, the user picks one (contact sheet), the UE completes it",
            {
                "txt2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("denoise", "cond", "latent"),
                    each_es("decode", "latent", "es_image"),
                    each_es("sketch", "es_image", "sketch"),
                    ue_gather("pick", "sketch share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
                "img2img": (
                    each_es("encode_prompt", "prompt", "cond"),
                    each_es("encode_image", "image_in", "init_latent"),
                    each_es("denoise", "cond init_latent", "latent"),
                    each_es("decode", "latent", "es_image"),
                    each_es("sketch", "es_image", "sketch"),
                    ue_gather("pick", "sketch share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
            },
        ),
        # --- paper 1 §III-C, cooperative: ES i denoises its overlapping window of ONE generation (same seed,
        # the same starting noise cropped); every round the UE fuses the windows and sends each ES its window of
        # the fused latent (FUSE_ROUND; shared.tiles) -----------------------------------------------------------
        ProtocolSpec(
            "UIDCG",
            "the UE's seed to N ES, each denoises its overlapping window of one latent, fused on the UE every "
            "round; the UE merges and decodes",
            {
                "txt2img": (
                    ue("encode_prompt", "prompt", "cond"),
                    share_es("denoise_window", "cond share round", "latent_part"),
                    *FUSE_ROUND,
                    ue_gather("merge", "latent_part share", "latent"),
                    ue("decode", "latent", "image"),
                ),
                "img2img": (
                    ue("encode_image", "image_in", "init_latent"),
                    ue_each("window", "init_latent share", "init_part"),
                    share_es("encode_prompt", "prompt", "cond"),
                    share_es("denoise_window", "cond share round init_part", "latent_part"),
                    *FUSE_ROUND,
                    ue_gather("merge", "latent_part share", "latent"),
                    ue("decode", "latent", "image"),
                ),
            },
            fallback="UIEG",
        ),
        ProtocolSpec(
            "DCSUC",
            "the prompt to N ES, each sketches its overlapping window of one image (latents fused on the UE every "
            "round), the UE merges and completes",
            {
                "txt2img": (
                    share_es("encode_prompt", "prompt", "cond"),
                    share_es("denoise_window", "cond share round", "latent_part"),
                    *FUSE_ROUND,
                    share_es("decode", "latent_part", "image_part"),
                    share_es("sketch", "image_part", "sketch_part"),
                    ue_gather("merge", "sketch_part share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
                "img2img": (
                    ue_each("window", "image_in share", "image_in_part"),
                    share_es("encode_prompt", "prompt", "cond"),
                    share_es("encode_image", "image_in_part", "init_part"),
                    share_es("denoise_window", "cond share round init_part", "latent_part"),
                    *FUSE_ROUND,
                    share_es("decode", "latent_part", "image_part"),
                    share_es("sketch", "image_part", "sketch_part"),
                    ue_gather("merge", "sketch_part share", "sketch"),
                    ue("encode_prompt", "prompt", "cond"),
                    ue("complete", "cond sketch", "image"),
                ),
            },
            fallback="ESUC",
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


def unroll(stages: tuple[Stage, ...], rounds: int = 1) -> tuple[Stage, ...]:
    """The stage list with its repeated body (:func:`each_round`) written out for rounds ``1..rounds-1``."""
    if rounds < 1:
        raise ProtocolError(f"a generation has at least one round, not {rounds}")
    body = [i for i, st in enumerate(stages) if st.repeat]
    if not body:
        return stages
    if body != list(range(body[0], body[-1] + 1)):
        raise ProtocolError("a protocol's repeated stages must be consecutive")
    copies = [replace(st, round=r) for r in range(1, rounds) for st in stages[body[0]:body[-1] + 1]]
    return (*stages[:body[0]], *copies, *stages[body[-1] + 1:])


def plan(stages: tuple[Stage, ...], task: Task, rounds: int = 1) -> tuple[Segment, ...]:
    """Split stages into segments and derive, from the data alone, what crosses at each actor change.

    ``rounds``: how many rounds a cooperative protocol runs (its repeated body is written out ``rounds - 1``
    times, :func:`unroll`; ignored by protocols without one). Also checks the fan structure: per-branch
    stages (ES ``each``/``share``, UE ``each``) must end in a UE ``gather`` before any single-actor stage,
    and a ``gather`` needs open branches.
    """
    stages = unroll(stages, rounds)
    branched = False
    for stage in stages:
        if stage.fan == "gather":
            if not branched:
                raise ProtocolError(f"stage {stage.op} gathers ES branches, but none are open")
            branched = False
        elif stage.fan in ("each", "share"):
            branched = True
        elif branched:
            raise ProtocolError(f"stage {stage.op} runs once, but ES branches are still open (gather them first)")
    if branched:
        raise ProtocolError("the protocol ends with ES branches open (gather them on the UE)")

    def group_key(stage: Stage) -> tuple[str, str]:
        return (stage.actor, stage.fan if stage.actor == "ES" else "one")

    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and group_key(groups[-1][0]) == group_key(stage):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    held: dict[Actor, set[str]] = {"UE": set(UE_INITIAL[task]) | CONTEXT_KEYS, "ES": set(CONTEXT_KEYS)}
    receives: list[tuple[str, ...]] = []
    kept: list[tuple[str, ...]] = []
    for group in groups:
        actor = group[0].actor
        need: set[str] = set()
        made: set[str] = set()
        old: set[str] = set()
        for stage in group:
            need |= {k for k in stage.inputs if k not in made and k not in held[actor]}
            old |= {k for k in stage.inputs if k not in made and k in held[actor] and k not in CONTEXT_KEYS}
            made |= set(stage.outputs)
        receives.append(tuple(sorted(need)))
        kept.append(tuple(sorted(old - need - (UE_INITIAL[task] if actor == "UE" else set()))))
        held[actor] |= need | made
        held["ES" if actor == "UE" else "UE"] -= made  # a key made anew (next round) must cross anew
    if RESULT_KEY not in held["UE"]:
        receives.append((RESULT_KEY,))  # a final downlink of the result
    segments: list[Segment] = []
    for i, group in enumerate(groups):
        # the other side's later segments (and the final result on the UE) may need what this one made
        later = {k for j in range(i + 1, len(receives)) for k in receives[j]}
        made = {k for s in group for k in s.outputs}
        seg_actor, seg_fan = group_key(group[0])
        segments.append(Segment(i, seg_actor, tuple(group), receives[i], tuple(sorted(later & made)), seg_fan,  # type: ignore[arg-type]
                                kept[i]))
    if segments and segments[0].actor == "UE" and segments[0].receives:
        raise ProtocolError(f"UE stages need keys nobody holds: {segments[0].receives}")
    return tuple(segments)


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

    ``shares``: one :class:`shared.tiles.Share` per ES of the session (a fan-out addresses all of them; a
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
