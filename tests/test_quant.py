"""LinearQuantize: the integer form, the value grid, the STE and per-channel scales."""

import pytest
import torch

from qgen_infer.quant import QuantSpec, dequantize, fake_quantize, quantize_codes


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("granularity,axis", [("tensor", 0), ("channel", 0), ("channel", 1)])
def test_codes_range_and_exact_reconstruction(bits, granularity, axis, rng):
    w = torch.randn(7, 13, 3, generator=rng)
    q = quantize_codes(w, QuantSpec(bits, granularity, axis))
    assert q.codes.dtype == torch.uint8
    assert int(q.codes.max()) < 2**bits
    n_scales = 1 if granularity == "tensor" else w.shape[axis]
    assert q.scale.shape == q.zero.shape == (n_scales,)
    # fake_quantize and dequantize(codes) are the same numbers, bit for bit.
    assert torch.equal(fake_quantize(w, q.spec), q.dequantize())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_midtread_grid_matches_hubara(bits, rng):
    w = torch.randn(64, 33, generator=rng)
    q = quantize_codes(w, QuantSpec(bits))
    delta = w.abs().max() / 2 ** (bits - 1)
    expected = torch.clamp(torch.round(w / delta), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * delta
    torch.testing.assert_close(q.dequantize(), expected, rtol=0, atol=1e-7)
    # the largest-magnitude weight lands on an end of the code range (clipped when positive)
    i = w.abs().argmax()
    assert int(q.codes.flatten()[i]) == (2**bits - 1 if w.flatten()[i] > 0 else 0)


def test_one_bit_is_sign_times_mean_abs(rng):
    w = torch.randn(10, 20, generator=rng)
    wq = fake_quantize(w, QuantSpec(1))
    alpha = w.abs().mean()
    assert torch.equal(wq.abs().unique(), alpha.reshape(1))
    assert torch.equal(torch.sign(wq), torch.where(w >= 0, 1.0, -1.0))


def test_one_bit_per_channel_scale(rng):
    w = torch.randn(4, 50, generator=rng) * torch.tensor([[0.1], [1.0], [10.0], [3.0]])
    wq = fake_quantize(w, QuantSpec(1, "channel", 0))
    torch.testing.assert_close(wq.abs().mean(dim=1), w.abs().mean(dim=1))


def test_conv_transpose_channel_axis(rng):
    w = torch.randn(5, 3, 4, 4, generator=rng)
    w[:, 1] *= 100
    q = quantize_codes(w, QuantSpec(4, "channel", 1))
    assert q.scale.shape == (3,)
    assert q.scale[1] > 50 * q.scale[0]


def test_straight_through_gradient_is_identity(rng):
    w = torch.randn(6, 9, generator=rng, requires_grad=True)
    g = torch.randn(6, 9, generator=rng)
    (fake_quantize(w, QuantSpec(2)) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_full_precision_is_identity(rng):
    w = torch.randn(3, 3, generator=rng)
    assert fake_quantize(w, QuantSpec(32)) is w


def test_zero_tensor_quantizes_without_nan():
    for bits in (1, 2, 3, 4):
        q = quantize_codes(torch.zeros(3, 4), QuantSpec(bits))
        assert torch.isfinite(q.dequantize()).all()
        assert q.dequantize().abs().max() < 1e-30


@pytest.mark.parametrize("bits", [0, 5, 8, 16])
def test_bad_bits_rejected(bits):
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits)


def test_bad_granularity_and_axis_rejected():
    with pytest.raises(ValueError, match="granularity"):
        QuantSpec(2, "row")
    with pytest.raises(ValueError, match="channel_axis"):
        quantize_codes(torch.randn(3, 3), QuantSpec(2, "channel", 5))


def test_dequantize_per_channel_broadcast():
    codes = torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8)
    out = dequantize(codes, torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0]), 0)
    assert torch.equal(out, torch.tensor([[-0.5, 0.5], [2.0, 4.0]]))
