"""Checkpoint -> quantized codes -> canonical packed layout -> ``.qgen`` (bit-exact with training's
fake-quantized weights at the trained width)."""

from qgen_infer.export.exporter import (
    ExportResult,
    ExportWarning,
    PostTrainingQuantizationWarning,
    SensingStorageWarning,
    build_qgen_file,
    export_checkpoint,
)

__all__ = [
    "ExportResult",
    "ExportWarning",
    "PostTrainingQuantizationWarning",
    "SensingStorageWarning",
    "build_qgen_file",
    "export_checkpoint",
]
