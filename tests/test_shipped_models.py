"""Every file in ``models/`` is what its name and ``models/README.md`` say it is, and the packed
engine runs it to the reference backend's result.

A shipped file is read by users who never trained it: its name promises a data set, a bit width
and (where given) a measurement count, the README lists its score, and a partially trained
checkpoint must never end up there (``training.final``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qgen_infer.format.reader import read_qgen

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = sorted(MODELS.glob("*.qgen"))
# <dataset>[-m<measurements>]-<bits>bit.qgen
NAME = re.compile(r"^(?P<data>[a-z0-9]+)(?:-m(?P<m>\d+))?-(?P<bits>[1-4])bit\.qgen$")


def test_models_folder_is_not_empty() -> None:
    assert SHIPPED, f"no .qgen file in {MODELS}"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_file_is_what_its_name_says(path: Path) -> None:
    match = NAME.match(path.name)
    assert match, f"{path.name}: not named <dataset>[-m<m>]-<bits>bit.qgen"
    f = read_qgen(path)
    assert f.bits == int(match["bits"]) == f.config["bits"]
    assert f.training["settings"]["dataset"] == match["data"]
    if match["m"]:
        assert f.config["measurements"] == int(match["m"])
    assert f.training.get("final") is True, f"{path.name}: a partially trained checkpoint"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_readme_lists_the_file(path: Path) -> None:
    rows = [line for line in (MODELS / "README.md").read_text().splitlines()
            if line.startswith(f"| `{path.name}` |")]
    assert len(rows) == 1, f"models/README.md has {len(rows)} table rows for {path.name}"
    assert "pending" not in rows[0], f"models/README.md still lists {path.name} as pending"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_packed_engine_reconstructs_as_the_reference(path: Path, monkeypatch, tmp_path) -> None:
    """Batch 3 of random measurements, T = the file's steps, through the packed kernels (the
    dispatcher told to take them for every layer) and through the dequantized reference."""
    pytest.importorskip("qgen_infer.engine.cpu_backend")
    import qgen_infer
    from qgen_infer.reconstruction import solver_options

    monkeypatch.setenv("QGEN_CPU_DISPATCH", "packed")
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", str(tmp_path / "costs.json"))
    out = {}
    for backend in ("cpu", "reference"):
        model = qgen_infer.load(path, backend=backend)
        m = int(model.config["measurements"])
        y = np.random.default_rng(1).standard_normal((3, m)).astype(np.float32)
        out[backend] = qgen_infer.reconstruct(model, y, solver_options(model, seed=0),
                                              precision="fp32").x_hat
    assert out["cpu"].shape == (3, *model.config["image_shape"])
    assert np.isfinite(out["cpu"]).all()
    assert np.abs(out["cpu"] - out["reference"]).max() < 1e-3
