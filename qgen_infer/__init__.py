"""qgen-infer: quantized generative priors for compressed sensing, from training to bit-packed
1-4-bit inference kernels inside the latent proximal-gradient reconstruction loop.

>>> import qgen_infer
>>> model = qgen_infer.load("models/mnist-m25-1bit.qgen")          # backend="auto"
>>> y = qgen_infer.measure(model, x, noise_std=0.1, seed=0)          # x: [N, 1, 28, 28] in [-1, 1]
>>> result = qgen_infer.reconstruct(model, y, restarts=4)            # result.x_hat, .z, .loss
>>> qgen_infer.psnr(x, result.x_hat).mean()

``load``, ``measure``, ``reconstruct``, ``psnr`` and ``ssim`` are the functions of
:mod:`qgen_infer.engine.loader`, :mod:`qgen_infer.measurement`, :mod:`qgen_infer.reconstruction`
and :mod:`qgen_infer.metrics`, imported on first use, so that ``import qgen_infer`` (and the
commands' ``--help``, but for qgen-train's) does not import torch.
"""

# No ``from __future__ import annotations`` here: it would add ``annotations`` to this namespace.
import importlib as _importlib
import typing as _typing

from qgen_infer.errors import DataError, FormatError, QgenError

if _typing.TYPE_CHECKING:
    from qgen_infer.engine.loader import load as load
    from qgen_infer.measurement import measure as measure
    from qgen_infer.metrics import psnr as psnr
    from qgen_infer.metrics import ssim as ssim
    from qgen_infer.reconstruction import reconstruct as reconstruct

__version__ = "0.1.0"

# public name -> the module that defines it (PEP 562 lazy attributes)
_LAZY = {
    "load": "qgen_infer.engine.loader",
    "measure": "qgen_infer.measurement",
    "reconstruct": "qgen_infer.reconstruction",
    "psnr": "qgen_infer.metrics",
    "ssim": "qgen_infer.metrics",
}

__all__ = ["DataError", "FormatError", "QgenError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'qgen_infer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
