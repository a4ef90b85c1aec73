"""Data loaders: standard data files to float32 NCHW tensors in [-1, 1]. Nothing is downloaded
and nothing is cached on disk; CIFAR-10 is read from its binary version (never unpickled) or from
its JPEG copy (a zip decoded in memory, see ``cifar10_jpeg``).

>>> from qgen_infer.data import load_images, load_split
>>> x = load_images("mnist", "../shared/data/mnist")        # [10000, 1, 28, 28]
>>> x = load_split("mnist", "../shared/data/mnist")          # eval: the last 1,000
>>> train = load_split("mnist", "../shared/data/mnist", "train")  # the first 9,000
>>> train, evals = load_train_eval("cifar10", "../shared/data/cifar10")  # 25,000 / 1,000
>>> x = load_images(None)                                    # embedded "digits", [1797, 1, 16, 16]

Every mistake in the user's input (unknown name, missing or malformed file) raises
``qgen_infer.errors.DataError`` with a one-line message.
"""

from qgen_infer.data.registry import (
    DATASETS,
    dataset_info,
    family_for_shape,
    load_images,
    load_split,
    load_train_eval,
)
from qgen_infer.data.split import split_train_eval

__all__ = [
    "DATASETS",
    "dataset_info",
    "family_for_shape",
    "load_images",
    "load_split",
    "load_train_eval",
    "split_train_eval",
]
