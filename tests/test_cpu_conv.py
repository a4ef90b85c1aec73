"""The CPU implicit-GEMM convolutions (csrc/conv.cpp, qgen_infer/engine/cpu_conv.py): each
direction against a float64 ``F.conv2d`` / ``F.conv_transpose2d`` on the dequantized weight, for
every bit width and ISA tier, both scale placements, strides, paddings, output paddings,
dilations, odd sizes, batch 1 and channel counts off every block; the packed layers' forward and
input gradient against autograd of the dense layer (the per-pixel kernels for layers under 16
channels too); the input checks; the fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

_cpu = pytest.importorskip("qgen_infer._cpu", reason="CPU extension qgen_infer._cpu not built")

from qgen_infer.engine import PackedConv2d, PackedConvTranspose2d  # noqa: E402
from qgen_infer.engine.backend import Epilogue  # noqa: E402
from qgen_infer.engine.cpu_backend import create_backend  # noqa: E402
from qgen_infer.engine.cpu_conv import (  # noqa: E402
    ENV,
    axis_taps,
    pack_direction,
    run_direction,
    tap_runs,
)
from qgen_infer.format import PackedLayer, pack_codes  # noqa: E402

SUPPORTED = set(_cpu.supported_isas())
ISAS = [pytest.param(i, marks=pytest.mark.skipif(i not in SUPPORTED,
                                                 reason=f"this CPU/OS lacks {i}"))
        for i in ("portable", "avx2", "avx512")]
REL = 2e-6  # of max |reference|: fp32 accumulation over at most a few thousand terms

# (transposed, B, C, N, H, W, kernel, stride, padding, dilation, output_padding): channel counts
# off the 16 lanes and 32-channel words (17, 20, 33, 37, 40), odd and non-square inputs,
# batch 1, stride 1-3, dilation 2, an output padding, and a transposed convolution whose stride
# exceeds its kernel (phases without taps: act(beta) only).
GEOMETRIES = [
    (False, 2, 20, 17, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1), (0, 0)),
    (False, 1, 33, 40, 9, 8, (4, 4), (2, 2), (1, 1), (1, 1), (0, 0)),
    (False, 1, 16, 18, 9, 7, (3, 2), (2, 1), (2, 0), (2, 1), (0, 0)),
    (True, 2, 37, 18, 4, 5, (4, 4), (2, 2), (1, 1), (1, 1), (0, 0)),
    (True, 1, 16, 16, 5, 3, (4, 3), (2, 2), (1, 0), (1, 1), (1, 1)),
    (True, 1, 17, 20, 3, 4, (3, 3), (2, 1), (1, 1), (2, 1), (1, 0)),
    (True, 2, 16, 20, 3, 3, (2, 2), (3, 3), (0, 0), (1, 1), (2, 0)),
]


def random_codes(shape: tuple[int, ...], bits: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 codes with every value 0 .. 2^bits - 1 present."""
    top = 1 << bits
    flat = torch.randint(0, top, (int(np.prod(shape)),), generator=gen, dtype=torch.uint8)
    flat[torch.randperm(flat.numel(), generator=gen)[:top]] = torch.arange(top,
                                                                          dtype=torch.uint8)
    return flat.reshape(shape)


def reference(transposed: bool, x: torch.Tensor, v: torch.Tensor, stride, padding, dilation,
              output_padding) -> torch.Tensor:
    """float64 convolution by ``V [N, C, kh, kw]`` (conv_transpose2d wants ``[C, N, ...]``)."""
    if transposed:
        return F.conv_transpose2d(x.double(), v.permute(1, 0, 2, 3), None, stride, padding,
                                  output_padding, 1, dilation)
    return F.conv2d(x.double(), v, None, stride, padding, dilation)


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, rel: float = REL) -> None:
    assert out.shape == ref.shape
    err = (out.double() - ref).abs().max().item()
    assert err <= rel * max(ref.abs().max().item(), 1e-6), f"max error {err:.3g}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("scale_on_n", [True, False], ids=["col_scale", "red_scale"])
@pytest.mark.parametrize("geometry", GEOMETRIES,
                         ids=[f"{'T' if g[0] else 'C'}{i}" for i, g in enumerate(GEOMETRIES)])
def test_direction_equals_float64_reference(geometry, scale_on_n: bool, bits: int,
                                            isa: str) -> None:
    transposed, b, c, n, h, w, kernel, stride, padding, dilation, out_pad = geometry
    gen = torch.Generator().manual_seed(bits * 100 + c + n)
    codes = random_codes((n, c, *kernel), bits, gen)
    length = n if scale_on_n else c
    scale = torch.rand(length, generator=gen) + 0.1
    zero = torch.rand(length, generator=gen) * ((1 << bits) - 1)
    d = pack_direction(_cpu, codes, scale, zero, bits, transposed, scale_on_n, stride, padding,
                       dilation, 1)
    shape = (-1, 1, 1, 1) if scale_on_n else (1, -1, 1, 1)
    v = scale.double().reshape(shape) * (codes.double() - zero.double().reshape(shape))
    x = torch.randn(b, c, h, w, generator=gen)
    ref = reference(transposed, x, v, stride, padding, dilation, out_pad)
    out = run_direction(_cpu, d, x.permute(0, 2, 3, 1).contiguous(), tuple(ref.shape[2:]), None,
                        isa, 1)
    assert_rel_close(out.permute(0, 3, 1, 2), ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ["none", "relu", "leaky_relu", "tanh"])
def test_epilogue_and_gradient_rows(act: str, isa: str) -> None:
    """The forward epilogue act(alpha * acc + beta), and the rows of an input gradient through
    it (x * alpha * act'(y)), fused into the kernel."""
    gen = torch.Generator().manual_seed(7)
    n, c, bits = 18, 21, 2
    codes = random_codes((n, c, 3, 3), bits, gen)
    scale, zero = torch.rand(n, generator=gen) + 0.1, torch.rand(n, generator=gen) * 3
    alpha, beta = torch.rand(n, generator=gen) + 0.5, torch.randn(n, generator=gen)
    ep = Epilogue(alpha, beta, act, 0.2)
    d = pack_direction(_cpu, codes, scale, zero, bits, False, True, (1, 1), (1, 1), (1, 1), 1)
    v = scale.double()[:, None, None, None] * (codes.double() - zero.double()[:, None, None,
                                                                              None])
    x = torch.randn(1, c, 5, 6, generator=gen)
    pre = reference(False, x, v, (1, 1), (1, 1), (1, 1), (0, 0))
    ref = ep.apply(pre, channel_dim=1)
    out = run_direction(_cpu, d, x.permute(0, 2, 3, 1).contiguous(), (5, 6), ep, isa, 1)
    assert_rel_close(out.permute(0, 3, 1, 2), ref, 1e-5)
    # rows through an epilogue over the C reduction channels: conv(g * alpha_c * act'(y))
    y = torch.tanh(torch.randn(1, 5, 6, c, generator=gen)) + (0.5 if act == "relu" else 0.0)
    if act == "relu":
        y = y.clamp(min=0)
    g = torch.randn(1, 5, 6, c, generator=gen)
    galpha = torch.rand(c, generator=gen) + 0.5
    gep = Epilogue(galpha, None, act, 0.2)
    from qgen_infer.engine.backend import activation_grad_from_output

    rows = g * galpha * activation_grad_from_output(y, act, 0.2)
    ref = reference(False, rows.permute(0, 3, 1, 2), v, (1, 1), (1, 1), (1, 1), (0, 0))
    out = run_direction(_cpu, d, g, (5, 6), None, isa, 1, through=(y, gep))
    assert_rel_close(out.permute(0, 3, 1, 2), ref, 1e-5)


def make_layer(transposed: bool, bits: int, c_in: int, c_out: int, kernel, stride, padding,
               out_pad, dilation, gen: torch.Generator, granularity: str = "channel"
               ) -> tuple[PackedLayer, torch.Tensor, Epilogue]:
    """A packed layer with random codes, scales and a leaky-ReLU epilogue, and its fp32
    dequantized weight in PyTorch layout."""
    shape = (c_in, c_out, *kernel) if transposed else (c_out, c_in, *kernel)
    codes = random_codes(shape, bits, gen)
    k = c_out if granularity == "channel" else 1
    scale, zero = torch.rand(k, generator=gen) + 0.1, torch.rand(k, generator=gen) * 2
    alpha, beta = torch.rand(c_out, generator=gen) + 0.5, torch.randn(c_out, generator=gen)
    kind = "conv_transpose2d" if transposed else "conv2d"
    layer = PackedLayer("layer", kind, shape, pack_codes(codes, bits), scale, zero, alpha, beta,
                        "leaky_relu", 0.2, stride, padding, out_pad, dilation)
    view = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)  # the output-channel axis
    weight = scale.reshape(view) * (codes.float() - zero.reshape(view))
    return layer, weight, Epilogue(alpha, beta, "leaky_relu", 0.2)


# (transposed, bits, C_in, C_out, kernel, stride, padding, output_padding, dilation, H, W)
LAYERS = [
    (True, 1, 32, 16, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 4, 4),  # a DCGAN up-layer
    (True, 3, 17, 24, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 5, 3),
    (False, 2, 16, 33, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 9, 8),
    (False, 4, 20, 16, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 7, 5),
    (False, 1, 16, 16, (3, 3), (3, 2), (0, 2), (0, 0), (1, 2), 10, 9),  # rows it never reads
    # under 16 channels: per pixel with col2im / im2col fused (conv_pixels_f32)
    (False, 2, 21, 3, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 7, 6),  # the DCGAN output layer
    (False, 1, 40, 7, (3, 3), (1, 1), (2, 2), (0, 0), (2, 2), 6, 5),
    (True, 3, 5, 3, (4, 4), (2, 2), (1, 1), (1, 1), (1, 1), 5, 4),
    (True, 4, 3, 6, (3, 3), (3, 2), (2, 1), (2, 1), (2, 1), 4, 5),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", LAYERS, ids=lambda c: ("T" if c[0] else "C")
                         + f"{c[2]}-{c[3]}-{c[1]}b")
def test_packed_layer_forward_and_input_gradient(case, isa: str) -> None:
    """A packed layer on the cpu backend runs the implicit GEMM (or, under 16 channels, the
    fused per-pixel kernels), and equals the dense layer in output and in the input gradient
    (autograd through the dense one, float64)."""
    transposed, bits, c_in, c_out, kernel, stride, padding, out_pad, dilation, h, w = case
    gen = torch.Generator().manual_seed(bits + c_in)
    layer, weight, ep = make_layer(transposed, bits, c_in, c_out, kernel, stride, padding,
                                   out_pad, dilation, gen)
    cls = PackedConvTranspose2d if transposed else PackedConv2d
    module = cls(layer, bits, create_backend(isa=isa, threads=1))
    x = torch.randn(2, c_in, h, w, generator=gen, requires_grad=True)
    x_ref = x.detach().double().requires_grad_(True)
    y = module(x)
    plan = module._conv_plan
    assert plan is not None and (plan.pixels is not None) == (min(c_in, c_out) < 16)
    weight = weight.double()
    if transposed:
        pre = F.conv_transpose2d(x_ref, weight, None, stride, padding, out_pad, 1, dilation)
    else:
        pre = F.conv2d(x_ref, weight, None, stride, padding, dilation)
    y_ref = Epilogue(ep.alpha.double(), ep.beta.double(), ep.activation,
                     ep.negative_slope).apply(pre, channel_dim=1)
    assert_rel_close(y.detach(), y_ref.detach())
    g = torch.randn(y.shape, generator=gen)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, g.double())
    assert gx.shape == x.shape
    assert_rel_close(gx, gx_ref)


@pytest.mark.parametrize("transposed", [True, False])
def test_per_tensor_scale_and_measured_dispatch(transposed: bool, tmp_path) -> None:
    """A per-tensor scale, and the dispatch modes: ``measured`` times both paths once and keeps
    the choice per layer, direction and batch bucket; ``dense`` runs torch's convolutions (alpha
    folded into the weight); both give the dense result, forward and input gradient."""
    from qgen_infer.engine.cpu_dispatch import CostTable

    gen = torch.Generator().manual_seed(3)
    layer, weight, ep = make_layer(transposed, 2, 32, 16, (4, 4), (2, 2), (1, 1), (0, 0),
                                   (1, 1), gen, granularity="tensor")
    x = torch.randn(3, 32, 5, 4, generator=gen, requires_grad=True)
    x_ref = x.detach().double().requires_grad_(True)
    conv = F.conv_transpose2d if transposed else F.conv2d
    y_ref = Epilogue(ep.alpha.double(), ep.beta.double(), ep.activation,
                     ep.negative_slope).apply(conv(x_ref, weight.double(), None, 2, 1), 1)
    g = torch.randn(y_ref.shape, generator=gen)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, g.double())
    for mode in ("measured", "dense"):
        backend = create_backend(threads=1, dispatch=mode)
        backend.dispatcher.table = CostTable(tmp_path / "costs.json")
        module = (PackedConvTranspose2d if transposed else PackedConv2d)(layer, 2, backend)
        y = module(x)
        (gx,) = torch.autograd.grad(y, x, g)
        assert_rel_close(y.detach(), y_ref.detach(), 1e-5)
        assert_rel_close(gx, gx_ref, 1e-5)
        if mode == "measured":
            kind = "conv_transpose2d" if transposed else "conv2d"
            ops = sorted(c["product"].split()[0] for c in backend.dispatcher.report())
            assert ops == [f"{kind}_forward", f"{kind}_input_grad"]
            assert len(module._conv_plan.routes) == 2


def test_im2col_layers_and_switch_keep_the_gemm_path(monkeypatch) -> None:
    """A small layer that is not per pixel (stride 2 conv2d, 3 output channels) keeps the
    im2col GEMM, and with QGEN_CPU_IMPLICIT_CONV=0 every layer keeps the GEMM paths (no plan);
    they still equal the dense layer."""
    gen = torch.Generator().manual_seed(5)
    backend = create_backend(threads=1)
    small, weight, ep = make_layer(False, 1, 64, 3, (3, 3), (2, 2), (1, 1), (0, 0), (1, 1), gen)
    module = PackedConv2d(small, 1, backend)
    x = torch.randn(1, 64, 6, 5, generator=gen)
    torch.testing.assert_close(module(x), ep.apply(F.conv2d(x, weight, None, 2, 1),
                                                   channel_dim=1), rtol=1e-5, atol=1e-5)
    assert module._conv_plan is None
    monkeypatch.setenv(ENV, "0")
    for c_in, c_out in ((32, 16), (16, 3)):
        layer, weight, ep = make_layer(True, 1, c_in, c_out, (4, 4), (2, 2), (1, 1), (0, 0),
                                       (1, 1), gen)
        module = PackedConvTranspose2d(layer, 1, backend)
        x = torch.randn(1, c_in, 3, 3, generator=gen)
        torch.testing.assert_close(module(x), ep.apply(F.conv_transpose2d(x, weight, None, 2, 1),
                                                       channel_dim=1), rtol=1e-5, atol=1e-5)
        assert module._conv_plan is None


def test_tap_runs_group_consecutive_inputs() -> None:
    """conv2d: one phase, runs of consecutive taps (dilation 1) or single taps (dilation 2);
    conv_transpose2d stride 2, kernel 4: two phases of two taps each, read in reverse."""
    assert axis_taps(False, 3, 2, 1, 1) == (1, 2, [[(0, -1), (1, 0), (2, 1)]])
    assert [len(r) for r in tap_runs(axis_taps(False, 3, 1, 1, 2)[2][0])] == [1, 1, 1]
    step, in_step, phases = axis_taps(True, 4, 2, 1, 1)
    assert (step, in_step) == (2, 1)
    assert phases == [[(1, 0), (3, -1)], [(0, 1), (2, 0)]]
    assert tap_runs(phases[0]) == [[(3, -1), (1, 0)]]


def test_bad_geometry_is_rejected() -> None:
    """The kernel checks every run against the padded input and the words, and the phases'
    cover of the output, before reading anything."""
    gen = torch.Generator().manual_seed(1)
    codes = random_codes((16, 16, 3, 3), 1, gen)
    d = pack_direction(_cpu, codes, torch.ones(1), torch.zeros(1), 1, False, True, (1, 1),
                       (1, 1), (1, 1), 1)
    x = torch.randn(1, 4, 4, 16).numpy()
    geo, phases, runs = d.geometry(4, 4, 4, 4)
    args = (d.words, 16, 1)
    _cpu.conv_planes_f32(x, *args, geo, phases, runs, d.col_scale, d.col_zero)
    bad = runs.copy()
    bad[0, 2] = geo[3]  # the run starts past the padded width
    with pytest.raises(ValueError, match="outside the padded input"):
        _cpu.conv_planes_f32(x, *args, geo, phases, bad, d.col_scale, d.col_zero)
    bad = runs.copy()
    bad[-1, 4] = d.words.size  # its weights start at the end of words
    with pytest.raises(ValueError, match="past words"):
        _cpu.conv_planes_f32(x, *args, geo, phases, bad, d.col_scale, d.col_zero)
    wrong = geo.copy()
    wrong[0] += 1  # one output row more than the phases cover
    with pytest.raises(ValueError, match="phases"):
        _cpu.conv_planes_f32(x, *args, wrong, phases, runs, d.col_scale, d.col_zero)
    with pytest.raises(ValueError, match="either col_scale"):
        _cpu.conv_planes_f32(x, *args, geo, phases, runs)
    with pytest.raises(TypeError, match="float32"):
        _cpu.conv_planes_f32(x.astype(np.float64), *args, geo, phases, runs, d.col_scale,
                             d.col_zero)


def test_threads_give_the_same_result() -> None:
    """Images are the kernels' work items: two threads give one thread's result bit for bit
    (implicit GEMM and both per-pixel kernels)."""
    gen = torch.Generator().manual_seed(11)
    codes = random_codes((20, 17, 4, 4), 2, gen)
    d = pack_direction(_cpu, codes, torch.rand(20) + 0.1, torch.rand(20), 2, True, True, (2, 2),
                       (1, 1), (1, 1), 1)
    x = torch.randn(3, 5, 4, 17, generator=gen)
    one, two = (run_direction(_cpu, d, x, (10, 8), None, "", t) for t in (1, 2))
    assert torch.equal(one, two)
    view = random_codes((27, 16), 1, gen).numpy()
    words, words_t = (_cpu.repack_planes(view, 1, t, 1) for t in (False, True))
    scale, zero = np.full(27, 0.5, np.float32), np.zeros(27, np.float32)
    geometry = np.array([6, 5, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1], np.int64)
    x = torch.randn(3, 6, 5, 16, generator=gen).numpy()
    g = torch.randn(3, 6, 5, 3, generator=gen).numpy()
    fwd = [_cpu.conv_pixels_f32(x, words, 3, 1, scale, zero, geometry, threads=t)
           for t in (1, 2)]
    bwd = [_cpu.conv_pixels_t_f32(g, words_t, 16, 1, scale, zero, geometry, threads=t)
           for t in (1, 2)]
    assert np.array_equal(*fwd) and np.array_equal(*bwd)


# The dense route (--backend auto choosing torch's convolution for a layer, as it does for every
# DCGAN layer on the portable tier) must cost what the dense baseline costs: the same aten
# convolutions, no copy and no tensor the baseline does not make.


def baseline_layer(module) -> torch.nn.Sequential:
    """The dense baseline's layer and activation (qgen_infer/engine/dense_baseline.py)."""
    from qgen_infer.engine.dense_baseline import ACTIVATIONS, dense_layer

    act = ACTIVATIONS[module.epilogue.activation](module.epilogue)
    return torch.nn.Sequential(dense_layer(module), act).requires_grad_(False)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", LAYERS, ids=lambda c: ("T" if c[0] else "C")
                         + f"{c[2]}-{c[3]}-{c[1]}b")
def test_dense_route_is_the_dense_baseline_bit_for_bit(case, batch: int) -> None:
    """A layer on the dense route (portable tier) gives the dense baseline layer's output and
    autograd input gradient bit for bit on NCHW tensors (a generator with no packed layer), odd
    sizes and batch 1 included; a channels-last input (a packed layer before it) gives the same
    values within fp32 rounding."""
    transposed, bits, c_in, c_out, kernel, stride, padding, out_pad, dilation, h, w = case
    gen = torch.Generator().manual_seed(bits + c_in + batch)
    layer, _, _ = make_layer(transposed, bits, c_in, c_out, kernel, stride, padding, out_pad,
                             dilation, gen)
    cls = PackedConvTranspose2d if transposed else PackedConv2d
    module = cls(layer, bits, create_backend(isa="portable", threads=1, dispatch="dense"))
    base = baseline_layer(module)
    x = torch.randn(batch, c_in, h, w, generator=gen)
    g = None
    for layout in (torch.contiguous_format, torch.channels_last):
        x1 = x.contiguous(memory_format=layout).requires_grad_(True)
        x2 = x1.detach().clone(memory_format=layout).requires_grad_(True)
        y, y_base = module(x1), base(x2)
        g = torch.randn(y.shape, generator=gen) if g is None else g
        (gx,), (gx_base,) = torch.autograd.grad(y, x1, g), torch.autograd.grad(y_base, x2, g)
        assert gx.shape == x.shape
        if layout == torch.contiguous_format:
            assert torch.equal(y, y_base) and y.is_contiguous()
            assert torch.equal(gx, gx_base) and gx.is_contiguous()
        else:
            assert_rel_close(y.detach(), y_base.double(), 1e-5)
            assert_rel_close(gx, gx_base.double(), 1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_all_dense_generator_adds_no_copy_or_memory(batch: int, tiny_checkpoint, tmp_path,
                                                    monkeypatch) -> None:
    """A DCGAN whose every layer runs dense on the portable tier (``--backend auto``'s choice
    there), forward and input gradient: torch.profiler sees no copy the dense baseline does not
    make (the input gradient of the output conv once copied a whole [B, C, H, W] stand-in) and
    no more bytes allocated than the baseline's (its out-of-place activations)."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    import qgen_infer
    from qgen_infer.engine.dense_baseline import dense_generator
    from qgen_infer.export import export_checkpoint

    # auto's backend on the portable tier with every product dense (QGEN_CPU_ISA is read once
    # per process by the extension, so the tier is passed, not set in the environment)
    monkeypatch.setattr("qgen_infer.engine.loader.get_backend", lambda name, device: (
        create_backend(isa="portable", dispatch="dense")))
    path = export_checkpoint(tiny_checkpoint("dcgan", 2, "channel"), tmp_path / "m.qgen").path
    model = qgen_infer.load(path, backend="auto")
    assert (model.backend.isa, model.backend.dispatch) == ("portable", "dense")
    dense = dense_generator(model)
    z = torch.randn(batch, model.config["latent_dim"], generator=torch.Generator().manual_seed(2))

    def costs(generator) -> tuple[Counter, int]:
        """(copies by shape, bytes allocated) of one forward and input gradient."""
        zz = z.clone().requires_grad_(True)
        generator(zz)  # warm-up: weights dequantized, oneDNN primitives made
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                     profile_memory=True) as prof:
            x = generator(zz)
            torch.autograd.grad(x, zz, torch.ones_like(x))
        events = prof.events()
        copies = Counter(str(e.input_shapes) for e in events if e.name == "aten::copy_")
        return copies, sum(max(e.cpu_memory_usage, 0) for e in events if e.name == "[memory]")

    (auto_copies, auto_bytes), (base_copies, base_bytes) = costs(model.generator), costs(dense)
    assert not auto_copies - base_copies, f"copies the baseline does not make: " \
        f"{auto_copies - base_copies}"
    assert auto_bytes <= base_bytes
