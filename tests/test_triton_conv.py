"""The implicit-GEMM packed convolutions (``kernels/conv.py``) against ``F.conv2d`` /
``F.conv_transpose2d`` on the decoded weights (fp64), and each direction as the other's input
gradient (against autograd). Interpreted on the CPU without a GPU.

Tolerance: ``|err| <= 1e-5 * bound`` per element, ``bound`` the same convolution of ``|x|`` and
``|V|`` (the size of the summed terms), as in ``test_triton_kernels``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from qgen_infer.kernels.conv import PackedConvWeight, conv2d, conv_transpose2d  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weight(shape, bits: int, on_k: bool, per_channel: bool, seed: int):
    """Packed ``V`` and its fp64 decode; scale per tensor, per n, or (on_k) per c."""
    gen = torch.Generator().manual_seed(seed)
    n, c, kh, kw = shape
    codes = torch.randint(0, 2**bits, shape, generator=gen, dtype=torch.uint8)
    every = min(2**bits, codes.numel())
    codes.view(-1)[:every] = torch.arange(every, dtype=torch.uint8)  # every code (room allowing)
    length = (c if on_k else n) if per_channel else 1
    scale = torch.rand(length, generator=gen) * 0.2 + 0.05
    zero = (2**bits - 1) / 2 + 0.3 * torch.randn(length, generator=gen)
    w = PackedConvWeight.from_codes(codes, scale, zero, bits, on_k, DEVICE)
    axis = (1, -1, 1, 1) if on_k else (-1, 1, 1, 1)
    v = scale.double().reshape(axis) * (codes.double() - zero.double().reshape(axis))
    return w, v


def _close(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, rtol: float = 1e-5) -> None:
    assert out.shape == ref.shape
    err = (out.detach().cpu().double() - ref).abs()
    assert bool((err <= rtol * bound + 1e-12).all()), float((err / (bound + 1e-30)).max())


CONV_CASES = [  # (N, C, kh, kw), (B, H, W), stride, padding, dilation
    ((7, 5, 3, 3), (1, 9, 8), 1, 1, 1),
    ((7, 5, 3, 3), (3, 9, 8), 2, 1, 1),
    ((4, 3, 4, 4), (2, 11, 6), 2, (1, 2), 1),
    ((6, 13, 1, 1), (2, 5, 7), 1, 0, 1),
    ((3, 2, 3, 2), (1, 10, 9), (2, 1), 0, (2, 3)),
]


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_torch(bits: int, case) -> None:
    shape, (b, h, w_), stride, padding, dilation = case
    w, v = _weight(shape, bits, False, per_channel=bits % 2 == 0, seed=bits)
    x = torch.randn(b, shape[1], h, w_, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    out = conv2d(x, w, stride, padding, dilation)
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    ref = F.conv2d(x.cpu().double(), v, **kw)
    _close(out, ref, F.conv2d(x.cpu().double().abs(), v.abs(), **kw))


CONVT_CASES = [  # (C_out, C_in, kh, kw) of V, (B, H, W), stride, padding, output_padding, dil.
    ((6, 5, 4, 4), (1, 4, 5), 2, 1, 0, 1),
    ((6, 5, 4, 4), (3, 4, 5), 2, 1, 1, 1),
    ((3, 8, 3, 3), (2, 5, 3), 1, 1, 0, 1),
    ((4, 3, 3, 2), (1, 3, 4), (1, 3), (2, 0), 0, (2, 1)),
    ((5, 2, 1, 1), (2, 3, 3), 2, 0, 1, 1),   # phases no tap reaches
    ((4, 3, 3, 3), (1, 4, 5), 2, 1, 1, 2),   # gcd(stride, dilation) = 2
]


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("case", CONVT_CASES, ids=str)
def test_conv_transpose2d_matches_torch(bits: int, case) -> None:
    shape, (b, h, w_), stride, padding, out_pad, dilation = case
    w, v = _weight(shape, bits, False, per_channel=bits % 2 == 1, seed=10 + bits)
    x = torch.randn(b, shape[1], h, w_, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    out = conv_transpose2d(x, w, stride, padding, dilation, out_pad)
    kw = dict(stride=stride, padding=padding, output_padding=out_pad, dilation=dilation)
    wt = v.permute(1, 0, 2, 3)
    ref = F.conv_transpose2d(x.cpu().double(), wt, **kw)
    _close(out, ref, F.conv_transpose2d(x.cpu().double().abs(), wt.abs(), **kw))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
def test_epilogue(activation: str) -> None:
    """alpha, beta and the activation per output channel, as ``gemm``'s epilogue."""
    w, v = _weight((6, 5, 4, 4), 2, False, True, seed=3)
    x = torch.randn(2, 5, 4, 5).to(DEVICE)
    alpha, beta = torch.rand(6) + 0.5, torch.randn(6)
    out = conv_transpose2d(x, w, 2, 1, alpha=alpha.to(DEVICE), beta=beta.to(DEVICE),
                           activation=activation, negative_slope=0.2)
    pre = F.conv_transpose2d(x.cpu().double(), v.permute(1, 0, 2, 3), stride=2, padding=1)
    pre = pre * alpha.double().reshape(1, -1, 1, 1) + beta.double().reshape(1, -1, 1, 1)
    ref = {"relu": F.relu, "tanh": torch.tanh,
           "leaky_relu": lambda t: F.leaky_relu(t, 0.2)}[activation](pre)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_phases_without_taps_hold_the_epilogue_of_zero() -> None:
    """A 1x1 kernel at stride 2 reaches one output phase of four; the others are act(beta)."""
    w, v = _weight((3, 2, 1, 1), 4, False, True, seed=6)
    x = torch.randn(2, 2, 3, 4).to(DEVICE)
    beta = torch.tensor([0.5, -0.25, 2.0])
    out = conv_transpose2d(x, w, 2, 0, output_padding=1, beta=beta.to(DEVICE),
                           activation="tanh")
    ref = torch.tanh(F.conv_transpose2d(x.cpu().double(), v.permute(1, 0, 2, 3),
                                        beta.double(), stride=2, output_padding=1))
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[:, :, 1::2, 1::2].cpu(),
                       torch.tanh(beta).reshape(1, 3, 1, 1).expand(2, 3, 3, 4))


def test_each_direction_is_the_others_input_gradient() -> None:
    """conv_transpose2d's input gradient is conv2d with the canonical weight (scale on its
    C_out, now the reduction axis), conv2d's is conv_transpose2d with the weight transposed."""
    gen = torch.Generator().manual_seed(0)
    # ConvTranspose2d weight W [C_in=5, C_out=6, 4, 4], per-C_out scale
    w_ct, v_ct = _weight((5, 6, 4, 4), 3, True, True, seed=21)  # V = W: n = C_in, c = C_out
    x = torch.randn(2, 5, 4, 5, generator=gen).double().requires_grad_(True)
    y = F.conv_transpose2d(x, v_ct, stride=2, padding=1)
    g = torch.randn(y.shape, generator=gen).double()
    (gx,) = torch.autograd.grad(y, x, g)
    out = conv2d(g.float().to(DEVICE), w_ct, stride=2, padding=1)
    _close(out, gx, F.conv2d(g.abs(), v_ct.abs(), stride=2, padding=1))
    # Conv2d weight W [C_out=7, C_in=5, 3, 3], per-C_out scale; V = W.permute(1, 0, 2, 3)
    codes = torch.randint(0, 4, (7, 5, 3, 3), generator=gen, dtype=torch.uint8)
    scale, zero = torch.rand(7, generator=gen) * 0.2 + 0.05, torch.full((7,), 1.5)
    w_c = scale.double().reshape(-1, 1, 1, 1) * (codes.double() - 1.5)
    packed_t = PackedConvWeight.from_codes(codes.permute(1, 0, 2, 3), scale, zero, 2, True,
                                           DEVICE)
    x = torch.randn(3, 5, 9, 8, generator=gen).double().requires_grad_(True)
    y = F.conv2d(x, w_c, stride=2, padding=1)
    g = torch.randn(y.shape, generator=gen).double()
    (gx,) = torch.autograd.grad(y, x, g)
    out = conv_transpose2d(g.float().to(DEVICE), packed_t, 2, 1, output_padding=(0, 1))
    _close(out, gx, F.conv_transpose2d(g.abs(), w_c.abs(), stride=2, padding=1,
                                       output_padding=(0, 1)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_activations(dtype: torch.dtype) -> None:
    w, v = _weight((7, 5, 3, 3), 1, False, True, seed=4)
    x = torch.randn(2, 5, 9, 8).to(DEVICE, dtype)
    out = conv2d(x, w, 2, 1)
    assert out.dtype == dtype
    ref = F.conv2d(x.cpu().double(), v, stride=2, padding=1)
    bound = F.conv2d(x.cpu().double().abs(), v.abs(), stride=2, padding=1)
    _close(out, ref, bound, rtol=2e-3 if dtype == torch.float16 else 1e-2)


def test_bad_input_is_refused() -> None:
    w, _ = _weight((7, 5, 3, 3), 1, False, True, seed=5)
    with pytest.raises(ValueError, match="x must be"):
        conv2d(torch.randn(1, 4, 9, 9, device=DEVICE), w)
    with pytest.raises(ValueError, match="output would be"):
        conv2d(torch.randn(1, 5, 2, 2, device=DEVICE), w)
    with pytest.raises(ValueError, match="alpha"):
        conv2d(torch.randn(1, 5, 5, 5, device=DEVICE), w, alpha=torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="1 or 7 values"):
        PackedConvWeight.from_codes(torch.zeros(7, 5, 3, 3, dtype=torch.uint8), torch.ones(2),
                                    torch.ones(2), 1)
    with pytest.raises(ValueError, match=r"\[N, C, kh, kw\]"):
        PackedConvWeight.from_codes(torch.zeros(7, 5, dtype=torch.uint8), torch.ones(1),
                                    torch.ones(1), 1)


# --- the engine's conv layers on the implicit-GEMM path ---------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("bits,granularity", [(1, "tensor"), (3, "channel")])
def test_dcgan_generator_on_implicit_conv(tiny_checkpoint, tmp_path, monkeypatch, bits: int,
                                          granularity: str) -> None:
    """A DCGAN model (ConvTranspose2d layers, a Conv2d output layer, BatchNorm folded into the
    epilogue) on the triton backend with QGEN_TRITON_IMPLICIT_CONV=1: the generator's output and
    its gradient w.r.t. z equal the reference backend's, and the conv layers did take the
    implicit path."""
    import qgen_infer
    from qgen_infer.export import export_checkpoint

    path = export_checkpoint(tiny_checkpoint("dcgan", bits, granularity), tmp_path / "d.qgen").path
    monkeypatch.setenv("QGEN_TRITON_IMPLICIT_CONV", "1")
    packed = qgen_infer.load(path, backend="triton", device=DEVICE)
    ref = qgen_infer.load(path, backend="reference")
    z = torch.randn(1, packed.config["latent_dim"], generator=torch.Generator().manual_seed(1))
    zp = z.to(DEVICE).requires_grad_(True)
    zr = z.clone().requires_grad_(True)
    xp, xr = packed.generator(zp), ref.generator(zr)
    torch.testing.assert_close(xp.detach().cpu(), xr.detach(), rtol=1e-4, atol=1e-5)
    g = torch.randn(xr.shape, generator=torch.Generator().manual_seed(2))
    (gp,) = torch.autograd.grad(xp, zp, g.to(DEVICE))
    (gr,) = torch.autograd.grad(xr, zr, g)
    torch.testing.assert_close(gp.cpu(), gr, rtol=1e-4, atol=1e-5)
    convs = [m for m in packed.generator.modules() if hasattr(m, "_conv_plan")]
    assert convs and all(m._conv_plan is not None for m in convs)
