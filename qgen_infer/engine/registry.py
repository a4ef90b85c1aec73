"""Backend registry: ``get_backend(name)`` for ``reference`` (built in), ``cpu``, ``triton``,
``auto``.

The ``cpu`` and ``triton`` backends live in their own modules, imported only when asked for (so
that ``import qgen_infer`` never pulls in a C++ extension or Triton). Each module exposes
``is_available() -> bool`` and ``create_backend() -> Backend``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from qgen_infer.engine.backend import Backend, ReferenceBackend
from qgen_infer.errors import QgenError

LAZY_BACKENDS = {
    "cpu": "qgen_infer.engine.cpu_backend",
    "triton": "qgen_infer.engine.triton_backend",
}
BACKEND_NAMES = ("auto", "reference", *LAZY_BACKENDS)


def _backend_module(name: str) -> tuple[ModuleType | None, str]:
    """The backend's module, or None with the reason it cannot be imported here."""
    try:
        return importlib.import_module(LAZY_BACKENDS[name]), ""
    except ImportError as exc:  # the module itself, triton, or the C++ extension is missing
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def backend_available(name: str) -> bool:
    """Whether ``name`` can run here (``reference`` always can)."""
    if name == "reference":
        return True
    if name not in LAZY_BACKENDS:
        return False
    module, _ = _backend_module(name)
    if module is None:
        return False
    try:
        return bool(module.is_available())
    except Exception:  # a probe that crashes means "not usable here", not a crash of load()
        return False


def auto_backend_name(device: torch.device | str | None = None) -> str:
    """``triton`` on a CUDA device, else ``cpu`` when available, else ``reference``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return "triton" if backend_available("triton") else "reference"
    return "cpu" if backend_available("cpu") else "reference"


def get_backend(name: str = "reference", device: torch.device | str | None = None) -> Backend:
    """A fresh backend instance by name; unknown or unavailable names are a :class:`QgenError`.
    ``auto`` on the CPU is the ``cpu`` backend choosing per product between its kernels and a
    dense fp32 matmul by measured cost (``engine/cpu_dispatch.py``)."""
    auto = name == "auto"
    if auto:
        name = auto_backend_name(device)
    if name == "reference":
        return ReferenceBackend()
    if name not in LAZY_BACKENDS:
        raise QgenError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    module, reason = _backend_module(name)
    if module is None or not backend_available(name):
        hint = ("it needs a CUDA device and the 'triton' package" if name == "triton"
                else "it needs the compiled extension qgen_infer._cpu")
        detail = f"; {reason}" if reason else ""
        others = ", ".join(repr(b) for b in BACKEND_NAMES if b != name)
        raise QgenError(f"backend {name!r} is not available on this machine ({hint}{detail}); "
                        f"use {others} (auto picks the fastest one available)")
    if auto and name == "cpu":
        return module.create_backend(dispatch="auto")
    return module.create_backend()
