"""The evaluation record of one run (``RUNS/eval/NAME/eval.json``): the only input of the tables
and plots, so a report can be rebuilt (``--report-only``) without touching a model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paper_repro.plan import RunSpec, column_name

PACKED_ENGINE = "packed"  # qgen-export + qgen-measure + qgen-reconstruct
FP32_EVAL = "qgen-eval"  # 32-bit checkpoint through qgen-eval (no packed form exists)


@dataclass
class EvalRecord:
    name: str
    label: str
    method: str
    bits: int
    m: int
    s: int | None
    epochs: int  # training epochs of the evaluated model (from the checkpoint/.qgen metadata)
    target_epochs: int
    psnr: float
    ssim: float
    images: int
    engine: str  # PACKED_ENGINE or FP32_EVAL
    backend: str  # packed backend that ran G ("cpu", "triton", ...) or "fake-quant fp32"
    stored_bytes: int
    fp32_bytes: int
    file_bytes: int | None
    commands: list[list[str]] = field(default_factory=list)
    # a fine-tuned run: the epochs of the 32-bit checkpoint it started from (``epochs`` are its
    # own); 0 for a run trained from scratch
    init_epochs: int = 0
    # every image's PSNR, in the eval split's order (records from before it was kept: None):
    # two models' scores of the same images then give a paired difference and its spread
    psnr_per_image: list[float] | None = None

    @property
    def column(self) -> str:
        return column_name(self.bits, self.method, control=self.bits == 32 and self.init_epochs > 0)

    @property
    def size_ratio(self) -> float:
        """How many times smaller than fp32 the generator is stored."""
        return self.fp32_bytes / max(self.stored_bytes, 1)

    @property
    def finished(self) -> bool:
        return self.epochs >= self.target_epochs

    @classmethod
    def for_spec(cls, spec: RunSpec, **values: Any) -> EvalRecord:
        return cls(name=spec.name, label=spec.label, method=spec.method, bits=spec.bits,
                   m=spec.m, s=spec.s, target_epochs=spec.epochs,
                   init_epochs=spec.init_epoch, **values)


def save_record(path: Path, record: EvalRecord) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(path)  # a report built meanwhile never sees half a record


def load_record(path: Path) -> EvalRecord | None:
    """The record at ``path``, or None when there is none (or it is unreadable: then the run is
    simply evaluated again)."""
    try:
        return EvalRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def collect(runs: Path, specs: list[RunSpec]) -> dict[str, EvalRecord]:
    """The records of ``specs`` that exist under ``runs/eval``, by run name."""
    found = {}
    for spec in specs:
        rec = load_record(runs / "eval" / spec.name / "eval.json")
        if rec is not None:
            rec.target_epochs = spec.epochs  # the table's target is this invocation's --epochs
            rec.init_epochs = spec.init_epoch
            found[spec.name] = rec
    return found
