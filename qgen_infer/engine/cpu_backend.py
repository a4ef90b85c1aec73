"""The ``cpu`` backend: bit-plane LUT GEMM kernels over packed 1-4-bit codes (``qgen_infer._cpu``).

Implements the contract of :mod:`qgen_infer.engine.backend` with fp32 activations and fp32
accumulation:

* ``gemm(x[M, K]) = act(alpha[n] * x @ Wᵀ + beta[n])``,
* ``gemm_t(g[M, N]) = g @ W``,

with ``W[n, k] = scale[n] * (c[n, k] - zero[n])`` never materialised: ``prepare`` repacks the
codes once into two bit-plane copies (``k`` bits per weight each; one with output rows in SIMD
lanes for ``gemm``, one transposed for ``gemm_t``), and the kernels look up 16-entry tables of
signed activation sums, 4 codes' plane bits at a time (T-MAC style, fp32 tables). Layout and
math: ``csrc/qgen_cpu.h``.

The instruction set is picked at run time (AVX-512, AVX2+FMA, portable C++); ``QGEN_CPU_ISA``
or the ``isa`` argument of :func:`create_backend` overrides it. Threads: the kernels' parallel
items run on an OpenMP team when the extension shares torch's OpenMP runtime (torch's workers,
which spin between the sensing net's operators, then do them), else on the extension's own
workers (``csrc/thread_pool.h``); ``QGEN_CPU_POOL=own|openmp`` overrides the choice. Tensors
cross into C++ as numpy views of CPU tensors: the extension does not link libtorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from qgen_infer.engine.backend import ACTIVATIONS, Epilogue, MatrixWeight

_ACT_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}  # must match csrc/module.cpp Act


def _load() -> ModuleType | None:
    try:
        from qgen_infer import _cpu
    except ImportError:
        return None
    return _cpu


_POOL_CHOICE: str | None = None


def shares_openmp_with_torch(ext: ModuleType) -> bool:
    """Whether the extension's OpenMP runtime is torch's: ``torch.set_num_threads`` then reaches
    the extension's ``omp_get_max_threads`` (probed with a changed count, then restored)."""
    before = torch.get_num_threads()
    probe = before + 1 if before < 512 else before - 1
    try:
        torch.set_num_threads(probe)
        return int(ext.max_threads()) == probe
    finally:
        torch.set_num_threads(before)


def choose_thread_pool(ext: ModuleType) -> str:
    """``"openmp"`` or ``"own"`` for this process (decided once; ``QGEN_CPU_POOL`` overrides)."""
    global _POOL_CHOICE
    if _POOL_CHOICE is None:
        want = os.environ.get("QGEN_CPU_POOL", "auto")
        if want not in ("auto", "own", "openmp"):
            raise ValueError(f"QGEN_CPU_POOL must be auto, own or openmp, got {want!r}")
        use = want == "openmp" or (want == "auto" and shares_openmp_with_torch(ext))
        _POOL_CHOICE = "openmp" if ext.set_use_openmp(use) else "own"
    return _POOL_CHOICE


def is_available() -> bool:
    """Whether the compiled extension ``qgen_infer._cpu`` can be imported."""
    return _load() is not None


def supported_isas() -> list[str]:
    """Instruction sets this CPU and OS can run, from ``"portable"`` up (empty without the
    extension)."""
    ext = _load()
    return list(ext.supported_isas()) if ext is not None else []


@dataclass
class CpuPrepared:
    """A weight repacked for the CPU kernels.

    ``words``: uint32 bit planes with columns ``n`` (for ``gemm``); ``words_t``: with columns
    ``k`` (for ``gemm_t``); each ``ceil(cols/16) * ceil(red/32) * bits * 16`` words.
    ``scale``, ``zero``: float32 ``[N]``.
    """

    words: np.ndarray
    words_t: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes one product streams (one copy)."""
        return int(self.words.nbytes)


def _as_f32_vector(t: torch.Tensor | None, n: int, name: str) -> np.ndarray | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def _check_matrix(t: torch.Tensor, name: str, cols: int, cols_name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [M, {cols_name}], got shape {tuple(t.shape)}")
    if t.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns ({cols_name}), got shape "
                         f"{tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous())")
    return t.detach().numpy()


class CpuBackend:
    """Packed-weight CPU backend (see the module docstring)."""

    name = "cpu"

    def __init__(self, isa: str | None = None, threads: int = 0) -> None:
        ext = _load()
        if ext is None:
            raise RuntimeError("the CPU kernels (qgen_infer._cpu) are not built; reinstall with "
                               "`pip install -e . --no-build-isolation`")
        self._ext = ext
        self.isa: str = ext.resolve_isa(isa or "")  # raises ValueError if unsupported
        self.threads = threads
        self.thread_pool = choose_thread_pool(ext)

    def __repr__(self) -> str:
        return f"CpuBackend(isa={self.isa!r}, threads={self.threads or 'torch'})"

    def _threads(self) -> int:
        """The kernels' thread count: the fixed one, else torch's at call time, so that
        ``torch.set_num_threads`` (qgen-reconstruct --threads) governs the whole solve."""
        return self.threads if self.threads > 0 else torch.get_num_threads()

    def kernel_name(self, bits: int, transposed: bool = False) -> str:
        return str(self._ext.kernel_name(bits, transposed, self.isa))

    def prepare(self, weight: MatrixWeight) -> CpuPrepared:
        codes = weight.codes.detach().to("cpu").contiguous().numpy()
        n, _ = weight.shape
        scale = _as_f32_vector(weight.scale, n, "scale")
        zero = _as_f32_vector(weight.zero, n, "zero")
        words = self._ext.repack_planes(codes, weight.bits, False, self._threads())
        words_t = self._ext.repack_planes(codes, weight.bits, True, self._threads())
        return CpuPrepared(words, words_t, scale, zero, weight.bits, weight.shape)

    def gemm(self, x: torch.Tensor, prepared: CpuPrepared, epilogue: Epilogue | None = None
             ) -> torch.Tensor:
        n, k = prepared.shape
        xa = _check_matrix(x, "x", k, "K")
        ep = epilogue if epilogue is not None else Epilogue()
        y = self._ext.gemm_planes_f32(
            xa, prepared.words, n, prepared.bits, prepared.scale, prepared.zero,
            _as_f32_vector(ep.alpha, n, "alpha"), _as_f32_vector(ep.beta, n, "beta"),
            _ACT_CODES[ep.activation], float(ep.negative_slope), self.isa, self._threads())
        return torch.from_numpy(y)

    def gemm_t(self, g: torch.Tensor, prepared: CpuPrepared) -> torch.Tensor:
        n, k = prepared.shape
        ga = _check_matrix(g, "g", n, "N")
        out = self._ext.gemm_t_planes_f32(ga, prepared.words_t, k, prepared.bits,
                                          prepared.scale, prepared.zero, self.isa,
                                          self._threads())
        return torch.from_numpy(out)

    def gemm_t_through_epilogue(self, grad_y: torch.Tensor, y: torch.Tensor,
                                prepared: CpuPrepared, epilogue: Epilogue) -> torch.Tensor:
        """``(grad_y ⊙ act'(y) ⊙ alpha) @ W``: the input gradient of ``gemm`` given its output
        ``y``, with the epilogue's derivative applied row by row inside the kernel."""
        n, k = prepared.shape
        ga = _check_matrix(grad_y, "grad_y", n, "N")
        ya = _check_matrix(y, "y", n, "N")
        if ya.shape != ga.shape:
            raise ValueError(f"y must have the shape of grad_y {tuple(ga.shape)}, got "
                             f"{tuple(ya.shape)}")
        out = self._ext.gemm_t_planes_f32(
            ga, prepared.words_t, k, prepared.bits, prepared.scale, prepared.zero, self.isa,
            self._threads(), ya, _as_f32_vector(epilogue.alpha, n, "alpha"),
            _ACT_CODES[epilogue.activation], float(epilogue.negative_slope))
        return torch.from_numpy(out)


def create_backend(isa: str | None = None, threads: int = 0) -> CpuBackend:
    """The CPU backend; ``isa`` (``"portable"``, ``"avx2"``, ``"avx512"``) overrides the run-time
    choice and ``QGEN_CPU_ISA``; ``threads = 0`` follows ``torch.get_num_threads()`` at each call
    (so ``torch.set_num_threads`` sets the kernels' threads too)."""
    return CpuBackend(isa, threads)


__all__ = ["CpuBackend", "CpuPrepared", "create_backend", "is_available", "supported_isas"]
