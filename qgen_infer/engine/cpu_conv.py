"""Conv2d and ConvTranspose2d layers on the ``cpu`` backend as implicit GEMM
(``qgen_infer._cpu.conv_planes_f32``, csrc/conv.cpp: the math and the layout): channels-last
activations, each input pixel's LUT tables built once per call, no im2col, no col2im, the
epilogue fused; forward and input gradient one kernel call each.

Each layer keeps two sets of packed weights, one per direction, as ``triton_conv`` does
(each direction's convolution is the other's input gradient)::

    Conv2d W [C_out, C_in]:          forward V = W (conv2d),               backward V = Wᵀ
    ConvTranspose2d W [C_in, C_out]: forward V = Wᵀ (conv_transpose2d),    backward V = W

``V[n, c, ky, kx]`` with the per-``C_out`` scale on ``n`` forward ("column scale") and on the
reduction channel ``c`` backward ("reduction scale"). A direction's taps are grouped into *runs*
(:func:`axis_taps`, :func:`tap_runs`): taps of one tap row whose input pixels are consecutive, so
the kernel reduces over a whole run in one LUT tile. The run words depend on the kernel, stride,
padding and dilation only (made once, at load); the run positions on the input size too (made
once per input size).

Chosen per layer on its first call (:func:`implicit_conv_fits`): layers with at least 16 input
and output channels (the lanes and the reduction are padded to 16 and 32 channels). A layer with
fewer that ``packed_modules`` runs per pixel (a ConvTranspose2d, or a stride-1 Conv2d with fewer
output than input channels: the DCGAN's 64 -> 3 output layer) instead runs its per-pixel GEMM
with col2im fused into the kernel (forward) and im2col into the gradient's (``conv_pixels_f32``
/ ``conv_pixels_t_f32``, csrc/conv_pixels.cpp: the lanes hold taps x channels); any other keeps
the im2col GEMM. ``QGEN_CPU_IMPLICIT_CONV=0`` turns both off (the per-pixel GEMM + col2im /
im2col paths of ``packed_modules`` then run every conv layer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from qgen_infer.activations import ACTIVATION_IDS, activate_
from qgen_infer.conv_geometry import conv2d_output_size, conv_transpose2d_output_size
from qgen_infer.engine.backend import Epilogue
from qgen_infer.format import unpack_codes

ENV = "QGEN_CPU_IMPLICIT_CONV"
MIN_CHANNELS = 16  # below it the padded lanes / reduction waste more than the per-pixel path
CHUNK = 32  # reduction channels per planes word (csrc/qgen_cpu.h kChunkR)


def implicit_conv_fits(c_in: int, c_out: int) -> bool:
    """Whether a layer runs as implicit GEMM (module docstring)."""
    return min(c_in, c_out) >= MIN_CHANNELS and os.environ.get(ENV, "1") != "0"


def axis_taps(transposed: bool, k: int, s: int, p: int, d: int
              ) -> tuple[int, int, list[list[tuple[int, int]]]]:
    """One spatial axis of a direction: ``(output step per phase pixel, input step per phase
    pixel, per phase the (tap, input offset) pairs)``; phase pixel ``q`` of phase ``r`` is output
    ``r + step q`` and its tap reads input ``offset + in_step q``.

    conv2d: one phase, tap ``k`` at ``k d - p``, input step ``s``. conv_transpose2d: ``s``
    phases; in phase ``r`` the taps with ``s | r + p - k d``, at ``(r + p - k d) / s``; step 1."""
    if not transposed:
        return 1, s, [[(t, t * d - p) for t in range(k)]]
    return s, 1, [[(t, (r + p - t * d) // s) for t in range(k) if (r + p - t * d) % s == 0]
                  for r in range(s)]


def tap_runs(pairs_x: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The taps of one tap row grouped into runs of consecutive input offsets (ascending)."""
    runs: list[list[tuple[int, int]]] = []
    for tap, off in sorted(pairs_x, key=lambda t: t[1]):
        if runs and runs[-1][-1][1] == off - 1:
            runs[-1].append((tap, off))
        else:
            runs.append([(tap, off)])
    return runs


@dataclass
class Direction:
    """One direction's packed runs: ``words`` (every run's planes), and per phase ``(py, px)``
    the runs as ``(dy, dx, offset, ntaps)``: tap ``t`` of the run reads input pixel
    ``(dy + ay qy, dx + ax qx + t)`` for phase pixel ``(qy, qx)``."""

    transposed: bool
    n: int  # output channels
    c: int  # reduction channels
    bits: int
    words: np.ndarray
    steps: tuple[int, int, int, int]  # sy, sx, ay, ax
    phase_runs: list[tuple[int, int, list[tuple[int, int, int, int]]]]
    col_scale: np.ndarray | None  # [n] (forward) ...
    col_zero: np.ndarray | None
    red_scale: np.ndarray | None  # ... or [c] (input gradient)
    red_zero: np.ndarray | None
    _geometry: dict[tuple[int, int, int, int], tuple[np.ndarray, ...]] = field(
        default_factory=dict, repr=False)

    def geometry(self, h: int, w: int, oh: int, ow: int) -> tuple[np.ndarray, ...]:
        """``(geometry, phases, runs)`` arrays of ``conv_planes_f32`` for an input ``h x w``
        and output ``oh x ow`` (made once per size)."""
        key = (h, w, oh, ow)
        if key not in self._geometry:
            sy, sx, ay, ax = self.steps
            phases, rows = [], []
            lo_y = lo_x = 0
            hi_y, hi_x = h - 1, w - 1
            for i, (py, px, runs) in enumerate(self.phase_runs):
                qh = max(0, -(-(oh - py) // sy))
                qw = max(0, -(-(ow - px) // sx))
                phases.append((py, px, sy, sx, qh, qw))
                if qh == 0 or qw == 0:
                    continue
                for dy, dx, offset, ntaps in runs:
                    lo_y, hi_y = min(lo_y, dy), max(hi_y, dy + ay * (qh - 1))
                    lo_x, hi_x = min(lo_x, dx), max(hi_x, dx + ax * (qw - 1) + ntaps - 1)
                    rows.append((i, dy, dx, ntaps, offset))
            pt, pl = -lo_y, -lo_x
            runs_a = np.array([(i, dy + pt, dx + pl, nt, off) for i, dy, dx, nt, off in rows],
                              dtype=np.int64).reshape(-1, 5)
            geo = np.array([oh, ow, hi_y + 1 + pt, hi_x + 1 + pl, pt, pl, ay, ax], np.int64)
            self._geometry[key] = (geo, np.array(phases, np.int64).reshape(-1, 6), runs_a)
        return self._geometry[key]


def pack_direction(ext: Any, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   bits: int, transposed: bool, scale_on_n: bool, stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int], threads: int
                   ) -> Direction:
    """A :class:`Direction` from uint8 codes ``V [N, C, kh, kw]`` and a per-tensor ``[1]`` or
    per-channel scale/zero (on ``n`` when ``scale_on_n``, else on ``c``)."""
    n, c, kh, kw = codes.shape
    cp = -(-max(c, 1) // CHUNK) * CHUNK
    sy, ay, phases_y = axis_taps(transposed, kh, stride[0], padding[0], dilation[0])
    sx, ax, phases_x = axis_taps(transposed, kw, stride[1], padding[1], dilation[1])
    chunks, phase_runs, offset = [], [], 0
    for py, pairs_y in enumerate(phases_y):
        for px, pairs_x in enumerate(phases_x):
            runs = []
            for ky, dy in pairs_y:
                for run in tap_runs(pairs_x):
                    taps = torch.stack([codes[:, :, ky, kx] for kx, _ in run], 1)  # [N, T, C]
                    matrix = torch.zeros(n, len(run), cp, dtype=torch.uint8)
                    matrix[:, :, :c] = taps
                    words = ext.repack_planes(matrix.reshape(n, -1).numpy(), bits, False,
                                              threads)
                    runs.append((dy, run[0][1], offset, len(run)))
                    chunks.append(words)
                    offset += words.size
            phase_runs.append((py, px, runs))
    length = n if scale_on_n else c

    def vec(v: torch.Tensor) -> np.ndarray:
        v = v.detach().reshape(-1).float().cpu()
        return (v.expand(length) if v.numel() == 1 else v).contiguous().numpy()

    words = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
    s, z = vec(scale), vec(zero)
    return Direction(transposed, n, c, bits, words, (sy, sx, ay, ax), phase_runs,
                     s if scale_on_n else None, z if scale_on_n else None,
                     None if scale_on_n else s, None if scale_on_n else z)


@dataclass
class CpuConvPlan:
    """A conv layer's two directions, its geometry, and what the measured dispatch needs (the
    fields ``CpuBackend._route`` reads: ``bits``, ``shape``, ``routes``, :meth:`dense`)."""

    forward: Direction | None  # None: the layer runs per pixel (``pixels``)
    backward: Direction | None
    transposed: bool
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output_padding: tuple[int, int]
    bits: int
    shape: tuple[int, int]  # (C_out, C_in kh kw): the dispatch key's matrix size
    module: Any = field(repr=False)
    routes: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)
    # per pixel: the layer's prepared tap-major view (CpuPrepared) and the stride, padding and
    # dilation of the transposed convolution it computes
    pixels: Any = field(default=None, repr=False)
    pixel_geometry: tuple[tuple[int, int], ...] = ()
    _dense: torch.Tensor | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        """The fp32 weight in PyTorch layout with the epilogue's alpha folded in (as the dense
        baseline's), dequantized once on first use (dense path)."""
        if self._dense is None:
            from qgen_infer.engine.dense_baseline import dequantized_weight

            self._dense = dequantized_weight(self.module).contiguous()
        return self._dense

    def op_name(self, direction: str, h: int, w: int) -> str:
        """The dispatch key's op: the layer's geometry and the input size."""
        kind = "conv_transpose2d" if self.transposed else "conv2d"
        k, s, p = self.kernel_size, self.stride, self.padding
        return (f"{kind}_{direction} {k[0]}x{k[1]} s{s[0]}x{s[1]} p{p[0]}x{p[1]} "
                f"d{self.dilation[0]}x{self.dilation[1]} in{h}x{w}")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        if self.transposed:
            return tuple(conv_transpose2d_output_size(size, k[a], s[a], p[a], d[a],  # type: ignore[return-value]
                                                      self.output_padding[a])
                         for a, size in enumerate((h, w)))
        return tuple(conv2d_output_size(size, k[a], s[a], p[a], d[a])  # type: ignore[return-value]
                     for a, size in enumerate((h, w)))


def plan_conv(ext: Any, module: Any, threads: int) -> CpuConvPlan | None:
    """The :class:`CpuConvPlan` of a ``PackedConv2d`` / ``PackedConvTranspose2d``: implicit GEMM
    (:func:`implicit_conv_fits`), else the fused per-pixel kernels for a per-pixel layer, else
    None (the im2col GEMM path)."""
    codes = unpack_codes(module.packed_codes, module.weight_shape, module.bits).cpu()
    transposed = module.kind == "conv_transpose2d"
    c_in, c_out = (codes.shape[0], codes.shape[1]) if transposed else (codes.shape[1],
                                                                       codes.shape[0])
    stride, padding, dilation = (tuple(int(v) for v in t) for t in (
        module.stride, module.padding, module.dilation))
    kh, kw = codes.shape[2:]
    if not implicit_conv_fits(c_in, c_out):
        per_pixel = module.view_kind in ("conv_transpose2d", "conv2d_per_pixel")
        if not per_pixel or os.environ.get(ENV, "1") == "0":
            return None
        geometry = (stride, padding, dilation)
        if module.view_kind == "conv2d_per_pixel":  # the transposed conv of the flipped kernel
            geometry = ((1, 1), tuple(d * (k - 1) - p for k, p, d in zip(
                (kh, kw), padding, dilation, strict=True)), dilation)
        return CpuConvPlan(None, None, transposed, (kh, kw), stride, padding, dilation,
                           tuple(getattr(module, "output_padding", (0, 0))), module.bits,
                           (c_out, c_in * kh * kw), module, pixels=module.prepared,
                           pixel_geometry=geometry)
    own, other = (codes.permute(1, 0, 2, 3), codes) if transposed else (
        codes, codes.permute(1, 0, 2, 3))

    def pack(v: torch.Tensor, t: bool, on_n: bool) -> Direction:
        return pack_direction(ext, v.contiguous(), module.scale, module.zero, module.bits, t,
                              on_n, stride, padding, dilation, threads)

    return CpuConvPlan(pack(own, transposed, True), pack(other, not transposed, False),
                       transposed, (kh, kw), stride, padding, dilation,
                       tuple(getattr(module, "output_padding", (0, 0))), module.bits,
                       (c_out, c_in * kh * kw), module)


def _vec(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().contiguous().numpy()


def run_direction(ext: Any, d: Direction, x: torch.Tensor, out_hw: tuple[int, int],
                  epilogue: Epilogue | None, isa: str, threads: int,
                  through: tuple[torch.Tensor, Epilogue] | None = None) -> torch.Tensor:
    """``conv_planes_f32`` of channels-last ``x`` ``[B, H, W, C]`` -> ``[B, OH, OW, N]``;
    ``through = (y, ep)`` makes the rows ``x ⊙ ep.alpha ⊙ act'(y)`` (an input gradient)."""
    geo, phases, runs = d.geometry(x.shape[1], x.shape[2], *out_hw)
    ep = epilogue or Epilogue()
    y, gep = through if through is not None else (None, Epilogue())
    return torch.from_numpy(ext.conv_planes_f32(
        x.numpy(), d.words, d.n, d.bits, geo, phases, runs, d.col_scale, d.col_zero,
        d.red_scale, d.red_zero, _vec(ep.alpha), _vec(ep.beta), ACTIVATION_IDS[ep.activation],
        float(ep.negative_slope), None if y is None else y.numpy(), _vec(gep.alpha),
        ACTIVATION_IDS[gep.activation], float(gep.negative_slope), isa, threads))


def _pixel_geometry(plan: CpuConvPlan, in_hw: tuple[int, int], out_hw: tuple[int, int]
                    ) -> np.ndarray:
    """``conv_pixels_f32``'s geometry: H, W, OH, OW, kh, kw, stride, padding, dilation."""
    stride, padding, dilation = plan.pixel_geometry
    return np.array([*in_hw, *out_hw, *plan.kernel_size, *stride, *padding, *dilation],
                    np.int64)


def run_pixels(backend: Any, plan: CpuConvPlan, x: torch.Tensor, out_hw: tuple[int, int],
               ep: Epilogue) -> torch.Tensor:
    """``conv_pixels_f32`` of channels-last ``x`` ``[B, H, W, C]`` -> ``[B, OH, OW, N]``."""
    p = plan.pixels
    return torch.from_numpy(backend._ext.conv_pixels_f32(
        x.numpy(), p.words, plan.shape[0], p.bits, p.scale, p.zero,
        _pixel_geometry(plan, tuple(x.shape[1:3]), out_hw), _vec(ep.alpha), _vec(ep.beta),
        ACTIVATION_IDS[ep.activation], float(ep.negative_slope), backend.isa, backend._threads()))


def run_pixels_t(backend: Any, plan: CpuConvPlan, g: torch.Tensor, in_hw: tuple[int, int],
                 through: tuple[torch.Tensor, Epilogue]) -> torch.Tensor:
    """``conv_pixels_t_f32``: the input gradient ``[B, H, W, C]`` of :func:`run_pixels` from
    ``g`` ``[B, OH, OW, N]`` through the epilogue (``through = (y, ep)``)."""
    p, (y, ep) = plan.pixels, through
    return torch.from_numpy(backend._ext.conv_pixels_t_f32(
        g.numpy(), p.words_t, p.shape[1], p.bits, p.scale, p.zero,
        _pixel_geometry(plan, in_hw, tuple(g.shape[1:3])), y.numpy(), _vec(ep.alpha),
        ACTIVATION_IDS[ep.activation], float(ep.negative_slope), backend.isa, backend._threads()))


def channels_last_rows(x: torch.Tensor) -> torch.Tensor:
    """NCHW ``x`` as a contiguous ``[B, H, W, C]`` (a view when x is channels-last in memory)."""
    return x.detach().permute(0, 2, 3, 1).contiguous()


class CpuConv(torch.autograd.Function):
    """``y = act(alpha * conv(x) + beta)``; backward: the other direction's convolution of
    ``∂L/∂y ⊙ act'(y) ⊙ alpha`` (first order: the solver needs ∇z only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, backend: Any, plan: CpuConvPlan,
                epilogue: Epilogue) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        oh, ow = plan.output_size(h, w)

        def packed() -> torch.Tensor:
            rows = channels_last_rows(x)
            if plan.pixels is not None:
                out = run_pixels(backend, plan, rows, (oh, ow), epilogue)
            else:
                out = run_direction(backend._ext, plan.forward, rows, (oh, ow), epilogue,
                                    backend.isa, backend._threads())
            return out.permute(0, 3, 1, 2)

        def dense() -> torch.Tensor:
            return dense_conv(x.detach(), plan, epilogue)

        y = backend._route(plan.op_name("forward", h, w), x, plan, packed, dense)
        ctx.backend, ctx.plan, ctx.epilogue, ctx.in_hw = backend, plan, epilogue, (h, w)
        # x too: the dense input gradient hands it to aten (alive anyway: the layer before
        # saved it as its output)
        ctx.save_for_backward(y, x)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        y, x = ctx.saved_tensors
        backend, plan, ep, (h, w) = ctx.backend, ctx.plan, ctx.epilogue, ctx.in_hw

        def packed() -> torch.Tensor:
            rows, through = channels_last_rows(grad_y), (channels_last_rows(y), ep)
            if plan.pixels is not None:
                g = run_pixels_t(backend, plan, rows, (h, w), through)
            else:
                g = run_direction(backend._ext, plan.backward, rows, (h, w), None, backend.isa,
                                  backend._threads(), through=through)
            return g.permute(0, 3, 1, 2)

        def dense() -> torch.Tensor:
            return dense_conv_input_grad(grad_y, y, x, plan, ep)

        g = backend._route(plan.op_name("input_grad", h, w), grad_y, plan, packed, dense)
        return g, None, None, None


def dense_conv(x: torch.Tensor, plan: CpuConvPlan, ep: Epilogue) -> torch.Tensor:
    """The layer in fp32 torch (oneDNN) as the dense baseline runs it: alpha folded into the
    weight, beta the bias, then the activation (in place: the same values, one tensor fewer
    than the baseline's ``nn.ReLU``)."""
    if plan.transposed:
        acc = F.conv_transpose2d(x, plan.dense(), ep.beta, plan.stride, plan.padding,
                                 plan.output_padding, 1, plan.dilation)
    else:
        acc = F.conv2d(x, plan.dense(), ep.beta, plan.stride, plan.padding, plan.dilation)
    return activate_(acc, ep.activation, ep.negative_slope)


def dense_conv_input_grad(grad_y: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                          plan: CpuConvPlan, ep: Epilogue) -> torch.Tensor:
    """The input gradient of :func:`dense_conv` given its input ``x`` and output ``y``, in fp32
    torch (the same values as autograd through the baseline's layer)."""
    from qgen_infer.engine.cpu_backend import dense_grad_through_epilogue

    h = dense_grad_through_epilogue(grad_y, y, Epilogue(None, None, ep.activation,
                                                        ep.negative_slope))
    if plan.transposed:
        return F.conv2d(h, plan.dense(), None, plan.stride, plan.padding, plan.dilation)
    # aten reads only the input's shape and makes it contiguous first: x itself costs nothing
    # where torch.nn.grad.conv2d_input's expanded one-element stand-in is copied into a whole
    # [B, C, H, W] tensor each call; a channels-last x gets an NCHW stand-in (never written),
    # so that oneDNN runs in the layout it ran in before
    carrier = x.detach() if x.is_contiguous() else h.new_empty(x.shape)
    return torch.ops.aten.convolution_backward(
        h, carrier, plan.dense(), None, plan.stride, plan.padding, plan.dilation, False,
        [0, 0], 1, (True, False, False))[0]


def cpu_conv(x: torch.Tensor, backend: Any, plan: CpuConvPlan, epilogue: Epilogue
             ) -> torch.Tensor:
    return CpuConv.apply(x, backend, plan, epilogue)
