"""PSNR and SSIM per image, for batches of NCHW images in [-1, 1].

Both map images to [0, 1] (``(x + 1) / 2``, clipped) and use peak value 1.

* PSNR: ``-10 log10(mean((a - b)^2))`` per image (the paper's definition with unit peak).
* SSIM: Wang et al. 2004 exactly as ``skimage.metrics.structural_similarity(a, b, data_range=1,
  channel_axis=0)`` computes it by default: a 7×7 uniform window, K1 = 0.01, K2 = 0.03, sample
  covariances (normalised by 48/49), the map averaged over the window-valid interior and then over
  channels. A 7×7 average pool without padding yields exactly that interior. Computed in float64
  (tests hold it to scikit-image within 1e-4).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_WIN = 7
_K1, _K2 = 0.01, 0.03


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped (generator outputs are tanh, truths exact)."""
    return ((x + 1) / 2).clamp(0, 1)


def psnr(x: torch.Tensor | np.ndarray, x_hat: torch.Tensor | np.ndarray,
         eps: float = 1e-12) -> torch.Tensor:
    """PSNR in dB per image, ``[B]``, for images in [-1, 1] (tensors or arrays, e.g. a
    reconstruction's ``x_hat``)."""
    x, x_hat = torch.as_tensor(x), torch.as_tensor(x_hat)
    a, b = to_unit_range(x.double()), to_unit_range(x_hat.double())
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return (-10 * torch.log10(mse.clamp_min(eps))).float()


def ssim(x: torch.Tensor | np.ndarray, x_hat: torch.Tensor | np.ndarray) -> torch.Tensor:
    """SSIM per image, ``[B]``, for NCHW images in [-1, 1] with H, W >= 7 (tensors or arrays)."""
    x, x_hat = torch.as_tensor(x), torch.as_tensor(x_hat)
    if x.shape != x_hat.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two NCHW batches of one shape, got {tuple(x.shape)} and "
                         f"{tuple(x_hat.shape)}")
    if min(x.shape[-2:]) < _WIN:
        raise ValueError(f"ssim needs images of at least {_WIN}x{_WIN}, got {tuple(x.shape[-2:])}")
    a, b = to_unit_range(x.double()), to_unit_range(x_hat.double())
    b_, c, h, w = a.shape
    a, b = a.reshape(b_ * c, 1, h, w), b.reshape(b_ * c, 1, h, w)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, _WIN, stride=1)

    n = _WIN * _WIN
    cov_norm = n / (n - 1)
    ux, uy = mean(a), mean(b)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = _K1**2, _K2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).reshape(b_, c).mean(dim=1).float()
