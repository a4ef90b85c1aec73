"""``engine.memory.sequential_elements``: the activation count from the layers' settings equals
the one a ``meta`` forward pass gives, for the layers it reads settings from (odd sizes,
strides, padding, dilation) and for a network mixing them with one it must run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qgen_infer.engine.memory import _output_shape, sequential_elements
from qgen_infer.models.layers import Reshape

NETWORKS = {
    "mlp": (nn.Sequential(nn.Flatten(), nn.Linear(3 * 7 * 5, 13), nn.LeakyReLU(0.2),
                          nn.Linear(13, 1), nn.Tanh()), [3, 7, 5]),
    "conv": (nn.Sequential(nn.Conv2d(3, 5, 4, 2, 1), nn.BatchNorm2d(5), nn.ReLU(),
                           nn.Conv2d(5, 2, (3, 2), stride=(1, 3), padding=(2, 0), dilation=2),
                           nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 11 * 2, 3)), [3, 23, 17]),
    "mixed": (nn.Sequential(nn.Linear(6, 2 * 3 * 3), Reshape(2, 3, 3),
                            nn.ConvTranspose2d(2, 4, 3, 2, 1), nn.Conv2d(4, 1, 1)), [6]),
}


def _meta_elements(net: nn.Sequential, sample_shape: list[int]) -> int:
    x, total = torch.empty(1, *sample_shape, device="meta"), 0
    for module in net:
        x = module(x)
        total += x.numel()
    return total


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_counts_equal_a_meta_forward(name):
    net, shape = NETWORKS[name]
    net = net.to("meta")
    assert sequential_elements(net, shape) == _meta_elements(net, shape)


def test_layers_it_cannot_read_are_run():
    assert _output_shape(nn.ConvTranspose2d(2, 4, 3), (1, 2, 5, 5)) is None
    assert _output_shape(nn.Conv2d(2, 4, 3, padding="same"), (1, 2, 5, 5)) is None
    assert _output_shape(nn.Flatten(2), (1, 2, 5, 5)) is None
