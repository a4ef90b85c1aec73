"""The P_s threshold: the compiled radix select equals torch.topk's k-th value exactly."""

import math

import pytest
import torch

from qgen_infer.solve import hard_threshold, selection
from qgen_infer.solve.selection import kth_largest_magnitude

needs_ext = pytest.mark.skipif(selection._EXT is None, reason="qgen_infer._cpu not built")


def _topk_threshold(z: torch.Tensor, k: int) -> torch.Tensor:
    return z.abs().topk(k, dim=-1).values[..., -1:]


@needs_ext
@pytest.mark.parametrize("shape,k", [
    ((1, 1), 1), ((1, 5), 1), ((1, 5), 5), ((3, 7), 4), ((256, 784), 100), ((17, 784), 783),
    ((5, 4099), 2000), ((1000, 100), 10), ((2, 33), 32),
])
@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30])
def test_extension_equals_topk(shape, k, scale):
    g = torch.Generator().manual_seed(shape[0] * 7919 + k)
    z = torch.randn(*shape, generator=g) * scale
    torch.testing.assert_close(kth_largest_magnitude(z, k),
                               _topk_threshold(z, k), rtol=0, atol=0)


@needs_ext
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_extension_equals_topk_on_ties_zeros_and_specials(threads):
    g = torch.Generator().manual_seed(5)
    # few distinct magnitudes (many ties, both signs, +-0), plus subnormals, inf and NaN rows
    z = torch.randint(-3, 4, (300, 600), generator=g).float() * 0.5
    z[0, :] = -0.0
    z[1, :10] = float("inf")
    z[2, 5] = float("nan")
    z[3, :] = torch.randn(600, generator=g) * 1e-40  # subnormal
    torch.set_num_threads(threads)
    try:
        for k in (1, 2, 11, 299, 600):
            got = kth_largest_magnitude(z, k)
            want = _topk_threshold(z, k)
            assert torch.equal(got.isnan(), want.isnan())
            torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0, atol=0)
    finally:
        torch.set_num_threads(1)


def test_torch_path_and_leading_dims():
    z = torch.randn(2, 3, 50, dtype=torch.float64)
    t = kth_largest_magnitude(z, 7)
    assert t.shape == (2, 3, 1)
    assert ((z.abs() >= t).sum(-1) == 7).all()
    z32 = z.float()
    torch.testing.assert_close(kth_largest_magnitude(z32, 7),
                               kth_largest_magnitude(z32, 7, use_extension=False),
                               rtol=0, atol=0)


@pytest.mark.parametrize("k", [0, -1, 51])
def test_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must be between 1 and 50"):
        kth_largest_magnitude(torch.randn(3, 50), k)


def test_no_gradient_and_input_unchanged():
    z = torch.randn(4, 30, requires_grad=True)
    before = z.detach().clone()
    t = kth_largest_magnitude(z, 3)
    assert not t.requires_grad
    assert torch.equal(z.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_threshold_keeps_exactly_s_and_the_largest(dtype):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(64, 784, generator=g, dtype=dtype)
    out = hard_threshold(z, 100)
    assert ((out != 0).sum(-1) == 100).all()
    kept_min = out.abs().masked_fill(out == 0, math.inf).min(-1).values
    dropped_max = z.abs().masked_fill(out != 0, -1.0).max(-1).values
    assert (kept_min > dropped_max).all()
    assert torch.equal(out[out != 0], z[out != 0])


def test_hard_threshold_gradient_flows_to_kept_entries_only():
    z = torch.tensor([[0.3, -2.0, 1.0, 0.1]], requires_grad=True)
    hard_threshold(z, 2).sum().backward()
    assert torch.equal(z.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("use_ext", [True, False])
def test_top_s_mask_is_exact_under_ties(use_ext, monkeypatch):
    if not use_ext:
        monkeypatch.setattr(selection, "_EXT", None)
    keys = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5], [3.0, 3.0, 3.0, 3.0, 3.0],
                         [0.0, 0.0, -4.0, 0.0, 1.0]])
    from qgen_infer.solve.selection import top_s_mask
    mask = top_s_mask(keys, 2)
    assert mask.tolist() == [[False, True, True, False, False],
                             [True, True, False, False, False],
                             [False, False, True, False, True]]
    g = torch.Generator().manual_seed(0)
    rnd = torch.randint(0, 5, (50, 40), generator=g).float()
    assert (top_s_mask(rnd, 7).sum(-1) == 7).all()


def test_sample_latent_supports_are_uniform():
    """Every coordinate is in the support with probability s / d (chi-square-free check: the
    counts over 20,000 rows stay within 5 standard deviations of s/d)."""
    from qgen_infer.solve import sample_latent

    n, d, s = 20000, 40, 7
    z = sample_latent(n, d, s, project=False, generator=torch.Generator().manual_seed(3))
    assert ((z != 0).sum(-1) == s).all()
    freq = (z != 0).float().sum(0)
    p = s / d
    assert ((freq - n * p).abs() < 5 * (n * p * (1 - p)) ** 0.5).all()


@needs_ext
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 33), (256, 784), (3, 4099)])
@pytest.mark.parametrize("sparsity", [None, 1, "d-1", "d"])
@pytest.mark.parametrize("project", [False, True])
def test_fused_proximal_step_equals_torch(shape, sparsity, project):
    from qgen_infer.solve.proximal import proximal_step

    b, d = shape
    s = {"d-1": max(d - 1, 1), "d": d}.get(sparsity, sparsity)
    g = torch.Generator().manual_seed(b * 31 + d)
    z, grad = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 3
    with torch.no_grad():
        fused = proximal_step(z, grad, 0.0123, s, project)
    z.requires_grad_(True)  # forces the torch path
    with torch.enable_grad():
        ref = proximal_step(z, grad, 0.0123, s, project).detach()
    # same mask and values; the norm may differ from torch's in its last bit (<= 2 ulp after /)
    assert torch.equal(fused == 0, ref == 0)
    torch.testing.assert_close(fused, ref, rtol=4e-7 if project else 0, atol=0)


@needs_ext
def test_fused_proximal_step_zero_row_and_tensor_step():
    from qgen_infer.solve.proximal import proximal_step

    z = torch.zeros(2, 5)
    out = proximal_step(z, torch.zeros(2, 5), torch.tensor(0.5), 2, True)
    assert torch.equal(out, torch.zeros(2, 5))  # ||z|| = 0: divided by eps, stays 0
