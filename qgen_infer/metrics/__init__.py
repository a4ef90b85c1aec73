"""Image quality: PSNR (peak 1) and SSIM on images mapped from [-1, 1] to [0, 1]."""

from qgen_infer.metrics.image_quality import psnr, ssim, to_unit_range

__all__ = ["psnr", "ssim", "to_unit_range"]
