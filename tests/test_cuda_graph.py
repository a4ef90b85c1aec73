"""The solver step replayed from a CUDA graph equals the eager solver (GPU only), and asking for
graphs without a CUDA device is a clear error (everywhere)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import qgen_infer
from qgen_infer.errors import QgenError
from qgen_infer.export import export_checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_gpu_triton = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device with compiled (not interpreted) Triton")


@pytest.fixture(scope="module")
def qgen_files(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("graph")
    return {(fam, b): export_checkpoint(tiny_checkpoint(fam, b, "tensor"),
                                        folder / f"{fam}-{b}.qgen").path
            for fam, b in [("mlp", 1), ("mlp", 4), ("dcgan", 2)]}


def test_cuda_graph_on_cpu_model_is_an_error(qgen_files) -> None:
    model = qgen_infer.load(qgen_files[("mlp", 4)])
    y = np.zeros((2, model.config["measurements"]), np.float32)
    with pytest.raises(QgenError, match="CUDA device"):
        qgen_infer.reconstruct(model, y, cuda_graph=True)


def _measure(model, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-0.9, 0.9, (n, *model.config["image_shape"]))
    with torch.no_grad():
        return model.sensing(torch.from_numpy(x.astype(np.float32)).to(model.device)).cpu().numpy()


@needs_cuda
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_gpu_triton)])
@pytest.mark.parametrize("key", [("mlp", 1), ("mlp", 4), ("dcgan", 2)])
@pytest.mark.parametrize("n,batch,restarts,sparsity", [(1, 1, 1, None), (7, 3, 2, 5),
                                                       (300, 256, 1, 10)])
def test_graph_replay_equals_eager(qgen_files, backend: str, key, n: int, batch: int,
                                   restarts: int, sparsity) -> None:
    model = qgen_infer.load(qgen_files[key], backend=backend, device="cuda")
    y = _measure(model, n, seed=n)
    kw = dict(batch_size=batch, restarts=restarts, steps=6, seed=3, sparsity=sparsity)
    eager = qgen_infer.reconstruct(model, y, cuda_graph=False, **kw)
    graphed = qgen_infer.reconstruct(model, y, cuda_graph=True, **kw)
    for name in ("x_hat", "z", "loss"):
        np.testing.assert_allclose(getattr(graphed, name), getattr(eager, name), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


@needs_cuda
def test_graph_is_captured_once_per_batch_shape(qgen_files) -> None:
    from qgen_infer.solve.cuda_graph import CudaGraphSolver

    model = qgen_infer.load(qgen_files[("mlp", 4)], backend="reference", device="cuda")
    solver = CudaGraphSolver(model.generator, model.sensing, step_size=0.01, sparsity=5,
                             project=True)
    d, m = model.config["latent_dim"], model.config["measurements"]
    for b in (4, 4, 3, 4):
        solver.run(torch.randn(b, m, device="cuda"), torch.randn(b, d, device="cuda"), 3)
    assert len(solver._steps) == 2
    with pytest.raises(ValueError, match="CUDA device"):
        solver.run(torch.randn(4, m), torch.randn(4, d), 3)


@needs_gpu_triton
@pytest.mark.parametrize("key", [("mlp", 1), ("mlp", 4), ("dcgan", 2)])
def test_triton_on_gpu_equals_reference_on_cpu(qgen_files, key, monkeypatch) -> None:
    """The issue's correctness claim on real hardware: the compiled Triton kernels (fp32, IEEE
    dot) inside the graphed GPU solver reconstruct what the reference backend does on the CPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the sensing convs: fp32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ref = qgen_infer.load(qgen_files[key], backend="reference")
    gpu = qgen_infer.load(qgen_files[key], backend="triton", device="cuda")
    y = _measure(ref, 9, seed=5)
    kw = dict(batch_size=4, restarts=2, steps=4, seed=11)
    want = qgen_infer.reconstruct(ref, y, **kw)
    got = qgen_infer.reconstruct(gpu, y, **kw)
    for name in ("x_hat", "z", "loss"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


@needs_cuda
def test_later_calls_replay_the_captured_graphs(qgen_files) -> None:
    """The graphed solver is kept on the model: a second reconstruction with the same settings
    captures nothing new and gives the same result; other settings get their own solver."""
    model = qgen_infer.load(qgen_files[("mlp", 4)], backend="reference", device="cuda")
    y = _measure(model, 5, seed=2)
    first = qgen_infer.reconstruct(model, y, batch_size=5, steps=3, cuda_graph=True)
    (solver,) = model._graph_solvers.values()
    captured = dict(solver._steps)
    again = qgen_infer.reconstruct(model, y, batch_size=5, steps=3, cuda_graph=True)
    assert len(model._graph_solvers) == 1 and solver._steps == captured
    np.testing.assert_array_equal(again.x_hat, first.x_hat)
    qgen_infer.reconstruct(model, y, batch_size=5, steps=3, step_size=0.02, cuda_graph=True)
    assert len(model._graph_solvers) == 2


@needs_cuda
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_gpu_triton)])
def test_half_precision_tracks_fp32(qgen_files, backend: str) -> None:
    """fp16 activations (tensor cores) reconstruct what fp32 does, to fp16's accuracy, graphed
    or not: a broken half path (wrong casts, garbage) misses these by orders of magnitude, while
    a support entry flipped by rounding in the hard threshold stays inside them."""
    model = qgen_infer.load(qgen_files[("mlp", 4)], backend=backend, device="cuda")
    y = _measure(model, 6, seed=4)
    kw = dict(batch_size=6, steps=3, seed=1)
    fp32 = qgen_infer.reconstruct(model, y, **kw)
    for graph in (False, True):
        half = qgen_infer.reconstruct(model, y, precision="fp16", cuda_graph=graph, **kw)
        assert half.x_hat.dtype == np.float32
        assert np.abs(half.x_hat - fp32.x_hat).mean() < 2e-2
        np.testing.assert_allclose(half.loss.mean(), fp32.loss.mean(), rtol=5e-2)
