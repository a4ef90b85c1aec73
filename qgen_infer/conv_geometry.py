"""Output sizes of the generator's convolutions, as PyTorch defines them, written once for the
format's static layer-chain check, the engine's packed layers and memory plan, and the Triton conv
kernels.

Per spatial axis, with kernel ``k``, stride ``s``, padding ``p``, dilation ``d``:

* conv2d: ``(size + 2p - d(k-1) - 1) // s + 1``;
* conv_transpose2d (its adjoint), with output padding ``op``: ``(size-1)s - 2p + d(k-1) + op + 1``.
"""

from __future__ import annotations


def conv2d_output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """One axis of ``F.conv2d``'s output (may be < 1 for a too-small input: callers check)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_transpose2d_output_size(size: int, k: int, s: int, p: int, d: int, op: int) -> int:
    """One axis of ``F.conv_transpose2d``'s output."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1
