"""Image tensors <-> PNG files and PNG bytes (the digital baseline's payload), and PSNR (the one implementation;
FID is :mod:`meg_lab.fid`)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.wire.limits import MAX_DIGITAL_BYTES, MAX_PNG_PIXELS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngError(ValueError):
    """PNG bytes that cannot be the image expected (not a PNG, truncated, too large, the wrong size or mode):
    the ES answers INVALID_ARGUMENT with its message."""


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` or ``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 (rounded, clamped)."""
    arr = image.detach().float().cpu().reshape(-1, *image.shape[-3:])[0].clamp(0, 1)
    return (arr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def quantize(image: torch.Tensor) -> torch.Tensor:
    """What an 8-bit image keeps of ``image`` (``[1, 3, H, W]`` in [0, 1]): ``round(255·x) / 255``, float32 —
    exactly what :func:`png_to_image` of :func:`image_to_png` gives back."""
    return torch.from_numpy(_to_uint8(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def image_to_png(image: torch.Tensor, compress_level: int = 6) -> bytes:
    """``[1, 3, H, W]`` in [0, 1] -> the bytes of an 8-bit RGB PNG (lossless after the 8-bit rounding;
    ``compress_level`` is zlib's 0-9, PIL's default 6)."""
    out = io.BytesIO()
    Image.fromarray(_to_uint8(image)).save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()


def png_to_image(data: bytes, size: int | None = None, what: str = "the PNG image") -> torch.Tensor:
    """PNG bytes -> ``[1, 3, H, W]`` float32 in [0, 1]; raises :class:`PngError` with a sentence.

    Bounded before anything is inflated: at most :data:`~shared.wire.limits.MAX_DIGITAL_BYTES` bytes, the
    header's width × height at most :data:`~shared.wire.limits.MAX_PNG_PIXELS` and, with ``size``, exactly
    ``size`` × ``size`` (so a PNG bomb is refused from its header); 8-bit RGB only; a truncated or corrupt
    stream is refused, not padded."""
    if len(data) > MAX_DIGITAL_BYTES:
        raise PngError(f"{what} has {len(data):,d} bytes; at most {MAX_DIGITAL_BYTES:,d}")
    if not data.startswith(_PNG_SIGNATURE):
        raise PngError(f"{what} is not a PNG (its first bytes are not the PNG signature)")
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise PngError(f"{what} cannot be decoded: its first chunk is not IHDR")
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR: width, height
    if w * h > MAX_PNG_PIXELS:
        raise PngError(f"{what} declares {w}×{h} pixels; at most {MAX_PNG_PIXELS:,d}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG"])  # reads the header only
            w, h = img.size
            if size is not None and (w, h) != (size, size):
                raise PngError(f"{what} is {w}×{h}; this model's images are {size}×{size}")
            if img.mode != "RGB":
                raise PngError(f"{what} has mode {img.mode}; an 8-bit RGB PNG is expected")
            img.load()  # inflates: a truncated or corrupt stream raises here
    except PngError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PngError(f"{what} cannot be decoded: {exc}") from None
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write ``[1, 3, H, W]`` or ``[3, H, W]`` in [0, 1] as an 8-bit RGB PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(image)).save(path)
    return path


def load_png(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image file as ``[1, 3, H, W]`` float in [0, 1] (resized to ``size``² if given)."""
    img = Image.open(path).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def psnr_from_mse(mse: np.ndarray | float, data_range: float = 1.0, max_db: float | None = None) -> np.ndarray:
    """PSNR in dB, ``10 log10(data_range² / mse)``, of mean squared errors (any shape; float64 array).

    ``data_range`` is the images' peak-to-peak value (1 for ``[0, 1]``, 2 for ``[-1, 1]``); ``max_db`` caps
    the result (identical images give ``inf`` without it).
    """
    m = np.asarray(mse, dtype=np.float64)
    floor = data_range**2 * 10 ** (-max_db / 10) if max_db is not None else 0.0
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / np.maximum(m, floor))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, per_image: bool = False,
         max_db: float | None = None) -> float:
    """PSNR in dB between image tensors ``[B, 3, H, W]`` (any equal shapes) whose values span ``data_range``.

    ``per_image=False``: one MSE over every pixel of the batch (torchmetrics' ``peak_signal_noise_ratio``);
    ``True``: the mean over the batch of per-image PSNRs. ``max_db``: see :func:`psnr_from_mse`.
    """
    diff = a.detach().float().cpu() - b.detach().float().cpu()
    sq = diff.square().double()
    mse = sq.flatten(1).mean(1).numpy() if per_image else float(sq.mean())
    return float(np.mean(psnr_from_mse(mse, data_range, max_db)))


def border_psnr(image: torch.Tensor, reference: torch.Tensor, boundaries: Sequence[int], band: int) -> tuple[float, float]:
    """Composition check against the single-ES ``reference`` (both ``[1, 3, H, W]`` in [0, 1]): PSNR in dB in
    the pixel columns within ``band`` of a tile boundary, and in the columns outside it. A cross-fade that
    ghosts two different objects, or a window that drew its own layout, is low in the band (and, when a
    window's whole layout differs, outside it too); the gradient :func:`seam_score` sees neither."""
    mask = torch.zeros(image.shape[-1], dtype=torch.bool)
    for b in boundaries:
        mask[max(0, b - band):b + band] = True
    if not bool(mask.any()) or bool(mask.all()):
        raise ValueError(f"band {band} around {list(boundaries)} leaves no border or no rest in width {image.shape[-1]}")
    return (psnr(image[..., mask], reference[..., mask], max_db=99.0),
            psnr(image[..., ~mask], reference[..., ~mask], max_db=99.0))
