"""Where a generation's DDIM steps begin and how a cooperative one cuts them into rounds (torch-free, so the
UE's accounting and the proxy can use it without loading a model).

A ``steps``-step txt2img schedule runs steps ``[0, steps)``; img2img at ``strength`` skips the first
``steps - int(steps · strength)`` of them, as diffusers' img2img pipeline does (:func:`first_step`). A
cooperative generation cuts what runs into rounds (:meth:`shared.protocol.tiles.Share.schedule`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.protocol.tiles import Share

#: img2img strength when the request gives none.
DEFAULT_STRENGTH = 0.6


def first_step(steps: int, strength: float = 0.0, img2img: bool = True) -> int:
    """The first step of a ``steps``-step schedule that runs (0 for txt2img; img2img at ``strength``, 0 meaning
    :data:`DEFAULT_STRENGTH`: ``steps - min(int(steps · strength), steps)``)."""
    if not img2img:
        return 0
    return steps - min(int(steps * (strength or DEFAULT_STRENGTH)), steps)


def cooperative_schedule(steps: int, strength: float, share: Share, img2img: bool) -> list[tuple[int, int]]:
    """The rounds' step ranges ``[a, b)`` of a cooperative generation, the same on the UE and on every ES;
    ValueError when img2img at this strength runs no step."""
    first = first_step(steps, strength, img2img)
    if first >= steps:
        raise ValueError(f"img2img with {steps} steps at strength {strength or DEFAULT_STRENGTH:g} runs no denoising "
                         "step; raise steps or strength")
    return share.schedule(steps, first)
