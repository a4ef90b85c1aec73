"""``qgen-measure``: y = A(x) (+ seeded Gaussian noise) from a .npy array, a folder of images or
a data set, with the CLI's contract on bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import qgen_infer
from qgen_infer.checkpoint import save_checkpoint
from qgen_infer.cli.measure import main as measure_main
from qgen_infer.data import load_images
from qgen_infer.export import export_checkpoint

# the embedded "digits" data set is 1x16x16: a tiny MLP of that image size
DIGITS_CONFIG = {"family": "mlp", "image_shape": [1, 16, 16], "latent_dim": 10,
                 "measurements": 9, "hidden": 12, "negative_slope": 0.2, "bits": 2,
                 "granularity": "tensor"}


@pytest.fixture(scope="module")
def qgen(tmp_path_factory) -> Path:
    """An untrained 2-bit MLP for 16x16 grey images, exported to .qgen (measurement does not
    depend on training quality)."""
    from qgen_infer.models import build_generator, build_sensing

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("measure-model")
    save_checkpoint(folder / "model.pt", {
        "config": DIGITS_CONFIG,
        "solver": {"method": "sdlss", "sparsity": 5, "steps": 3, "project": True,
                   "step_size": 0.01},
        "generator": build_generator(DIGITS_CONFIG).state_dict(),
        "sensing": build_sensing(DIGITS_CONFIG).state_dict(),
        "log_step_size": torch.tensor(-2.0),
        "train": {"epochs": 0, "step": 0, "seed": 0, "wall_time_s": 0.0},
    })
    return export_checkpoint(folder / "model.pt", folder / "m.qgen").path


def _sense(qgen: Path, x: np.ndarray | torch.Tensor) -> np.ndarray:
    model = qgen_infer.load(qgen)
    with torch.no_grad():
        return model.sensing(torch.as_tensor(x)).numpy()


def _run(argv: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = measure_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 16, 16)).astype(np.float32)


def test_from_npy(qgen: Path, tmp_path: Path, capsys) -> None:
    x = _images()
    np.save(tmp_path / "x.npy", x)
    code, out, err = _run(["--model", qgen, "--images", tmp_path / "x.npy", "--out",
                           tmp_path / "y.npy", "--truth-out", tmp_path / "xt.npy"], capsys)
    assert code == 0, err
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and y.shape == (5, 9)
    np.testing.assert_array_equal(y, _sense(qgen, x))
    np.testing.assert_array_equal(np.load(tmp_path / "xt.npy"), x)
    assert "5 images" in out
    # (N, H, W) is accepted for one channel, and --count takes the first images
    np.save(tmp_path / "x3.npy", x[:, 0])
    code, _, err = _run(["--model", qgen, "--images", tmp_path / "x3.npy", "--count", 2,
                         "--out", tmp_path / "y2.npy"], capsys)
    assert code == 0, err
    # another batch shape may round differently in the sensing net's matmuls
    np.testing.assert_allclose(np.load(tmp_path / "y2.npy"), y[:2], rtol=1e-5, atol=1e-6)


def test_from_png_folder(qgen: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):  # 20x20 grey: centre-cropped and resized to the model's 16x16
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    code, _, err = _run(["--model", qgen, "--images", folder, "--out", tmp_path / "y.npy",
                         "--truth-out", tmp_path / "x.npy"], capsys)
    assert code == 0, err
    x = load_images("folder", folder, image_size=16)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _sense(qgen, x))


def test_from_embedded_digits(qgen: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(["--model", qgen, "--data", "digits", "--split", "eval", "--count", 4,
                         "--out", tmp_path / "y.npy", "--truth-out", tmp_path / "x.npy"],
                        capsys)
    assert code == 0, err
    evals = load_images("digits")[-297:][:4]  # digits: the last 297 images evaluate
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), evals.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _sense(qgen, evals))


def test_noise_is_reproducible_by_seed(qgen: Path, tmp_path: Path, capsys) -> None:
    x = _images(50)
    np.save(tmp_path / "x.npy", x)

    def measure(name: str, *extra: Any) -> np.ndarray:
        code, _, err = _run(["--model", qgen, "--images", tmp_path / "x.npy", "--out",
                             tmp_path / name, *extra], capsys)
        assert code == 0, err
        return np.load(tmp_path / name)

    clean = measure("clean.npy")
    a = measure("a.npy", "--noise-std", 0.1, "--seed", 3)
    b = measure("b.npy", "--noise-std", 0.1, "--seed", 3)
    c = measure("c.npy", "--noise-std", 0.1, "--seed", 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    noise = a - clean
    assert 0.08 < noise.std() < 0.12 and abs(noise.mean()) < 0.03  # 450 draws of N(0, 0.01)
    want = 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_allclose(noise, want, atol=1e-6)


def test_refuses_existing_outputs_without_force(qgen: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", _images())
    (tmp_path / "y.npy").write_bytes(b"old")
    args = ["--model", qgen, "--images", tmp_path / "x.npy", "--out", tmp_path / "y.npy"]
    code, _, err = _run(args, capsys)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "y.npy").read_bytes() == b"old"
    # an existing --truth-out alone blocks too, and nothing is written then
    (tmp_path / "y.npy").unlink()
    (tmp_path / "t.npy").write_bytes(b"old")
    code, _, err = _run([*args, "--truth-out", tmp_path / "t.npy"], capsys)
    assert code == 2 and not (tmp_path / "y.npy").exists()
    code, _, err = _run([*args, "--truth-out", tmp_path / "t.npy", "--force"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "y.npy").shape == (5, 9)
    assert np.load(tmp_path / "t.npy").shape == (5, 1, 16, 16)
    assert sorted(os.listdir(tmp_path)) == ["t.npy", "x.npy", "y.npy"]  # no .tmp left


def _bad_cases(tmp: Path, qgen: Path) -> dict[str, tuple[list[Any], str]]:
    """name -> (argv, fragment of the one-line error)."""
    np.save(tmp / "x8.npy", _images()[:, :, :8, :8])
    np.save(tmp / "x3c.npy", np.zeros((2, 3, 16, 16), np.float32))
    np.save(tmp / "xr.npy", _images() * 5)
    np.save(tmp / "xi.npy", np.zeros((2, 1, 16, 16), np.uint8))
    np.save(tmp / "x.npy", _images())
    rgb = tmp / "rgb"
    rgb.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(rgb / "a.png")
    (tmp / "empty").mkdir()
    src = ["--model", qgen, "--images"]
    out = ["--out", tmp / "y.npy"]
    return {
        "shape": ([*src, tmp / "x8.npy", *out], "must have shape (N, 1, 16, 16)"),
        "channels": ([*src, tmp / "x3c.npy", *out], "must have shape (N, 1, 16, 16)"),
        "range": ([*src, tmp / "xr.npy", *out], "[-1, 1]"),
        "int": ([*src, tmp / "xi.npy", *out], "dtype uint8"),
        "rgb-folder": ([*src, rgb, *out], "the model takes [1, 16, 16]"),
        "empty-folder": ([*src, tmp / "empty", *out], "no *.png"),
        "missing-images": ([*src, tmp / "nope", *out], "nope"),
        "missing-data-root": (["--model", qgen, "--data", "mnist", "--data-root",
                               tmp / "nope", *out], "nope"),
        "missing-model": (["--model", tmp / "none.qgen", "--images", tmp / "x.npy", *out],
                          "none.qgen"),
        "noise": ([*src, tmp / "x.npy", *out, "--noise-std", "-1"], "--noise-std"),
        "noise-nan": ([*src, tmp / "x.npy", *out, "--noise-std", "nan"], "--noise-std"),
        "seed": ([*src, tmp / "x.npy", *out, "--seed", "-1"], "--seed"),
        "count": ([*src, tmp / "x.npy", *out, "--count", "0"], "--count"),
        "suffix": ([*src, tmp / "x.npy", "--out", tmp / "y.txt"], "must end in .npy"),
        "same-file": ([*src, tmp / "x.npy", *out, "--truth-out", tmp / "y.npy"], "same file"),
        "no-parent": ([*src, tmp / "x.npy", "--out", tmp / "no" / "y.npy"], "does not exist"),
    }


@pytest.mark.parametrize("name", ["shape", "channels", "range", "int", "rgb-folder",
                                  "empty-folder", "missing-images", "missing-data-root",
                                  "missing-model", "noise", "noise-nan", "seed", "count",
                                  "suffix", "same-file", "no-parent"])
def test_bad_input_is_one_line_exit_2(qgen: Path, tmp_path: Path, capsys, name: str) -> None:
    argv, fragment = _bad_cases(tmp_path, qgen)[name]
    before = sorted(os.listdir(tmp_path))
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qgen-measure: error: "), err
    assert fragment in lines[0], err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.skipif(not MNIST_ROOT.is_dir(), reason="no MNIST files here")
def test_data_set_of_another_image_shape(qgen: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(["--model", qgen, "--data", "mnist", "--data-root", MNIST_ROOT,
                         "--out", tmp_path / "y.npy"], capsys)
    assert code == 2 and "[1, 28, 28] but the model takes [1, 16, 16]" in err, err
    assert os.listdir(tmp_path) == []


def test_output_folder_named_like_npy_is_refused(qgen: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", _images())
    (tmp_path / "y.npy").mkdir()
    code, _, err = _run(["--model", qgen, "--images", tmp_path / "x.npy", "--out",
                         tmp_path / "y.npy", "--force"], capsys)
    assert code == 2 and "is a folder" in err


def test_ctrl_c_writes_nothing(qgen: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    np.save(tmp_path / "x.npy", _images())

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)  # Ctrl-C while the first output is written
    code, _, err = _run(["--model", qgen, "--images", tmp_path / "x.npy", "--out",
                         tmp_path / "y.npy", "--truth-out", tmp_path / "t.npy"], capsys)
    assert code == 130 and "interrupted" in err
    assert os.listdir(tmp_path) == ["x.npy"]


def test_help_explains(capsys) -> None:
    assert measure_main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("--images", "--data", "--noise-std", "--truth-out", "--force", "(N, m)"):
        assert word in text
    assert measure_main(["--model", "m.qgen"]) == 2  # no source, no --out
    assert "required" in capsys.readouterr().err


def test_console_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("qgen-measure")
    if not exe.exists():
        pytest.skip("console script not installed")
    proc = subprocess.run([str(exe), "--model", str(tmp_path / "none.qgen"), "--data", "digits",
                           "--out", str(tmp_path / "y.npy")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("qgen-measure: error:")
