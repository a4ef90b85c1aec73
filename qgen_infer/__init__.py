"""qgen-infer: quantized generative priors for compressed sensing, from training to bit-packed
1-4-bit inference kernels inside the latent proximal-gradient reconstruction loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine pulls in torch; `import qgen_infer` stays light
    import torch

    from qgen_infer.engine.loader import QgenModel

__version__ = "0.1.0"


def load(path: str | Path, backend: str = "reference",
         device: torch.device | str | None = None) -> QgenModel:
    """Load a packed ``.qgen`` model (see :func:`qgen_infer.engine.loader.load`).

    Returns a ``QgenModel`` with ``.generator`` (packed layers), ``.sensing``, ``.config``,
    ``.solver`` defaults, ``.metadata``, ``.bits`` and ``.backend``.
    """
    from qgen_infer.engine.loader import load as _load

    return _load(path, backend=backend, device=device)


def reconstruct(model, y, options=None, **overrides):  # type: ignore[no-untyped-def]
    """Reconstruct images from measurements ``y`` ``[N, m]`` with a loaded model (see
    :func:`qgen_infer.reconstruction.reconstruct`): latent proximal GD through the packed G."""
    from qgen_infer.reconstruction import reconstruct as _reconstruct

    return _reconstruct(model, y, options, **overrides)
