"""Walk every packed kernel product the engine can run (``qgen_infer.engine.kernel_registry``:
each CPU ISA tier and the Triton kernels, each of gemm, gemm_t and the input gradient through
the epilogue) against its plain-torch reference, for every width, on an awkward shape (N = 37,
K = 70, batch 1 and 5) with a per-row scale, alpha, beta and a non-trivial activation.

Tolerance: ``1e-5 * bound``, with ``bound = |a| @ |W|`` (times |alpha|, plus |beta|), the size of
the terms a dot product sums (as in test_triton_kernels.py). A product that cannot run here
(a tier this CPU lacks, no Triton) is reported as a skip with its reason, never silently left out.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before any kernel module is imported (see the Triton tests)
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("QGEN_TRITON_AUTOTUNE", "0")

from qgen_infer.engine import kernel_registry  # noqa: E402
from qgen_infer.engine.backend import Epilogue, MatrixWeight  # noqa: E402
from qgen_infer.engine.kernel_registry import KERNELS, KernelEntry  # noqa: E402

N, K = 37, 70


def _weight(bits: int, gen: torch.Generator) -> MatrixWeight:
    codes = torch.randint(0, 2**bits, (N, K), generator=gen, dtype=torch.uint8)
    scale = torch.rand(N, generator=gen) * 0.1 + 0.01
    zero = torch.rand(N, generator=gen) * (2**bits - 1)
    return MatrixWeight(codes, scale, zero, bits)


def test_every_backend_and_tier_is_registered() -> None:
    names = {e.name for e in KERNELS}
    assert len(names) == len(KERNELS) == 12
    assert {e.op for e in KERNELS} == set(kernel_registry.OPS)
    assert {e.variant for e in KERNELS if e.backend == "cpu"} == set(kernel_registry.CPU_TIERS)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_each_kernel_equals_its_reference(entry: KernelEntry, bits: int) -> None:
    reason = kernel_registry.unavailable_reason(entry)
    if reason is not None:
        pytest.skip(reason)
    gen = torch.Generator().manual_seed(bits)
    weight = _weight(bits, gen)
    ep = Epilogue(torch.rand(N, generator=gen) + 0.5, torch.randn(N, generator=gen),
                  "leaky_relu" if bits % 2 else "tanh", 0.2)
    backend = kernel_registry.create(entry)
    prepared = backend.prepare(weight)
    w_abs = (weight.scale[:, None] * (weight.codes.float() - weight.zero[:, None])).abs()
    for m in (1, 5):
        x = torch.randn(m, K, generator=gen)
        y = kernel_registry.reference(KernelEntry("cpu", "portable", "gemm"), x, weight, ep)
        a = x if entry.op == "gemm" else torch.randn(m, N, generator=gen)
        got = kernel_registry.run(entry, backend, prepared, a, ep, y)
        want = kernel_registry.reference(entry, a, weight, ep, y)
        assert got.shape == want.shape and got.dtype == torch.float32
        if entry.op == "gemm":
            bound = a.abs() @ w_abs.t() * ep.alpha.abs() + ep.beta.abs()
        else:
            bound = (a.abs() * (ep.alpha.abs() if entry.op == "gemm_t_epi" else 1)) @ w_abs
        assert bool(((got - want).abs() <= 1e-5 * bound + 1e-6).all()), (
            f"{entry.name} w{bits} M={m}: max error {(got - want).abs().max():.3g}")
