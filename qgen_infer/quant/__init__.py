"""LinearQuantize: k-bit weights as ``scale * (code - zero)`` with a straight-through estimator."""

from qgen_infer.quant.linear_quantize import (
    GRANULARITIES,
    SUPPORTED_BITS,
    QuantizedTensor,
    QuantSpec,
    dequantize,
    fake_quantize,
    quantize_codes,
)

__all__ = [
    "GRANULARITIES",
    "SUPPORTED_BITS",
    "QuantSpec",
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "quantize_codes",
]
