"""Build and install qgen-infer.

Install PyTorch first (``pip install torch==2.13.0`` on the project's machines): a bare ``torch``
requirement on a machine without it pulls a multi-GB CUDA build.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

PACKAGES = [
    "qgen_infer",
    "qgen_infer.cli",
    "qgen_infer.data",
    "qgen_infer.distributed",
    "qgen_infer.engine",
    "qgen_infer.export",
    "qgen_infer.format",
    "qgen_infer.metrics",
    "qgen_infer.models",
    "qgen_infer.quant",
    "qgen_infer.solve",
    "qgen_infer.train",
    "qgen_infer.kernels",
]


def cpu_extension():
    """The pybind11 CPU-kernel extension ``qgen_infer._cpu``, when its sources are present.

    Built with default (baseline x86-64) flags: the AVX2 and AVX-512 tiers under ``csrc/arch/``
    carry their own ``#pragma GCC target`` and are chosen at run time, so the wheel runs on any
    CPU of the architecture.
    """
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "arch", "*", "*.cpp")))
    if not sources or os.environ.get("QGEN_NO_EXT") == "1":
        return []
    from pybind11.setup_helpers import Pybind11Extension

    return [
        Pybind11Extension(
            "qgen_infer._cpu",
            sources,
            include_dirs=["csrc"],
            depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
            cxx_std=17,
            # -fno-trapping-math lets GCC vectorise the epilogue's selects and float->int
            # conversions (we never rely on floating-point exception flags);
            # -ffp-contract=off keeps a * b + c two roundings, as torch computes the solver
            # update (the SIMD tiers' FMAs are explicit intrinsics, unaffected).
            extra_compile_args=["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"],
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="qgen-infer",
    version="0.1.0",
    description="Quantized generative priors for compressed sensing: training, 1-4-bit packed "
    "model files and bit-packed GEMM/conv kernels for the reconstruction loop",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"qgen_infer.kernels": "kernels"},
    include_package_data=True,
    # the Triton launch-config tables (kernels/configs.py reads them from beside itself)
    package_data={"qgen_infer.kernels": ["tuned/*.json"]},
    ext_modules=cpu_extension(),
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-image>=0.21",
        "scikit-learn>=1.3",
        "pillow>=9",
        "bitarray>=2.8",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "ruff>=0.5"],
        "plot": ["matplotlib>=3.6"],
    },
    entry_points={
        "console_scripts": [
            "qgen-train=qgen_infer.cli.train:main",
            "qgen-eval=qgen_infer.cli.evaluate:main",
            "qgen-export=qgen_infer.cli.export:main",
            "qgen-info=qgen_infer.cli.info:main",
            "qgen-measure=qgen_infer.cli.measure:main",
            "qgen-reconstruct=qgen_infer.cli.reconstruct:main",
            "qgen-demo=qgen_infer.cli.demo:main",
            "qgen-tune=qgen_infer.cli.tune:main",
        ]
    },
)
