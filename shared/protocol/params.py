"""One generation's parameters, as the UE asks for them and the ES checks them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    """One generation's parameters (0 means the model's default)."""

    seed: int = 0
    steps: int = 0
    guidance: float = 0.0
    fc: float = 0.0
    strength: float = 0.0
