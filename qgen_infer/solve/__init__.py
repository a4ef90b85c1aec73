"""Latent proximal gradient descent with hard thresholding (SDLSS) and restarts."""

from qgen_infer.solve.proximal import (
    PGDResult,
    hard_threshold,
    measurement_loss,
    project_sphere,
    proximal_gradient_descent,
    reconstruct_latent,
    sample_latent,
)

__all__ = [
    "PGDResult",
    "hard_threshold",
    "measurement_loss",
    "project_sphere",
    "proximal_gradient_descent",
    "reconstruct_latent",
    "sample_latent",
]
