"""LinearQuantize: the integer form, the value grid, the STE and per-channel scales."""

import math

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
    alpha = w.abs().double().mean().float()  # the mean, correctly rounded to float32
    assert torch.equal(wq.abs().unique(), alpha.reshape(1))
    assert torch.equal(torch.sign(wq), torch.where(w >= 0, 1.0, -1.0))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_one_bit_scale_does_not_follow_the_thread_count(granularity):
    """mean|w| of a 4M-weight layer (the DCGAN's fc) summed in float32 differs in its last bit
    between 1 and 2 threads; the scale, and so an exported file, must not."""
    w = torch.randn(8192, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    spec = QuantSpec(bits=1, granularity=granularity)
    previous = torch.get_num_threads()
    try:
        scales = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            scales.append(quantize_codes(w, spec).scale)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(scales[0], scales[1])
    # and it is still mean|w| to float32's precision
    want = 2 * w.double().abs().reshape(1 if granularity == "tensor" else 8192, -1).mean(1)
    assert torch.equal(scales[0], want.float())


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


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("granularity,axis", [("tensor", 0), ("channel", 0), ("channel", 1)])
def test_overflow_rate_takes_the_range_from_a_quantile(bits, granularity, axis, rng):
    """With overflow rate r the range R is the ceil((1 - r) n)-th smallest |w| of the tensor or
    channel (an element of it); weights beyond R clip to the extreme codes, the others keep
    their mid-tread rounding on the finer step R / 2^(k-1)."""
    w = torch.randn(7, 40, 3, generator=rng) * torch.linspace(0.5, 3, 3)  # heavy last column
    r = 0.1
    q = quantize_codes(w, QuantSpec(bits, granularity, axis, overflow_rate=r))
    half = 2 ** (bits - 1)
    rows = (w.abs().reshape(1, -1) if granularity == "tensor"
            else w.abs().movedim(axis, 0).reshape(w.shape[axis], -1))
    n = rows.shape[1]
    want_r = rows.sort(dim=1).values[:, math.ceil((1 - r) * n) - 1]
    torch.testing.assert_close(q.scale * half, want_r, rtol=0, atol=0)
    delta = q.scale if granularity == "tensor" else q.scale.reshape(
        [-1 if d == axis else 1 for d in range(w.ndim)])
    want = torch.clamp(torch.round(w / delta), -half, half - 1) + half
    assert torch.equal(q.codes, want.to(torch.uint8))
    clipped = w.abs() > delta * half
    assert clipped.float().mean() <= r + 1e-9 and clipped.any()
    assert ((q.codes[clipped] == 0) | (q.codes[clipped] == 2 * half - 1)).all()
    # r = 0 is the max|w| range, bit for bit
    q0 = quantize_codes(w, QuantSpec(bits, granularity, axis))
    q00 = quantize_codes(w, QuantSpec(bits, granularity, axis, overflow_rate=0.0))
    assert torch.equal(q0.codes, q00.codes) and torch.equal(q0.scale, q00.scale)


def test_overflow_rate_stops_the_gradient_of_clipped_weights(rng):
    w = (torch.randn(50, 20, generator=rng) * 2).requires_grad_(True)
    spec = QuantSpec(2, overflow_rate=0.2)
    fake_quantize(w, spec).backward(torch.ones_like(w))
    r = quantize_codes(w, spec).scale * 2
    assert torch.equal(w.grad, (w.detach().abs() <= r).float())
    assert (w.grad == 0).float().mean() == pytest.approx(0.2, abs=0.01)
    one_bit = w.detach().clone().requires_grad_(True)  # 1 bit: sign * mean|w|, nothing clips
    fake_quantize(one_bit, QuantSpec(1, overflow_rate=0.2)).sum().backward()
    assert torch.equal(one_bit.grad, torch.ones_like(w))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_bad_overflow_rate_rejected(rate):
    with pytest.raises(ValueError, match="overflow_rate"):
        QuantSpec(2, overflow_rate=rate)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("granularity,axis", [("tensor", 0), ("channel", 0), ("channel", 1)])
@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_mid_rise_grid_maps_each_weight_to_its_cells_centre(bits, granularity, axis, rate, rng):
    """grid="mid-rise": [-R, R] in 2^k cells of width Δ = R / 2^(k-1), a weight inside goes to its
    cell's centre (error at most Δ/2), one beyond R to the outer cell's; the levels are symmetric
    about 0 and none is 0; the range R and its clipping are the mid-tread grid's."""
    w = torch.randn(7, 40, 3, generator=rng) * torch.linspace(0.5, 3, 3)
    spec = QuantSpec(bits, granularity, axis, overflow_rate=rate, grid="mid-rise")
    q = quantize_codes(w, spec)
    tread = quantize_codes(w, QuantSpec(bits, granularity, axis, overflow_rate=rate))
    assert torch.equal(q.scale, tread.scale)  # the same R, so the same step
    half = 2 ** (bits - 1)
    assert torch.equal(q.zero, torch.full_like(q.scale, half - 0.5))
    delta = q.scale if granularity == "tensor" else q.scale.reshape(
        [-1 if d == axis else 1 for d in range(w.ndim)])
    want = torch.clamp(torch.floor(w / delta), -half, half - 1) + half
    assert torch.equal(q.codes, want.to(torch.uint8))
    wq = q.dequantize()
    assert torch.equal(wq, (want - half + 0.5) * delta)  # exact: the cell index plus 1/2, times Δ
    inside = w.abs() <= delta * half
    # (w = R itself sits on the top edge: an error of Δ/2 up to the subtraction's rounding)
    assert ((w - wq).abs()[inside] <= delta.expand_as(w)[inside] / 2 * (1 + 1e-6)).all()
    assert (wq[~inside].abs() == (half - 0.5) * delta.expand_as(w)[~inside]).all()
    assert not (wq == 0).any()
    # symmetric: a weight and its negative land on opposite levels (random w is on no cell edge)
    assert torch.equal(quantize_codes(-w, spec).dequantize(), -wq)


def test_mid_tread_two_bit_grid_has_one_positive_level(rng):
    """The reason the option exists: at 2 bits the paper's grid is -R, -R/2, 0, R/2."""
    w = torch.randn(1000, generator=rng)
    r = w.abs().max()
    levels = quantize_codes(w, QuantSpec(2)).dequantize().unique()
    torch.testing.assert_close(levels, torch.stack([-r, -r / 2, 0 * r, r / 2]))
    rise = quantize_codes(w, QuantSpec(2, grid="mid-rise")).dequantize().unique()
    torch.testing.assert_close(rise, torch.stack([-3 * r / 4, -r / 4, r / 4, 3 * r / 4]))


def test_mid_rise_overflow_stops_the_gradient_of_clipped_weights(rng):
    w = (torch.randn(50, 20, generator=rng) * 2).requires_grad_(True)
    spec = QuantSpec(2, overflow_rate=0.2, grid="mid-rise")
    fake_quantize(w, spec).backward(torch.ones_like(w))
    r = quantize_codes(w, spec).scale * 2
    assert torch.equal(w.grad, (w.detach().abs() <= r).float())


def test_bad_grid_rejected():
    with pytest.raises(ValueError, match="grid"):
        QuantSpec(2, grid="midrise")
