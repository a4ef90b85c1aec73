"""The runs of a reproduction: names, settings and the order in which the queue trains them.

A run is one trained model (one data set, method, bit width, m and s). Its folder name is its
identity: the MNIST m=25, s=100 names are the ones ``paper/train_mnist_m25.sh`` uses
(``mnist-m25-sdlss-{bits}``, ``mnist-m25-dcs-32``), so runs that queue finished are picked up as
done instead of being trained again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

BITS: tuple[int, ...] = (1, 2, 3, 4, 32)
SDLSS, DCS = "sdlss", "dcs"
DEFAULT_SPARSITY = 100  # qgen-train's SDLSS default: runs at this s carry no "-s" in their name


@dataclass(frozen=True)
class RunSpec:
    """One model to train and evaluate."""

    name: str  # run folder name under --runs, and the key of its evaluation record
    label: str  # the data set as tables name it ("MNIST", "CIFAR10", "patches (embedded)")
    dataset: str  # qgen-train --data
    data_root: str | None  # qgen-train --data-root (None for embedded sets)
    method: str  # "sdlss" or "dcs"
    bits: int  # 1-4 or 32
    m: int  # measurements
    s: int | None  # latent sparsity; None for DCS (dense latent)
    epochs: int  # target epochs
    tier: int  # queue priority: lower trains first
    overflow_rate: float = 0.0  # qgen-train --overflow-rate (0: the paper's max|w| range)
    lr: float | None = None  # qgen-train --lr (None: qgen-train's default)
    srec_data_pairs: bool | None = None  # qgen-train --[no-]srec-data-pairs (None: its default)
    precision: str | None = None  # qgen-train --precision (None: its default, fp32)
    # quantization-aware fine-tuning: the run whose checkpoint of epoch ``init_epoch`` (kept by
    # that run's ``keep_epochs``) starts this one (qgen-train --init-from); None: from scratch
    init_from: str | None = None
    init_epoch: int = 0
    keep_epochs: tuple[int, ...] = ()  # qgen-train --keep-epochs: the epochs others start from

    @property
    def packed(self) -> bool:
        """Whether the model has a packed form (1-4 bits); 32-bit models are scored by qgen-eval."""
        return self.bits <= 4

    @property
    def control(self) -> bool:
        """The 32-bit run fine-tuned exactly as the 1-4-bit runs are (same start, epochs and
        rate): their gaps to it are quantization's alone, not a training schedule's."""
        return self.bits == 32 and self.init_from is not None

    @property
    def column(self) -> str:
        """The table column: "1-bit SDLSS" ... "32-bit DCS", and :data:`CONTROL_COLUMN`."""
        return column_name(self.bits, self.method, self.control)


CONTROL_COLUMN = "32-bit SDLSS control"


def column_name(bits: int, method: str, control: bool = False) -> str:
    return CONTROL_COLUMN if control else f"{bits}-bit {method.upper()}"


def run_name(prefix: str, method: str, bits: int, m: int, s: int | None,
             overflow_rate: float = 0.0, lr: float | None = None,
             srec_data_pairs: bool | None = None, precision: str | None = None,
             finetune_from: int | None = None) -> str:
    """``{prefix}-m{m}-{method}-{bits}``, with ``-s{s}`` after m when s is not the default 100
    (DCS has no s), ``-ovf{100 r}`` for a nonzero overflow rate r (``-ovf05`` for 0.05) and
    ``-lr{lr}`` for a learning rate other than qgen-train's default (``-lr0.0002``), ``-dp`` /
    ``-nodp`` for data-data pairs in the S-REC loss forced on / off (None: qgen-train's default
    for the network), ``-ft{E}`` for a run fine-tuned from the 32-bit run's epoch E, then
    ``-{precision}`` for a training precision other than fp32 (``-bf16``).
    Keeps the names of paper/train_mnist_m25.sh for m=25, s=100, r=0."""
    if method == DCS or s is None or s == DEFAULT_SPARSITY:
        name = f"{prefix}-m{m}-{method}-{bits}"
    else:
        name = f"{prefix}-m{m}-s{s}-{method}-{bits}"
    if overflow_rate:
        name += f"-ovf{overflow_rate * 100:02.3g}".replace(".", "p")
    if lr is not None:
        name += f"-lr{lr:g}"
    if srec_data_pairs is not None:
        name += "-dp" if srec_data_pairs else "-nodp"
    if finetune_from:
        name += f"-ft{finetune_from}"
    if precision not in (None, "fp32"):
        name += f"-{precision}"
    return name


def mnist_plan(*, data_root: str, epochs: int, measurements: Sequence[int] = (25, 100),
               sparsities: Sequence[int] = (10, 25, 50, 75, 100, 200),
               bits: Sequence[int] = BITS, sweep_bits: Sequence[int] = (1, 32),
               dataset: str = "mnist", prefix: str = "mnist",
               overflow_rates: Mapping[int, float] | None = None) -> list[RunSpec]:
    """Figure 3's grid, in queue order. Tiers (what the paper's figure needs first):

    0. m = first m, s = 100: every bit width and 32-bit DCS (the lead's m=25 queue)
    1. the s sweep at ``sweep_bits`` (1 and 32) for the first m
    2. the next m at s = 100, every bit width and DCS
    3. the s sweep at ``sweep_bits`` for the next m
    4. the s sweep at the remaining bit widths (2, 3, 4), first m then the next

    ``overflow_rates`` maps a bit width to the quantizer's overflow rate for all its SDLSS runs
    (the rate is part of the run's name, so runs at another rate are never mistaken for them).
    """
    rates = dict(overflow_rates or {})
    ms = list(dict.fromkeys(measurements))
    ss = sorted(dict.fromkeys(sparsities))
    specs: list[RunSpec] = []

    def add(tier: int, method: str, b: int, m: int, s: int | None) -> None:
        rate = rates.get(b, 0.0) if method == SDLSS else 0.0
        specs.append(RunSpec(run_name(prefix, method, b, m, s, rate),
                             "MNIST" if dataset == "mnist" else dataset, dataset, data_root,
                             method, b, m, s, epochs, tier, rate))

    for i, m in enumerate(ms):
        base = 2 * min(i, 1)  # first m: tiers 0-1; every later m: tiers 2-3
        for b in bits:
            add(base, SDLSS, b, m, DEFAULT_SPARSITY)
        add(base, DCS, 32, m, None)
        for b in bits:
            if b in sweep_bits:
                for s in ss:
                    if s != DEFAULT_SPARSITY:
                        add(base + 1, SDLSS, b, m, s)
    for m in ms:
        for b in bits:
            if b not in sweep_bits:
                for s in ss:
                    if s != DEFAULT_SPARSITY:
                        add(4, SDLSS, b, m, s)
    return ordered(dedupe(specs))


@dataclass(frozen=True)
class ColourSet:
    """A data set of the colour table: its qgen-train --data name, root and table label."""

    label: str
    dataset: str
    data_root: str | None


def _sdlss_run(prefix: str, bits: int, name_lr: float | None, row: dict[str, Any],
               rates: Mapping[int, float], **extra: Any) -> RunSpec:
    """One SDLSS run of a colour row: ``row`` holds the row's RunSpec fields, ``name_lr`` the
    rate the name carries (None: a default rate, left out of the name), ``extra`` overrides
    (the fine-tuning fields, their own rate and epochs)."""
    spec = RunSpec(name="", method=SDLSS, bits=bits,
                   **{"lr": name_lr, **row, "overflow_rate": rates.get(bits, 0.0), **extra})
    return replace(spec, name=run_name(prefix, SDLSS, bits, spec.m, spec.s, spec.overflow_rate,
                                       name_lr, spec.srec_data_pairs, spec.precision,
                                       spec.init_epoch or None))


# Adam's rate of the quantization-aware fine-tuning runs (cosine to a tenth over their epochs):
# the 32-bit run's own cosine is at ~1/3 of its 2e-4 by two thirds of the way, and a restart at
# the full rate would first undo part of what the 32-bit weights learned.
FINETUNE_LR = 1e-4


def colour_plan(sets: Sequence[ColourSet], *, epochs: int, m: int, s: int,
                bits: Sequence[int] = BITS,
                overflow_rates: Mapping[int, float] | None = None,
                lr: float | None = None,
                srec_data_pairs: bool | None = None,
                precision: str | None = None,
                finetune_from: int | None = None,
                finetune_lr: float | None = None) -> list[RunSpec]:
    """Table 1's grid: every bit width of SDLSS and 32-bit DCS per data set. Tier = data set
    order, so a whole row of the table is finished before the next starts. ``lr``: Adam's rate
    of every run, ``srec_data_pairs``: qgen-train --[no-]srec-data-pairs for every run,
    ``precision``: qgen-train --precision (None for any: qgen-train's default); all part of the
    run names.

    ``finetune_from = E`` (0 < E < ``epochs``): the 1-4-bit runs start from the 32-bit SDLSS
    run's checkpoint of epoch E (which that run keeps) and train ``epochs - E`` more epochs at
    ``finetune_lr`` (default :data:`FINETUNE_LR`), so every model of the row has ``epochs``
    epochs behind it; queued after the 32-bit run and DCS, and followed by the 32-bit control
    (:attr:`RunSpec.control`: the same fine-tuning at 32 bits, ``-32-ftE``) when 32 is among
    ``bits``. Else every run trains from scratch."""
    if finetune_from is not None and not 0 < finetune_from < epochs:
        raise ValueError(f"finetune_from must be in 1..{epochs - 1} (below the epochs), got "
                         f"{finetune_from}")
    rates = dict(overflow_rates or {})
    specs = []
    for tier, cs in enumerate(sets):
        prefix = cs.label.split()[0].lower()
        row = dict(label=cs.label, dataset=cs.dataset, data_root=cs.data_root, m=m, s=s,
                   epochs=epochs, tier=tier, srec_data_pairs=srec_data_pairs, precision=precision)
        dcs = RunSpec(name=run_name(prefix, DCS, 32, m, None, lr=lr,
                                    srec_data_pairs=srec_data_pairs, precision=precision),
                      method=DCS, bits=32, lr=lr, **{**row, "s": None})
        if finetune_from is None:
            specs += [_sdlss_run(prefix, b, lr, row, rates) for b in bits] + [dcs]
            continue
        source = _sdlss_run(prefix, 32, lr, row, rates, keep_epochs=(finetune_from,))
        specs += [source, dcs]
        specs += [_sdlss_run(prefix, b, finetune_lr, row, rates,
                             lr=finetune_lr or FINETUNE_LR, init_from=source.name,
                             init_epoch=finetune_from, epochs=epochs - finetune_from)
                  for b in sorted(bits)]  # the 32-bit control last
    return ordered(dedupe(specs))


def dedupe(specs: Iterable[RunSpec]) -> list[RunSpec]:
    """Keep the first spec of each name (the grid builders may meet a run twice)."""
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        seen.setdefault(spec.name, spec)
    return list(seen.values())


def ordered(specs: Iterable[RunSpec]) -> list[RunSpec]:
    """Queue order: by tier, then as built (stable sort)."""
    return sorted(specs, key=lambda spec: spec.tier)


def select(specs: Sequence[RunSpec], patterns: Sequence[str] | None) -> list[RunSpec]:
    """The specs whose name matches any of the shell-style ``patterns`` (all when none)."""
    if not patterns:
        return list(specs)
    return [spec for spec in specs if any(fnmatch.fnmatchcase(spec.name, p) for p in patterns)]
