"""Data-dependent initialisation of a fresh run: A starts near the S-REC isometry, and the
latent step size β is set from the size of the first inner gradient.

Why: the inner loop only carries information about ``x`` into ``ẑ`` when a step
``β ∇_z ‖A(x) − A(G(z))‖²`` moves ``z`` by a fair fraction of its (unit) norm. That gradient scales
with the square of A's gain. Measured at initialisation on a batch of 64 pairs of training
images (2026-12-01): the DCGAN sensing net, whose convolutions are spectrally normalised, maps
image differences with a gain ``‖A(a) − A(b)‖ / ‖a − b‖`` of 2.7e-4 (the MNIST MLP: 0.03), so with
β = 0.01 the three unrolled steps moved ``z`` by 7e-6: every reconstruction was ``G(z₀)`` of a
random ``z₀``, and training drove G to the mean image (the 2-epoch colour models scored
14-17 dB where the mean patch scores 14.8 dB). Adam changes ``log β`` and the last layer's
weights by about ``lr`` per step, so growing a 1e4 shortfall takes thousands of steps.

The fixes are the two usual ones for a badly scaled start, each measured on the data:

- :func:`calibrate_sensing` scales A's last linear layer (weights and bias) so that the mean
  pair gain is 1, the fixed point that the isometry loss L_A pulls towards anyway;
- :func:`step_size_for_movement` sets β so that the first step's length ``β ‖∇_z‖`` (median over
  the batch, from a random sparse ``z₀`` as training draws it) is a given fraction of ``‖z‖``.
"""

from __future__ import annotations

import torch
from torch import nn

from qgen_infer.solve import measurement_loss, sample_latent
from qgen_infer.train.objective import SolverSettings


def _last_linear(sensing: nn.Module) -> nn.Linear:
    linears = [m for m in sensing.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the sensing network has no nn.Linear layer to scale")
    return linears[-1]


def sensing_gain(sensing: nn.Module, images: torch.Tensor) -> float:
    """Mean over pairs of ``‖A(a) − A(b)‖ / ‖a − b‖``, pairing the first half of ``images``
    with the second half (needs at least 2 images; pairs of equal images are skipped)."""
    half = images.shape[0] // 2
    if half < 1:
        raise ValueError("sensing_gain needs at least 2 images")
    a, b = images[:half], images[half:2 * half]
    with torch.no_grad():
        out = sensing(torch.cat([a, b]))
    dist_in = (a - b).flatten(1).norm(dim=1)
    dist_out = (out[:half] - out[half:]).flatten(1).norm(dim=1)
    keep = dist_in > 0
    if not keep.any():
        raise ValueError("sensing_gain needs at least one pair of different images")
    return float((dist_out[keep] / dist_in[keep]).mean())


def calibrate_sensing(sensing: nn.Module, images: torch.Tensor) -> float:
    """Scale A's last linear layer so that :func:`sensing_gain` on ``images`` becomes 1 (A is
    positively homogeneous in that layer's weights and bias jointly). Returns the gain before."""
    gain = sensing_gain(sensing, images)
    if not gain > 0:
        raise ValueError(f"the sensing network's gain is {gain}; it cannot be calibrated")
    last = _last_linear(sensing)
    with torch.no_grad():
        last.weight.div_(gain)
        if last.bias is not None:
            last.bias.div_(gain)
    return gain


def step_size_for_movement(generator: nn.Module, sensing: nn.Module, images: torch.Tensor,
                           solver: SolverSettings, movement: float, *,
                           rng: torch.Generator) -> float:
    """β such that ``β ‖∇_z ‖A(x) − A(G(z₀))‖²‖ = movement`` (median over ``images``), at the
    random sparse starts ``z₀`` that training draws."""
    if not movement > 0:
        raise ValueError(f"movement must be positive, got {movement}")
    with torch.no_grad():
        y = sensing(images)
    z = sample_latent(images.shape[0], solver.latent_dim, solver.sparsity, project=solver.project,
                      generator=rng, device=images.device, dtype=images.dtype)
    z.requires_grad_(True)
    with torch.enable_grad():
        loss = measurement_loss(y, sensing(generator(z)))
        (grad,) = torch.autograd.grad(loss.sum(), z)
    norm = float(grad.flatten(1).norm(dim=1).median())
    if not norm > 0:
        raise ValueError("the latent gradient is zero at initialisation; set the step size")
    return movement / norm
