"""The generator's layer chain checked statically, from the metadata alone: shapes and sizes.

A file's bytes bound its weights but not its activations: a 1x1 transposed convolution of stride
4096 is a few bytes on disk and makes a 110,593 x 110,593 image. So before any tensor is read,
one sample's shape is propagated from ``latent_dim`` through every layer to ``image_shape``:

* linear ``[K] -> [N]`` with weight ``[N, K]``;
* conv2d and conv_transpose2d ``[C_in, H, W] -> [C_out, H', W']`` (sizes by
  :mod:`qgen_infer.conv_geometry`);
* reshape: the same number of elements.

Each activation is bounded by :data:`MAX_ACTIVATION` elements per sample (8 GiB of fp32: no
image generator is near it), and the chain's per-sample element counts are returned for the
engine's memory check, which knows the batch and the machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qgen_infer.conv_geometry import conv2d_output_size, conv_transpose2d_output_size
from qgen_infer.errors import FormatError

MAX_ACTIVATION = 2**31


@dataclass(frozen=True)
class ChainPlan:
    """Per-sample element counts of the generator: ``activations`` sums every layer's output
    (what autograd keeps for the backward pass), ``workspace`` is the largest unfolded
    (im2col / col2im) buffer a convolution needs, ``widest`` the largest single activation."""

    activations: int
    workspace: int
    widest: int


def _conv_shape(layer: dict[str, Any], shape: tuple[int, ...], where: str
                ) -> tuple[tuple[int, ...], int]:
    """Output shape of a conv layer and its unfolded buffer's elements."""
    ws, kind = layer["weight_shape"], layer["kind"]
    c_in = ws[0] if kind == "conv_transpose2d" else ws[1]
    if len(shape) != 3 or shape[0] != c_in:
        raise FormatError(f"{where} expects [{c_in}, H, W] inputs, gets {list(shape)}")
    args = [(ws[2 + a], layer["stride"][a], layer["padding"][a], layer["dilation"][a])
            for a in (0, 1)]
    if kind == "conv2d":
        hw = [conv2d_output_size(shape[1 + a], *args[a]) for a in (0, 1)]
        c_out = ws[0]
        workspace = c_in * ws[2] * ws[3] * hw[0] * hw[1]
    else:
        hw = [conv_transpose2d_output_size(shape[1 + a], *args[a], layer["output_padding"][a])
              for a in (0, 1)]
        c_out = ws[1]
        workspace = c_out * ws[2] * ws[3] * shape[1] * shape[2]
    if min(hw) < 1:
        raise FormatError(f"{where} produces an empty {hw} output from {list(shape)}")
    return (c_out, *hw), workspace


def chain_plan(layers: Sequence[dict[str, Any]], latent_dim: int,
               image_shape: Sequence[int]) -> ChainPlan:
    """Propagate one sample's shape through ``layers`` (their metadata descriptions); any
    mismatch, or an activation above :data:`MAX_ACTIVATION` elements, is a :class:`FormatError`.
    """
    shape: tuple[int, ...] = (latent_dim,)
    total = workspace = 0
    widest = latent_dim
    for layer in layers:
        where = f"layer {layer['name']!r}"
        kind = layer["kind"]
        if kind == "reshape":
            if math.prod(layer["shape"]) != math.prod(shape):
                raise FormatError(f"{where} reshapes {list(shape)} to {list(layer['shape'])}")
            shape = tuple(layer["shape"])
            continue
        if kind == "linear":
            ws = layer["weight_shape"]
            if shape != (ws[1],):
                raise FormatError(f"{where} expects {ws[1]} input features, gets {list(shape)}")
            shape = (ws[0],)
        else:
            shape, unfolded = _conv_shape(layer, shape, where)
            workspace = max(workspace, unfolded)
        size = math.prod(shape)
        if max(size, workspace) > MAX_ACTIVATION:
            raise FormatError(f"{where} makes {list(shape)} activations per sample "
                              f"({max(size, workspace):,} elements with its unfolded buffer; "
                              f"limit {MAX_ACTIVATION:,})")
        total += size
        widest = max(widest, size)
    if list(shape) != list(image_shape):
        raise FormatError(f"the generator makes {list(shape)} samples, but the config's "
                          f"image_shape is {list(image_shape)}")
    return ChainPlan(activations=total, workspace=workspace, widest=widest)
