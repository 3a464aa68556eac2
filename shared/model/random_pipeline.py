"""Tiny *random* StableDiffusionPipeline folders, for unit tests (diffusers' ``get_dummy_components`` habit).

The parts have the real architectures (AutoencoderKL with downsampling factor 8 and 4 latent channels,
UNet2DConditionModel, DDIM, a BertModel text encoder with MiniLM's tokenizer) at toy widths, random
weights. Images are noise-like but every tensor has the real shapes, so protocols, the channel and
accounting can be exercised in seconds.

Size presets (:data:`SIZES`): ``tiny`` (the default, for tests) and ``sd-v1-5``: Stable Diffusion v1.5's
UNet widths (320, 640, 1280, 1280), its attention heads and 768-wide cross-attention, one layer per block
(SD has two: half the depth keeps three copies in this machine's memory), 77-token prompts. It is for
compute-bound benchmarks (DESIGN §8: meg-tiny's 8×8 latent is bound by per-call overhead); its VAE and
text encoder stay toy-sized, they are not what is measured.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import BertConfig, BertModel, BertTokenizerFast

from shared.model.loader import MegConfig, minilm_dir

#: UNet shapes and text width per size preset (see the module doc).
SIZES: dict[str, dict[str, object]] = {
    "tiny": {"block_out_channels": (16, 32), "norm_num_groups": 8, "attention_head_dim": 4, "hidden": 32,
             "max_tokens": 8, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")},
    "sd-v1-5": {"block_out_channels": (320, 640, 1280, 1280), "norm_num_groups": 32, "attention_head_dim": 8,
                "hidden": 768, "max_tokens": 77, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
}


def build_random_pipeline(seed: int = 0, image_size: int = 32, hidden: int | None = None,
                          size: str = "tiny") -> tuple[StableDiffusionPipeline, MegConfig]:
    """Build a random pipeline of a size preset: images ``[3, image_size, image_size]``, latents
    ``[4, image_size/8, image_size/8]``, prompt embeddings ``[max_tokens, hidden]``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    cfg = SIZES[size]
    hidden = int(hidden or cfg["hidden"])  # type: ignore[call-overload]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=cfg["block_out_channels"],
        layers_per_block=1,
        norm_num_groups=cfg["norm_num_groups"],
        down_block_types=cfg["down_block_types"],
        up_block_types=cfg["up_block_types"],
        cross_attention_dim=hidden,
        attention_head_dim=cfg["attention_head_dim"],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=image_size,
    )
    tokenizer = BertTokenizerFast.from_pretrained(minilm_dir(), local_files_only=True)
    text_encoder = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=max(64, int(cfg["max_tokens"])),  # type: ignore[call-overload]
        ),
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    meg = MegConfig(max_tokens=int(cfg["max_tokens"]), es_steps=4, ue_steps=2, guidance=2.0, image_size=image_size)  # type: ignore[call-overload]
    return pipe, meg


def save_random_pipeline(folder: str | Path, seed: int = 0, image_size: int = 32,
                         codec_fcs: tuple[float, ...] = (0.5,), size: str = "tiny") -> Path:
    """Write a toy pipeline folder loadable by :func:`shared.model.loader.load_pipeline`, with random
    (untrained) residual seed codecs at ``codec_fcs`` in its ``codec/`` folder."""
    from shared.model.codec import CodecConfig, SeedCodec, save_codec

    folder = Path(folder)
    pipe, meg = build_random_pipeline(seed=seed, image_size=image_size, size=size)
    pipe.save_pretrained(folder, safe_serialization=True)
    meg.write(folder)
    n = 4 * (image_size // 8) ** 2
    for fc in codec_fcs:
        save_codec(SeedCodec(CodecConfig.make(n, fc, "residual", hidden=32)), folder / "codec")
    return folder
