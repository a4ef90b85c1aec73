"""Checkpoint -> quantized codes -> canonical packed layout -> ``.qgen`` (bit-exact with training's
fake-quantized weights at the trained width)."""

from qgen_infer.export.exporter import (
    ExportResult,
    PostTrainingQuantizationWarning,
    build_qgen_file,
    export_checkpoint,
)

__all__ = [
    "ExportResult",
    "PostTrainingQuantizationWarning",
    "build_qgen_file",
    "export_checkpoint",
]
