import torch
from torchmetrics.image.fid import _compute_fid

from shared.metrics import frechet_distance


def test_frechet_distance_equals_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 96, generator=g, dtype=torch.float64)
    fake = torch.randn(30, 96, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    expected = float(_compute_fid(mu1, s1, mu2, s2))
    assert abs(frechet_distance(real, fake) - expected) < 1e-6 * max(1.0, abs(expected))
    assert abs(frechet_distance(real, real)) < 1e-8
