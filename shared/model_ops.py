"""The model parts a protocol stage can call (paper 2, Fig. 3): T, U, D and the codec C / C⁻¹.

:class:`ModelParts` holds one loaded pipeline (shared by all requests); :class:`ModelOps` binds it to one
request's parameters and deadline and is what :func:`shared.protocols.run_segment` calls. Shapes, with
``L`` = max tokens, ``D`` = text width, ``C`` = latent channels, ``h = H / 8``:

=====================  =====================  ===========================
op                     inputs                 outputs
=====================  =====================  ===========================
``encode_prompt``      prompt ``str``         cond ``[1, L, D]``
``denoise``            cond ``[1, L, D]``     latent ``[1, C, h, h]``
``decode``             latent                 image ``[1, 3, H, H]`` in [0, 1]
``compress``           cond or latent         seed (codec output shape)
``decompress_cond``    seed                   cond
``decompress_latent``  seed                   latent
=====================  =====================  ===========================

Until the learned codec lands, C / C⁻¹ are the identity (fc = 1): a seed is the tensor itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from shared.model_loader import MegConfig, load_pipeline


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed while the model was working."""


@dataclass(frozen=True)
class Params:
    """One generation's parameters (0 means the model's default)."""

    seed: int = 0
    steps: int = 0
    guidance: float = 0.0
    fc: float = 0.0
    strength: float = 0.0


@dataclass(frozen=True)
class Geometry:
    """Sizes a peer needs for validation and accounting."""

    image_size: int
    latent_channels: int
    latent_size: int
    max_tokens: int
    embed_dim: int

    def shape_of(self, key: str) -> tuple[int, ...]:
        """Expected shape of a workspace tensor ``key`` (identity codec: seeds are what they encode)."""
        cond = (1, self.max_tokens, self.embed_dim)
        latent = (1, self.latent_channels, self.latent_size, self.latent_size)
        image = (1, 3, self.image_size, self.image_size)
        shapes = {
            "cond": cond,
            "task_seed": cond,
            "latent": latent,
            "init_latent": latent,
            "seed": latent,
            "image": image,
            "image_in": image,
        }
        if key not in shapes:
            raise KeyError(f"no shape is known for workspace key {key!r}")
        return shapes[key]


class ModelParts:
    """A loaded pipeline plus what every request reuses (the unconditional embedding)."""

    def __init__(self, pipe: StableDiffusionPipeline, meg: MegConfig, name: str = "model") -> None:
        self.pipe = pipe
        self.meg = meg
        self.name = name
        self.device = pipe.device
        vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        size = meg.image_size or pipe.unet.config.sample_size * vae_factor
        self.geometry = Geometry(
            image_size=int(size),
            latent_channels=int(pipe.unet.config.in_channels),
            latent_size=int(size) // vae_factor,
            max_tokens=int(pipe.tokenizer.model_max_length),
            embed_dim=int(pipe.text_encoder.config.hidden_size),
        )
        self._lock = threading.Lock()
        self._uncond: torch.Tensor | None = None

    @classmethod
    def load(cls, path: str | None, device: str = "cpu") -> "ModelParts":
        pipe, meg = load_pipeline(path, device)
        return cls(pipe, meg, name=str(path) if path else "meg-tiny")

    @torch.no_grad()
    def embed(self, prompt: str) -> torch.Tensor:
        """Text encoder T: ``prompt -> [1, L, D]`` float32 on the CPU."""
        cond, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
        return cond.float().cpu()

    def uncond(self) -> torch.Tensor:
        """The empty prompt's embedding ``[1, L, D]``, a constant of the model (for guidance)."""
        with self._lock:
            if self._uncond is None:
                self._uncond = self.embed("")
            return self._uncond

    def fresh_pipeline(self) -> StableDiffusionPipeline:
        """The same modules with a private scheduler, so concurrent requests don't share scheduler state."""
        comps = dict(self.pipe.components)
        comps["scheduler"] = DDIMScheduler.from_config(self.pipe.scheduler.config)
        comps.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = StableDiffusionPipeline(**comps)
        pipe.set_progress_bar_config(disable=True)
        return pipe


class ModelOps:
    """:class:`ModelParts` bound to one request: ``call(op, *inputs)`` for :mod:`shared.protocols`."""

    def __init__(self, parts: ModelParts, params: Params, deadline: float | None = None) -> None:
        self.parts = parts
        self.params = params
        self.deadline = deadline  # time.monotonic() value

    def call(self, op: str, *inputs: object) -> tuple[object, ...]:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise KeyError(f"no model op {op!r}")
        self._check_deadline()
        return fn(*inputs)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("the request's deadline passed during generation")

    # --- T -----------------------------------------------------------------------------------------
    def op_encode_prompt(self, prompt: str) -> tuple[torch.Tensor]:
        return (self.parts.embed(prompt),)

    # --- C / C⁻¹ (identity until the learned codec lands) -------------------------------------------
    def op_compress(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)

    def op_decompress_cond(self, seed: torch.Tensor) -> tuple[torch.Tensor]:
        return (seed,)

    def op_decompress_latent(self, seed: torch.Tensor) -> tuple[torch.Tensor]:
        return (seed,)

    # --- U -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def op_denoise(self, cond: torch.Tensor) -> tuple[torch.Tensor]:
        """DDIM from seeded noise, guided by ``cond [1, L, D]`` -> latent ``[1, C, h, h]`` (float32, CPU)."""
        parts, p = self.parts, self.params
        meg, geo = parts.meg, parts.geometry
        pipe = parts.fresh_pipeline()
        dtype = pipe.unet.dtype

        def on_step(_pipe: object, _i: int, _t: object, kwargs: dict[str, object]) -> dict[str, object]:
            self._check_deadline()
            return kwargs

        out = pipe(
            prompt_embeds=cond.to(parts.device, dtype),
            negative_prompt_embeds=parts.uncond().to(parts.device, dtype),
            guidance_scale=p.guidance or meg.guidance,
            num_inference_steps=p.steps or meg.es_steps,
            height=geo.image_size,
            width=geo.image_size,
            generator=torch.Generator("cpu").manual_seed(p.seed),
            output_type="latent",
            callback_on_step_end=on_step,
        )
        return (out.images.float().cpu(),)

    # --- D -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def op_decode(self, latent: torch.Tensor) -> tuple[torch.Tensor]:
        """VAE decoder: latent ``[1, C, h, h]`` -> image ``[1, 3, H, H]`` in [0, 1] (float32, CPU)."""
        vae = self.parts.pipe.vae
        z = latent.to(self.parts.device, vae.dtype) / vae.config.scaling_factor
        image = vae.decode(z).sample
        return (((image.float() + 1) / 2).clamp(0, 1).cpu(),)
