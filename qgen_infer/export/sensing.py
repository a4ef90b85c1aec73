"""The sensing network A_φ as plain fp32 tensors, with spectral normalisation baked in.

Conv sensing nets are trained with ``torch.nn.utils.parametrizations.spectral_norm``: their state
holds ``weight.original`` and power-iteration vectors ``u, v``, and the weight used is
``W / σ`` with ``σ = uᵀ W v``. In eval mode the parametrisation does no power iteration, so
``W / σ`` is a fixed tensor; that *effective* weight is what the file stores, under the key of
the plain network ``build_sensing(config, spectral_norm=False)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qgen_infer.models import build_sensing


def effective_sensing_state(config: dict[str, Any], sensing: nn.Module) -> dict[str, torch.Tensor]:
    """The plain network's state dict holding ``sensing``'s effective (eval-mode) weights."""
    sensing = sensing.eval()
    plain = build_sensing(config, spectral_norm=False)
    state = {}
    with torch.no_grad():
        for key in plain.state_dict():
            module_name, _, attr = key.rpartition(".")
            # reading the attribute runs the parametrisation (W / σ) where there is one
            value = getattr(sensing.get_submodule(module_name), attr)
            state[key] = value.detach().to(torch.float32).clone().contiguous()
    plain.load_state_dict(state)  # the keys and shapes must fit the plain network exactly
    return state
