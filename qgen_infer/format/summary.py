"""Sizes of a ``.qgen`` file's parts, and the readable table ``qgen-info`` prints.

The compression ratio is quoted on the weights alone, ``32 / bits`` up to the 32-bit word padding
(32x, 16x, 10.7x, 8x for 1..4 bits), and also with the per-channel fp32 terms (scale, zero,
alpha, beta) included, which is what the generator actually costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qgen_infer.format.schema import PackedLayer, QgenFile, ReshapeLayer

FP32_BYTES = 4


@dataclass(frozen=True)
class LayerSize:
    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    code_bytes: int
    extra_bytes: int  # fp32 scale, zero, alpha, beta
    activation: str

    @property
    def total_bytes(self) -> int:
        return self.code_bytes + self.extra_bytes


@dataclass(frozen=True)
class FileSummary:
    bits: int
    layers: list[LayerSize]
    sensing_bytes: int
    sensing_tensors: int

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    @property
    def code_bytes(self) -> int:
        return sum(layer.code_bytes for layer in self.layers)

    @property
    def generator_bytes(self) -> int:
        return sum(layer.total_bytes for layer in self.layers)

    @property
    def weight_ratio(self) -> float:
        """fp32 weight bytes over packed code bytes."""
        return FP32_BYTES * self.weights / max(self.code_bytes, 1)

    @property
    def generator_ratio(self) -> float:
        """fp32 generator bytes (weights and per-channel terms) over its packed bytes."""
        extra = sum(layer.extra_bytes for layer in self.layers)
        return (FP32_BYTES * self.weights + extra) / max(self.generator_bytes, 1)


def _activation(layer: PackedLayer) -> str:
    if layer.activation == "leaky_relu":
        return f"leaky_relu({layer.negative_slope:g})"
    return layer.activation


def summarize(qf: QgenFile) -> FileSummary:
    sizes = []
    for layer in qf.layers:
        if isinstance(layer, PackedLayer):
            # shapes and nbytes, so that torch tensors and numpy arrays (qgen-info) both work
            extra = FP32_BYTES * sum(math.prod(t.shape) for t in (layer.scale, layer.zero,
                                                                  layer.alpha, layer.beta))
            sizes.append(LayerSize(layer.name, layer.kind, tuple(layer.weight_shape), layer.numel,
                                   math.prod(layer.codes.shape), extra, _activation(layer)))
        elif isinstance(layer, ReshapeLayer):
            sizes.append(LayerSize(layer.name, "reshape", tuple(layer.shape), 0, 0, 0, "-"))
    sensing_bytes = sum(t.nbytes for t in qf.sensing.values())
    return FileSummary(qf.bits, sizes, sensing_bytes, len(qf.sensing))


def human_bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def render(qf: QgenFile, file_bytes: int, path: str) -> str:
    """The ``qgen-info`` report for ``qf``."""
    s = summarize(qf)
    q, cfg, sol = qf.quantizer, qf.config, qf.solver
    trained = f"trained at {q.get('trained_bits')} bits, {q.get('trained_granularity')}"
    ptq = "; post-training re-quantization" if q.get("post_training") else ""
    overflow = q.get("overflow_rate")
    clip = f", overflow rate {overflow:g}" if isinstance(overflow, (int, float)) and overflow \
        else ""
    grid = f", {q['grid']} grid" if q.get("grid") else ""
    lines = [
        f"file        {path} ({human_bytes(file_bytes)})",
        f"format      {qf.metadata.get('format', 'qgen')} version {qf.format_version}, "
        f"layout {qf.layout}, written by {qf.writer or '?'}",
        f"network     {cfg.get('family')}, image {cfg.get('image_shape')}, latent "
        f"{cfg.get('latent_dim')}, measurements {cfg.get('measurements')}",
        f"quantizer   {qf.bits}-bit {q.get('scheme')}, per-{q.get('granularity')} scales"
        f"{clip}{grid} ({trained}{ptq})",
        f"solver      {sol.get('method')}, sparsity {sol.get('sparsity')}, steps "
        f"{sol.get('steps')}, step size {sol.get('step_size'):.4g}, "
        f"project {'yes' if sol.get('project') else 'no'}",
        "",
    ]
    rows = [["layer", "kind", "weight shape", "weights", "packed bytes", "fp32 terms",
             "activation"]]
    for layer in s.layers:
        rows.append([layer.name, layer.kind, str(list(layer.shape)),
                     f"{layer.weights:,}" if layer.weights else "-",
                     f"{layer.code_bytes:,}" if layer.weights else "-",
                     f"{layer.extra_bytes:,}" if layer.weights else "-", layer.activation])
    lines += format_table(rows, right={3, 4, 5})
    lines += [
        "",
        f"generator   {s.weights:,} weights in {s.code_bytes:,} bytes of {qf.bits}-bit codes: "
        f"{s.weight_ratio:.1f}x smaller than fp32 weights",
        f"            {human_bytes(s.generator_bytes)} with scales/zeros/alpha/beta: "
        f"{s.generator_ratio:.1f}x smaller than the fp32 generator",
        f"sensing     {human_bytes(s.sensing_bytes)} {qf.sensing_dtype} in {s.sensing_tensors} "
        "tensors" + (" (loaded into fp32)" if qf.sensing_dtype != "fp32" else ""),
    ]
    if qf.plan is not None:  # the reader's static walk of the layer chain
        lines.append(f"activations {human_bytes(FP32_BYTES * qf.plan.activations)} fp32 per "
                     f"image through the generator (widest layer {qf.plan.widest:,} values)")
    return "\n".join(lines)
