"""Every kernel the project runs, on every CPU tier and Triton launch path, with the plain-torch
reference it must equal; ``tests/test_kernel_registry.py`` walks :data:`KERNELS` and checks that
no kernel entry point is left out of it.

A kernel entry point is a public function of the CPU extension ``qgen_infer._cpu`` (listed as
``_cpu.<name>``; the few that only answer questions are :data:`CPU_QUERIES`) or a public
``@triton.jit`` function of ``qgen_infer.kernels`` outside ``common.py`` (the device helpers live
there or start with ``_``), listed as ``kernels.<module>.<name>`` with its launcher. Each
:class:`KernelEntry` names in ``covers`` the entry points its run goes through.

The ops, each on a weight ``W = scale (codes - zero)`` of k-bit codes (k = 1..4):

* ``gemm``: ``act(alpha (x Wᵀ) + beta)``, ``x [M, K] -> [M, N]``; ``gemm_t``: ``g W``,
  ``g [M, N] -> [M, K]``; ``gemm_t_epi``: ``(g ⊙ act'(y) ⊙ alpha) W``, the input gradient through
  the epilogue (``y`` the gemm's output); ``gemm_sparse_x``: ``gemm`` on rows at most 1/5 nonzero,
  which the CPU tiers run on their sparse-row kernel;
* ``gemm_i8``: ``gemm`` on the int8 activation tables, which round: its reference rounds the
  same way (``lut_i8_reference.py``); ``lut_i8_sums``: that path's integer sums, exact; per tile
  (AVX2, AVX-512, AVX-512 VBMI/VNNI: :data:`I8_TILES`);
* ``conv2d`` / ``conv_transpose2d``: ``act(alpha conv(x, V) + beta)`` as ``F.conv2d`` /
  ``F.conv_transpose2d`` compute it, ``V`` the decoded weight;
* ``conv_transpose2d_pixels``: ``conv_transpose2d`` on the tap-major per-pixel view, col2im in
  the kernel (layers under 16 channels); ``conv_transpose2d_pixels_t``: its input gradient
  through the epilogue, ``conv2d(g ⊙ act'(y) ⊙ alpha, V)``;
* ``mlp_step``: one proximal-gradient step of the MLP model in one launch, ``(z', loss)``;
* ``kth_largest_abs``: per row the s-th largest ``|z|``; ``proximal_step``:
  ``P_s(z - beta g)``, then ``/ max(‖.‖, eps)`` per row.

Each op draws random cases on awkward shapes (odd sizes, batch 1, every code drawn) and states
the error it allows per element: ``1e-5`` of the size of the summed terms for float products
(``|a| |W|``, times ``|alpha|``, plus ``|beta|``), 0 for integer results and selections.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from qgen_infer.activations import (
    ACTIVATIONS,
    activate,
    activation_grad_from_output,
    activation_id,
)
from qgen_infer.engine.backend import MatrixWeight

CPU_TIERS = ("portable", "avx2", "avx512")
BITS = (1, 2, 3, 4)
RTOL = 1e-5  # float products, relative to the size of the summed terms

# Public functions of qgen_infer._cpu that run no kernel: they answer questions or set knobs.
CPU_QUERIES = {
    "supported_isas": "the tiers this CPU and OS support",
    "best_isa": "the tier chosen by default",
    "resolve_isa": "the tier a call runs",
    "kernel_name": "a product's kernel name, for benchmark ids",
    "max_threads": "OpenMP's thread count",
    "set_use_openmp": "the thread-pool switch",
    "uses_openmp": "the thread-pool switch's state",
    "pool_stats": "the thread pool's counters",
    "planes_words": "the bit-plane layout's size",
    "nibbles_bytes": "the int8-table layout's size",
    "quads_bytes": "the VBMI/VNNI int8-table layout's size",
    "has_vbmi_vnni": "whether the CPU runs the avx512vbmi int8-table tile",
}
# the int8-table tiles (avx512vbmi: vpermb + vpdpbusd over the quads layout)
I8_TILES = ("avx2", "avx512", "avx512vbmi")


@dataclass(frozen=True)
class KernelEntry:
    """One op on one backend. ``variant``: the CPU tier (``any``: scalar code outside the tiers),
    or the Triton launch path; ``covers``: the entry points its run goes through."""

    backend: str
    variant: str
    op: str
    covers: tuple[str, ...] = field(compare=False)

    @property
    def name(self) -> str:
        return f"{self.backend}[{self.variant}].{self.op}"


@dataclass
class Case:
    """One random input of an op (``label`` says which, for failure messages)."""

    label: str
    inputs: dict[str, Any]


# --- the float products ------------------------------------------------------------------------

PRODUCTS = ("gemm", "gemm_t", "gemm_t_epi")
# gemm on rows at most 1/5 nonzero (the s-sparse latent into the first layer): the CPU tiers'
# sparse-row kernel (KernelSet::sparse_row) instead of the LUT tiles
SPARSE_GEMM = "gemm_sparse_x"
# (M, N, K) per width: batch 1, primes, sizes off every block multiple
PRODUCT_SHAPES = ((1, 37, 70), (5, 13, 33), (3, 1, 9), (7, 40, 65))

_CPU_PRODUCT = {"gemm": ("_cpu.gemm_planes_f32", "_cpu.repack_planes"),
                SPARSE_GEMM: ("_cpu.gemm_planes_f32", "_cpu.repack_planes"),
                "gemm_t": ("_cpu.gemm_t_planes_f32", "_cpu.repack_planes"),
                "gemm_t_epi": ("_cpu.gemm_t_planes_f32", "_cpu.repack_planes")}
_TRITON_PRODUCT = {"gemm": "kernels.gemm.gemm", "gemm_t": "kernels.gemm_t.gemm_t",
                   "gemm_t_epi": "kernels.gemm_t.gemm_t"}
# Triton launch paths: (path, block_m, block_n, block_k, split, word_decode); "split" cuts the
# reduction in 3 and sums the partials with the split-K kernel.
TRITON_PATHS = {"dot": ("dot", 16, 32, 32, 1, False), "dot-words": ("dot", 16, 32, 64, 1, True),
                "gemv": ("gemv", 1, 32, 32, 1, False), "split": ("dot", 16, 16, 16, 3, False)}


def _triton_covers(op: str, variant: str) -> tuple[str, ...]:
    module = "gemm" if op == "gemm" else "gemm_t"
    path = TRITON_PATHS[variant][0]
    out = (_TRITON_PRODUCT[op], f"kernels.{module}.{module}_kpack_{path}_kernel")
    return out + (("kernels.splitk.splitk_reduce", "kernels.splitk.splitk_reduce_kernel")
                  if TRITON_PATHS[variant][4] > 1 else ())


def _weight(gen: torch.Generator, n: int, k: int, bits: int) -> MatrixWeight:
    codes = torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.uint8)
    every = min(2**bits, n * k)
    codes.view(-1)[:every] = torch.arange(every, dtype=torch.uint8)  # every code, room allowing
    scale = torch.rand(n, generator=gen) * 0.1 + 0.01
    zero = torch.rand(n, generator=gen) * (2**bits - 1)
    return MatrixWeight(codes, scale, zero, bits)


def _dense(weight: MatrixWeight) -> torch.Tensor:
    """fp64 ``W`` decoded by plain torch."""
    return weight.scale.double()[:, None] * (weight.codes.double() - weight.zero.double()[:, None])


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """fp64 ``v [C]`` shaped to broadcast over dimension 1 (channels / columns) of ``like``."""
    return v.double().reshape(1, -1, *[1] * (like.dim() - 2))


def _epilogue_ref(acc: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
    """``act(alpha acc + beta)`` in fp64 with the case's alpha, beta and activation."""
    pre = acc * _per_channel(c["alpha"], acc) + _per_channel(c["beta"], acc)
    return activate(pre, c["act"], c["slope"])


def _epilogue_bound(acc_bound: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
    """The size of the terms the epilogue sums: ``|alpha| bound + |beta|``."""
    return (acc_bound * _per_channel(c["alpha"], acc_bound).abs()
            + _per_channel(c["beta"], acc_bound).abs())


def _product_cases(entry: KernelEntry, gen: torch.Generator) -> list[Case]:
    out = []
    per_width = 1 if entry.backend == "triton" else 2  # the interpreter is slow
    for i, bits in enumerate(BITS):
        for j in range(per_width):
            m, n, k = PRODUCT_SHAPES[(i + j) % len(PRODUCT_SHAPES)]
            w = _weight(gen, n, k, bits)
            act = ACTIVATIONS[(i + j) % len(ACTIVATIONS)]
            alpha = torch.rand(n, generator=gen) + 0.5
            beta = torch.randn(n, generator=gen)
            x = torch.randn(m, k, generator=gen)
            if entry.op == SPARSE_GEMM:  # max(1, K // 8) nonzeros a row: under the 1/5 cut
                keep = torch.rand(m, k, generator=gen).argsort(dim=1)[:, :max(1, k // 8)]
                x = x * torch.zeros(m, k).scatter_(1, keep, 1.0)
            c = dict(weight=w, alpha=alpha, beta=beta, act=act, slope=0.2)
            c["y"] = _epilogue_ref(x.double() @ _dense(w).t(), c).float()  # the forward's output
            c["a"] = x if entry.op in ("gemm", SPARSE_GEMM) else torch.randn(m, n, generator=gen)
            out.append(Case(f"w{bits} M={m} N={n} K={k} {act}", c))
    return out


def _run_product(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    if entry.backend == "cpu":
        from qgen_infer.engine.backend import Epilogue
        from qgen_infer.engine.cpu_backend import CpuBackend

        # the exact fp32 tables: the int8 ones are the gemm_i8 entry
        backend = CpuBackend(isa=entry.variant, dispatch="packed", int_tables="off")
        prepared = backend.prepare(c["weight"])
        ep = Epilogue(c["alpha"], c["beta"], c["act"], c["slope"])
        if entry.op in ("gemm", SPARSE_GEMM):
            return backend.gemm(c["a"], prepared, ep)
        if entry.op == "gemm_t":
            return backend.gemm_t(c["a"], prepared)
        return backend.gemm_t_through_epilogue(c["a"], c["y"], prepared, ep)
    from qgen_infer.kernels.configs import KernelConfig
    from qgen_infer.kernels.gemm import gemm
    from qgen_infer.kernels.gemm_t import gemm_t
    from qgen_infer.kernels.layout import PackedKWords

    path, bm, bn, bk, split, words = TRITON_PATHS[entry.variant]
    cfg = KernelConfig(path, bm, bn, bk, split=split, word_decode=words)
    w = c["weight"]
    device = _triton_device()
    packed = PackedKWords.from_codes(w.codes, w.scale, w.zero, w.bits, device)
    a, alpha, beta = (c[name].to(device) for name in ("a", "alpha", "beta"))
    if entry.op == "gemm":
        return gemm(a, packed, alpha, beta, c["act"], c["slope"], config=cfg).cpu()
    if entry.op == "gemm_t":
        return gemm_t(a, packed, cfg).cpu()
    return gemm_t(a, packed, cfg, y=c["y"].to(device), alpha=alpha, activation=c["act"],
                  negative_slope=c["slope"]).cpu()


def _epilogue_gradient(c: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``g ⊙ act'(y) ⊙ alpha`` and its size, fp64."""
    d = activation_grad_from_output(c["y"].double(), c["act"], c["slope"])
    h = c["a"].double() * d * c["alpha"].double()
    return h, c["a"].double().abs() * d.abs() * c["alpha"].double().abs()


def _reference_product(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    w = _dense(c["weight"])
    if entry.op in ("gemm", SPARSE_GEMM):
        return _epilogue_ref(c["a"].double() @ w.t(), c)
    if entry.op == "gemm_t":
        return c["a"].double() @ w
    return _epilogue_gradient(c)[0] @ w


def _allowed_product(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    w = _dense(c["weight"]).abs()
    if entry.op in ("gemm", SPARSE_GEMM):
        bound = _epilogue_bound(c["a"].double().abs() @ w.t(), c)
    elif entry.op == "gemm_t":
        bound = c["a"].double().abs() @ w
    else:
        bound = _epilogue_gradient(c)[1] @ w
    return RTOL * bound + 1e-6


# --- the AVX2 int8-table path ------------------------------------------------------------------

def _i8_cases(entry: KernelEntry, gen: torch.Generator) -> list[Case]:
    # past one 16-bit run of sums (256 groups = 1024 k) once; batch 1; 1 column
    shapes = ((1, 37, 70), (5, 33, 97), (3, 1, 9), (2, 40, 1030))
    out = []
    for bits, (m, n, k) in zip(BITS, shapes, strict=True):
        w = _weight(gen, n, k, bits)
        act = ACTIVATIONS[bits % len(ACTIVATIONS)]
        out.append(Case(f"w{bits} M={m} N={n} K={k} {act}",
                        dict(weight=w, a=torch.randn(m, k, generator=gen),
                             alpha=torch.rand(n, generator=gen) + 0.5,
                             beta=torch.randn(n, generator=gen), act=act, slope=0.2)))
    return out


def _run_i8(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer import _cpu

    c = case.inputs
    w = c["weight"]
    repack = _cpu.repack_quads if entry.variant == "avx512vbmi" else _cpu.repack_nibbles
    nib = repack(w.codes.numpy(), w.bits)
    if entry.op == "lut_i8_sums":
        sums, rs = _cpu.lut_i8_sums(c["a"].numpy(), nib, w.codes.shape[0], w.bits,
                                    isa=entry.variant)
        return torch.cat([torch.from_numpy(sums).double(), torch.from_numpy(rs).double()[:, None]],
                         dim=1)
    y = _cpu.gemm_planes_i8(c["a"].numpy(), nib, w.codes.shape[0], w.bits, w.scale.numpy(),
                            w.zero.numpy(), c["alpha"].numpy(), c["beta"].numpy(),
                            activation_id(c["act"]), c["slope"], isa=entry.variant)
    return torch.from_numpy(y)


def _reference_i8(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer.engine.lut_i8_reference import gemm_i8_reference, integer_sums

    c = case.inputs
    w = c["weight"]
    if entry.op == "lut_i8_sums":
        sums, rs = integer_sums(c["a"], w.codes, w.bits)
        return torch.cat([sums.double(), rs.double()[:, None]], dim=1)
    acc = gemm_i8_reference(c["a"], w.codes, w.bits, w.scale, w.zero)
    return _epilogue_ref(acc.double(), c)


def _allowed_i8(entry: KernelEntry, case: Case) -> torch.Tensor | float:
    if entry.op == "lut_i8_sums":
        return 0.0
    c = case.inputs
    bound = c["a"].double().abs() @ _dense(c["weight"]).abs().t()
    return RTOL * _epilogue_bound(bound, c) + 1e-6


# --- the Triton implicit-GEMM convolutions -----------------------------------------------------

# conv2d: (N, C, kh, kw), (B, H, W), stride, padding, dilation;
# conv_transpose2d: V's (C_out, C_in, kh, kw), (B, H, W), stride, padding, dilation, output pad.
CONV_CASES = (((7, 5, 3, 3), (1, 9, 8), 1, 1, 1), ((4, 3, 4, 4), (2, 11, 6), 2, (1, 2), 1),
              ((6, 13, 1, 1), (2, 5, 7), 1, 0, 1), ((3, 2, 3, 2), (1, 10, 9), (2, 1), 0, (2, 3)))
CONVT_CASES = (((6, 5, 4, 4), (1, 4, 5), 2, 1, 1, 1), ((3, 8, 3, 3), (2, 5, 3), 1, 1, 1, 0),
               ((5, 2, 1, 1), (2, 3, 3), 2, 0, 1, 1), ((4, 3, 3, 3), (1, 4, 5), 2, 1, 2, 1))


def _conv_cases(entry: KernelEntry, gen: torch.Generator) -> list[Case]:
    out = []
    geometries = CONV_CASES if entry.op == "conv2d" else CONVT_CASES
    for bits, geometry in zip(BITS, geometries, strict=True):
        shape, (b, h, w_) = geometry[:2]
        codes = torch.randint(0, 2**bits, shape, generator=gen, dtype=torch.uint8)
        every = min(2**bits, codes.numel())
        codes.view(-1)[:every] = torch.arange(every, dtype=torch.uint8)
        on_k = bits % 2 == 0  # the scale on the input channel (a gradient's layout) or output
        length = shape[1] if on_k else shape[0]
        scale = torch.rand(length, generator=gen) * 0.2 + 0.05
        zero = (2**bits - 1) / 2 + 0.3 * torch.randn(length, generator=gen)
        act = ACTIVATIONS[bits % len(ACTIVATIONS)]
        kw = dict(stride=geometry[2], padding=geometry[3], dilation=geometry[4])
        if entry.op == "conv_transpose2d":
            kw["output_padding"] = geometry[5]
        out.append(Case(f"w{bits} V{shape} x{(b, shape[1], h, w_)} {kw} {act}",
                        dict(codes=codes, scale=scale, zero=zero, bits=bits, on_k=on_k,
                             x=torch.randn(b, shape[1], h, w_, generator=gen),
                             alpha=torch.rand(shape[0], generator=gen) + 0.5,
                             beta=torch.randn(shape[0], generator=gen), act=act, slope=0.2,
                             geometry=kw)))
    return out


def _conv_dense(c: dict[str, Any]) -> torch.Tensor:
    axis = (1, -1, 1, 1) if c["on_k"] else (-1, 1, 1, 1)
    return c["scale"].double().reshape(axis) * (c["codes"].double()
                                                - c["zero"].double().reshape(axis))


def _run_conv(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer.kernels.conv import PackedConvWeight, conv2d, conv_transpose2d

    c = case.inputs
    if entry.backend == "cpu":
        return _run_conv_cpu(entry, c)
    device = _triton_device()
    w = PackedConvWeight.from_codes(c["codes"], c["scale"], c["zero"], c["bits"], c["on_k"],
                                    device)
    run = conv2d if entry.op == "conv2d" else conv_transpose2d
    return run(c["x"].to(device), w, **c["geometry"], alpha=c["alpha"].to(device),
               beta=c["beta"].to(device), activation=c["act"], negative_slope=c["slope"]).cpu()


def _run_conv_cpu(entry: KernelEntry, c: dict[str, Any]) -> torch.Tensor:
    """The CPU implicit GEMM (csrc/conv.cpp) on channels-last x, one thread."""
    from qgen_infer import _cpu
    from qgen_infer.engine.backend import Epilogue
    from qgen_infer.engine.cpu_conv import pack_direction, run_direction

    geo = {k: (v, v) if isinstance(v, int) else tuple(v) for k, v in c["geometry"].items()}
    d = pack_direction(_cpu, c["codes"], c["scale"], c["zero"], c["bits"],
                       entry.op == "conv_transpose2d", not c["on_k"], geo["stride"],
                       geo["padding"], geo["dilation"], 1)
    out_hw = _torch_conv(entry.op, c["x"][:1].double(), _conv_dense(c), c["geometry"]).shape[2:]
    ep = Epilogue(c["alpha"], c["beta"], c["act"], c["slope"])
    y = run_direction(_cpu, d, c["x"].permute(0, 2, 3, 1).contiguous(), tuple(out_hw), ep,
                      entry.variant, 1)
    return y.permute(0, 3, 1, 2)


def _torch_conv(op: str, x: torch.Tensor, v: torch.Tensor, geometry: dict) -> torch.Tensor:
    if op == "conv2d":
        return F.conv2d(x, v, **geometry)
    return F.conv_transpose2d(x, v.permute(1, 0, 2, 3), **geometry)


def _reference_conv(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    acc = _torch_conv(entry.op, c["x"].double(), _conv_dense(c), c["geometry"])
    return _epilogue_ref(acc, c)


def _allowed_conv(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    bound = _torch_conv(entry.op, c["x"].double().abs(), _conv_dense(c).abs(), c["geometry"])
    return RTOL * _epilogue_bound(bound, c) + 1e-6


# --- the per-pixel convolutions (layers under 16 channels; csrc/conv_pixels.cpp) ------------

PIXEL_OPS = ("conv_transpose2d_pixels", "conv_transpose2d_pixels_t")
_AS_CONVT = KernelEntry("cpu", "any", "conv_transpose2d", ())


def _pixel_cases(entry: KernelEntry, gen: torch.Generator) -> list[Case]:
    """The conv_transpose2d cases, with the scale on the output channel (the per-pixel view has
    one per row); for the input gradient also the forward's output ``y`` and a gradient ``g``."""
    out = []
    for case in _conv_cases(_AS_CONVT, gen):
        c = case.inputs
        n = c["codes"].shape[0]
        c.update(on_k=False, scale=torch.rand(n, generator=gen) * 0.2 + 0.05,
                 zero=(2**c["bits"] - 1) / 2 + 0.3 * torch.randn(n, generator=gen))
        if entry.op == "conv_transpose2d_pixels_t":
            c["y"] = _reference_conv(_AS_CONVT, case).float()
            c["g"] = torch.randn(c["y"].shape, generator=gen)
        out.append(case)
    return out


def _run_pixels(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer import _cpu
    from qgen_infer.activations import activation_id

    c = case.inputs
    n, ch, kh, kw = c["codes"].shape
    view = c["codes"].permute(2, 3, 0, 1).reshape(kh * kw * n, ch).contiguous().numpy()
    scale, zero = (v.repeat(kh * kw).contiguous().numpy() for v in (c["scale"], c["zero"]))
    pair = {k: (v, v) if isinstance(v, int) else tuple(v) for k, v in c["geometry"].items()}
    x = c["x"].permute(0, 2, 3, 1).contiguous()
    oh, ow = _torch_conv("conv_transpose2d", c["x"][:1].double(), _conv_dense(c),
                         c["geometry"]).shape[2:]
    geometry = torch.tensor([x.shape[1], x.shape[2], oh, ow, kh, kw, *pair["stride"],
                             *pair["padding"], *pair["dilation"]]).numpy()
    act = activation_id(c["act"])
    if entry.op == "conv_transpose2d_pixels":
        words = _cpu.repack_planes(view, c["bits"], False, 1)
        y = _cpu.conv_pixels_f32(x.numpy(), words, n, c["bits"], scale, zero, geometry,
                                 c["alpha"].numpy(), c["beta"].numpy(), act, c["slope"],
                                 entry.variant, 1)
    else:
        words_t = _cpu.repack_planes(view, c["bits"], True, 1)
        g, yf = (c[k].permute(0, 2, 3, 1).contiguous().numpy() for k in ("g", "y"))
        y = _cpu.conv_pixels_t_f32(g, words_t, ch, c["bits"], scale, zero, geometry, yf,
                                   c["alpha"].numpy(), act, c["slope"], entry.variant, 1)
    return torch.from_numpy(y).permute(0, 3, 1, 2)


def _pixel_gradient_rows(c: dict[str, Any]) -> torch.Tensor:
    """``g ⊙ act'(y) ⊙ alpha`` in fp64 (channels on dimension 1)."""
    d = activation_grad_from_output(c["y"].double(), c["act"], c["slope"])
    return c["g"].double() * d * _per_channel(c["alpha"], d)


def _reference_pixels(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    if entry.op == "conv_transpose2d_pixels":
        return _reference_conv(_AS_CONVT, case)
    # the input gradient of conv_transpose2d by V[n, c] is conv2d by V[c, n]
    return F.conv2d(_pixel_gradient_rows(c), _conv_dense(c).permute(1, 0, 2, 3), **{
        k: v for k, v in c["geometry"].items() if k != "output_padding"})


def _allowed_pixels(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    if entry.op == "conv_transpose2d_pixels":
        return _allowed_conv(_AS_CONVT, case)
    bound = F.conv2d(_pixel_gradient_rows(c).abs(), _conv_dense(c).abs().permute(1, 0, 2, 3), **{
        k: v for k, v in c["geometry"].items() if k != "output_padding"})
    return RTOL * bound + 1e-6


# --- the fused solver step ---------------------------------------------------------------------

# (D, H1, H2, P, S1, S2, M): odd widths, one past a block of 32, one measurement
STEP_WIDTHS = ((37, 13, 21, 33, 20, 17, 5), (65, 40, 31, 9, 3, 5, 1))


def _packed_layer(gen: torch.Generator, n: int, k: int, bits: int, act: str) -> Any:
    from qgen_infer.kernels.fused_step import PackedLayerOp
    from qgen_infer.kernels.layout import PackedKWords

    device = _triton_device()
    w = _weight(gen, n, k, bits)
    scale = w.scale / (k**0.5 * 2**bits) * 10  # keeps the activations O(1)
    return PackedLayerOp(PackedKWords.from_codes(w.codes, scale, w.zero, bits, device),
                         (torch.rand(n, generator=gen) + 0.5).to(device),
                         (0.1 * torch.randn(n, generator=gen)).to(device), act, 0.2)


def _dense_layer(gen: torch.Generator, n: int, k: int, act: str) -> Any:
    from qgen_infer.kernels.fused_step import DenseLayerOp

    device = _triton_device()
    return DenseLayerOp((torch.randn(n, k, generator=gen) / k**0.5).to(device),
                        (0.1 * torch.randn(n, generator=gen)).to(device), act, 0.1)


def _step_cases(entry: KernelEntry, gen: torch.Generator) -> list[Case]:
    from qgen_infer.kernels.fused_step import MlpStep

    out = []
    for i, bits in enumerate(BITS):
        d, h1, h2, p, s1, s2, m = STEP_WIDTHS[i % 2]
        batch = (1, 19)[i // 2]
        sparsity = None if bits == 2 else max(1, d // 4)  # with and without P_s, projection
        project = bits != 4
        step = MlpStep((_packed_layer(gen, h1, d, bits, "leaky_relu"),
                        _packed_layer(gen, h2, h1, bits, "relu"),
                        _packed_layer(gen, p, h2, bits, "tanh")),
                       (_dense_layer(gen, s1, p, "leaky_relu"), _dense_layer(gen, s2, s1, "tanh"),
                        _dense_layer(gen, m, s2, "none")),
                       0.05, sparsity, project)
        out.append(Case(f"w{bits} batch {batch} widths {(d, h1, h2, p, s1, s2, m)} "
                        f"s={sparsity} project={project}",
                        dict(step=step, z=torch.randn(batch, d, generator=gen),
                             y=torch.randn(batch, m, generator=gen))))
    return out


def _run_step(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer.kernels.fused_step import mlp_step

    c = case.inputs
    device = _triton_device()
    z, loss = mlp_step(c["z"].to(device), c["y"].to(device), c["step"])
    return torch.cat([z.cpu(), loss.cpu()[:, None]], dim=1)


def _reference_step(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer.kernels.fused_step import reference_step

    z, loss = reference_step(case.inputs["z"], case.inputs["y"], case.inputs["step"])
    return torch.cat([z, loss[:, None]], dim=1)


def _allowed_step(entry: KernelEntry, case: Case) -> torch.Tensor:
    return RTOL * _reference_step(entry, case).abs() + 1e-6  # as tests/test_fused_step.py


# --- the solver's selection and proximal step (scalar C++, one code for every tier) -------------

SPHERE_EPS = 1e-12
# (B, d, s, project): one entry, batch 1, no threshold (s = 0) and no projection, a long row
SELECT_SHAPES = ((1, 1, 1, True), (5, 37, 9, True), (4, 70, 0, False), (3, 784, 200, True))


def _select_cases(entry: KernelEntry, gen: torch.Generator) -> list[Case]:
    out = []
    for b, d, s, project in SELECT_SHAPES:
        z = torch.randn(b, d, generator=gen)
        if d > 8:
            z[0, :4] = z[0, 4]  # ties
            z[-1, -3:] = 0.0
        if entry.op == "kth_largest_abs":
            s = max(s, 1)
        out.append(Case(f"B={b} d={d} s={s} project={project}",
                        dict(z=z, g=torch.randn(b, d, generator=gen), beta=0.3, s=s,
                             project=project)))
    return out


def _run_select(entry: KernelEntry, case: Case) -> torch.Tensor:
    from qgen_infer import _cpu

    c = case.inputs
    if entry.op == "kth_largest_abs":
        return torch.from_numpy(_cpu.kth_largest_abs_f32(c["z"].numpy(), c["s"]))
    return torch.from_numpy(_cpu.proximal_step_f32(c["z"].numpy(), c["g"].numpy(), c["beta"],
                                                   c["s"], c["project"], SPHERE_EPS))


def _reference_select(entry: KernelEntry, case: Case) -> torch.Tensor:
    c = case.inputs
    if entry.op == "kth_largest_abs":
        return c["z"].abs().topk(c["s"], dim=1).values[:, -1]
    v = c["z"] - c["beta"] * c["g"]  # in fp32, as the kernel, so the kept set is the same
    if c["s"]:
        v = v * (v.abs() >= v.abs().topk(c["s"], dim=1).values[:, -1:])
    v = v.double()
    return v / v.norm(dim=1, keepdim=True).clamp_min(SPHERE_EPS) if c["project"] else v


def _allowed_select(entry: KernelEntry, case: Case) -> torch.Tensor | float:
    if entry.op == "kth_largest_abs":
        return 0.0  # the threshold is an element of the row: exact
    return 1e-6 * _reference_select(entry, case).abs() + 1e-7  # fp32 rounding of one division


# --- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Op:
    cases: Callable[[KernelEntry, torch.Generator], list[Case]]
    run: Callable[[KernelEntry, Case], torch.Tensor]
    reference: Callable[[KernelEntry, Case], torch.Tensor]
    allowed: Callable[[KernelEntry, Case], torch.Tensor | float]


_PRODUCT = _Op(_product_cases, _run_product, _reference_product, _allowed_product)
_I8 = _Op(_i8_cases, _run_i8, _reference_i8, _allowed_i8)
_CONV = _Op(_conv_cases, _run_conv, _reference_conv, _allowed_conv)
_PIXELS = _Op(_pixel_cases, _run_pixels, _reference_pixels, _allowed_pixels)
_STEP = _Op(_step_cases, _run_step, _reference_step, _allowed_step)
_SELECT = _Op(_select_cases, _run_select, _reference_select, _allowed_select)
OPS: dict[str, _Op] = {**dict.fromkeys((*PRODUCTS, SPARSE_GEMM), _PRODUCT),
                       "gemm_i8": _I8, "lut_i8_sums": _I8,
                       "conv2d": _CONV, "conv_transpose2d": _CONV,
                       **dict.fromkeys(PIXEL_OPS, _PIXELS), "mlp_step": _STEP,
                       "kth_largest_abs": _SELECT, "proximal_step": _SELECT}

_CONV_COVERS = ("kernels.conv.conv_kpack_kernel",)
KERNELS: tuple[KernelEntry, ...] = (
    *(KernelEntry("cpu", tier, op, _CPU_PRODUCT[op])
      for tier in CPU_TIERS for op in (*PRODUCTS, SPARSE_GEMM)),
    *(KernelEntry("cpu", tile, op, (f"_cpu.{fn}", "_cpu.repack_quads" if tile == "avx512vbmi"
                                    else "_cpu.repack_nibbles"))
      for tile in I8_TILES for op, fn in (("gemm_i8", "gemm_planes_i8"),
                                          ("lut_i8_sums", "lut_i8_sums"))),
    KernelEntry("cpu", "any", "kth_largest_abs", ("_cpu.kth_largest_abs_f32",)),
    KernelEntry("cpu", "any", "proximal_step", ("_cpu.proximal_step_f32",)),
    *(KernelEntry("triton", path, op, _triton_covers(op, path))
      for path in TRITON_PATHS for op in PRODUCTS),
    *(KernelEntry("cpu", tier, op, ("_cpu.conv_planes_f32", "_cpu.repack_planes"))
      for tier in CPU_TIERS for op in ("conv2d", "conv_transpose2d")),
    *(KernelEntry("cpu", tier, "conv_transpose2d_pixels", ("_cpu.conv_pixels_f32",
                                                           "_cpu.repack_planes"))
      for tier in CPU_TIERS),
    *(KernelEntry("cpu", tier, "conv_transpose2d_pixels_t", ("_cpu.conv_pixels_t_f32",
                                                             "_cpu.repack_planes"))
      for tier in CPU_TIERS),
    KernelEntry("triton", "implicit-gemm", "conv2d", ("kernels.conv.conv2d", *_CONV_COVERS)),
    KernelEntry("triton", "implicit-gemm", "conv_transpose2d",
                ("kernels.conv.conv_transpose2d", *_CONV_COVERS)),
    KernelEntry("triton", "fused", "mlp_step",
                ("kernels.fused_step.mlp_step", "kernels.fused_step.mlp_step_kernel")),
)


def _triton_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unavailable_reason(entry: KernelEntry) -> str | None:
    """Why ``entry`` cannot run here (no extension, a tier this CPU lacks, no Triton), or None."""
    if entry.backend == "cpu":
        from qgen_infer.engine.cpu_backend import supported_isas

        tiers = supported_isas()
        if not tiers:
            return "the CPU extension qgen_infer._cpu is not built"
        if entry.variant == "avx512vbmi":
            from qgen_infer import _cpu

            return None if _cpu.has_vbmi_vnni() else "this CPU lacks AVX-512 VBMI/VNNI"
        ok = entry.variant == "any" or entry.variant in tiers
        return None if ok else f"this CPU lacks the {entry.variant} tier"
    from qgen_infer.engine.triton_backend import is_available

    return None if is_available() else "needs triton and a CUDA device or TRITON_INTERPRET=1"


def cases(entry: KernelEntry, seed: int = 0) -> list[Case]:
    """``entry``'s random inputs (awkward shapes, every width the op takes), drawn from ``seed``."""
    return OPS[entry.op].cases(entry, torch.Generator().manual_seed(seed))


def run(entry: KernelEntry, case: Case) -> torch.Tensor:
    """``entry``'s kernel on ``case``, on the CPU (several outputs side by side)."""
    return OPS[entry.op].run(entry, case)


def reference(entry: KernelEntry, case: Case) -> torch.Tensor:
    """The plain-torch value of :func:`run` (fp64 where the kernel's value is exact math)."""
    return OPS[entry.op].reference(entry, case)


def allowed_error(entry: KernelEntry, case: Case) -> torch.Tensor | float:
    """The largest ``|run - reference|`` allowed per element (module docstring)."""
    return OPS[entry.op].allowed(entry, case)


def cpu_entry_points() -> set[str]:
    """``_cpu.<name>`` of every public function of the built extension that runs a kernel."""
    from qgen_infer import _cpu

    return {f"_cpu.{name}" for name in dir(_cpu)
            if not name.startswith("_") and callable(getattr(_cpu, name))
            and name not in CPU_QUERIES}


def triton_entry_points() -> set[str]:
    """``kernels.<module>.<name>`` of every public ``@triton.jit`` function outside
    ``kernels/common.py`` (importing the modules imports triton)."""
    import triton

    import qgen_infer.kernels as package

    out = set()
    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "common":
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            # KernelInterface: a compiled @triton.jit function, or its interpreted twin
            if (isinstance(obj, triton.runtime.jit.KernelInterface) and not name.startswith("_")
                    and getattr(getattr(obj, "fn", None), "__module__", None)
                    == module.__name__):
                out.add(f"kernels.{info.name}.{name}")
    return out


def resolve(entry_point: str) -> Any:
    """The object an entry point names (``_cpu.x`` or ``kernels.module.x``)."""
    head, *rest = entry_point.split(".")
    module = importlib.import_module("qgen_infer._cpu" if head == "_cpu"
                                     else f"qgen_infer.kernels.{rest.pop(0)}")
    return getattr(module, rest[0])
