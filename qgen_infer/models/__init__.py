"""Networks: MLP and DCGAN generators with quantized weights, MLP and conv sensing networks."""

from qgen_infer.models.layers import (
    QConv2d,
    QConvTranspose2d,
    QLinear,
    QuantizedLayer,
    Reshape,
    quantized_layers,
)
from qgen_infer.models.networks import (
    DCGAN_DEFAULTS,
    FAMILIES,
    MLP_DEFAULTS,
    ConfigError,
    build_generator,
    build_sensing,
    complete_config,
    image_numel,
)

__all__ = [
    "DCGAN_DEFAULTS",
    "FAMILIES",
    "MLP_DEFAULTS",
    "ConfigError",
    "QConv2d",
    "QConvTranspose2d",
    "QLinear",
    "QuantizedLayer",
    "Reshape",
    "build_generator",
    "build_sensing",
    "complete_config",
    "image_numel",
    "quantized_layers",
]
