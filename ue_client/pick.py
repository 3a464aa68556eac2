"""Choosing among a parallel protocol's N candidates (UIDG, DIUG images; DSUC sketches).

* ``first``: the candidate whose ES answered first (latency: what paper 1 §III-B promises).
* ``best``: the least *noisy* candidate by a no-reference estimate, Immerkær's fast noise-variance estimator
  (a Laplacian-difference kernel, "Fast Noise Variance Estimation", CVIU 1996). Why this scorer: the UE has
  no prompt-adherence model (no CLIP), and the candidates come from different seeds, so no reference
  image exists; what the UE *can* judge is which one its link damaged least. The links differ (each UE->ES
  pair has its own profile: one ES may be at the cell edge), and channel noise on a seed or on pixels shows
  up as high-frequency noise, which this estimator measures while ignoring smooth image content.
* an index ``N``: the candidate from ES number ``N`` of the session.
* ``ask``: a person chooses on the terminal after seeing the contact sheet (DSUC's sketches are meant for
  that); the CLI uses it when stdin is a terminal and no ``--pick`` was given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Candidate:
    """One ES's result in a parallel fan-out."""

    es: str
    index: int  # the ES's number in the session (its seed is seed + index)
    key: str  # "image" or "sketch"
    tensor: torch.Tensor = field(repr=False)  # [1, 3, H, W] in [0, 1]
    seconds: float  # from the fan-out's start until it arrived on the UE
    score: float | None = None  # noise estimate (``best``), lower is better


#: ``chooser(candidates) -> position in the list``.
Chooser = Callable[[Sequence[Candidate]], int]


def noise_sigma(image: torch.Tensor) -> float:
    """Immerkær's noise standard deviation of ``image [1, 3, H, W]`` in [0, 1] (on its luma), in [0, 1] units."""
    gray = (image[:, :1] * 0.299 + image[:, 1:2] * 0.587 + image[:, 2:3] * 0.114).float()
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
    r = F.conv2d(gray, kernel)
    h, w = gray.shape[-2:]
    return float(r.abs().sum() * math.sqrt(math.pi / 2) / (6 * (w - 2) * (h - 2)))


def first(cands: Sequence[Candidate]) -> int:
    return min(range(len(cands)), key=lambda i: cands[i].seconds)


def best(cands: Sequence[Candidate]) -> int:
    for c in cands:
        c.score = noise_sigma(c.tensor)
    return min(range(len(cands)), key=lambda i: (cands[i].score, cands[i].index))


def by_index(n: int) -> Chooser:
    def choose(cands: Sequence[Candidate]) -> int:
        for i, c in enumerate(cands):
            if c.index == n:
                return i
        raise ValueError(f"--pick {n}: ES number {n} gave no candidate (candidates from {[c.es for c in cands]})")

    return choose


def chooser(spec: str | int) -> Chooser:
    """``first``, ``best`` or an ES number (``ask`` is built by the CLI, which owns the terminal)."""
    if isinstance(spec, int) or str(spec).isdigit():
        return by_index(int(spec))
    table: dict[str, Chooser] = {"first": first, "best": best}
    if spec not in table:
        raise ValueError(f"--pick must be first, best or an ES number, got {spec!r}")
    return table[spec]
