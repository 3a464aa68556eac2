import pytest
import torch
from torchmetrics.image.fid import _compute_fid

from meg_lab.fid import frechet_distance


def test_frechet_distance_equals_torchmetrics() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 96, generator=g, dtype=torch.float64)
    fake = torch.randn(30, 96, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    expected = float(_compute_fid(mu1, s1, mu2, s2))
    assert abs(frechet_distance(real, fake) - expected) < 1e-6 * max(1.0, abs(expected))
    assert abs(frechet_distance(real, real)) < 1e-8


def test_psnr_is_torchmetrics_and_takes_the_data_range() -> None:
    import numpy as np
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from shared.model.images import psnr, psnr_from_mse

    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 16, 16, generator=g)
    b = (a + 0.05 * torch.randn(4, 3, 16, 16, generator=g)).clamp(0, 1)
    assert psnr(a, b) == pytest.approx(float(peak_signal_noise_ratio(a, b, data_range=1.0)), abs=1e-4)
    # the same pictures on the [-1, 1] scale: same PSNR with data_range 2
    assert psnr(a * 2 - 1, b * 2 - 1, data_range=2.0) == pytest.approx(psnr(a, b), abs=1e-4)
    per = [psnr(a[i:i + 1], b[i:i + 1]) for i in range(4)]
    assert psnr(a, b, per_image=True) == pytest.approx(float(np.mean(per)), abs=1e-6)
    assert psnr(a, a) == float("inf") and psnr(a, a, max_db=100.0) == pytest.approx(100.0)
    np.testing.assert_allclose(psnr_from_mse(np.array([4e-2, 4e-4]), data_range=2.0), [20.0, 40.0])
