"""Algorithm 1: meta-learning of a quantized generator, a sensing network and the latent step.

Names are imported on first use (PEP 562), so that :mod:`qgen_infer.train.config` (the run's
settings and defaults, read by ``qgen-train --help``) loads without torch.
"""

import importlib as _importlib
import typing as _typing

_LAZY = {
    "SolverSettings": "objective", "StepLosses": "objective",
    "gradient_difference_loss": "objective", "meta_learning_losses": "objective",
    "DEFAULT_LR": "config", "DEFAULT_SREC_DATA_PAIRS": "config",
    "DEFAULT_STEP_SIZE_LR": "config", "METHODS": "config", "TrainConfig": "config",
    "Trainer": "trainer", "evaluate_reconstruction": "trainer",
    "models_from_checkpoint_path": "trainer", "kept_checkpoint": "trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(f"qgen_infer.train.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qgen_infer.train' has no attribute {name!r}")
