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

Dispatch: ``dispatch="packed"`` (``--backend cpu``) always runs the kernels; ``"measured"``
(``--backend auto``) runs each layer's product, per batch bucket, on whichever of the kernels and
a dense fp32 ``torch`` matmul on weights dequantized once (lazily, the first time a layer needs
them) measured faster here (:mod:`qgen_infer.engine.cpu_dispatch`); ``"dense"`` always the latter.

Convolutions: ``prepare_conv`` / ``conv`` run Conv2d and ConvTranspose2d layers on their own
kernels (:mod:`qgen_infer.engine.cpu_conv`): implicit GEMM over channels-last activations for
layers with at least 16 channels each side, the per-pixel GEMM with col2im / im2col fused for
smaller per-pixel layers, forward and input gradient one call each; measured dispatch chooses
between them and torch's fp32 convolution per layer, direction and batch bucket.

Integer tables: the int8-table kernel (``gemm_planes_i8``; csrc/qgen_cpu.h, "The integer-table
path") rounds each activation row's group sums to 8 bits (max relative error ~1e-2 of the
product). Its tile follows the tier: AVX2 vpshufb (32 columns), AVX-512 vpshufb (64), or, where
the CPU has AVX-512 VBMI and VNNI, vpermb + vpdpbusd over the "quads" layout (``int_table_isa``);
all give the same integers. ``QGEN_CPU_INT_TABLES=auto|on|off``: ``auto`` (default) uses it for
1-bit weights on the AVX2 tier only, the one width where the engine's mean PSNR on the 1,000 MNIST
eval images stayed within 0.01 dB of ``reference`` (+0.0077 dB; 2-4 bits moved it by
0.012-0.024 dB: bench/psnr_int_tables.py) and the tier where it pays (AVX2 has no 16-entry fp32
permute). On AVX-512 the exact kernels stay the default: the tables there gained about 3% of a
1-bit solver step (bench/results/reconstruct-tiers.md), not worth their rounding. ``on``: every
width on any tier with AVX2; ``off``: the exact kernels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qgen_infer.activations import ACTIVATION_IDS, activate_
from qgen_infer.engine.backend import (
    Epilogue,
    MatrixWeight,
    activation_grad_from_output,
)
from qgen_infer.engine.cpu_dispatch import (
    CostTable,
    Dispatcher,
    ProductKey,
    default_cache_path,
    dispatch_mode,
    is_sparse_input,
    m_bucket,
    machine_context,
)


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


INT_TABLE_MODES = ("auto", "on", "off")


INT_TABLE_AUTO_BITS = (1,)  # widths whose PSNR held within 0.01 dB (bench/psnr_int_tables.py)


def int_table_isa(ext: ModuleType, isa: str) -> str:
    """The integer-table kernels' tile for the exact kernels' tier ``isa``: on AVX-512, the
    VBMI/VNNI tile (``avx512vbmi``: vpermb + vpdpbusd) where the CPU has those, else the 64-column
    vpshufb one; AVX2's 32-column one otherwise (the portable tier has none: forced with
    ``QGEN_CPU_INT_TABLES=on``, it runs AVX2's where the CPU has it)."""
    if isa != "avx512":
        return "avx2"
    return "avx512vbmi" if getattr(ext, "has_vbmi_vnni", lambda: False)() else "avx512"


def int_table_bits(ext: ModuleType, isa: str, requested: str | None = None) -> tuple[int, ...]:
    """The weight widths whose packed path runs the int8-table kernels (module docstring)."""
    mode = requested or os.environ.get("QGEN_CPU_INT_TABLES") or "auto"
    if mode not in INT_TABLE_MODES:
        raise ValueError(f"QGEN_CPU_INT_TABLES must be auto, on or off, got {mode!r}")
    if "avx2" not in ext.supported_isas() or not hasattr(ext, "gemm_planes_i8"):
        return ()
    if mode == "on":
        return (1, 2, 3, 4)
    return INT_TABLE_AUTO_BITS if mode == "auto" and isa == "avx2" else ()


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
    ``scale``, ``zero``: float32 ``[N]``. With a dispatching backend, ``source`` keeps the
    codes until :meth:`dense` first dequantizes them to the fp32 ``[N, K]`` matrix.
    """

    words: np.ndarray
    words_t: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    shape: tuple[int, int]
    source: MatrixWeight | None = field(default=None, repr=False)
    _dense: torch.Tensor | None = field(default=None, repr=False)
    # (op, batch bucket, threads) -> "packed" | "dense": the dispatcher's choice for this layer
    routes: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)
    # the integer-table path's codes (forward, transposed) in its tile's layout (nibbles, or
    # quads for the avx512vbmi tile), when the backend uses it
    table_codes: np.ndarray | None = field(default=None, repr=False)
    table_codes_t: np.ndarray | None = field(default=None, repr=False)
    # unit scale and zero offset over K for the transposed int8 product, made with table_codes_t
    unit_scale_t: np.ndarray | None = field(default=None, repr=False)
    zero_offset_t: np.ndarray | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        """The fp32 weight ``scale[n] * (c[n, k] - zero[n])``, dequantized once on first use."""
        if self._dense is None:
            if self.source is None:
                raise RuntimeError("this weight was prepared without its codes for a dense path")
            self._dense = self.source.dequantize().contiguous()
            self.source = None
        return self._dense

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


def dense_gemm(x: torch.Tensor, w: torch.Tensor, ep: Epilogue) -> torch.Tensor:
    """``act(alpha * (x @ wᵀ) + beta)`` in fp32 torch, the epilogue in place on the product
    (the reference's out-of-place epilogue costs 3 passes over [M, N] with allocations)."""
    if ep.alpha is None and ep.beta is not None:
        y = torch.addmm(ep.beta, x, w.t())
    else:
        y = F.linear(x, w)
        if ep.alpha is not None:
            y.mul_(ep.alpha)
        if ep.beta is not None:
            y.add_(ep.beta)
    return activate_(y, ep.activation, ep.negative_slope)


def dense_grad_through_epilogue(g: torch.Tensor, y: torch.Tensor, ep: Epilogue) -> torch.Tensor:
    """``g ⊙ act'(y) ⊙ alpha`` (act' from the output, as ``activation_grad_from_output``), the
    derivative by aten's one-pass backward kernels (what autograd runs for a dense layer)."""
    if ep.activation == "relu":
        h = torch.ops.aten.threshold_backward(g, y, 0.0)
    elif ep.activation == "leaky_relu" and ep.negative_slope >= 0:  # aten's rule for y input
        h = torch.ops.aten.leaky_relu_backward(g, y, ep.negative_slope, True)
    elif ep.activation == "leaky_relu":
        h = g * activation_grad_from_output(y, ep.activation, ep.negative_slope)
    elif ep.activation == "tanh":
        h = torch.ops.aten.tanh_backward(g, y)
    else:
        h = g.clone() if ep.alpha is not None else g
    if ep.alpha is not None:
        h.mul_(ep.alpha)
    return h


class CpuBackend:
    """Packed-weight CPU backend (see the module docstring)."""

    name = "cpu"

    def __init__(self, isa: str | None = None, threads: int = 0, dispatch: str = "packed",
                 cost_table: CostTable | None = None, int_tables: str | None = None) -> None:
        ext = _load()
        if ext is None:
            raise RuntimeError("the CPU kernels (qgen_infer._cpu) are not built; reinstall with "
                               "`pip install -e . --no-build-isolation`")
        self._ext = ext
        self.isa: str = ext.resolve_isa(isa or "")  # raises ValueError if unsupported
        self.threads = threads
        self.thread_pool = choose_thread_pool(ext)
        self.int_table_bits = int_table_bits(ext, self.isa, int_tables)
        self.int_table_isa = int_table_isa(ext, self.isa)
        self.dispatch = dispatch_mode(dispatch)
        self.dispatcher = Dispatcher(cost_table if cost_table is not None
                                     else CostTable(default_cache_path()))

    def __repr__(self) -> str:
        return (f"CpuBackend(isa={self.isa!r}, threads={self.threads or 'torch'}, "
                f"dispatch={self.dispatch!r}, int_table_bits={self.int_table_bits})")

    def _threads(self) -> int:
        """The kernels' thread count: the fixed one, else torch's at call time, so that
        ``torch.set_num_threads`` (qgen-reconstruct --threads) governs the whole solve."""
        return self.threads if self.threads > 0 else torch.get_num_threads()

    def kernel_name(self, bits: int, transposed: bool = False) -> str:
        if bits in self.int_table_bits:
            return f"{'gemm_t' if transposed else 'gemm'}_w{bits}_planes_i8[{self.int_table_isa}]"
        return str(self._ext.kernel_name(bits, transposed, self.isa))

    def prepare(self, weight: MatrixWeight) -> CpuPrepared:
        codes = weight.codes.detach().to("cpu").contiguous().numpy()
        n, _ = weight.shape
        scale = _as_f32_vector(weight.scale, n, "scale")
        zero = _as_f32_vector(weight.zero, n, "zero")
        words = self._ext.repack_planes(codes, weight.bits, False, self._threads())
        words_t = self._ext.repack_planes(codes, weight.bits, True, self._threads())
        source = weight if self.dispatch != "packed" else None
        prepared = CpuPrepared(words, words_t, scale, zero, weight.bits, weight.shape, source)
        if weight.bits in self.int_table_bits:
            repack = self._ext.repack_quads if self.int_table_isa == "avx512vbmi" \
                else self._ext.repack_nibbles
            prepared.table_codes = repack(codes, weight.bits, self._threads())
            prepared.table_codes_t = repack(np.ascontiguousarray(codes.T), weight.bits,
                                            self._threads())
            k = weight.shape[1]
            prepared.unit_scale_t = np.ones(k, np.float32)
            prepared.zero_offset_t = np.zeros(k, np.float32)
        return prepared

    def _route(self, op: str, rows: torch.Tensor, prepared: CpuPrepared,
               run_packed: Callable[[], torch.Tensor], run_dense: Callable[[], torch.Tensor]
               ) -> torch.Tensor:
        """Run the product on the path this backend's dispatch mode picks for it."""
        if self.dispatch == "packed":
            return run_packed()
        if self.dispatch == "dense":
            return run_dense()
        threads, bucket = self._threads(), m_bucket(rows.shape[0])
        route = prepared.routes.get((op, bucket, threads))
        if route is not None:  # the common case: one dict look-up per product
            return run_packed() if route == "packed" else run_dense()
        # First product of this layer at this batch bucket: its input decides the sparse flag
        # (the generator's first layer always reads the s-sparse latent).
        n, k = prepared.shape
        key = ProductKey(op, prepared.bits, n, k, bucket,
                         op == "gemm" and rows.numel() > 0 and is_sparse_input(rows))
        # (a conv plan, engine/cpu_conv.py, has no integer-table codes)
        tier = self.isa + (f"+int8-tables[{self.int_table_isa}]"
                           if getattr(prepared, "table_codes", None) is not None else "")
        context = machine_context(tier, threads)
        if self.dispatcher.known(context, key) is None:
            prepared.dense()  # dequantize before, not inside, the timed calls
        single = threads == 1 and torch.get_num_threads() == 1  # both paths on this thread
        out = self.dispatcher.run(context, key, run_packed, run_dense, single_thread=single)
        prepared.routes[(op, bucket, threads)] = self.dispatcher.choices[(context, key)].path
        return out

    def dispatch_report(self) -> dict[str, object]:
        """What the dispatcher chose in this process, for metrics.json."""
        table = self.dispatcher.table
        return {"mode": self.dispatch, "isa": self.isa, "threads": self._threads(),
                "cost_table": str(table.path) if table.path is not None else None,
                "choices": self.dispatcher.report()}

    def gemm(self, x: torch.Tensor, prepared: CpuPrepared, epilogue: Epilogue | None = None
             ) -> torch.Tensor:
        n, k = prepared.shape
        xa = _check_matrix(x, "x", k, "K")
        ep = epilogue if epilogue is not None else Epilogue()

        def packed() -> torch.Tensor:
            if prepared.table_codes is not None:
                return torch.from_numpy(self._ext.gemm_planes_i8(
                    xa, prepared.table_codes, n, prepared.bits, prepared.scale, prepared.zero,
                    _as_f32_vector(ep.alpha, n, "alpha"), _as_f32_vector(ep.beta, n, "beta"),
                    ACTIVATION_IDS[ep.activation], float(ep.negative_slope), self._threads(),
                    self.int_table_isa))
            return torch.from_numpy(self._ext.gemm_planes_f32(
                xa, prepared.words, n, prepared.bits, prepared.scale, prepared.zero,
                _as_f32_vector(ep.alpha, n, "alpha"), _as_f32_vector(ep.beta, n, "beta"),
                ACTIVATION_IDS[ep.activation], float(ep.negative_slope), self.isa, self._threads()))

        def dense() -> torch.Tensor:
            return dense_gemm(x.detach(), prepared.dense(), ep)

        return self._route("gemm", x, prepared, packed, dense)

    def gemm_t(self, g: torch.Tensor, prepared: CpuPrepared) -> torch.Tensor:
        n, k = prepared.shape
        ga = _check_matrix(g, "g", n, "N")

        def packed() -> torch.Tensor:
            if prepared.table_codes_t is not None:
                return self._gemm_t_int_tables(g.detach(), prepared)
            return torch.from_numpy(self._ext.gemm_t_planes_f32(
                ga, prepared.words_t, k, prepared.bits, prepared.scale, prepared.zero,
                self.isa, self._threads()))

        def dense() -> torch.Tensor:
            return g.detach() @ prepared.dense()

        return self._route("gemm_t", g, prepared, packed, dense)

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
        def packed() -> torch.Tensor:
            if prepared.table_codes_t is not None:
                h = dense_grad_through_epilogue(grad_y.detach(), y.detach(), epilogue)
                return self._gemm_t_int_tables(h, prepared)
            return torch.from_numpy(self._ext.gemm_t_planes_f32(
                ga, prepared.words_t, k, prepared.bits, prepared.scale, prepared.zero, self.isa,
                self._threads(), ya, _as_f32_vector(epilogue.alpha, n, "alpha"),
                ACTIVATION_IDS[epilogue.activation], float(epilogue.negative_slope)))

        def dense() -> torch.Tensor:
            return dense_grad_through_epilogue(grad_y.detach(), y.detach(), epilogue) \
                @ prepared.dense()

        return self._route("gemm_t_epi", grad_y, prepared, packed, dense)

    def prepare_conv(self, module: Any) -> Any:
        """A conv layer's implicit-GEMM plan (``cpu_conv``), or None: the layer then runs on
        the GEMM products (per pixel or im2col, ``packed_modules``)."""
        if not hasattr(self._ext, "conv_planes_f32"):
            return None
        from qgen_infer.engine.cpu_conv import plan_conv

        return plan_conv(self._ext, module, self._threads())

    def conv(self, x: torch.Tensor, plan: Any, epilogue: Epilogue) -> torch.Tensor:
        """``act(alpha * conv(x) + beta)`` of the layer ``plan`` describes, with autograd; the
        output is channels-last in memory."""
        from qgen_infer.engine.cpu_conv import cpu_conv

        return cpu_conv(x, self, plan, epilogue)

    def _gemm_t_int_tables(self, h: torch.Tensor, prepared: CpuPrepared) -> torch.Tensor:
        """``h @ W`` by the int8-table kernel over the transposed codes: with ``u = h * scale``,
        ``sum_n u[m, n] (c[n, k] - zero[n]) = (u @ c)[m, k] - u[m] . zero`` (the kernel with unit
        scale and zero 0 gives ``u @ c``; the row term is one matrix-vector product)."""
        n, k = prepared.shape
        scale = torch.from_numpy(prepared.scale)
        u = (h * scale).contiguous()
        uc = torch.from_numpy(self._ext.gemm_planes_i8(
            u.numpy(), prepared.table_codes_t, k, prepared.bits, prepared.unit_scale_t,
            prepared.zero_offset_t, None, None, 0, 0.0, self._threads(), self.int_table_isa))
        return uc.sub_((u @ torch.from_numpy(prepared.zero))[:, None])


def create_backend(isa: str | None = None, threads: int = 0, dispatch: str = "packed",
                   int_tables: str | None = None) -> CpuBackend:
    """The CPU backend; ``isa`` (``"portable"``, ``"avx2"``, ``"avx512"``) overrides the run-time
    choice and ``QGEN_CPU_ISA``; ``threads = 0`` follows ``torch.get_num_threads()`` at each call
    (so ``torch.set_num_threads`` sets the kernels' threads too); ``dispatch``: ``"packed"``
    (always the kernels), ``"measured"`` (per product, the faster of the kernels and a dense
    fp32 matmul) or ``"dense"``; ``int_tables``: ``"auto"``, ``"on"`` or ``"off"`` (default:
    ``QGEN_CPU_INT_TABLES``, else ``"auto"``; see the module docstring)."""
    return CpuBackend(isa, threads, dispatch, int_tables=int_tables)


__all__ = ["CpuBackend", "CpuPrepared", "create_backend", "is_available", "supported_isas"]
