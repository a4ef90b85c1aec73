"""Algorithm 1: meta-learning of a quantized generator, a sensing network and the latent step."""

from qgen_infer.train.objective import (
    SolverSettings,
    StepLosses,
    gradient_difference_loss,
    meta_learning_losses,
)
from qgen_infer.train.trainer import (
    DEFAULT_LR,
    DEFAULT_SREC_DATA_PAIRS,
    DEFAULT_STEP_SIZE_LR,
    METHODS,
    TrainConfig,
    Trainer,
    evaluate_reconstruction,
    models_from_checkpoint_path,
)

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_SREC_DATA_PAIRS",
    "DEFAULT_STEP_SIZE_LR",
    "METHODS",
    "SolverSettings",
    "StepLosses",
    "TrainConfig",
    "Trainer",
    "evaluate_reconstruction",
    "gradient_difference_loss",
    "meta_learning_losses",
    "models_from_checkpoint_path",
]
