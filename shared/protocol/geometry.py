"""Tensor shapes of a model, for validation on both sides and for exact over-the-air accounting.

Workspace keys and their shapes (``L`` tokens, ``D`` text width, ``C`` latent channels, ``h = H / 8``):

=================================  ==========================================================
key                                shape
=================================  ==========================================================
``cond``                           ``[1, L, D]`` prompt embedding (the txt2img task inference)
``init_latent``, ``latent``        ``[1, C, h, h]`` VAE latent (input image's / generated)
``init_seed``, ``seed``            compressed latent: ``[1, round(fc·C·h·h)]``; at fc = 1 the latent itself
``image_in``, ``image``,           ``[1, 3, H, H]`` pixels in [0, 1]
``es_image``
``sketch``                         ``[1, 3, H/s, H/s]`` low-resolution image (``s`` = sketch factor)
``*_part`` (cooperative)           the base key's shape with its width cut to the ES's window
                                   (``latent_part [1, C, h, x1-x0]``, ``sketch_part``, ...; see
                                   :mod:`shared.protocol.tiles`)
=================================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.protocol.tiles import Share

#: Side of a sketch relative to the image (ESUC): a 64² image has a 16² sketch.
SKETCH_FACTOR = 4
SEED_KEYS = frozenset({"seed", "init_seed"})
#: Cooperative window keys and the full-image key each is a window of.
PART_OF = {"latent_part": "latent", "latent_in": "latent", "init_part": "init_latent", "image_part": "image",
           "image_in_part": "image_in", "sketch_part": "sketch"}


@dataclass(frozen=True)
class Geometry:
    """Sizes a peer needs for validation and accounting."""

    image_size: int
    latent_channels: int
    latent_size: int
    max_tokens: int
    embed_dim: int

    @property
    def latent_values(self) -> int:
        return self.latent_channels * self.latent_size**2

    def seed_values(self, fc: float) -> int:
        """Real symbols of a seed at compression rate ``fc`` (paper 2, Table II: round(fc·N))."""
        return self.latent_values if fc in (0.0, 1.0) else max(1, round(fc * self.latent_values))

    def shape_of(self, key: str, fc: float = 1.0, share: Share | None = None) -> tuple[int, ...]:
        """Expected shape of workspace tensor ``key`` at compression rate ``fc`` (KeyError if unknown);
        a ``*_part`` key needs the ``share`` whose window it is."""
        if key in PART_OF:
            if share is None:
                raise KeyError(f"{key!r} is a cooperative window: its shape needs the ES's share")
            *lead, width = self.shape_of(PART_OF[key], fc)
            x0, x1 = share.window(self.latent_size)
            return (*lead, (x1 - x0) * (width // self.latent_size))
        latent = (1, self.latent_channels, self.latent_size, self.latent_size)
        image = (1, 3, self.image_size, self.image_size)
        s = self.image_size // SKETCH_FACTOR
        if key in SEED_KEYS:
            return latent if fc in (0.0, 1.0) else (1, self.seed_values(fc))
        shapes = {
            "cond": (1, self.max_tokens, self.embed_dim),
            "latent": latent,
            "init_latent": latent,
            "image": image,
            "image_in": image,
            "es_image": image,
            "sketch": (1, 3, s, s),
        }
        if key not in shapes:
            raise KeyError(f"no shape is known for workspace key {key!r}")
        return shapes[key]

    def symbols(self, key: str, fc: float = 1.0, share: Share | None = None) -> int:
        n = 1
        for d in self.shape_of(key, fc, share):
            n *= d
        return n


#: Stable Diffusion v1.5: 512² RGB, 4×64×64 latent, CLIP ViT-L/14 text encoder (77 tokens × 768).
SD_V1_5 = Geometry(image_size=512, latent_channels=4, latent_size=64, max_tokens=77, embed_dim=768)
GEOMETRIES = {"sd-v1-5": SD_V1_5}
