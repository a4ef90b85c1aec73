"""The threshold of the hard-thresholding operator P_s: the s-th largest magnitude of each row.

P_s keeps the entries with ``|z| >= t`` where ``t`` is that threshold. Because ``t`` is an element
of the row, every exact selection gives the same ``t`` and therefore the same mask: the compiled
CPU routine (``qgen_infer._cpu.kth_largest_abs_f32``, a radix select, ~5x faster than
``torch.topk`` at the solver's 256 x 784 shapes, where topk costs as much as a packed GEMM) and
``torch.topk`` elsewhere (other devices and dtypes, or when the extension is not built).
"""

from __future__ import annotations

from types import ModuleType

import torch


def _load_extension() -> ModuleType | None:
    try:
        from qgen_infer import _cpu
    except ImportError:
        return None
    # an extension built before the solver routines existed lacks them: use torch then
    routines = ("kth_largest_abs_f32", "proximal_step_f32")
    return _cpu if all(hasattr(_cpu, name) for name in routines) else None


_EXT = _load_extension()


def cpu_extension() -> ModuleType | None:
    """The compiled solver routines (``qgen_infer._cpu``), or None where it is not built."""
    return _EXT


def kth_largest_magnitude(z: torch.Tensor, k: int, *, use_extension: bool = True
                          ) -> torch.Tensor:
    """``t[..., 0]`` = the ``k``-th largest ``|z[..., j]|`` over the last axis (``1 <= k <= d``);
    shape ``[..., 1]``, no gradient. NaN ranks above every number, as in ``torch.topk``.
    ``use_extension=False`` forces the torch path (tests hold the two to each other)."""
    d = z.shape[-1]
    if not 1 <= k <= d:
        raise ValueError(f"k must be between 1 and {d}, got {k}")
    z = z.detach()
    if (use_extension and _EXT is not None and z.device.type == "cpu"
            and z.dtype == torch.float32 and z.numel() > 0):
        rows = z.reshape(-1, d).contiguous()
        t = _EXT.kth_largest_abs_f32(rows.numpy(), k, torch.get_num_threads())
        return torch.from_numpy(t).reshape(*z.shape[:-1], 1)
    return z.abs().topk(k, dim=-1).values[..., -1:]


def top_s_mask(keys: torch.Tensor, s: int) -> torch.Tensor:
    """A boolean mask of exactly ``s`` entries per row: the ``s`` largest ``|keys|``, ties at the
    threshold broken towards lower indices (so the mask never depends on how ties are ordered)."""
    t = kth_largest_magnitude(keys, s)
    mag = keys.detach().abs()
    above = mag > t
    tied = mag == t
    need = s - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= need))
