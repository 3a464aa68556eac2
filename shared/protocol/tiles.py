"""The cooperative split (UIDCG, DCSUC): one image's latent cut into N overlapping column windows.

ES ``i`` of ``N`` denoises the window ``[x0, x1)`` of the latent's columns: its core ``[c_i, c_{i+1})``
(``c_i = round(i·w/N)``) widened by ``halo`` columns on each side that has a neighbour, so neighbours
overlap by ``2·halo`` columns. Every window starts from its crop of the *same* seeded starting noise
(the noise of the single-ES image). The windows agree because they are **fused every** ``sync`` **steps**
(MultiDiffusion, Bar-Tal et al. 2023): the schedule is cut into rounds (:meth:`Share.schedule`); after each
round every ES sends its window to the UE, the UE cross-fades them into one latent (:func:`merge`) and sends
each ES its window of the fused latent for the next round, so neighbours start every round identical where
they overlap and no edge can build up. ``sync = 0`` runs each window to the end on its own (one round).
Optionally, with a shared ``head``, every ES first runs the first ``k`` of the ``n`` steps on the whole
latent (the same computation on each ES, so no transfer; the global layout is decided in those high-noise
steps): faithful to the single-ES image, but every ES repeats the head. ``halo = 0`` is naive tiling (hard
cut), the baseline the seam score is measured against.

The same windows scale to any tensor aligned with the latent: pixels (×8), sketches (×2 for meg-tiny's
factor-4 sketches of ×8 images); :func:`crop` and :func:`merge` read the scale from the tensor's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.wire.limits import MAX_SYNC

if TYPE_CHECKING:
    import torch



class ShareError(ValueError):
    """A share that does not fit the latent (bad index/count, more windows than columns)."""


@dataclass(frozen=True)
class Share:
    """ES ``index`` of ``count``; ``halo`` latent columns of overlap on each interior side of its window."""

    index: int
    count: int
    halo: int = 0
    #: fraction of the DDIM schedule run on the **full** latent (by every ES, the same computation from the
    #: same seed) before the ES narrows to its window: the shared composition (:func:`head_steps`).
    head: float = 0.0
    #: DDIM steps per round: the UE fuses the windows after every ``sync`` steps (0: one round, no fusion).
    sync: int = 0

    def check(self, latent_width: int) -> Share:
        """Raise :class:`ShareError` unless this share is a valid window of a ``latent_width``-column latent."""
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShareError(f"share index {self.index} of {self.count} is not a valid ES share")
        if self.count > latent_width:
            raise ShareError(f"{self.count} shares do not fit a latent {latent_width} columns wide")
        if not 0 <= self.halo <= latent_width:
            raise ShareError(f"overlap halo {self.halo} must be in 0..{latent_width} latent columns")
        if not 0.0 <= self.head < 1.0:
            raise ShareError(f"shared head {self.head:g} must be a fraction of the schedule in [0, 1)")
        if not 0 <= self.sync <= MAX_SYNC:
            raise ShareError(f"sync every {self.sync} steps must be in 0..{MAX_SYNC} (0: no fusion)")
        return self

    def schedule(self, steps: int, first: int = 0) -> list[tuple[int, int]]:
        """The rounds of a ``steps``-step DDIM schedule that starts at step ``first`` (img2img: where its
        strength enters the schedule; txt2img: 0): step ranges ``[a, b)``, one per round, covering
        ``[first, steps)``. Round 0 also holds the shared head (txt2img); then every ``sync`` steps a new
        round begins. ``sync = 0``: one round. E.g. ``steps=25, sync=5`` -> ``[(0, 5), (5, 10), ..., (20, 25)]``."""
        if not 0 <= first < steps:
            raise ShareError(f"a {steps}-step schedule has no steps from step {first}")
        start = first + (self.head_steps(steps) if first == 0 else 0)
        if self.sync <= 0:
            return [(first, steps)]
        cuts = [*range(start + self.sync, steps, self.sync), steps]
        return [(first if i == 0 else cuts[i - 1], c) for i, c in enumerate(cuts)]

    def head_steps(self, steps: int) -> int:
        """Steps of a ``steps``-step schedule run on the full latent before the split: ``round(head·steps)``,
        at most ``steps - 1`` (the window always gets a step); 0 with a single share (nothing to share)."""
        if self.count < 2:
            return 0
        return min(round(self.head * steps), steps - 1)

    def core(self, width: int) -> tuple[int, int]:
        """Columns ``[c0, c1)`` this ES owns alone (before the overlap)."""
        return round(self.index * width / self.count), round((self.index + 1) * width / self.count)

    def window(self, width: int) -> tuple[int, int]:
        """Columns ``[x0, x1)`` this ES denoises: the core widened by ``halo`` towards each neighbour."""
        c0, c1 = self.core(width)
        return max(0, c0 - self.halo), min(width, c1 + self.halo)


#: The shared head used when none is asked for: none (the windows are fused every step instead). A head of
#: 0.8 reproduces the single-ES image on meg-tiny (27.5 dB) but each ES repeats it (sweep in docs/multi-es.md).
DEFAULT_HEAD = 0.0
#: Steps per round when none is asked for: fuse after every 5th step. Every fusion sends each window over
#: the air and back, and over a noisy link the channel's noise accumulates round after round (25 rounds at
#: 10 dB AWGN ruin the image; 5 do not; docs/multi-es.md); on an ideal link every step (1) is as fast.
DEFAULT_SYNC = 5


def default_halo(latent_width: int) -> int:
    """The overlap used when none is asked for: ``max(2, w // 8)`` latent columns per interior side. At least
    2, so that neighbours overlap by 4 latent columns, one column even at meg-tiny's 2×2 UNet bottleneck
    (with halo 1 its fused windows still drew blended objects; docs/multi-es.md)."""
    return max(2, latent_width // 8)


def shares(count: int, halo: int, head: float = 0.0, sync: int = 0) -> list[Share]:
    """The ``count`` shares of one cooperative generation."""
    return [Share(i, count, halo, head, sync) for i in range(count)]


def _scale(full_width: int, latent_width: int) -> int:
    if full_width % latent_width:
        raise ShareError(f"a tensor {full_width} wide is not aligned with a latent {latent_width} wide")
    return full_width // latent_width


def crop(x: torch.Tensor, share: Share, latent_width: int) -> torch.Tensor:
    """Share's window of ``x [..., H', W']`` (``W'`` a multiple of ``latent_width``): ``[..., H', s·(x1-x0)]``."""
    s = _scale(x.shape[-1], latent_width)
    x0, x1 = share.window(latent_width)
    return x[..., x0 * s:x1 * s].contiguous()


def weights(share: Share, latent_width: int, scale: int = 1) -> torch.Tensor:
    """Cross-fade weights ``[s·(x1-x0)]`` of a window: 1 on its core, a linear ramp to ~0 across each
    overlap with a neighbour (neighbours' weights sum to 1 there while ``2·halo`` ≤ every core's width;
    :func:`merge` normalises by the sum either way). Halo 0: all ones (hard cut)."""
    import torch

    x0, x1 = share.window(latent_width)
    c0, c1 = share.core(latent_width)
    cols = (torch.arange(x0 * scale, x1 * scale, dtype=torch.float32) + 0.5) / scale  # column centres, latent units
    w = torch.ones_like(cols)
    if share.halo > 0:
        span = 2.0 * share.halo
        if share.index > 0:  # ramp up over [c0 - halo, c0 + halo)
            w = torch.minimum(w, ((cols - (c0 - share.halo)) / span).clamp(0, 1))
        if share.index < share.count - 1:  # ramp down over [c1 - halo, c1 + halo)
            w = torch.minimum(w, (((c1 + share.halo) - cols) / span).clamp(0, 1))
    return w.clamp_min(1e-6)


def merge(parts: Sequence[torch.Tensor], share_list: Sequence[Share], latent_width: int) -> torch.Tensor:
    """Fuse window tensors ``[..., H', s·(x1_i-x0_i)]`` into one ``[..., H', s·latent_width]``: a weighted
    average with :func:`weights` wherever windows overlap (with halo 0, a plain concatenation)."""
    import torch

    if len(parts) != len(share_list) or not parts:
        raise ShareError(f"{len(parts)} parts for {len(share_list)} shares")
    first = share_list[0]
    x0, x1 = first.window(latent_width)
    s = parts[0].shape[-1] // (x1 - x0)
    if s == 0 or parts[0].shape[-1] % (x1 - x0):
        raise ShareError(f"part 0 is {parts[0].shape[-1]} wide for a window of {x1 - x0} latent columns")
    out = torch.zeros(*parts[0].shape[:-1], latent_width * s, dtype=torch.float32)
    total = torch.zeros(latent_width * s, dtype=torch.float32)
    for part, share in zip(parts, share_list):
        a, b = share.window(latent_width)
        if part.shape[-1] != (b - a) * s or part.shape[:-1] != parts[0].shape[:-1]:
            raise ShareError(f"part {share.index} has shape {list(part.shape)}, expected width {(b - a) * s}")
        w = weights(share, latent_width, s)
        out[..., a * s:b * s] += part.float() * w
        total[a * s:b * s] += w
    if bool((total <= 0).any()):
        raise ShareError("the shares do not cover every column")
    return out / total


def seam_score(image: torch.Tensor, boundaries: Sequence[int], band: int = 1, local: int = 0) -> float:
    """Seam visibility of ``image [1, 3, H, W]``: mean absolute horizontal gradient on the columns next to
    each tile boundary (pixel column ``b`` = the step between ``b-1`` and ``b``, ± ``band``) divided by the
    mean elsewhere — over the whole image, or with ``local > 0`` over the ``local`` steps on each side of
    the boundary only (an edge that the neighbourhood does not have). ~1: the borders look like the rest
    of the image; > 1: the boundary is an edge."""
    import torch

    grad = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # [W-1], step j = cols j -> j+1
    mask = torch.zeros_like(grad, dtype=torch.bool)
    near = torch.zeros_like(grad, dtype=torch.bool)
    for b in boundaries:
        lo, hi = max(0, b - band), min(grad.numel(), b - 1 + band)
        mask[lo:hi] = True
        near[max(0, lo - local):min(grad.numel(), hi + local)] = True
    rest = ~mask & near if local > 0 else ~mask
    if not bool(mask.any()) or not bool(rest.any()):
        raise ValueError(f"boundaries {list(boundaries)} leave no border or no interior in width {image.shape[-1]}")
    return float(grad[mask].mean() / grad[rest].mean().clamp_min(1e-8))


def boundaries(count: int, latent_width: int, scale: int) -> list[int]:
    """Pixel columns where the cores of ``count`` shares meet (at ``scale`` pixels per latent column)."""
    return [Share(i, count).core(latent_width)[0] * scale for i in range(1, count)]
