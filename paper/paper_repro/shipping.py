"""Shipping the trained models: copy each finished, packed generator (s = 100, one per m and bit
width: MNIST's ``mnist-m25-1bit.qgen``, a colour set's ``cifar10-1bit.qgen``) into models/ and
print the rows for models/README.md (for a colour set, also write them into its marked section),
so the numbers the README quotes are the measured ones of exactly the files shipped."""

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


def colour_name(spec: RunSpec) -> str:
    """``cifar10-1bit.qgen``: one m per colour set, so the name needs only the set and width."""
    return f"{spec.dataset}-{spec.bits}bit.qgen"


def ship(specs: Sequence[RunSpec], runs: Path, dest: Path,
         out: Callable[[str], None] = print,
         name: Callable[[RunSpec], str] = shipped_name) -> tuple[list[EvalRecord], list[str]]:
    """Copy the finished packed SDLSS models at s = 100 into ``dest`` as ``name(spec)``; returns
    their records and the README table (empty when nothing was shipped)."""
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
        target = dest / name(spec)
        shutil.copyfile(paths.qgen, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()[:16]
        rows.append([f"`{target.name}`", str(spec.bits), str(spec.m), str(spec.s),
                     epochs_note(rec), f"{rec.psnr:.2f}", f"{rec.ssim:.4f}",
                     human(rec.stored_bytes), f"{rec.size_ratio:.1f}x",
                     human(target.stat().st_size), f"`{digest}`"])
        shipped.append(rec)
        out(f"ship: {paths.qgen} -> {target}")
    table = md_table(README_HEADER, rows) if rows else []
    if rows:
        out("\nRows for models/README.md:\n")
        for line in table:
            out(line)
    return shipped, table


def section_markers(dataset: str) -> tuple[str, str]:
    return (f"<!-- {dataset}-models: begin (written by paper/reproduce_colour.py --ship-models) "
            "-->", f"<!-- {dataset}-models: end -->")


def write_section(readme: Path, dataset: str, lines: Sequence[str]) -> bool:
    """Replace what lies between ``dataset``'s markers in ``readme`` with ``lines``; False (the
    file untouched) when the file or its markers are missing."""
    begin, end = section_markers(dataset)
    try:
        text = readme.read_text()
    except OSError:
        return False
    a, b = text.find(begin), text.find(end)
    if a < 0 or b < a:
        return False
    readme.write_text(text[:a + len(begin)] + "\n" + "\n".join(lines) + "\n" + text[b:])
    return True


def ship_row(specs: Sequence[RunSpec], runs: Path, dest: Path,
             out: Callable[[str], None] = print) -> list[EvalRecord]:
    """Ship a colour set's finished 1-4-bit models as ``<set>-<bits>bit.qgen`` and write their
    rows into ``dest``/README.md's section for the set (nothing is written before one is
    finished: the section keeps saying what is pending)."""
    shipped, table = ship(specs, runs, dest, out, name=colour_name)
    done = {rec.name for rec in shipped}
    for dataset in dict.fromkeys(s.dataset for s in specs):
        rows = [line for line in table[2:] if f"`{dataset}-" in line]
        if not rows:
            continue
        pending = []
        for spec in specs:
            if (spec.dataset == dataset and spec.method == SDLSS and spec.packed
                    and spec.s == DEFAULT_SPARSITY and spec.name not in done):
                rec = load_record(paths_for(runs, spec).record)
                so_far = (f"scored at epoch {rec.epochs}/{spec.epochs} so far" if rec
                          else "not scored yet")
                pending.append(f"- `{colour_name(spec)}`: pending (run `{spec.name}`, {so_far})")
        lines = [*table[:2], *rows, *([""] + pending if pending else [])]
        if write_section(dest / "README.md", dataset, lines):
            out(f"ship: rows written into {dest / 'README.md'}")
    return shipped
