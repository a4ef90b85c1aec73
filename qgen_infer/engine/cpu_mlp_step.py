"""The solver step of an MLP model on the ``cpu`` backend, without autograd.

``z <- P_s(z - beta grad_z ||y - A(G(z))||^2)`` where G is the packed MLP generator (linear
layers with fused epilogues, then a reshape) and A the plain sensing MLP (flatten, linear layers,
leaky-ReLU between them). The step calls exactly the operations that autograd runs for it in
:func:`qgen_infer.solve.proximal_gradient_descent`, in the same order on the same operands, so
the result is the same to the bit (``tests/test_cpu_kernels.py`` holds it to that):

* G forward: ``backend.gemm`` per layer (what ``PackedGemm.forward`` calls), outputs kept;
* A forward: ``F.linear``, ``F.leaky_relu``, pre-activations kept (``LeakyReluBackward0`` keeps
  its input);
* ``d loss / d y_hat = -(2 (y - y_hat))`` (``PowBackward0`` then ``SubBackward0``: exact);
* A input-gradient: ``g @ W`` (``AddmmBackward0`` for a row-major input) and
  ``aten::leaky_relu_backward(g, pre, slope, False)``;
* G input-gradient: ``backend.gemm_t_through_epilogue`` per layer (``PackedGemm.backward``);
* the update: :func:`qgen_infer.solve.proximal.proximal_step`.

What it saves is autograd's bookkeeping: graph nodes, saved-tensor packing and the engine's
per-node dispatch, ~1 ms of a ~13 ms 1-bit MNIST step at batch 256 on one thread
(bench/results/reconstruct-tiers.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qgen_infer.engine.packed_modules import PackedLinear
from qgen_infer.models.layers import Reshape
from qgen_infer.solve.proximal import PGDResult, measurement_loss, proximal_step


def _generator_layers(generator: nn.Module) -> list[PackedLinear] | None:
    """The packed linear layers of an MLP generator ending in a reshape, or None."""
    mods = list(generator.children())
    if not mods or not isinstance(mods[-1], Reshape):
        return None
    linears = mods[:-1]
    return linears if linears and all(type(m) is PackedLinear for m in linears) else None


def _sensing_layers(sensing: nn.Module) -> list[tuple[nn.Linear, float | None]] | None:
    """``[(linear, leaky-ReLU slope after it, or None)]`` of a flatten-linear-leaky-ReLU MLP."""
    mods = list(sensing.children())
    if not mods or not isinstance(mods[0], nn.Flatten) or mods[0].start_dim != 1:
        return None
    out: list[tuple[nn.Linear, float | None]] = []
    for mod in mods[1:]:
        if type(mod) is nn.Linear:
            out.append((mod, None))
        elif type(mod) is nn.LeakyReLU and out and out[-1][1] is None and not mod.inplace:
            out[-1] = (out[-1][0], float(mod.negative_slope))
        else:
            return None
    return out or None


class CpuMlpSolver:
    """Runs solver steps of an MLP model on the ``cpu`` backend (the module docstring); has the
    ``run(y, z0, steps)`` of :class:`qgen_infer.solve.proximal.GraphedSolver`."""

    def __init__(self, model: Any, *, step_size: float, sparsity: int | None,
                 project: bool, sensing: nn.Module | None = None) -> None:
        """``sensing``: a copy of the model's sensing net in another dtype (bf16: the image is
        cast into it and its measurements back to fp32, as ``reconstruct(precision=...)``
        does), else the model's own."""
        sensing = sensing if sensing is not None else model.sensing
        gen, sens = _generator_layers(model.generator), _sensing_layers(sensing)
        if gen is None or sens is None:
            raise ValueError("CpuMlpSolver needs an MLP generator and sensing net")
        self.backend = model.backend
        self.generator, self.sensing = model.generator, sensing
        self.g_layers, self.a_layers = gen, sens
        self.dtype = sens[0][0].weight.dtype
        self.step_size, self.sparsity, self.project = step_size, sparsity, project

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model`` is an MLP on the cpu backend (else the autograd solver runs)."""
        return (getattr(model.backend, "name", None) == "cpu"
                and hasattr(model.backend, "gemm_t_through_epilogue")
                and _generator_layers(model.generator) is not None
                and _sensing_layers(model.sensing) is not None)

    def _gradient(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``grad_z ||y - A(G(z))||^2`` summed over rows, as autograd computes it."""
        outs = [z]
        for layer in self.g_layers:
            outs.append(self.backend.gemm(outs[-1], layer.prepared, layer.epilogue))
        cast = self.dtype != torch.float32  # autograd's ToCopyBackward: the grad cast back
        h, pres = outs[-1].to(self.dtype), []
        for linear, slope in self.a_layers:
            h = F.linear(h, linear.weight, linear.bias)
            pres.append(h)
            if slope is not None:
                h = F.leaky_relu(h, slope)
        g = -(2 * (y - h.float()))
        g = g.to(self.dtype) if cast else g
        for (linear, slope), pre in zip(reversed(self.a_layers), reversed(pres), strict=True):
            if slope is not None:
                g = torch.ops.aten.leaky_relu_backward(g, pre, slope, False)
            g = g.mm(linear.weight)
        g = g.float() if cast else g
        for layer, out in zip(reversed(self.g_layers), reversed(outs[1:]), strict=True):
            g = self.backend.gemm_t_through_epilogue(g.contiguous(), out, layer.prepared,
                                                     layer.epilogue)
        return g

    def run(self, y: torch.Tensor, z0: torch.Tensor, steps: int) -> PGDResult:
        """``steps`` solver steps from ``z0`` for measurements ``y``, then ``x = G(z)`` and its
        measurement loss (what ``proximal_gradient_descent`` returns without history)."""
        z = z0.detach()
        with torch.no_grad():
            for _ in range(steps):
                z = proximal_step(z, self._gradient(y, z), self.step_size, self.sparsity,
                                  self.project)
            x = self.generator(z)
            loss = measurement_loss(y, self.sensing(x.to(self.dtype)).float())
        return PGDResult(z=z, x=x, loss=loss)
