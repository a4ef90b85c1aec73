"""Every packed kernel product the engine can run, on every backend and CPU tier, with the
plain-torch reference it must equal; ``tests/test_kernel_registry.py`` walks :data:`KERNELS`.

A product is one of the three of ``backend.py``, on a weight ``W [N, K]`` of k-bit codes:

* ``gemm``: ``act(alpha * (x @ Wᵀ) + beta)``, ``x [M, K] -> [M, N]``;
* ``gemm_t``: ``g @ W``, ``g [M, N] -> [M, K]``;
* ``gemm_t_epi``: ``(g ⊙ act'(y) ⊙ alpha) @ W``, the input gradient through the epilogue.

The CPU extension has one implementation per ISA tier (portable, AVX2, AVX-512: csrc/arch), the
Triton backend one set of kernels (``qgen_infer.kernels``; its launch paths, dot and gemv, are
walked apart by ``kernels/registry.py`` in ``tests/test_triton_kernels.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from qgen_infer.activations import activation_grad_from_output
from qgen_infer.engine.backend import Epilogue, MatrixWeight, gemm_reference, gemm_t_reference

OPS = ("gemm", "gemm_t", "gemm_t_epi")
CPU_TIERS = ("portable", "avx2", "avx512")


@dataclass(frozen=True)
class KernelEntry:
    """One product on one backend (``variant``: the CPU tier, or ``"kpack"`` for Triton)."""

    backend: str
    variant: str
    op: str

    @property
    def name(self) -> str:
        return f"{self.backend}[{self.variant}].{self.op}"


KERNELS: tuple[KernelEntry, ...] = (
    *(KernelEntry("cpu", tier, op) for tier in CPU_TIERS for op in OPS),
    *(KernelEntry("triton", "kpack", op) for op in OPS),
)


def unavailable_reason(entry: KernelEntry) -> str | None:
    """Why ``entry`` cannot run here (no extension, a tier this CPU lacks, no Triton), or None."""
    if entry.backend == "cpu":
        from qgen_infer.engine.cpu_backend import supported_isas

        tiers = supported_isas()
        if not tiers:
            return "the CPU extension qgen_infer._cpu is not built"
        return None if entry.variant in tiers else f"this CPU lacks the {entry.variant} tier"
    from qgen_infer.engine.triton_backend import is_available

    return None if is_available() else "needs triton and a CUDA device or TRITON_INTERPRET=1"


def create(entry: KernelEntry) -> Any:
    """A backend that runs ``entry``'s kernels (the CPU one always on its packed path, with its
    exact fp32 tables: the AVX2 int8-table path rounds and has its own reference and tests,
    ``lut_i8_reference.py`` and ``tests/test_lut_i8.py``)."""
    if entry.backend == "cpu":
        from qgen_infer.engine.cpu_backend import CpuBackend

        return CpuBackend(isa=entry.variant, dispatch="packed", int_tables="off")
    from qgen_infer.engine.triton_backend import create_backend

    return create_backend()


def run(entry: KernelEntry, backend: Any, prepared: Any, a: torch.Tensor, epilogue: Epilogue,
        y: torch.Tensor | None = None) -> torch.Tensor:
    """``entry``'s product of operand ``a`` (``x`` for gemm, ``g`` otherwise; ``y``: the gemm
    output that ``gemm_t_epi`` differentiates through)."""
    products: dict[str, Callable[[], torch.Tensor]] = {
        "gemm": lambda: backend.gemm(a, prepared, epilogue),
        "gemm_t": lambda: backend.gemm_t(a, prepared),
        "gemm_t_epi": lambda: backend.gemm_t_through_epilogue(a, y, prepared, epilogue),
    }
    return products[entry.op]()


def reference(entry: KernelEntry, a: torch.Tensor, weight: MatrixWeight, epilogue: Epilogue,
              y: torch.Tensor | None = None) -> torch.Tensor:
    """The plain-torch (reference backend) value of :func:`run`."""
    if entry.op == "gemm":
        return gemm_reference(a, weight, epilogue)
    if entry.op == "gemm_t":
        return gemm_t_reference(a, weight)
    assert y is not None, "gemm_t_epi needs the forward output y"
    h = a * activation_grad_from_output(y, epilogue.activation, epilogue.negative_slope)
    if epilogue.alpha is not None:
        h = h * epilogue.alpha
    return gemm_t_reference(h, weight)
