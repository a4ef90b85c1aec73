"""The fused solver step (one Triton kernel per step) against the plain-torch step: the kernel on
random operands and awkward widths, its threshold on ties, and the solver built on it against
the reference backend's eager reconstruction. Interpreted on the CPU (``TRITON_INTERPRET=1``)
without a GPU; compiled on one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import qgen_infer  # noqa: E402
from qgen_infer.errors import QgenError  # noqa: E402
from qgen_infer.export import export_checkpoint  # noqa: E402
from qgen_infer.kernels.fused_step import (  # noqa: E402
    DenseLayerOp,
    MlpStep,
    PackedLayerOp,
    mlp_step,
    reference_step,
)
from qgen_infer.kernels.layout import PackedKWords  # noqa: E402
from qgen_infer.solve.proximal import hard_threshold, project_sphere  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _packed(gen: torch.Generator, n: int, k: int, bits: int, act: str, alpha: bool,
            beta: bool) -> PackedLayerOp:
    codes = torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8)
    codes[0, : min(k, 2**bits)] = torch.arange(min(k, 2**bits), dtype=torch.uint8)  # every code
    scale = (torch.rand(n, generator=gen) + 0.2) / (k**0.5 * 2**bits)
    zero = torch.full((n,), (2**bits - 1) / 2)
    w = PackedKWords.from_codes(codes, scale, zero, bits, DEVICE)
    a = (torch.rand(n, generator=gen) + 0.5).to(DEVICE) if alpha else None
    b = (0.1 * torch.randn(n, generator=gen)).to(DEVICE) if beta else None
    return PackedLayerOp(w, a, b, act, 0.2)


def _dense(gen: torch.Generator, n: int, k: int, act: str, bias: bool,
           dtype: torch.dtype = torch.float32) -> DenseLayerOp:
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(DEVICE, dtype).contiguous()
    b = (0.1 * torch.randn(n, generator=gen)).to(DEVICE) if bias else None
    return DenseLayerOp(w, b, act, 0.1)


def _step(bits: int, widths, seed: int, sparsity, project: bool,
          dtype: torch.dtype = torch.float32) -> MlpStep:
    d, h1, h2, p, s1, s2, m = widths
    gen = torch.Generator().manual_seed(seed)
    g = (_packed(gen, h1, d, bits, "leaky_relu", True, True),
         _packed(gen, h2, h1, bits, "relu", False, True),
         _packed(gen, p, h2, bits, "tanh", True, False))
    s = (_dense(gen, s1, p, "leaky_relu", True, dtype), _dense(gen, s2, s1, "tanh", False, dtype),
         _dense(gen, m, s2, "none", True, dtype))
    return MlpStep(g, s, 0.05, sparsity, project)


# (D, H1, H2, P, S1, S2, M): odd widths everywhere, one above a block of 32, measurements 1
WIDTHS = [(37, 13, 21, 33, 20, 17, 5), (10, 12, 12, 36, 12, 12, 7), (65, 40, 31, 9, 3, 5, 1)]


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 19])
@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "x".join(map(str, w)))
def test_fused_step_matches_reference(bits: int, batch: int, widths) -> None:
    sparsity = max(1, widths[0] // 4)
    step = _step(bits, widths, seed=bits * 100 + batch, sparsity=sparsity, project=True)
    gen = torch.Generator().manual_seed(batch)
    z = torch.randn(batch, widths[0], generator=gen).to(DEVICE)
    y = torch.randn(batch, widths[-1], generator=gen).to(DEVICE)
    z_new, loss = mlp_step(z, y, step)
    z_ref, loss_ref = reference_step(z, y, step)
    torch.testing.assert_close(loss.cpu().double(), loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_new.cpu().double(), z_ref, rtol=1e-5, atol=1e-6)
    assert ((z_new != 0).sum(dim=1) == sparsity).all()  # exactly s kept (no ties here)


@pytest.mark.parametrize("block_m", [pytest.param(1, marks=pytest.mark.slow), 4, 32])
@pytest.mark.parametrize("bits", [1, 3])
def test_fused_step_rows_per_program(block_m: int, bits: int) -> None:
    """Fewer than 16 rows per program (FMA products) and more (a 32-row tl.dot tile): the
    same step."""
    widths = WIDTHS[0]
    step = _step(bits, widths, seed=11, sparsity=6, project=True)
    z = torch.randn(19, widths[0]).to(DEVICE)
    y = torch.randn(19, widths[-1]).to(DEVICE)
    z_new, loss = mlp_step(z, y, step, block_m=block_m)
    z_ref, loss_ref = reference_step(z, y, step)
    torch.testing.assert_close(loss.cpu().double(), loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_new.cpu().double(), z_ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        mlp_step(z, y, step, block_m=6)


@pytest.mark.parametrize("sparsity,project", [(None, False), (None, True), (4, False)])
def test_fused_step_without_threshold_or_projection(sparsity, project: bool) -> None:
    widths = WIDTHS[0]
    step = _step(2, widths, seed=7, sparsity=sparsity, project=project)
    z = torch.randn(5, widths[0]).to(DEVICE)
    y = torch.randn(5, widths[-1]).to(DEVICE)
    z_new, loss = mlp_step(z, y, step)
    z_ref, loss_ref = reference_step(z, y, step)
    torch.testing.assert_close(z_new.cpu().double(), z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.cpu().double(), loss_ref, rtol=1e-5, atol=1e-6)


def test_fused_threshold_keeps_ties_as_the_solver_does() -> None:
    """With β = 0 the update is P_s(z) (then the projection): exact ties at the s-th magnitude
    are all kept, signs and zeros handled, as ``hard_threshold`` does."""
    widths = (6, 8, 8, 9, 4, 4, 2)
    step = _step(1, widths, seed=1, sparsity=3, project=True)
    step = MlpStep(step.generator, step.sensing, 0.0, 3, True)
    z = torch.tensor([[3.0, -3.0, 1.0, 1.0, -1.0, 0.5],   # s = 3: t = 1, keeps five
                      [0.0, 0.0, 0.0, 2.0, 0.0, 0.0],      # fewer non-zeros than s
                      [-0.25, 4.0, -0.125, 0.5, 4.0, 0.0]])
    z_new, _ = mlp_step(z.to(DEVICE), torch.zeros(3, 2, device=DEVICE), step)
    expect = project_sphere(hard_threshold(z, 3))
    torch.testing.assert_close(z_new.cpu(), expect, rtol=1e-6, atol=1e-7)
    assert (z_new[0] != 0).sum() == 5


def test_fused_step_fp16_products() -> None:
    """fp16 operands (tensor cores on a GPU): within fp16 rounding of the fp64 step."""
    widths = WIDTHS[0]
    step = _step(4, widths, seed=3, sparsity=None, project=False, dtype=torch.float16)
    z = torch.randn(19, widths[0]).to(DEVICE)
    y = torch.randn(19, widths[-1]).to(DEVICE)
    z_new, loss = mlp_step(z, y, step, dot_dtype=torch.float16)
    z_ref, loss_ref = reference_step(z, y, step)
    torch.testing.assert_close(loss.cpu().double(), loss_ref, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(z_new.cpu().double(), z_ref, rtol=1e-2, atol=2e-3)


def test_fused_step_rejects_bad_operands() -> None:
    widths = WIDTHS[1]
    step = _step(1, widths, seed=0, sparsity=3, project=True)
    y = torch.zeros(2, widths[-1], device=DEVICE)
    with pytest.raises(ValueError, match="z must be"):
        mlp_step(torch.zeros(2, widths[0] + 1, device=DEVICE), y, step)
    with pytest.raises(ValueError, match="rows"):
        mlp_step(torch.zeros(3, widths[0], device=DEVICE), y, step)
    with pytest.raises(ValueError, match="dense weights"):
        mlp_step(torch.zeros(2, widths[0], device=DEVICE), y, step, dot_dtype=torch.float16)
    bad = MlpStep(step.generator[::-1], step.sensing, 0.1, 3, True)
    with pytest.raises(ValueError, match="chain"):
        mlp_step(torch.zeros(2, widths[0], device=DEVICE), y, bad)


# --- the solver -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_files(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    return {b: export_checkpoint(tiny_checkpoint("mlp", b, "tensor"),
                                 folder / f"mlp-{b}.qgen").path for b in (1, 3)}


@pytest.mark.parametrize("bits,rows", [(1, True), pytest.param(3, 4, marks=pytest.mark.slow)])
def test_fused_reconstruction_equals_reference(mlp_files, bits: int, rows) -> None:
    """``reconstruct(..., fused_step=True)`` on the triton backend against the eager solver on
    the reference backend: restarts, a partial last batch, T = 3."""
    packed = qgen_infer.load(mlp_files[bits], backend="triton", device=DEVICE)
    ref = qgen_infer.load(mlp_files[bits], backend="reference")
    y = np.random.default_rng(bits).normal(size=(19, ref.config["measurements"])) * 0.5
    kw = dict(steps=3, batch_size=16, restarts=2, seed=5, sparsity=4)
    fused = qgen_infer.reconstruct(packed, y.astype(np.float32), fused_step=rows,
                                   cuda_graph=DEVICE.type == "cuda", **kw)
    eager = qgen_infer.reconstruct(ref, y.astype(np.float32), **kw)
    for name in ("z", "x_hat", "loss"):
        np.testing.assert_allclose(getattr(fused, name), getattr(eager, name), rtol=2e-4,
                                   atol=2e-5, err_msg=name)


def test_fused_step_refuses_what_it_cannot_run(tiny_checkpoint, mlp_files, tmp_path) -> None:
    ref = qgen_infer.load(mlp_files[1], backend="reference")
    y = np.zeros((2, ref.config["measurements"]), np.float32)
    with pytest.raises(QgenError, match="triton backend"):
        qgen_infer.reconstruct(ref, y, fused_step=True)
    dcgan = export_checkpoint(tiny_checkpoint("dcgan", 2, "tensor"), tmp_path / "d.qgen").path
    model = qgen_infer.load(dcgan, backend="triton", device=DEVICE)
    y = np.zeros((2, model.config["measurements"]), np.float32)
    with pytest.raises(QgenError, match="MLP generators"):
        qgen_infer.reconstruct(model, y, fused_step=True, cuda_graph=False)
