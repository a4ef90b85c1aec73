"""Batched latent proximal gradient descent with hard thresholding (SDLSS).

For measurements ``y`` (``[B, m]``), a generator ``G`` and a sensing operator ``A`` the solver runs

    z ← P_s(z − β ∇_z ‖y − A(G(z))‖²)          (optionally followed by z ← z / ‖z‖)

where ``P_s`` keeps the ``s`` entries of largest magnitude in each row of ``z`` and zeroes the rest
(``s = None``: no thresholding, the dense DCS latent). Every sample's loss depends only on its own
latent, so the gradient of the summed loss gives every row's gradient in one backward pass.

The same function is the unrolled inner loop of training (``differentiable=True``: the graph through
every step is kept, so the outer loss can train θ, φ and β) and the inference solver. It receives
``G`` and ``A`` as callables and never builds them, so any backend may run ``G``. There is no host
synchronisation inside the loop: losses stay on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from qgen_infer.solve.selection import cpu_extension, kth_largest_magnitude, top_s_mask

Operator = Callable[[torch.Tensor], torch.Tensor]


class GraphedSolver(Protocol):
    """Runs ``steps`` solver steps from ``z0`` for measurements ``y`` (see cuda_graph.py)."""

    def run(self, y: torch.Tensor, z0: torch.Tensor, steps: int) -> PGDResult: ...


@dataclass
class PGDResult:
    """The solver's state after the last step.

    ``z``: ``[B, d]`` latent codes; ``x``: ``G(z)``; ``loss``: ``[B]`` measurement losses
    ``‖y − A(G(z))‖²``; ``history``: ``[steps + 1, B]`` losses before each step and after the last
    (only when requested).
    """

    z: torch.Tensor
    x: torch.Tensor
    loss: torch.Tensor
    history: torch.Tensor | None = None


def hard_threshold(z: torch.Tensor, sparsity: int | None) -> torch.Tensor:
    """P_s: keep the ``sparsity`` largest-magnitude entries of each row, zero the others.

    Kept are the entries with ``|z|`` at least the row's ``s``-th largest magnitude
    (:func:`kth_largest_magnitude`), so the result is the same whichever exact selection computes
    that threshold. Only an exact tie at the threshold keeps more than ``s`` entries (a
    probability-zero event for continuous ``z``; tied zeros change nothing).
    Multiplying by a 0/1 mask (rather than scattering values) keeps the gradient flowing to the
    kept entries, which the unrolled training loop needs.
    """
    if sparsity is None or sparsity >= z.shape[-1]:
        return z
    keep = z.detach().abs() >= kth_largest_magnitude(z, sparsity)
    return z * keep


SPHERE_EPS = 1e-12


def project_sphere(z: torch.Tensor, eps: float = SPHERE_EPS) -> torch.Tensor:
    """z / ‖z‖ per row (DCS projects its latent to the unit sphere after every step)."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


def sample_latent(batch: int, dim: int, sparsity: int | None, *, project: bool = True,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random initial latents: Gaussian entries on a uniformly random support of size ``s``
    (the ``s`` largest of i.i.d. uniform keys per row: a selection, not a full argsort, which
    cost ~12 ms per 256 x 784 batch, as much as a solver step)."""
    z = torch.randn(batch, dim, generator=generator, device="cpu", dtype=dtype)
    if sparsity is not None and sparsity < dim:
        keys = torch.rand(batch, dim, generator=generator)
        z = z * top_s_mask(keys, sparsity)
    if project:
        z = project_sphere(z)
    return z.to(device)


def measurement_loss(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """‖y − ŷ‖² per sample, ``[B]``."""
    return (y - y_hat).pow(2).flatten(1).sum(dim=1)


def proximal_step(z: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor,
                  sparsity: int | None, project: bool) -> torch.Tensor:
    """One update ``P_s(z − β grad)``, then ``z / ‖z‖`` when ``project`` (shared by the eager
    loop and the CUDA-graph one, so both compute exactly the same thing).

    Outside autograd, float32 CPU rows take one fused pass of the compiled extension
    (``qgen_infer._cpu.proximal_step_f32``: the same arithmetic in the same order, the norm
    summed in double) instead of ~8 torch ops over ``[B, d]``.
    """
    fused = _fused_step(z, grad, step_size, sparsity, project)
    if fused is not None:
        return fused
    z = hard_threshold(z - step_size * grad, sparsity)
    return project_sphere(z) if project else z


def _fused_step(z: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor,
                sparsity: int | None, project: bool) -> torch.Tensor | None:
    ext = cpu_extension()
    if ext is None:
        return None
    if torch.is_tensor(step_size):
        if step_size.numel() != 1 or step_size.requires_grad:
            return None
        step_size = float(step_size)
    if torch.is_grad_enabled() and (z.requires_grad or grad.requires_grad):
        return None
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.ndim == 2
               for t in (z, grad)) or z.shape != grad.shape or z.shape[1] == 0:
        return None
    s = 0 if sparsity is None or sparsity >= z.shape[1] else int(sparsity)
    out = ext.proximal_step_f32(z.detach().contiguous().numpy(), grad.contiguous().numpy(),
                                float(step_size), s, bool(project), SPHERE_EPS,
                                torch.get_num_threads())
    return torch.from_numpy(out)


def proximal_gradient_descent(
    y: torch.Tensor,
    generator: Operator,
    sensing: Operator,
    z0: torch.Tensor,
    *,
    steps: int,
    step_size: float | torch.Tensor,
    sparsity: int | None = None,
    project: bool = False,
    differentiable: bool = False,
    record_history: bool = False,
    final_loss: bool = True,
) -> PGDResult:
    """Run ``steps`` iterations of ``z ← P_s(z − β ∇_z ‖y − A(G(z))‖²)`` from ``z0``.

    ``differentiable=True`` keeps the graph through every step (``create_graph``) so a loss on the
    result can be differentiated w.r.t. the generator's and sensing net's parameters, ``y`` and a
    tensor ``step_size``; otherwise each step is detached and only ``∇_z`` is computed.
    ``final_loss=False`` skips evaluating ``A(G(z))`` after the last step (training computes it in
    a batch of its own); ``loss`` is then empty.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    history = []
    z = z0 if differentiable else z0.detach()
    with torch.enable_grad():
        for _ in range(steps):
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            loss = measurement_loss(y, sensing(generator(z)))
            if record_history:
                history.append(loss.detach())
            (grad,) = torch.autograd.grad(loss.sum(), z, create_graph=differentiable)
            if differentiable:
                z = proximal_step(z, grad, step_size, sparsity, project)
            else:  # nothing to record: the update runs outside autograd (and fused on the CPU)
                with torch.no_grad():
                    z = proximal_step(z.detach(), grad, step_size, sparsity, project)
    grad_ctx = torch.enable_grad() if differentiable else torch.no_grad()
    with grad_ctx:
        x = generator(z)
        loss = measurement_loss(y, sensing(x)) if final_loss else x.new_empty(0)
    if record_history and final_loss:
        history.append(loss.detach())
    return PGDResult(z=z, x=x, loss=loss, history=torch.stack(history) if history else None)


def reconstruct_latent(
    y: torch.Tensor,
    generator: Operator,
    sensing: Operator,
    *,
    latent_dim: int,
    steps: int,
    step_size: float,
    sparsity: int | None = None,
    project: bool = False,
    restarts: int = 1,
    seed: int = 0,
    record_history: bool = False,
    graphed: GraphedSolver | None = None,
    z0: torch.Tensor | None = None,
) -> PGDResult:
    """Inference: proximal GD from ``restarts`` random sparse starts, keeping, per sample, the run
    with the lowest final measurement loss. The restarts run as one batch of ``restarts * B``.
    The starts are ``z0`` when given (``[restarts * B, d]``, restart-major: row ``r * B + i`` is
    restart ``r`` of sample ``i``), else drawn with :func:`sample_latent` from ``seed``.
    ``graphed``: a :class:`qgen_infer.solve.cuda_graph.CudaGraphSolver` for the same ``G``,
    ``A`` and settings, which replays a captured step instead of the eager loop (CUDA only; no
    history)."""
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    b = y.shape[0]
    if z0 is None:
        rng = torch.Generator().manual_seed(seed)
        z0 = sample_latent(restarts * b, latent_dim, sparsity, project=project, generator=rng,
                           device=y.device, dtype=y.dtype)
    elif z0.shape != (restarts * b, latent_dim):
        raise ValueError(f"z0 must have shape ({restarts * b}, {latent_dim}), got "
                         f"{tuple(z0.shape)}")
    z0 = z0.to(y.device, y.dtype)
    y_all = y.repeat(restarts, *([1] * (y.ndim - 1)))
    if graphed is not None and not record_history:
        res = graphed.run(y_all, z0, steps)
    else:
        res = proximal_gradient_descent(
            y_all, generator, sensing, z0, steps=steps, step_size=step_size, sparsity=sparsity,
            project=project, record_history=record_history,
        )
    if restarts == 1:
        return res
    best = res.loss.reshape(restarts, b).argmin(dim=0)  # [B], on the device: no sync
    rows = best * b + torch.arange(b, device=y.device)
    hist = res.history.reshape(-1, restarts, b)[:, best, torch.arange(b)] if (
        res.history is not None) else None
    return PGDResult(z=res.z[rows], x=res.x[rows], loss=res.loss[rows], history=hist)
