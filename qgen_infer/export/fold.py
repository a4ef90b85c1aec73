"""Fuse each generator weight layer with the BatchNorm and activation that follow it.

A generator is an ``nn.Sequential`` of ``QLinear``/``QConv2d``/``QConvTranspose2d``, ``BatchNorm``,
activations and ``Reshape``. Every weight layer starts a group that absorbs, in this order, any
``Reshape``, at most one BatchNorm and at most one activation; the engine then computes the group
as one epilogue ``act(alpha * (W x) + beta)``.

BatchNorm in eval mode is affine per channel, so with the layer's bias ``b`` (0 when absent)::

    BN(W x + b) = gamma * (W x + b - mean) / sqrt(var + eps) + shift
                = alpha * (W x) + beta,   alpha = gamma / sqrt(var + eps),
                                          beta  = shift + alpha * (b - mean)

(computed in float64, stored in float32). Without BatchNorm, ``alpha = 1`` and ``beta = b``.
A ``Reshape`` between a Linear and its BatchNorm (DCGAN's ``fc -> [C, 4, 4] -> bn0``) maps each
BN channel onto ``H*W`` consecutive output features, so alpha and beta are repeated per feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qgen_infer.errors import QgenError
from qgen_infer.models import QConv2d, QConvTranspose2d, QLinear, Reshape

WEIGHT_MODULES: dict[type, str] = {
    QLinear: "linear",
    QConv2d: "conv2d",
    QConvTranspose2d: "conv_transpose2d",
}


class UnsupportedNetworkError(QgenError):
    """A generator whose layer sequence cannot be expressed as packed layers with epilogues."""


@dataclass
class FusedLayer:
    """One weight layer with its folded epilogue: ``act(alpha * (W x) + beta)``, per channel."""

    name: str
    kind: str
    module: nn.Module
    alpha: torch.Tensor
    beta: torch.Tensor
    activation: str = "none"
    negative_slope: float = 0.01
    batchnorm: str | None = None


@dataclass
class ReshapeStep:
    name: str
    shape: tuple[int, ...]


@dataclass
class _Group:
    name: str
    module: nn.Module
    reshapes: list[tuple[str, Reshape]] = field(default_factory=list)
    batchnorm: tuple[str, nn.Module] | None = None
    activation: tuple[str, str, float] | None = None


def _activation(module: nn.Module) -> tuple[str, float] | None:
    if isinstance(module, nn.ReLU):
        return "relu", 0.01
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.Tanh):
        return "tanh", 0.01
    return None


def _out_channels(kind: str, module: nn.Module) -> int:
    return int(module.weight.shape[1] if kind == "conv_transpose2d" else module.weight.shape[0])


def _fold(group: _Group) -> FusedLayer:
    kind = WEIGHT_MODULES[type(group.module)]
    c_out = _out_channels(kind, group.module)
    bias = group.module.bias
    b = bias.detach().double() if bias is not None else torch.zeros(c_out, dtype=torch.float64)
    alpha, beta = torch.ones(c_out, dtype=torch.float64), b
    bn_name = None
    if group.batchnorm is not None:
        bn_name, bn = group.batchnorm
        if bn.running_mean is None or bn.running_var is None:
            raise UnsupportedNetworkError(f"BatchNorm {bn_name!r} has no running statistics "
                                          "to fold")
        gamma = bn.weight.detach().double() if bn.weight is not None else 1.0
        shift = bn.bias.detach().double() if bn.bias is not None else 0.0
        bn_alpha = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        bn_beta = shift - bn_alpha * bn.running_mean.double()
        per_feature = c_out // bn_alpha.numel() if bn_alpha.numel() else 0
        if per_feature * bn_alpha.numel() != c_out:
            raise UnsupportedNetworkError(f"BatchNorm {bn_name!r} has {bn_alpha.numel()} channels "
                                          f"but layer {group.name!r} gives {c_out} outputs")
        if per_feature > 1 and (not group.reshapes
                                or group.reshapes[-1][1].shape[0] != bn_alpha.numel()):
            raise UnsupportedNetworkError(f"BatchNorm {bn_name!r} does not match the channels of "
                                          f"layer {group.name!r}")
        # channel c covers the per_feature consecutive features of a [C, H, W] view
        bn_alpha = bn_alpha.repeat_interleave(per_feature)
        bn_beta = bn_beta.repeat_interleave(per_feature)
        alpha, beta = bn_alpha, bn_beta + bn_alpha * b
    act, slope = ("none", 0.01) if group.activation is None else group.activation[1:]
    return FusedLayer(group.name, kind, group.module, alpha.float(), beta.float(), act, slope,
                      bn_name)


def fuse_generator(generator: nn.Sequential) -> list[FusedLayer | ReshapeStep]:
    """The generator as fused weight layers and reshapes, in forward order."""
    steps: list[FusedLayer | ReshapeStep] = []
    group: _Group | None = None

    def close() -> None:
        if group is not None:
            steps.append(_fold(group))
            steps.extend(ReshapeStep(n, m.shape) for n, m in group.reshapes)

    for name, module in generator.named_children():
        if type(module) in WEIGHT_MODULES:
            close()
            _check_conv(name, module)
            group = _Group(name, module)
        elif isinstance(module, Reshape):
            if group is None:
                steps.append(ReshapeStep(name, module.shape))
            else:
                group.reshapes.append((name, module))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if group is None or group.batchnorm is not None or group.activation is not None:
                raise UnsupportedNetworkError(f"BatchNorm {name!r} does not directly follow a "
                                              "weight layer; it cannot be folded")
            group.batchnorm = (name, module)
        elif (act := _activation(module)) is not None:
            if group is None or group.activation is not None:
                raise UnsupportedNetworkError(f"activation {name!r} does not follow a weight "
                                              "layer; it cannot be fused")
            group.activation = (name, *act)
        else:
            raise UnsupportedNetworkError(f"generator layer {name!r} ({type(module).__name__}) "
                                          "is not supported by the packed format")
    close()
    return steps


def _check_conv(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        return
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise UnsupportedNetworkError(f"layer {name!r}: grouped, non-zero-padded or 'same'-padded "
                                      "convolutions are not supported by the packed format")
