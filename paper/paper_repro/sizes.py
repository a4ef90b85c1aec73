"""Generator bytes as stored, against fp32: the model-size column of the tables.

A packed model's size is read back from its ``.qgen`` (the same accounting as ``qgen-info``): the
bit-packed codes plus the per-channel fp32 terms (scale, zero and the folded bias/BatchNorm alpha,
beta). Its fp32 counterpart is the same generator with 4-byte weights and the same per-channel
terms. A 32-bit model is counted from its checkpoint: the generator's state-dict tensors. The
fp32 sensing net is the same in every file and is left out of both, so the column compares
generators only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FP32 = 4


@dataclass(frozen=True)
class GeneratorSize:
    stored_bytes: int  # as stored: packed codes + fp32 per-channel terms, or fp32 tensors
    fp32_bytes: int  # the same generator in fp32
    file_bytes: int | None  # the whole .qgen on disk (incl. the fp32 sensing net); None for a
    # checkpoint, whose size is mostly optimizer state

    @property
    def ratio(self) -> float:
        return self.fp32_bytes / max(self.stored_bytes, 1)


def packed_size(qgen: Path) -> GeneratorSize:
    from qgen_infer.format import read_qgen
    from qgen_infer.format.summary import summarize

    s = summarize(read_qgen(qgen))
    extra = sum(layer.extra_bytes for layer in s.layers)
    return GeneratorSize(s.generator_bytes, FP32 * s.weights + extra, qgen.stat().st_size)


def checkpoint_size(checkpoint: Path) -> GeneratorSize:
    """fp32 bytes of a checkpoint's generator (parameters and buffers, e.g. BatchNorm stats)."""
    from qgen_infer.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)["generator"]
    total = sum(t.numel() * t.element_size() for t in state.values()
                if hasattr(t, "is_floating_point") and t.is_floating_point())
    return GeneratorSize(total, total, None)
