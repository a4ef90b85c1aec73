"""One step of Algorithm 1 (Q-GEN meta-learning): the losses of Eq. (3).

Per batch of images ``x``:

1. ``y = A_φ(x)`` — *not* detached (as in DCS): the measurement loss reaches φ through both
   ``A(x)`` and ``A(G(ẑ))``. With ``y`` detached the scale of ``A`` drifts away from the data's.
2. ``z₀``: a random sparse latent (s non-zeros; dense for DCS), projected to the unit sphere.
3. ``ẑ``: ``T`` unrolled proximal steps ``z ← P_s(z − β ∇_z ‖y − A(G_θQ(z))‖²)`` with
   ``β = exp(log_step_size)`` learned; ``G_θQ`` fake-quantizes θ (LinearQuantize + STE).
4. ``L = L_G + L_A + w_gdl · L_GDL`` with
   ``L_G = mean ‖y − A(G(ẑ))‖²``,
   ``L_A = mean (r(G(ẑ), G(z₀)) + r(G(ẑ), x) + r(x, G(z₀))) / 3`` and
   ``r(a, b) = (‖A(a) − A(b)‖ − ‖a − b‖)²`` (the DCS form of the S-REC / isometry loss;
   with ``data_pairs`` a fourth pair ``r(x, x')``, ``x'`` another image of the batch, joins the
   mean: the three DCS pairs only hold ``A`` isometric between data and generated images, which
   leaves it free to map all data images close together), and
   ``L_GDL = mean Σ (∇_h x − ∇_h G(ẑ))² + (∇_w x − ∇_w G(ẑ))²`` (finite differences).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qgen_infer.solve import measurement_loss, proximal_gradient_descent, sample_latent


@dataclass
class SolverSettings:
    """The latent solver used inside training and, by default, at inference."""

    method: str  # "sdlss" (sparse latent) or "dcs" (dense latent)
    latent_dim: int
    sparsity: int | None
    steps: int = 3
    project: bool = True


def gradient_difference_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Σ over pixels of squared differences of horizontal and vertical image gradients, per
    image, averaged over the batch (Mathieu et al.'s GDL with exponent 2)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]) - (x_hat[..., 1:, :] - x_hat[..., :-1, :])
    dw = (x[..., :, 1:] - x[..., :, :-1]) - (x_hat[..., :, 1:] - x_hat[..., :, :-1])
    return (dh.pow(2).flatten(1).sum(1) + dw.pow(2).flatten(1).sum(1)).mean()


def _pair_isometry(ma: torch.Tensor, mb: torch.Tensor, a: torch.Tensor, b: torch.Tensor
                   ) -> torch.Tensor:
    return ((ma - mb).flatten(1).norm(dim=1) - (a - b).flatten(1).norm(dim=1)).pow(2)


@dataclass
class StepLosses:
    total: torch.Tensor
    measurement: torch.Tensor
    isometry: torch.Tensor
    gdl: torch.Tensor


def meta_learning_losses(
    x: torch.Tensor,
    generator: nn.Module,
    sensing: nn.Module,
    log_step_size: torch.Tensor,
    solver: SolverSettings,
    *,
    gdl_weight: float,
    rng: torch.Generator,
    data_pairs: bool = False,
    z0: torch.Tensor | None = None,
    pair_before: torch.Tensor | None = None,
) -> StepLosses:
    """The losses of one Algorithm-1 iteration on the batch ``x`` (graph kept for backward).
    ``z0``: the random starts, ``[B, latent]``; drawn from ``rng`` when None (a data-parallel
    rank passes its rows of the whole batch's draw). ``pair_before``: ``[1, C, H, W]``, the
    image the data-data pair puts before ``x[0]`` (a data-parallel rank's slice: the whole
    batch's image before it), instead of ``x[-1]``."""
    b = x.shape[0]
    if data_pairs and pair_before is not None:  # one sensing pass, as for the batch alone
        y_before, y = sensing(torch.cat([pair_before, x])).split([1, b])
        x_prev, y_prev = torch.cat([pair_before, x[:-1]]), torch.cat([y_before, y[:-1]])
    else:
        y = sensing(x)
        x_prev, y_prev = x.roll(1, 0), y.roll(1, 0)
    if z0 is None:
        z0 = sample_latent(b, solver.latent_dim, solver.sparsity, project=solver.project,
                           generator=rng, device=x.device, dtype=x.dtype)
    res = proximal_gradient_descent(
        y, generator, sensing, z0, steps=solver.steps, step_size=log_step_size.exp(),
        sparsity=solver.sparsity, project=solver.project, differentiable=True, final_loss=False,
    )
    x_hat = res.x
    x0 = generator(z0)
    # One sensing pass over the three image sets the losses need.
    m_hat, m0 = sensing(torch.cat([x_hat, x0])).split(b)
    meas = measurement_loss(y, m_hat).mean()
    pairs = [_pair_isometry(m_hat, m0, x_hat, x0), _pair_isometry(m_hat, y, x_hat, x),
             _pair_isometry(y, m0, x, x0)]
    if data_pairs:  # each image against the one before it (itself when b = 1: r = 0)
        pairs.append(_pair_isometry(y, y_prev, x, x_prev))
    iso = torch.stack(pairs).mean(0).mean()
    gdl = gradient_difference_loss(x, x_hat) if gdl_weight else x.new_zeros(())
    return StepLosses(total=meas + iso + gdl_weight * gdl, measurement=meas, isometry=iso, gdl=gdl)
