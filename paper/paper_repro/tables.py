"""The markdown reports: measured tables and the comparison with the paper, written from the
evaluation records (and, for the colour report's per-epoch table, the runs' training logs) only:
a number that was not measured is shown as "–", never filled in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from paper_repro import paper
from paper_repro.plan import BITS, CONTROL_COLUMN, DCS, DEFAULT_SPARSITY, SDLSS, RunSpec
from paper_repro.records import FP32_EVAL, PACKED_ENGINE, EvalRecord
from qgen_infer.data import dataset_info
from qgen_infer.train import DEFAULT_LR, DEFAULT_SREC_DATA_PAIRS

MISSING = "–"
SDLSS_COLUMNS = [f"{b}-bit SDLSS" for b in BITS]
COLUMNS = [*SDLSS_COLUMNS, "32-bit DCS"]


@dataclass
class Results:
    """The plan and whatever records exist for it."""

    specs: list[RunSpec]
    records: dict[str, EvalRecord]  # by run name
    states: dict[str, str]  # run name -> training state in words (for the "not scored" list)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> epoch -> eval PSNR

    def get(self, label: str, method: str, bits: int, m: int, s: int | None) -> EvalRecord | None:
        for spec in self.specs:
            if (spec.label, spec.method, spec.bits, spec.m) == (label, method, bits, m) and (
                    method == DCS or spec.s == s) and not spec.control:
                return self.records.get(spec.name)
        return None

    def labels(self) -> list[str]:
        return list(dict.fromkeys(spec.label for spec in self.specs))

    def measurements(self) -> list[int]:
        return sorted({spec.m for spec in self.specs})

    def sparsities(self, m: int) -> list[int]:
        return sorted({spec.s for spec in self.specs
                       if spec.m == m and spec.method == SDLSS and spec.s is not None})


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def epochs_note(rec: EvalRecord) -> str:
    """"60 ep", with a star when the model is short of this reproduction's target epochs;
    "8+4 ep" for a run fine-tuned 4 epochs from a 32-bit checkpoint of 8."""
    start = f"{rec.init_epochs}+" if rec.init_epochs else ""
    return f"{start}{rec.epochs} ep" + ("" if rec.finished else f"*/{rec.target_epochs}")


def cell(rec: EvalRecord | None, metric: str) -> str:
    if rec is None:
        return MISSING
    value = getattr(rec, metric)
    text = f"{value:.2f}" if metric == "psnr" else f"{value:.4f}"
    return f"{text} ({epochs_note(rec)})"


def human(n: int | None) -> str:
    if n is None:
        return MISSING
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n:,} B)"
    return f"{n:,} B"


def scored_by(rec: EvalRecord) -> str:
    if rec.engine == PACKED_ENGINE:
        return f"packed engine ({rec.backend})"
    if rec.engine == FP32_EVAL:
        return "qgen-eval (fp32 checkpoint)"
    return rec.engine


def size_rows(recs: Sequence[EvalRecord]) -> list[list[str]]:
    return [[r.column, human(r.stored_bytes), human(r.fp32_bytes), f"{r.size_ratio:.1f}x",
             human(r.file_bytes)] for r in recs]


SIZE_HEADER = ["model", "generator as stored", "same generator in fp32", "smaller by",
               ".qgen file (incl. fp32 sensing net)"]

LEGEND = ("Cells: value (training epochs behind it; `*/N`: short of the N-epoch target). "
          "1-4-bit models are scored THROUGH THE PACKED ENGINE (qgen-export -> qgen-measure -> "
          "qgen-reconstruct, on the held-out images); 32-bit models cannot be packed and are "
          "scored by qgen-eval on the fp32 checkpoint. PSNR: peak 1 on [0, 1] images, per image "
          "then averaged; SSIM per image. One random start per image (restarts = 1), the solver "
          "settings each model was trained with.")

SIZE_NOTE = ("Generator bytes: packed codes plus the fp32 per-channel terms (scale, zero, folded "
             "bias/BatchNorm), read back from the .qgen (as qgen-info reports); fp32: the same "
             "generator with 4-byte weights; 32-bit rows: the checkpoint's generator tensors. The "
             "fp32 sensing net (the same in every file) is not part of the generator bytes.")


def gap_phrase(gap: float, unit: str, digits: int) -> str:
    """"1.85 dB below" / "0.10 dB above" (gap = reference minus value)."""
    return f"{abs(gap):.{digits}f}{unit} {'below' if gap >= 0 else 'above'}"


def not_scored(results: Results) -> list[str]:
    lines = []
    for spec in results.specs:
        if spec.name not in results.records:
            lines.append(f"- `{spec.name}`: {results.states.get(spec.name, 'unknown')}")
    return lines


# -- MNIST (Figure 3) ---------------------------------------------------------------------------

def mnist_comparison(results: Results, label: str = "MNIST") -> list[str]:
    """Measured-vs-paper sentences for the MNIST figure, from the records alone."""
    lines = []
    for m in results.measurements():
        ref = results.get(label, SDLSS, 32, m, DEFAULT_SPARSITY)
        if ref is None:
            lines.append(f"- m = {m}, s = 100: no scored 32-bit SDLSS model yet, so no gaps.")
            continue
        for b in (4, 3, 2, 1):
            rec = results.get(label, SDLSS, b, m, DEFAULT_SPARSITY)
            if rec is None:
                lines.append(f"- m = {m}, s = 100: {b}-bit SDLSS not scored yet.")
                continue
            text = (f"- m = {m}, s = 100: {b}-bit SDLSS ({epochs_note(rec)}) is "
                    f"{gap_phrase(ref.psnr - rec.psnr, ' dB', 2)} and "
                    f"{gap_phrase(ref.ssim - rec.ssim, ' SSIM', 3)} 32-bit SDLSS "
                    f"({epochs_note(ref)}), {rec.size_ratio:.1f}x "
                    f"smaller")
            if b == 1 and label == "MNIST":
                text += (f"; paper (Fig. 3): about {paper.MNIST_GAP_1BIT_DB:g} dB and "
                         f"{paper.MNIST_GAP_1BIT_SSIM:g} SSIM below")
            lines.append(text + ".")
        dcs = results.get(label, DCS, 32, m, None)
        if dcs is not None:
            lines.append(f"- m = {m}: 32-bit DCS ({epochs_note(dcs)}, dense latent) scores "
                         f"{dcs.psnr:.2f} dB / {dcs.ssim:.4f}, "
                         f"{gap_phrase(ref.psnr - dcs.psnr, ' dB', 2)} 32-bit SDLSS at s = 100.")
        lines += _low_s_gaps(results, label, m)
        lines += _sweep_1bit_gaps(results, label, m)
    ref25 = results.get(label, SDLSS, 32, 25, DEFAULT_SPARSITY)
    if ref25 is not None and label == "MNIST":
        d = ref25.psnr - paper.SDLSS_MNIST_M25_S100_DB
        lines.append(f"- 32-bit SDLSS level, m = 25, s = 100: {ref25.psnr:.2f} dB "
                     f"({epochs_note(ref25)}) against the SDLSS authors' "
                     f"{paper.SDLSS_MNIST_M25_S100_DB:g} dB ({abs(d):.2f} dB "
                     f"{'higher' if d >= 0 else 'lower'}).")
    return lines


def _low_s_gaps(results: Results, label: str, m: int) -> list[str]:
    """The paper: 3- and 4-bit are "comparable to the 32-bit model for s < 100"."""
    lines = []
    for b in (3, 4):
        gaps = []
        for s in results.sparsities(m):
            if s >= DEFAULT_SPARSITY:
                continue
            ref, rec = (results.get(label, SDLSS, bits, m, s) for bits in (32, b))
            if ref is not None and rec is not None:
                gaps.append((s, ref.psnr - rec.psnr))
        if gaps:
            worst = max(abs(g) for _, g in gaps)
            mean = sum(g for _, g in gaps) / len(gaps)
            lines.append(f"- m = {m}, s < 100 (s = {', '.join(str(s) for s, _ in gaps)}): "
                         f"{b}-bit SDLSS is on average {gap_phrase(mean, ' dB', 2)} 32-bit, "
                         f"at most {worst:.2f} dB apart (paper: comparable for s < 100).")
    return lines


def _sweep_1bit_gaps(results: Results, label: str, m: int) -> list[str]:
    """The 1-bit gap across the s sweep (paper: ~2 dB), and whether PSNR rises with s."""
    pairs = [(s, ref, rec) for s in results.sparsities(m)
             for ref, rec in [(results.get(label, SDLSS, 32, m, s),
                               results.get(label, SDLSS, 1, m, s))]
             if ref is not None and rec is not None]
    if len(pairs) < 2:
        return []
    gaps = ", ".join(f"{ref.psnr - rec.psnr:.2f} (s = {s})" for s, ref, rec in pairs)
    rising = all(a[1].psnr <= b[1].psnr and a[2].psnr <= b[2].psnr
                 for a, b in zip(pairs, pairs[1:], strict=False))
    return [f"- m = {m}, s sweep: 1-bit SDLSS is {gaps} dB below 32-bit; PSNR "
            f"{'rises with s at both widths' if rising else 'does not rise monotonically with s'}"
            " (paper, Fig. 3: rising curves, the 1-bit one about 2 dB lower)."]


def quantizer_note(specs: Sequence[RunSpec]) -> str:
    """Which LinearQuantize range the quantized runs use: max|w| (the paper) or, per bit width,
    Hubara et al.'s overflow rate (``qgen-train --overflow-rate``)."""
    rates = sorted({(s.bits, s.overflow_rate) for s in specs if s.overflow_rate})
    if not rates:
        return "- quantizer: LinearQuantize with the range max|w| (the paper's) at every bit width"
    listed = ", ".join(f"{b}-bit r = {r:g}" for b, r in rates)
    return (f"- quantizer: LinearQuantize with the range max|w| (the paper's), except an overflow "
            f"rate (Hubara et al.; `qgen-train --overflow-rate`: that fraction of the largest "
            f"weights clips) at {listed}; `--overflow-rate` of the script sets it")


def mnist_report(results: Results, stamp: Sequence[str], figures: Sequence[str],
                 label: str = "MNIST") -> str:
    recs = [r for r in results.records.values() if r.label == label]
    images = sorted({r.images for r in recs})
    split = (" (MNIST t10k: the first 9,000 train, the last 1,000 are scored)"
             if label == "MNIST" else " — NOT MNIST: the paper's numbers do not apply")
    lines = ["# MNIST: Q-GEN Figure 3 through the packed engine", "", *stamp,
             f"- data: {label}, {', '.join(map(str, images)) or '?'} held-out images{split}",
             quantizer_note(results.specs), f"- paper: {paper.PAPER}", "", LEGEND, ""]
    for m in results.measurements():
        lines += [f"## m = {m}, s = 100", ""]
        rows = []
        for method, b in [(SDLSS, b) for b in BITS] + [(DCS, 32)]:
            rec = results.get(label, method, b, m, None if method == DCS else DEFAULT_SPARSITY)
            if rec is None:
                rows.append([f"{b}-bit {method.upper()}", MISSING, MISSING, MISSING, MISSING,
                             MISSING, MISSING])
                continue
            rows.append([rec.column, f"{rec.psnr:.2f}", f"{rec.ssim:.4f}", epochs_note(rec),
                         scored_by(rec), human(rec.stored_bytes),
                         f"{rec.size_ratio:.1f}x"])
        lines += md_table(["model", "PSNR (dB)", "SSIM", "epochs", "scored by",
                           "generator bytes", "vs fp32"], rows) + [""]
        for metric, title in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")):
            lines += [f"### {title} vs latent sparsity s, m = {m} (Figure 3)", ""]
            rows = [[str(s)] + [cell(results.get(label, SDLSS, b, m, s), metric) for b in BITS]
                    for s in results.sparsities(m)]
            lines += md_table(["s", *SDLSS_COLUMNS], rows)
            dcs = results.get(label, DCS, 32, m, None)
            lines += ["", f"32-bit DCS (dense latent, no s): {cell(dcs, metric)}", ""]
    lines += ["## Model size", "", SIZE_NOTE, ""]
    sized = sorted({(r.bits, r.method): r for r in recs}.values(),
                   key=lambda r: (r.method != SDLSS, r.bits))
    lines += md_table(SIZE_HEADER, size_rows(sized)) + [""]
    lines += ["## Against the paper", "", *mnist_comparison(results, label), ""]
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    pending = not_scored(results)
    if pending:
        lines += ["## Not scored yet", "", *pending, ""]
    return "\n".join(lines)


# -- colour (Table 1) ---------------------------------------------------------------------------

def _key(label: str) -> str:
    return label.split()[0].upper()


def colour_comparison(results: Results) -> list[str]:
    lines = []
    for label in results.labels():
        m = next(s.m for s in results.specs if s.label == label)
        sp = next(s.s for s in results.specs if s.label == label and s.method == SDLSS)
        ref = results.get(label, SDLSS, 32, m, sp)
        if ref is None:
            lines.append(f"- {label}: no scored 32-bit SDLSS model yet, so no gaps.")
            continue
        ref_paper = paper.TABLE1.get(_key(label))
        for b in (4, 3, 2, 1):
            rec = results.get(label, SDLSS, b, m, sp)
            if rec is None:
                continue
            text = (f"- {label}: {b}-bit SDLSS ({epochs_note(rec)}) is "
                    f"{gap_phrase(ref.psnr - rec.psnr, ' dB', 2)} 32-bit SDLSS "
                    f"({epochs_note(ref)})")
            if ref_paper is not None:
                g = ref_paper["32-bit SDLSS"][0] - ref_paper[f"{b}-bit SDLSS"][0]
                text += f"; paper on {_key(label)}: {gap_phrase(g, ' dB', 2)}"
            elif b in (4, 1):
                g = paper.COLOUR_GAP_4BIT_DB if b == 4 else paper.COLOUR_GAP_1BIT_DB
                text += (f"; paper over its colour sets: about {g:g} dB at {b} bit"
                         f"{'s' if b > 1 else ''}")
            lines.append(text + ".")
        dcs = results.get(label, DCS, 32, m, None)
        if dcs is not None:
            text = (f"- {label}: 32-bit DCS ({epochs_note(dcs)}) is "
                    f"{gap_phrase(ref.psnr - dcs.psnr, ' dB', 2)} 32-bit SDLSS")
            if ref_paper is not None:
                g = ref_paper["32-bit SDLSS"][0] - ref_paper["32-bit DCS"][0]
                text += f"; paper: {gap_phrase(g, ' dB', 2)}"
            lines.append(text + ".")
    return lines


def network_family(spec: RunSpec) -> str:
    """The network family qgen-train picks for ``spec``'s data ("mlp" or "dcgan"); an image folder
    is taken as colour, which is what the colour script trains from one."""
    return dataset_info(spec.dataset)["family"] or "dcgan"


def srec_pairs_note(flag: bool | None, family: str = "dcgan") -> str:
    """The S-REC pairs a run trained with: ``flag`` is its --[no-]srec-data-pairs (None:
    qgen-train's default for ``family``'s networks)."""
    on = DEFAULT_SREC_DATA_PAIRS[family] if flag is None else flag
    how = (f"qgen-train's default for the {family.upper()} networks" if flag is None
           else "--srec-data-pairs" if flag else "--no-srec-data-pairs")
    return f"DCS's three pairs {'plus a data-data pair' if on else 'only'} ({how})"


def learning_rate_note(lr: float | None, family: str = "dcgan") -> str:
    """A run's Adam rate as the settings line names it (None: ``family``'s default)."""
    return f"qgen-train's default ({DEFAULT_LR[family]:g})" if lr is None else f"{lr:g}"


def precision_note(precision: str | None) -> str:
    """What a run's networks computed in while training (qgen-train --precision)."""
    if precision in (None, "fp32"):
        return "fp32"
    return (f"{precision} (--precision {precision}: networks under autocast; weights, optimizer, "
            f"latent and losses fp32; evaluation fp32)")


def curve_table(results: Results) -> list[str]:
    """Each run's eval PSNR after every epoch, as its training log records it: how far from
    converged the final numbers are, which one cell per run cannot show."""
    runs = [s for s in results.specs if results.curves.get(s.name)]
    if not runs:
        return []
    last = max(max(results.curves[s.name]) for s in runs)
    rows = [[f"{s.label}, {s.column}"] + [
        f"{results.curves[s.name][e]:.2f}" if e in results.curves[s.name] else ""
        for e in range(1, last + 1)] for s in runs]
    return ["## Eval PSNR after each epoch (dB)", "",
            "The training code's own evaluation on the held-out images after each epoch "
            "(fake-quantized generator, not the packed engine), from each run's log.jsonl.", "",
            *md_table(["run / epoch", *map(str, range(1, last + 1))], rows), ""]


def settings_line(specs: Sequence[RunSpec]) -> str:
    """The colour runs' m, s, learning rate, S-REC pairs and training precision, in one line."""
    settings = sorted({(s.m, s.s) for s in specs if s.method == SDLSS})
    # a fine-tuned run's rate is in its own sentence (finetune_note)
    rates = sorted({learning_rate_note(s.lr, network_family(s)) for s in specs
                    if not s.init_from})
    return ("Settings: " + "; ".join(f"m = {m}, s = {s}" for m, s in settings)
            + " (the paper does not state m or s for Table 1; DCS: dense latent); Adam "
            + f"learning rate {', '.join(rates)}; S-REC loss: "
            + ", ".join(sorted({srec_pairs_note(s.srec_data_pairs, network_family(s))
                                for s in specs}))
            + ". Training precision: "
            + ", ".join(sorted({precision_note(s.precision) for s in specs})) + "."
            + finetune_note(specs))


def finetune_note(specs: Sequence[RunSpec]) -> str:
    """How the fine-tuned runs of a row started (empty when every run trained from scratch)."""
    tuned = [s for s in specs if s.init_from and not s.control]
    if not tuned:
        return ""
    bits = "/".join(str(s.bits) for s in sorted(tuned, key=lambda s: s.bits))
    first = tuned[0]
    note = (f" The {bits}-bit SDLSS models are quantization-aware fine-tunings of the 32-bit "
            f"SDLSS run's epoch-{first.init_epoch} checkpoint (`{first.init_from}`, "
            f"qgen-train --keep-epochs {first.init_epoch}; --init-from) for {first.epochs} "
            f"more epochs at Adam rate {first.lr:g} (cosine to a tenth): Algorithm 1 started from "
            f"full-precision weights θ, as its initialization line reads, so that every model of "
            f"the row has {first.init_epoch + first.epochs} epochs behind it; 32-bit SDLSS and "
            f"DCS trained from scratch.")
    control = next((s for s in specs if s.control), None)
    if control is not None:
        note += (f" The {CONTROL_COLUMN} (`{control.name}`) is the same "
                 "fine-tuning at 32 bits: the fine-tunings' schedule differs from the 32-bit "
                 "run's own last epochs, so the gap to this control is what quantization "
                 "alone costs.")
    return note


def colour_report(results: Results, stamp: Sequence[str], data_notes: Sequence[str]) -> str:
    lines = ["# Colour: Q-GEN Table 1 through the packed engine", "", *stamp,
             quantizer_note(results.specs), f"- paper: {paper.PAPER}", "", "Data used:", "",
             *data_notes, "", LEGEND, ""]
    lines += [settings_line(results.specs), ""]
    lines += ["## Table 1, measured (PSNR dB, SSIM)", ""]
    rows = []
    for label in results.labels():
        row = [label]
        for col in COLUMNS:
            spec = next((s for s in results.specs if s.label == label and s.column == col), None)
            rec = results.records.get(spec.name) if spec else None
            row.append(MISSING if rec is None else
                       f"{rec.psnr:.2f}, {rec.ssim:.4f} ({epochs_note(rec)})")
        rows.append(row)
    lines += md_table(["data set", *COLUMNS], rows) + [""]
    lines += ["## Table 1 of the paper (for reference, not measured here)", ""]
    lines += md_table(["data set", *COLUMNS],
                      [[name] + [f"{p:.2f}, {s:.4f}" for p, s in (vals[c] for c in COLUMNS)]
                       for name, vals in paper.TABLE1.items()]) + [""]
    lines += ["## Model size", "", SIZE_NOTE, ""]
    for label in results.labels():
        recs = sorted((r for r in results.records.values() if r.label == label),
                      key=lambda r: (r.method != SDLSS, r.bits))
        if recs:
            lines += [f"{label}:", ""] + md_table(SIZE_HEADER, size_rows(recs)) + [""]
    lines += ["## Against the paper", "",
              f"Paper: 32-bit minus k-bit SDLSS goes from {paper.COLOUR_GAP_4BIT_DB:g} dB (4-bit) "
              f"to about {paper.COLOUR_GAP_1BIT_DB:g} dB (1-bit) on CIFAR10/SVHN/STL10.", "",
              *colour_comparison(results), ""]
    lines += curve_table(results)
    pending = not_scored(results)
    if pending:
        lines += ["## Not scored yet", "", *pending, ""]
    return "\n".join(lines)
