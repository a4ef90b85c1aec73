"""PSNR (peak 1) and SSIM held to their definitions and to scikit-image."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from qgen_infer.metrics import psnr, ssim


def _pair(shape, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 2 - 1
    y = (x + noise * torch.randn(shape, generator=g)).clamp(-1, 1)
    return x, y


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (1, 1, 7, 7), (2, 3, 32, 32), (2, 3, 17, 9)])
def test_ssim_equals_scikit_image(shape):
    x, y = _pair(shape)
    ours = ssim(x, y)
    for i in range(shape[0]):
        a = ((x[i] + 1) / 2).double().numpy()
        b = ((y[i] + 1) / 2).double().numpy()
        if shape[1] == 1:
            ref = structural_similarity(a[0], b[0], data_range=1.0)
        else:
            ref = structural_similarity(a, b, data_range=1.0, channel_axis=0)
        assert abs(float(ours[i]) - ref) < 1e-4


def test_psnr_equals_scikit_image_and_definition():
    x, y = _pair((4, 1, 28, 28), seed=1)
    ours = psnr(x, y)
    for i in range(4):
        a, b = ((x[i] + 1) / 2).double().numpy(), ((y[i] + 1) / 2).double().numpy()
        ref = peak_signal_noise_ratio(a, b, data_range=1.0)
        assert abs(float(ours[i]) - ref) < 1e-4
        assert abs(float(ours[i]) + 10 * np.log10(np.mean((a - b) ** 2))) < 1e-4


def test_identical_images_score_perfectly():
    x, _ = _pair((2, 1, 8, 8))
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert (psnr(x, x) > 100).all()


def test_ssim_rejects_small_or_mismatched():
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
