"""The VAE decoder D as one function: scaled latents -> images (used by the UE's ``D``, the lab's evaluations
and the power-control environment)."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Scaled latents ``[B, C, h, w]`` (what the denoiser produces: VAE latents times ``scaling_factor``) ->
    images ``[B, 3, H, W]`` in ``[-1, 1]`` (float32, CPU), decoded ``batch`` at a time on the VAE's device
    and dtype. ``vae``: a diffusers ``AutoencoderKL``."""
    sf = float(vae.config.scaling_factor)
    out = [vae.decode(latents[i:i + batch].to(vae.device, vae.dtype) / sf).sample.float().clamp(-1, 1).cpu()
           for i in range(0, latents.shape[0], batch)]
    return torch.cat(out)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in ``[-1, 1]`` -> ``[0, 1]`` (same shape)."""
    return ((images + 1) / 2).clamp(0, 1)
