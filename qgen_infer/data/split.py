"""Train / evaluation splits, reproducible without storing index files."""

from __future__ import annotations

import numpy as np
import torch

from qgen_infer.errors import DataError


def split_train_eval(images: torch.Tensor, eval_size: int,
                     seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``images`` [N, ...] into (train, eval) with ``eval_size`` evaluation images.

    ``seed=None``: contiguous, train = the first N - eval_size, eval = the last eval_size (views,
    no copy). This is the project's MNIST rule: of the 10,000-image t10k file, the first 9,000
    train and the last 1,000 evaluate. An int ``seed``: a permutation from NumPy's PCG64 seeded
    with it picks the eval images; both parts keep the original order (copies).
    """
    n = int(images.shape[0])
    if isinstance(eval_size, bool) or not isinstance(eval_size, int):
        raise DataError(f"eval_size must be an integer, got {eval_size!r}")
    # Both parts non-empty: an empty eval set would make every metric a silent NaN, and a
    # contiguous images[-0:] would return everything.
    if not 1 <= eval_size < n:
        raise DataError(f"eval_size must be between 1 and {n - 1} for {n} images, "
                        f"got {eval_size}")
    if seed is None:
        return images[: n - eval_size], images[n - eval_size:]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer or None, got {seed!r}")
    permutation = np.random.default_rng(seed).permutation(n)
    is_eval = np.zeros(n, dtype=bool)
    is_eval[permutation[:eval_size]] = True
    train_idx = torch.from_numpy(np.flatnonzero(~is_eval))
    eval_idx = torch.from_numpy(np.flatnonzero(is_eval))
    return images[train_idx], images[eval_idx]
