"""The activations' one home (qgen_infer/activations.py) against the places that cannot import
it: the C++ kernels' ``enum Act`` (parsed from csrc/qgen_cpu.h), and the derivative written in
terms of the output against autograd through the activation itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from qgen_infer.activations import (
    ACTIVATION_IDS,
    ACTIVATIONS,
    activate,
    activation_grad_from_output,
    activation_id,
)

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "qgen_cpu.h"
# the C++ enumerators' names for the Python ones (the codes are what must agree)
CPP_NAMES = {"kNone": "none", "kRelu": "relu", "kLeaky": "leaky_relu", "kTanh": "tanh"}


def test_the_cpp_enum_act_has_the_python_codes() -> None:
    body = re.search(r"enum\s+Act\s*:\s*int\s*\{([^}]*)\}", HEADER.read_text())
    assert body, "enum Act not found in csrc/qgen_cpu.h"
    entries = [e.split("=") for e in body.group(1).split(",") if e.strip()]
    cpp = {CPP_NAMES[name.strip()]: int(code) for name, code in entries}
    assert cpp == ACTIVATION_IDS
    assert list(ACTIVATION_IDS) == list(ACTIVATIONS) and sorted(cpp.values()) == list(range(4))


def test_an_unknown_activation_is_refused() -> None:
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_id("gelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        activate(torch.zeros(2), "gelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_grad_from_output(torch.zeros(2), "gelu")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_the_derivative_from_the_output_is_autograds(activation: str, slope: float) -> None:
    x = torch.randn(7, 13, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0, :3] = 0.0  # relu's kink: both sides agree on 0 there
    x.requires_grad_(True)
    y = activate(x, activation, slope)
    (want,) = torch.autograd.grad(y.sum(), x)
    got = activation_grad_from_output(y.detach(), activation, slope)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    reference = {"none": x, "relu": x.clamp(min=0), "tanh": x.tanh(),
                 "leaky_relu": torch.where(x > 0, x, slope * x)}[activation]
    assert torch.equal(y, reference)
