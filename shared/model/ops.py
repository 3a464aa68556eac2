"""The model parts a protocol stage can call (paper 2, Fig. 3): T, E, U, D, C / C⁻¹, S and K.

:class:`ModelParts` holds one loaded pipeline (shared by all requests); :class:`ModelOps` binds it to one
request's parameters and deadline and is what :func:`shared.protocol.runner.run_segment` calls. Shapes are those
of :mod:`shared.protocol.geometry` (``L`` tokens, ``D`` text width, ``C`` latent channels, ``h = H / 8``):

=================  ==================================  =====================================
op                 inputs                              outputs
=================  ==================================  =====================================
``encode_prompt``  prompt ``str``                      cond ``[1, L, D]``
``encode_image``   image_in ``[1, 3, H, H]`` in [0,1]  init_latent ``[1, C, h, h]``
``denoise``        cond (, init_latent)                latent ``[1, C, h, h]`` (ES budget)
``denoise_ue``     cond (, init_latent)                latent (the UE's weaker budget)
``decode``         latent                              image ``[1, 3, H, H]`` in [0, 1]
``compress``       latent                              seed ``[1, round(fc·C·h·h)]``
``decompress``     seed                                latent
``sketch``         image                               sketch ``[1, 3, H/4, H/4]``
``complete``       cond, sketch                        image (UE img2img refinement)
``encode_png``     image ``[1, 3, H, H]`` in [0, 1]    PNG ``bytes`` (8-bit RGB; the digital baseline)
``decode_png``     PNG ``bytes``                       image ``[1, 3, H, H]`` in [0, 1] (checked: H, RGB)
=================  ==================================  =====================================

With txt2img, ``denoise`` starts from seeded noise; with an ``init_latent`` it is text-guided img2img at
``strength``. C / C⁻¹ are the learned seed codecs shipped in the model's ``codec/`` folder
(:mod:`shared.model.codec`); at fc = 1 the seed is the raw latent."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from shared.model.codec import SeedCodec, load_codecs
from shared.model.images import image_to_png, png_to_image
from shared.model.loader import MegConfig, default_model_path, load_pipeline
from shared.protocol.geometry import SKETCH_FACTOR, Geometry
from shared.protocol.schedule import (
    DEFAULT_STRENGTH,  # img2img strength when the request gives none (re-exported), cooperative_schedule
    cooperative_schedule,
)

if TYPE_CHECKING:
    from shared.protocol.tiles import Share

from shared.model.denoise import DenoiseJob, Denoiser
from shared.protocol.params import Params

#: How much of the noise schedule the ESUC completer re-runs on the upsampled sketch.
COMPLETE_STRENGTH = 0.5


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed while the model was working."""


class ModelParts:
    """A loaded pipeline plus what every request reuses (the unconditional embedding)."""

    def __init__(self, pipe: StableDiffusionPipeline, meg: MegConfig, name: str = "model",
                 codecs: dict[float, SeedCodec] | None = None) -> None:
        self.pipe = pipe
        self.meg = meg
        self.name = name
        self.codecs = codecs or {}
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
        self._lock = threading.RLock()  # the uncond cache, and the tokenizer (its padding state is not thread-safe)
        self._uncond: torch.Tensor | None = None

    @classmethod
    def load(cls, path: str | None, device: str = "cpu", codec_design: str = "residual") -> ModelParts:
        """Load a pipeline folder and the seed codecs in its ``codec/`` folder (if any)."""
        pipe, meg = load_pipeline(path, device)
        folder = Path(path) if path else default_model_path()
        codecs = load_codecs(folder / "codec", codec_design, pipe.device)
        return cls(pipe, meg, name=str(path) if path else "meg-tiny", codecs=codecs)

    @torch.no_grad()
    def embed_batch(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text encoder T on ``B`` prompts: ``-> [B, L, D]`` float32 on the CPU (every prompt padded to ``L``
        tokens, so a row equals the prompt encoded alone). One thread at a time: concurrent calls race on the
        fast tokenizer's truncation/padding settings and return wrong lengths."""
        with self._lock:
            cond, _ = self.pipe.encode_prompt(list(prompts), self.device, 1, False)
        return cond.float().cpu()

    def embed(self, prompt: str) -> torch.Tensor:
        """Text encoder T: ``prompt -> [1, L, D]`` float32 on the CPU."""
        return self.embed_batch([prompt])

    def uncond(self) -> torch.Tensor:
        """The empty prompt's embedding ``[1, L, D]``, a constant of the model (for guidance)."""
        with self._lock:
            if self._uncond is None:
                self._uncond = self.embed("")
            return self._uncond

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """VAE encoder E: images ``[B, 3, H, H]`` in [0, 1] -> scaled posterior means ``[B, C, h, h]`` (float32, CPU)."""
        vae = self.pipe.vae
        x = (images.to(self.device, vae.dtype) * 2 - 1).clamp(-1, 1)
        return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).float().cpu()

    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decoder D: latents ``[B, C, h, h]`` -> images ``[B, 3, H, H]`` in [0, 1] (float32, CPU)."""
        from shared.model.vae import decode, to_unit

        return to_unit(decode(self.pipe.vae, latents))

    def codec(self, fc: float) -> SeedCodec | None:
        """The seed codec at rate ``fc`` (None at fc = 0 or 1: the seed is the raw latent); ValueError if none."""
        if fc in (0.0, 1.0):
            return None
        if fc not in self.codecs:
            raise ValueError(f"no seed codec for fc={fc:g}; this model has {self.codec_rates() or 'none'}")
        return self.codecs[fc]

    @torch.no_grad()
    def compress(self, fc: float, latents: torch.Tensor) -> torch.Tensor:
        """C: latents ``[B, C, h, h]`` -> seeds ``[B, k]`` (the latents themselves at fc = 1)."""
        codec = self.codec(fc)
        return latents if codec is None else codec.encode(latents.to(codec.mean.device)).float().cpu()

    @torch.no_grad()
    def decompress(self, fc: float, seeds: torch.Tensor) -> torch.Tensor:
        """C⁻¹: seeds ``[B, k]`` -> latents ``[B, C, h, h]``."""
        codec = self.codec(fc)
        if codec is None:
            return seeds
        g = self.geometry
        return codec.decode(seeds.to(codec.mean.device)).float().cpu().reshape(
            -1, g.latent_channels, g.latent_size, g.latent_size)

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        """Sketcher S: area-downsample ``[B, 3, H, H]`` by the sketch factor -> ``[B, 3, H/4, H/4]``."""
        return F.avg_pool2d(images, SKETCH_FACTOR)

    def fresh_pipeline(self, img2img: bool = False) -> StableDiffusionPipeline:
        """The same modules with a private scheduler, so concurrent requests don't share scheduler state."""
        comps = dict(self.pipe.components)
        comps["scheduler"] = DDIMScheduler.from_config(self.pipe.scheduler.config)
        comps.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
        pipe = cls(**comps)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def has_codec(self, fc: float) -> bool:
        """Whether seeds at compression rate ``fc`` can be made (fc = 1 or 0: the raw latent)."""
        return fc in (0.0, 1.0) or fc in self.codecs

    def codec_rates(self) -> list[float]:
        return sorted(self.codecs)


class ModelOps:
    """:class:`ModelParts` bound to one request: ``call(op, *inputs)`` for :mod:`shared.protocol.stages`."""

    def __init__(self, parts: ModelParts, params: Params, deadline: float | None = None,
                 denoiser: Denoiser | None = None, task: str = "txt2img") -> None:
        """``denoiser`` runs the DDIM loops (the ES passes its batching engine); default: alone, here. ``task``:
        the generation's (a cooperative round's place in the schedule depends on it)."""
        self.parts = parts
        self.params = params
        self.task = task
        self.deadline = deadline  # time.monotonic() value
        self.denoiser = denoiser or self._denoise_alone

    def call(self, op: str, *inputs: object) -> tuple[object, ...]:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise KeyError(f"no model op {op!r}")
        self._check_deadline()
        return fn(*inputs)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("the request's deadline passed during generation")

    # --- T, E ---------------------------------------------------------------------------------------
    def op_encode_prompt(self, prompt: str) -> tuple[torch.Tensor]:
        return (self.parts.embed(prompt),)

    def op_encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        """VAE encoder: ``[1, 3, H, H]`` in [0, 1] -> scaled posterior mean ``[1, C, h, h]``."""
        return (self.parts.encode_images(image),)

    # --- C / C⁻¹ ------------------------------------------------------------------------------------
    def op_compress(self, latent: torch.Tensor) -> tuple[torch.Tensor]:
        """C: latent ``[1, C, h, h]`` -> seed ``[1, k]`` (the latent itself at fc = 1)."""
        return (self.parts.compress(self.params.fc, latent),)

    def op_decompress(self, seed: torch.Tensor) -> tuple[torch.Tensor]:
        """C⁻¹: seed ``[1, k]`` -> latent ``[1, C, h, h]``."""
        return (self.parts.decompress(self.params.fc, seed),)

    # --- U -----------------------------------------------------------------------------------------
    def op_denoise(self, cond: torch.Tensor, init_latent: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """ES budget: ``params.steps`` or the model's ``es_steps``."""
        return (self._denoise(cond, init_latent, self.params.steps or self.parts.meg.es_steps, self.params.strength),)

    def op_denoise_ue(self, cond: torch.Tensor, init_latent: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """The UE's weaker budget (paper 1's limited local computation): the model's ``ue_steps``."""
        return (self._denoise(cond, init_latent, self.parts.meg.ue_steps, self.params.strength),)

    def _denoise(self, cond: torch.Tensor, init_latent: torch.Tensor | None, steps: int, strength: float,
                 noise: torch.Tensor | None = None, start_step: int = 0, end_step: int | None = None) -> torch.Tensor:
        """DDIM guided by ``cond [1, L, D]``: from seeded noise (txt2img), or from ``init_latent`` noised to
        ``strength`` (img2img; 0 means the default 0.6) -> latent ``[1, C, h, w]`` (float32, CPU).
        ``noise`` (``[1, C, h, w]``) replaces the seeded starting noise (see :class:`DenoiseJob`)."""
        p, meg = self.params, self.parts.meg
        job = DenoiseJob(cond=cond, steps=steps, guidance=p.guidance or meg.guidance, seed=p.seed,
                         init_latent=init_latent, strength=strength or DEFAULT_STRENGTH, noise=noise,
                         deadline=self.deadline, start_step=start_step, end_step=end_step)
        return self.denoiser(job)

    def _denoise_alone(self, job: DenoiseJob) -> torch.Tensor:
        """One :class:`DenoiseJob` here, by itself (:func:`shared.model.denoise.denoise_alone`: the same DDIM code
        the ES's batching engine runs, checking the deadline after every step)."""
        from shared.model.denoise import DenoiseModel, denoise_alone

        return denoise_alone(DenoiseModel.from_parts(self.parts), job, lambda _state: self._check_deadline())

    # --- D -----------------------------------------------------------------------------------------
    def op_decode(self, latent: torch.Tensor) -> tuple[torch.Tensor]:
        """VAE decoder: latent ``[1, C, h, h]`` -> image ``[1, 3, H, H]`` in [0, 1] (float32, CPU)."""
        return (self.parts.decode_images(latent),)

    # --- S, K (ESUC) -----------------------------------------------------------------------------------
    def op_sketch(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        """Sketcher S: area-downsample ``[1, 3, H, H]`` by the sketch factor -> ``[1, 3, H/4, H/4]``."""
        return (self.parts.sketch(image),)

    def op_complete(self, cond: torch.Tensor, sketch: torch.Tensor) -> tuple[torch.Tensor]:
        """Completer K on the UE: upsample the sketch (bicubic), encode it, refine it by img2img with the
        UE's budget at ``COMPLETE_STRENGTH`` guided by the UE's own prompt embedding, decode."""
        size = self.parts.geometry.image_size
        up = F.interpolate(sketch, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        (init,) = self.op_encode_image(up)
        latent = self._denoise(cond, init, max(self.parts.meg.ue_steps, 2), COMPLETE_STRENGTH)
        return self.op_decode(latent)

    # --- the digital baseline (FULL-ES-PNG): the image as lossless PNG bytes -------------------------------------
    def op_encode_png(self, image: torch.Tensor) -> tuple[bytes]:
        """``[1, 3, H, H]`` in [0, 1] -> 8-bit RGB PNG bytes (lossless after rounding to 8 bits)."""
        return (image_to_png(image),)

    def op_decode_png(self, data: bytes) -> tuple[torch.Tensor]:
        """PNG bytes -> ``[1, 3, H, H]`` in [0, 1]; a PNG that is not this model's ``H × H`` 8-bit RGB image (or a
        bomb, or corrupt) raises :class:`~shared.model.images.PngError` (a ValueError: INVALID_ARGUMENT on the ES)."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"decode_png takes PNG bytes, not {type(data).__name__}")
        return (png_to_image(bytes(data), self.parts.geometry.image_size),)

    # --- cooperative windows (UIDCG, DCSUC; the split is shared.protocol.tiles) ---------------------------------
    def op_window(self, x: torch.Tensor, share: Share) -> tuple[torch.Tensor]:
        """Share's column window of a tensor aligned with the latent: ``[1, c, s·h, s·w] -> [1, c, s·h,
        s·(x1-x0)]`` (the latent itself at s = 1, the input pixels at s = 8)."""
        from shared.protocol.tiles import crop

        return (crop(x, share, self.parts.geometry.latent_size),)

    def _schedule(self, share: Share, round_: int, img2img: bool) -> tuple[int, int, int]:
        """``(steps, a, b)``: the schedule's length and round ``round_``'s step range ``[a, b)`` (img2img's
        schedule starts where its strength enters it, as in :func:`shared.model.denoise.start`)."""
        steps = self.params.steps or self.parts.meg.es_steps
        rounds = cooperative_schedule(steps, self.params.strength, share, img2img)
        if not 0 <= round_ < len(rounds):
            raise ValueError(f"round {round_} of a {len(rounds)}-round schedule ({steps} steps, sync {share.sync})")
        return steps, *rounds[round_]

    def _full_noise(self) -> torch.Tensor:
        """The seeded full-latent starting noise ``[1, C, h, h]`` (the single-ES image's)."""
        from diffusers.utils.torch_utils import randn_tensor

        g = self.parts.geometry
        shape = (1, g.latent_channels, g.latent_size, g.latent_size)
        return randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(self.params.seed),
                            dtype=self.parts.pipe.unet.dtype)

    def op_denoise_window(self, cond: torch.Tensor, share: Share, round_: int = 0,
                          init_part: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """Round 0 (ES budget) on share's window: ``-> latent_part [1, C, h, x1-x0]``. txt2img starts from the
        window's crop of the seeded full-latent noise ``[1, C, h, h]`` (the single-ES image's starting noise, so
        neighbours agree where they overlap); with a shared head (``share.head_steps(n) = k > 0``) the first
        ``k`` steps run on the full latent ``[1, C, h, h]`` (identical on every ES: same seed, same prompt) and
        the rest of the round on its window of the result. img2img noises ``init_part [1, C, h, x1-x0]`` with
        the same crop to its strength. The round ends where :meth:`Share.schedule` says (with ``sync = 0``, at
        the end of the schedule)."""
        from shared.protocol.tiles import crop

        w, p = self.parts.geometry.latent_size, self.params
        steps, _, b = self._schedule(share, round_, init_part is not None)
        end = None if b == steps else b
        full = self._full_noise()
        if init_part is not None:
            return (self._denoise(cond, init_part, steps, p.strength, noise=crop(full, share, w), end_step=end),)
        head = share.head_steps(steps)
        if head > 0:
            full = self._denoise(cond, None, steps, p.strength, noise=full, end_step=head)
        return (self._denoise(cond, None, steps, p.strength, noise=crop(full, share, w), start_step=head, end_step=end),)

    def op_denoise_round(self, cond: torch.Tensor, share: Share, round_: int,
                         latent_in: torch.Tensor) -> tuple[torch.Tensor]:
        """Round ``round_ >= 1`` on share's window of the fused latent ``latent_in [1, C, h, x1-x0]`` (part-way
        through the schedule, as the UE fused it) -> ``latent_part`` of the same shape. DDIM (eta 0) keeps no
        state besides the latent, so a window resumed from the fused latent is exactly where the UE left it.
        The rounds are the generation's task's: img2img's begin where its strength enters the schedule."""
        steps, a, b = self._schedule(share, round_, self.task == "img2img")
        if a == 0:
            raise ValueError("round 0 is denoise_window's (it starts from noise or from the input image)")
        return (self._denoise(cond, None, steps, self.params.strength, noise=latent_in, start_step=a,
                              end_step=None if b == steps else b),)

    def op_merge(self, parts: list[torch.Tensor], shares: list[Share]) -> tuple[torch.Tensor]:
        """UE gather: cross-fade the windows ``[1, c, s·h, s·(x1_i-x0_i)]`` into ``[1, c, s·h, s·h]``."""
        from shared.protocol.tiles import merge

        return (merge(parts, shares, self.parts.geometry.latent_size),)
