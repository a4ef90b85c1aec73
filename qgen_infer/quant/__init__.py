"""LinearQuantize: k-bit weights as ``scale * (code - zero)`` with a straight-through estimator."""

from qgen_infer.quant.linear_quantize import (
    DEFAULT_GRID,
    GRANULARITIES,
    GRIDS,
    SUPPORTED_BITS,
    QuantizedTensor,
    QuantSpec,
    dequantize,
    fake_quantize,
    quantize_codes,
)

__all__ = [
    "DEFAULT_GRID",
    "GRANULARITIES",
    "GRIDS",
    "SUPPORTED_BITS",
    "QuantSpec",
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "quantize_codes",
]
