"""The runs of a reproduction: names, settings and the order in which the queue trains them.

A run is one trained model (one data set, method, bit width, m and s). Its folder name is its
identity: the MNIST m=25, s=100 names are the ones ``paper/train_mnist_m25.sh`` uses
(``mnist-m25-sdlss-{bits}``, ``mnist-m25-dcs-32``), so runs that queue finished are picked up as
done instead of being trained again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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

    @property
    def packed(self) -> bool:
        """Whether the model has a packed form (1-4 bits); 32-bit models are scored by qgen-eval."""
        return self.bits <= 4

    @property
    def column(self) -> str:
        """The table column: "1-bit SDLSS" ... "32-bit DCS"."""
        return f"{self.bits}-bit {self.method.upper()}"


def run_name(prefix: str, method: str, bits: int, m: int, s: int | None,
             overflow_rate: float = 0.0, lr: float | None = None,
             srec_data_pairs: bool | None = None, precision: str | None = None) -> str:
    """``{prefix}-m{m}-{method}-{bits}``, with ``-s{s}`` after m when s is not the default 100
    (DCS has no s), ``-ovf{100 r}`` for a nonzero overflow rate r (``-ovf05`` for 0.05) and
    ``-lr{lr}`` for a learning rate other than qgen-train's default (``-lr0.0002``), ``-dp`` /
    ``-nodp`` for data-data pairs in the S-REC loss forced on / off (None: qgen-train's default
    for the network), ``-{precision}`` for a training precision other than fp32 (``-bf16``).
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


def colour_plan(sets: Sequence[ColourSet], *, epochs: int, m: int, s: int,
                bits: Sequence[int] = BITS,
                overflow_rates: Mapping[int, float] | None = None,
                lr: float | None = None,
                srec_data_pairs: bool | None = None,
                precision: str | None = None) -> list[RunSpec]:
    """Table 1's grid: every bit width of SDLSS and 32-bit DCS per data set. Tier = data set
    order, so a whole row of the table is finished before the next starts. ``lr``: Adam's rate
    of every run, ``srec_data_pairs``: qgen-train --[no-]srec-data-pairs for every run,
    ``precision``: qgen-train --precision (None for any: qgen-train's default); all part of the
    run names."""
    rates = dict(overflow_rates or {})
    specs = []
    for tier, cs in enumerate(sets):
        prefix = cs.label.split()[0].lower()
        for b in bits:
            rate = rates.get(b, 0.0)
            specs.append(RunSpec(run_name(prefix, SDLSS, b, m, s, rate, lr, srec_data_pairs,
                                          precision),
                                 cs.label, cs.dataset, cs.data_root, SDLSS, b, m, s, epochs,
                                 tier, rate, lr, srec_data_pairs, precision))
        specs.append(RunSpec(run_name(prefix, DCS, 32, m, None, lr=lr,
                                      srec_data_pairs=srec_data_pairs, precision=precision),
                             cs.label, cs.dataset, cs.data_root, DCS, 32, m, None, epochs, tier,
                             lr=lr, srec_data_pairs=srec_data_pairs, precision=precision))
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
