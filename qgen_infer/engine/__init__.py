"""Packed inference: ``.qgen`` -> packed modules on a kernel backend, with autograd through packed
weights (forward ``backend.gemm``, input gradient ``backend.gemm_t``).

Backends: ``reference`` (built in), ``cpu`` and ``triton`` (imported lazily by the registry).
"""

from qgen_infer.engine.backend import (
    ACTIVATIONS,
    Backend,
    Epilogue,
    MatrixWeight,
    ReferenceBackend,
    activation_grad_from_output,
)
from qgen_infer.engine.loader import QgenModel, load
from qgen_infer.engine.packed_modules import (
    PackedConv2d,
    PackedConvTranspose2d,
    PackedLinear,
    PackedModule,
)
from qgen_infer.engine.registry import BACKEND_NAMES, backend_available, get_backend

__all__ = [
    "ACTIVATIONS",
    "BACKEND_NAMES",
    "Backend",
    "Epilogue",
    "MatrixWeight",
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedLinear",
    "PackedModule",
    "QgenModel",
    "ReferenceBackend",
    "activation_grad_from_output",
    "backend_available",
    "get_backend",
    "load",
]
