"""Every kernel path, registered with the torch reference it must equal.

The tests walk ``KERNELS`` so that no path escapes.
Importing this module imports triton (the kernels are compiled lazily, on first launch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qgen_infer.kernels.configs import KernelConfig
from qgen_infer.kernels.gemm import gemm
from qgen_infer.kernels.gemm_t import gemm_t
from qgen_infer.kernels.layout import PackedKWords


def dequantize(w: PackedKWords) -> torch.Tensor:
    """fp64 ``W[n, k]`` decoded from the packed words by plain torch (references only)."""
    from qgen_infer.kernels.layout import unpack_kwords

    codes = unpack_kwords(w.words.cpu(), w.k, w.bits).to(torch.float64)
    return w.scale.cpu().double()[:, None] * (codes - w.zero.cpu().double()[:, None])


@dataclass(frozen=True)
class KernelRecord:
    """``op``: ``gemm`` (operand ``[M, K]``) or ``gemm_t`` (operand ``[M, N]``); ``path``: the
    config path it forces; ``run(a, w, config)`` launches it without an epilogue."""

    op: str
    path: str
    run: Callable[[torch.Tensor, PackedKWords, KernelConfig], torch.Tensor]

    @property
    def name(self) -> str:
        return f"{self.op}_kpack_{self.path}"

    def reference(self, a: torch.Tensor, w: PackedKWords) -> torch.Tensor:
        """The product in fp64 on the CPU from the decoded weight."""
        wd = dequantize(w)
        a64 = a.detach().cpu().double()
        return a64 @ wd.t() if self.op == "gemm" else a64 @ wd


KERNELS: tuple[KernelRecord, ...] = (
    KernelRecord("gemm", "dot", lambda a, w, cfg: gemm(a, w, config=cfg)),
    KernelRecord("gemm", "gemv", lambda a, w, cfg: gemm(a, w, config=cfg)),
    KernelRecord("gemm_t", "dot", lambda a, w, cfg: gemm_t(a, w, config=cfg)),
    KernelRecord("gemm_t", "gemv", lambda a, w, cfg: gemm_t(a, w, config=cfg)),
)

