"""qgen_infer.conv_geometry, the one home of the conv output-size formulas, against the shapes
PyTorch's own convolutions produce (shape-only tensors on the meta device), on random odd
geometries: sizes 1-17, kernels 1-5, strides 1-4, dilations 1-3, any valid padding."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from qgen_infer.conv_geometry import conv2d_output_size, conv_transpose2d_output_size


def _cases(seed: int, count: int = 300):
    rng = random.Random(seed)
    for _ in range(count):
        size, k, s, d = rng.randint(1, 17), rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 3)
        yield size, k, s, rng.randint(0, k // 2 + 1), d, rng.randrange(max(s, d))


def test_conv2d_output_size_is_pytorchs() -> None:
    checked = 0
    for size, k, s, p, d, _ in _cases(0):
        want = conv2d_output_size(size, k, s, p, d)
        if want < 1:  # PyTorch refuses these; the format reader does too
            continue
        x, w = torch.empty(1, 2, size, size + 1, device="meta"), torch.empty(3, 2, k, k,
                                                                           device="meta")
        y = F.conv2d(x, w, stride=s, padding=p, dilation=d)
        assert y.shape[-2:] == (want, conv2d_output_size(size + 1, k, s, p, d))
        checked += 1
    assert checked > 200


def test_conv_transpose2d_output_size_is_pytorchs() -> None:
    checked = 0
    for size, k, s, p, d, op in _cases(1):
        want = conv_transpose2d_output_size(size, k, s, p, d, op)
        if want < 1:
            continue
        x, w = torch.empty(1, 2, size, size + 1, device="meta"), torch.empty(2, 3, k, k,
                                                                           device="meta")
        y = F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op, dilation=d)
        assert y.shape[-2:] == (want, conv_transpose2d_output_size(size + 1, k, s, p, d, op))
        checked += 1
    assert checked > 200
