"""The generator's activations, defined once for the format, the engine and every kernel.

* names: :data:`ACTIVATIONS`, the vocabulary of a ``.qgen`` layer's ``activation`` field;
* codes: :data:`ACTIVATION_IDS`, the integer the kernels take (the Triton kernels' ``ACT``
  constexpr, ``enum Act`` of ``csrc/qgen_cpu.h``, which ``tests/test_activations.py`` parses);
* math: :func:`activate` (:func:`activate_` in place) and :func:`activation_grad_from_output`
  on torch tensors, the references the kernels' fused epilogues are tested against.

All four are monotone, so the derivative is written in terms of the output ``y``: backward passes
need not keep the pre-activation. Importing this module does not import torch (the format
reader uses the names without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ACTIVATIONS = ("none", "relu", "leaky_relu", "tanh")
ACTIVATION_IDS = {name: code for code, name in enumerate(ACTIVATIONS)}


def activation_id(name: str) -> int:
    """The kernels' code of activation ``name``; ``ValueError`` for an unknown one."""
    try:
        return ACTIVATION_IDS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}") from None


def activate(y: torch.Tensor, activation: str, negative_slope: float = 0.01) -> torch.Tensor:
    """``act(y)``: identity, ``max(y, 0)``, ``y if y > 0 else negative_slope * y``, ``tanh(y)``."""
    import torch  # here, not at the top: the names above must not need it
    import torch.nn.functional as F

    activation_id(activation)  # unknown names raise
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    if activation == "tanh":
        return torch.tanh(y)
    return y


def activate_(y: torch.Tensor, activation: str, negative_slope: float = 0.01) -> torch.Tensor:
    """:func:`activate` in place on ``y`` (a fresh product nothing else holds), which it
    returns: the same values without a second tensor of ``y``'s size (for a [64, 64, 32, 32]
    activation, 16 MB of new pages per call)."""
    import torch.nn.functional as F

    activation_id(activation)
    if activation == "relu":
        return y.relu_()
    if activation == "leaky_relu":
        return F.leaky_relu_(y, negative_slope)
    if activation == "tanh":
        return y.tanh_()
    return y


def activation_grad_from_output(y: torch.Tensor, activation: str,
                                negative_slope: float = 0.01) -> torch.Tensor:
    """``d act / d pre-activation`` in terms of the output ``y``: 1; ``[y > 0]``;
    1 or ``negative_slope``; ``1 - y^2``."""
    import torch

    activation_id(activation)
    if activation == "relu":
        return (y > 0).to(y.dtype)
    if activation == "leaky_relu":
        return torch.where(y > 0, torch.ones_like(y), torch.full_like(y, negative_slope))
    if activation == "tanh":
        return 1 - y * y
    return torch.ones_like(y)
