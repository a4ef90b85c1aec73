"""Shipping the trained models: copy each finished, packed MNIST generator (s = 100, one per m
and bit width) into models/ and print the rows for models/README.md, so the numbers the README
quotes are the measured ones of exactly the files shipped."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from paper_repro.commands import paths_for
from paper_repro.plan import DEFAULT_SPARSITY, SDLSS, RunSpec
from paper_repro.records import EvalRecord, load_record
from paper_repro.tables import epochs_note, human, md_table

README_HEADER = ["file", "bits", "m", "s", "epochs", "PSNR (dB)", "SSIM", "generator bytes",
                 "vs fp32", "file bytes", "sha256 (first 16)"]


def shipped_name(spec: RunSpec) -> str:
    return f"mnist-m{spec.m}-{spec.bits}bit.qgen"


def ship(specs: Sequence[RunSpec], runs: Path, dest: Path,
         out: Callable[[str], None] = print) -> list[EvalRecord]:
    """Copy the finished packed SDLSS models at s = 100 into ``dest``; returns their records."""
    shipped = []
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in specs:
        if not (spec.method == SDLSS and spec.packed and spec.s == DEFAULT_SPARSITY):
            continue
        paths = paths_for(runs, spec)
        rec = load_record(paths.record)
        if rec is None or rec.epochs < spec.epochs or not paths.qgen.is_file():
            out(f"ship: {spec.name} is not finished and scored yet; skipped")
            continue
        target = dest / shipped_name(spec)
        shutil.copyfile(paths.qgen, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()[:16]
        rows.append([f"`{target.name}`", str(spec.bits), str(spec.m), str(spec.s),
                     epochs_note(rec), f"{rec.psnr:.2f}", f"{rec.ssim:.4f}",
                     human(rec.stored_bytes), f"{rec.size_ratio:.1f}x",
                     human(target.stat().st_size), f"`{digest}`"])
        shipped.append(rec)
        out(f"ship: {paths.qgen} -> {target}")
    if rows:
        out("\nRows for models/README.md:\n")
        for line in md_table(README_HEADER, rows):
            out(line)
    return shipped
