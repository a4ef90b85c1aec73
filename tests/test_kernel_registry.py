"""Walk every kernel of ``qgen_infer.engine.kernel_registry`` (each CPU ISA tier, the AVX2 int8
tables, the solver routines, each Triton launch path, the implicit-GEMM convolutions, the fused
solver step) against its plain-torch reference on the registry's random awkward cases, within the
error the registry states for it; and check that no kernel entry point of the CPU extension or of
``qgen_infer.kernels`` is left out of the registry.

Triton kernels run under ``TRITON_INTERPRET=1`` without a GPU. A kernel that cannot run here (a
tier this CPU lacks, no Triton) is reported as a skip with its reason, never silently left out.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before any kernel module is imported (see the Triton tests)
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("QGEN_TRITON_AUTOTUNE", "0")

from qgen_infer.engine import kernel_registry  # noqa: E402
from qgen_infer.engine.kernel_registry import KERNELS, KernelEntry  # noqa: E402


def _needs(backend: str) -> None:
    entry = next(e for e in KERNELS if e.backend == backend)
    reason = kernel_registry.unavailable_reason(entry)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("entry", KERNELS, ids=lambda e: e.name)
def test_each_kernel_equals_its_reference(entry: KernelEntry) -> None:
    reason = kernel_registry.unavailable_reason(entry)
    if reason is not None:
        pytest.skip(reason)
    cases = kernel_registry.cases(entry, seed=len(entry.name))
    assert cases
    for case in cases:
        got = kernel_registry.run(entry, case)
        want = kernel_registry.reference(entry, case)
        assert got.shape == want.shape, f"{entry.name} {case.label}"
        assert got.dtype == torch.float32 or entry.op == "lut_i8_sums", f"{entry.name} {got.dtype}"
        err = (got.double() - want.double()).abs()
        allowed = kernel_registry.allowed_error(entry, case)
        assert bool((err <= allowed).all()), (
            f"{entry.name} {case.label}: max error {err.max():.3g}, worst ratio "
            f"{(err / (torch.as_tensor(allowed) + 1e-300)).max():.3g}")


def test_registry_names_are_unique_and_cover_every_tier() -> None:
    assert len({e.name for e in KERNELS}) == len(KERNELS)
    cpu = {e.variant for e in KERNELS if e.backend == "cpu"}
    assert set(kernel_registry.CPU_TIERS) <= cpu
    for tier in kernel_registry.CPU_TIERS:
        assert {e.op for e in KERNELS if e.variant == tier} >= set(kernel_registry.PRODUCTS)
    assert {e.op for e in KERNELS} == set(kernel_registry.OPS)


def test_every_cpu_entry_point_is_registered() -> None:
    """A new public function of qgen_infer._cpu must be registered with its reference (or, if it
    runs no kernel, listed in CPU_QUERIES)."""
    _needs("cpu")
    from qgen_infer import _cpu

    covered = {p for e in KERNELS for p in e.covers if p.startswith("_cpu.")}
    missing = kernel_registry.cpu_entry_points() - covered
    assert not missing, f"kernels not in kernel_registry.KERNELS: {sorted(missing)}"
    stale = [name for name in kernel_registry.CPU_QUERIES if not hasattr(_cpu, name)]
    assert not stale, f"CPU_QUERIES names functions _cpu lacks: {stale}"


def test_every_triton_kernel_is_registered() -> None:
    """A new public ``@triton.jit`` function in qgen_infer.kernels (outside common.py, the device
    helpers) must be registered with its reference."""
    _needs("triton")
    covered = {p for e in KERNELS for p in e.covers if p.startswith("kernels.")}
    found = kernel_registry.triton_entry_points()
    assert "kernels.gemm.gemm_kpack_dot_kernel" in found  # the scan itself finds kernels
    missing = found - covered
    assert not missing, f"kernels not in kernel_registry.KERNELS: {sorted(missing)}"


def test_every_covered_entry_point_exists() -> None:
    """The registry names no function that has been renamed or removed."""
    for entry in KERNELS:
        if kernel_registry.unavailable_reason(entry) is not None:
            continue
        for point in entry.covers:
            assert callable(kernel_registry.resolve(point)), f"{entry.name}: {point}"
