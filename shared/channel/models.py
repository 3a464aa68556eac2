"""The channel models, one small class each (Sionna's habit), registered by name (toxiproxy's habit).

``generate`` draws the fading (shape ``[T]``, real amplitudes with ``E[h²] = 1``), split from
:func:`shared.channel.transmit.transmit` (which applies it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

if TYPE_CHECKING:
    from shared.channel.profiles import ChannelProfile


class ChannelConfigError(ValueError):
    """A channel setting a person gave is invalid (unknown model, NaN SNR, bad block length...)."""


# --- models -------------------------------------------------------------------------------------------


#: The channel models by name (toxiproxy-style registry): ``MODELS[name]`` is the model's class; its class
#: attributes say what it does (``noisy``: adds AWGN; ``fading``: draws a gain per block of the profile's
#: coherence length). Register a new model with :func:`register`.
MODELS: dict[str, type[Ideal]] = {}


def register(name: str) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: make a model class known as ``name`` (in :data:`MODELS` and in profiles' ``model``)."""
    def add(cls: type[_M]) -> type[_M]:
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class Ideal:
    """No fading, no noise: ``h = 1``, ``N0 = 0``."""

    name: ClassVar[str] = "ideal"
    noisy: ClassVar[bool] = False
    fading: ClassVar[bool] = False

    @classmethod
    def from_profile(cls, profile: ChannelProfile) -> Ideal:
        """The model object with the profile's parameters (only Rician has one, ``k_factor``)."""
        return cls()

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        """Fading amplitudes ``[n_blocks]`` (all ones)."""
        return np.ones(n_blocks)


_M = TypeVar("_M", bound=Ideal)
register("ideal")(Ideal)


@register("awgn")
@dataclass(frozen=True)
class AWGN(Ideal):
    """Additive white Gaussian noise, no fading (``h = 1``)."""

    noisy: ClassVar[bool] = True


@register("rayleigh")
@dataclass(frozen=True)
class Rayleigh(AWGN):
    """Rayleigh block fading: ``h = |g|``, ``g ~ CN(0, 1)``, so ``E[h²] = 1``; one draw per block."""

    fading: ClassVar[bool] = True

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        g = rng.normal(0.0, math.sqrt(0.5), size=(n_blocks, 2))
        return np.hypot(g[:, 0], g[:, 1])


@register("rician")
@dataclass(frozen=True)
class Rician(AWGN):
    """Rician block fading with factor ``K``: ``h = |sqrt(K/(K+1)) + g|``, ``g ~ CN(0, 1/(K+1))``."""

    fading: ClassVar[bool] = True
    k_factor: float = 1.0

    @classmethod
    def from_profile(cls, profile: ChannelProfile) -> Rician:
        return cls(profile.k_factor)

    def generate(self, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
        los = math.sqrt(self.k_factor / (self.k_factor + 1.0))
        g = rng.normal(0.0, math.sqrt(0.5 / (self.k_factor + 1.0)), size=(n_blocks, 2))
        return np.hypot(los + g[:, 0], g[:, 1])
