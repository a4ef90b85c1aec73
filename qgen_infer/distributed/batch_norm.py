"""BatchNorm over the global batch of a data-parallel job, on any device and backend (gloo too).

Under DistributedDataParallel each rank holds B / W images of the global batch B; a plain
BatchNorm normalises with its own slice's statistics, so W ranks would train another network
than one process with batch B. torch's ``SyncBatchNorm`` fixes that on GPUs only (it refuses CPU
tensors) and its backward is not differentiable, while Algorithm 1 differentiates through the
solver's gradients (``create_graph``). :class:`GlobalBatchNorm2d` computes the statistics of the
whole batch from per-rank sums, all-reduced by an autograd function whose backward is the same
all-reduce (:class:`_SumOverRanks`), so it is differentiable to any order. Per channel c, with
n = W * (slice rows) * H * W_img elements over the ranks:

    mean_c = allreduce(sum x_c) / n,   var_c = allreduce(sum (x_c - mean_c)^2) / n
    out = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c

the biased variance normalises, the unbiased one (n / (n - 1)) enters the running average, as
``F.batch_norm`` does. Outside training, or in a job of one, it is ``nn.BatchNorm2d`` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_DIMS = (0, 2, 3)  # everything but the channel axis of [N, C, H, W]


class _SumOverRanks(torch.autograd.Function):
    """Sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients (each
    rank's loss depends on every rank's input through it), itself differentiable."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks of the default process group, differentiably (16-bit
    floats in fp32: gloo reduces no bf16)."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return _SumOverRanks.apply(tensor.float()).to(tensor.dtype)
    return _SumOverRanks.apply(tensor)


def _synced() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are the global batch's (module
    docstring). Every rank must call it at the same points with slices of equal size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _synced()):
            return super().forward(x)
        self._check_input_dim(x)
        n = x.numel() // x.shape[1] * dist.get_world_size()
        shape = (1, -1, 1, 1)
        mean = sum_over_ranks(x.sum(_DIMS)) / n
        centred = x - mean.reshape(shape)
        var = sum_over_ranks((centred * centred).sum(_DIMS)) / n
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                rate = (self.momentum if self.momentum is not None
                        else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), rate)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), rate)
        return out


def synchronise_batch_norm(net: nn.Module) -> int:
    """Turn every ``nn.BatchNorm2d`` of ``net`` into a :class:`GlobalBatchNorm2d`, in place: the
    class changes, the module (its parameters, which an optimizer may already hold, and its
    buffers) stays. Returns how many."""
    count = 0
    for module in net.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
            count += 1
    return count
