"""The contract between the engine and every kernel backend (reference, cpu, triton).

Every packed generator layer reduces to one matrix view ``W`` of shape ``[N, K]`` with integer codes
``c[n, k]`` in ``[0, 2**bits)`` and one scale and zero per row::

    W[n, k] = scale[n] * (c[n, k] - zero[n])

(a per-tensor quantizer repeats its single scale and zero over the rows). A backend provides two
products over the same prepared weight, both with fp32 accumulation:

* ``gemm``   ``y[m, n] = act(alpha[n] * Σ_k x[m, k] W[n, k] + beta[n])``  (forward; ``x`` is
  ``[M, K]``). ``alpha`` defaults to 1, ``beta`` to 0; a Linear bias is ``beta``, a folded BatchNorm
  is ``alpha, beta``. Kernels compute ``Σ_k x c - zero[n] Σ_k x`` on the codes and correct by the
  row sums of ``x``; they never materialise ``W`` in fp32.
* ``gemm_t`` ``g'[m, k] = Σ_n g[m, n] W[n, k]`` (the transposed product: the input gradient of the
  forward before its epilogue; ``g`` is ``[M, N]``).

How layers map to the matrix view (the engine does this once at load time):

* Linear ``[out, in]``: ``N = out``, ``K = in``.
* Conv2d ``[C_out, C_in, kh, kw]``: ``N = C_out``, ``K = C_in*kh*kw``; forward is ``gemm`` on the
  im2col of the input, the input gradient ``gemm_t`` followed by col2im.
* ConvTranspose2d ``[C_in, C_out, kh, kw]``: permuted to ``[C_out, kh, kw, C_in]`` so that
  ``N = C_out*kh*kw``, ``K = C_in`` (each output channel's scale repeated ``kh*kw`` times); forward
  is ``gemm`` per input pixel followed by col2im, the input gradient im2col followed by ``gemm_t``.

A backend's ``prepare`` repacks the codes once into whatever layout its kernels like (bit planes,
interleaved words); it never changes the file's canonical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

# the activations live in one module, shared with the format and the kernels (re-exported here)
from qgen_infer.activations import ACTIVATIONS, activate
from qgen_infer.activations import activation_grad_from_output as activation_grad_from_output


@dataclass
class MatrixWeight:
    """A quantized weight in matrix view.

    ``codes``: uint8 ``[N, K]``, values in ``[0, 2**bits)``; ``scale``, ``zero``: float32 ``[N]``.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int

    def __post_init__(self) -> None:
        if self.codes.dtype != torch.uint8 or self.codes.ndim != 2:
            raise ValueError(f"codes must be a 2-D uint8 tensor, got {self.codes.dtype} "
                             f"with shape {tuple(self.codes.shape)}")
        n = self.codes.shape[0]
        if self.scale.shape != (n,) or self.zero.shape != (n,):
            raise ValueError(f"scale and zero must have shape ({n},), got "
                             f"{tuple(self.scale.shape)} and {tuple(self.zero.shape)}")
        if not 1 <= self.bits <= 4:
            raise ValueError(f"bits must be in 1..4, got {self.bits}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self) -> torch.Tensor:
        """The fp32 matrix ``scale[n] * (c[n, k] - zero[n])`` (reference backend only)."""
        return self.scale[:, None] * (self.codes.to(torch.float32) - self.zero[:, None])


@dataclass
class Epilogue:
    """``act(alpha[n] * acc + beta[n])``; ``None`` means 1 for alpha, 0 for beta."""

    alpha: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    activation: str = "none"
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

    def apply(self, acc: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Reference epilogue on ``acc`` whose channel axis is ``channel_dim``."""
        shape = [1] * acc.ndim
        shape[channel_dim] = -1
        y = acc
        if self.alpha is not None:
            y = y * self.alpha.reshape(shape)
        if self.beta is not None:
            y = y + self.beta.reshape(shape)
        return activate(y, self.activation, self.negative_slope)


class Backend(Protocol):
    """What a kernel backend provides (see the module docstring for the math)."""

    name: str

    def prepare(self, weight: MatrixWeight) -> Any:
        """Repack ``weight`` once, at load time, into the backend's own layout."""

    def gemm(self, x: torch.Tensor, prepared: Any, epilogue: Epilogue | None = None
             ) -> torch.Tensor:
        """``act(alpha * (x @ Wᵀ) + beta)`` for ``x`` ``[M, K]`` -> ``[M, N]``."""

    def gemm_t(self, g: torch.Tensor, prepared: Any) -> torch.Tensor:
        """``g @ W`` for ``g`` ``[M, N]`` -> ``[M, K]``."""

    # Optional (engine/packed_ops.py uses it when present):
    #   gemm_t_through_epilogue(grad_y, y, prepared, epilogue) -> (grad_y ⊙ act'(y) ⊙ alpha) @ W


class ReferenceBackend:
    """The oracle: dequantize once at prepare time, then plain torch (fp32 ``F.linear``)."""

    name = "reference"

    def __repr__(self) -> str:
        return "ReferenceBackend()"

    def prepare(self, weight: MatrixWeight) -> torch.Tensor:
        return weight.dequantize()

    def gemm(self, x: torch.Tensor, prepared: torch.Tensor, epilogue: Epilogue | None = None
             ) -> torch.Tensor:
        acc = F.linear(x.to(prepared.dtype), prepared)
        return epilogue.apply(acc) if epilogue is not None else acc

    def gemm_t(self, g: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        return g.to(prepared.dtype) @ prepared


def gemm_reference(x: torch.Tensor, weight: MatrixWeight, epilogue: Epilogue | None = None
                   ) -> torch.Tensor:
    """Plain-torch reference for every backend's ``gemm`` (tests hold kernels to it)."""
    b = ReferenceBackend()
    return b.gemm(x, b.prepare(weight), epilogue)


def gemm_t_reference(g: torch.Tensor, weight: MatrixWeight) -> torch.Tensor:
    """Plain-torch reference for every backend's ``gemm_t``."""
    b = ReferenceBackend()
    return b.gemm_t(g, b.prepare(weight))
