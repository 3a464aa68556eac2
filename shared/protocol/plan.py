"""What crosses: :func:`plan` splits a stage list into segments and derives, from the data alone, the keys
each transmission carries; :func:`unroll` writes a cooperative protocol's rounds out first."""

from __future__ import annotations

from dataclasses import replace

from shared.protocol.stages import (
    CONTEXT_KEYS,
    RESULT_KEY,
    UE_INITIAL,
    Actor,
    ProtocolError,
    Segment,
    Stage,
    Task,
)


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
