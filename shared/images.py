"""Image tensors <-> PNG files, and image-quality metrics (torchmetrics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write ``[1, 3, H, W]`` or ``[3, H, W]`` in [0, 1] as an 8-bit RGB PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image.detach().float().cpu().reshape(-1, *image.shape[-3:])[0].clamp(0, 1)
    Image.fromarray((arr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def load_png(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image file as ``[1, 3, H, W]`` float in [0, 1] (resized to ``size``² if given)."""
    img = Image.open(path).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between images in [0, 1] (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a.float(), b.float(), data_range=1.0))
