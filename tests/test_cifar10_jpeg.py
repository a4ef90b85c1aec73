"""CIFAR-10's JPEG copy (``cifar10-jpeg-27k.zip`` and its unpacked folders): every image equal to
Pillow's own decoding of its file, parts in sorted-path order, the train / eval split, one-line
errors; and the shared copy itself when it is on this machine."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qgen_infer.cli.train import main as train_main
from qgen_infer.data import load_images, load_split, load_train_eval
from qgen_infer.data.cifar10_jpeg import load_jpeg_parts
from qgen_infer.errors import DataError

SHARED_ZIP = (Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
              / "cifar10-jpeg-27k.zip")
# member path -> class; written to the zip out of order, so sorting is the loader's work
TRAIN = ["train/cat/0001.jpg", "train/airplane/0000.jpg", "train/cat/0000.jpg",
         "train/airplane/0001.jpg", "train/bird/0000.jpg"]
TEST = ["test/cat/0000.jpg", "test/airplane/0001.jpg", "test/airplane/0000.jpg"]


def unit(pixels: np.ndarray) -> torch.Tensor:
    """The documented mapping, uint8 v -> v / 127.5 - 1, in float32."""
    return torch.from_numpy(pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def jpeg_bytes(rng: np.random.Generator, side: int = 32, grey: bool = False) -> bytes:
    pixels = rng.integers(0, 256, size=(side, side) if grey else (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def pil_decode(data: bytes) -> np.ndarray:
    """The reference: Pillow's RGB decoding of one file, as uint8 [3, H, W]."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def tiny(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, dict[str, bytes]]:
    """A zip in the shared copy's layout (one greyscale JPEG among them) and its files."""
    files = {name: jpeg_bytes(rng, grey=name == "train/bird/0000.jpg") for name in TRAIN + TEST}
    files["README.txt"] = b"not an image"
    return write_zip(tmp_path / "cifar10-jpeg-27k.zip", files), files


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(24)


def expected(files: dict[str, bytes], names: list[str]) -> np.ndarray:
    return np.stack([pil_decode(files[n]) for n in sorted(names)])


def test_zip_parts_sorted_and_pixel_exact(tiny):
    path, files = tiny
    train, test = load_jpeg_parts(path)
    assert train.dtype == np.uint8 and train.shape == (5, 3, 32, 32)
    assert np.array_equal(train, expected(files, TRAIN))  # sorted-path order, RGB from grey too
    assert np.array_equal(test, expected(files, TEST))
    assert not train.flags.writeable  # the cached arrays cannot be changed by a caller


def test_split_and_images(tiny):
    path, files = tiny
    train, evals = load_train_eval("cifar10", path.parent)  # the folder holding the zip
    assert torch.equal(train, unit(expected(files, TRAIN)))
    assert torch.equal(evals, unit(expected(files, TEST)))  # a test/ under 1,000: all of it
    assert train.dtype == torch.float32 and train.min() >= -1 and train.max() <= 1
    first, = load_train_eval("cifar10", path, eval_size=1)[1:]
    assert torch.equal(first, evals[:1])  # the FIRST test image in sorted-path order
    everything = load_images("cifar10", path)
    assert torch.equal(everything, torch.cat([train, evals]))
    assert torch.equal(load_images("cifar10", path, limit=6), everything[:6])  # across the border
    assert torch.equal(load_images("cifar10", path, limit=2), everything[:2])
    assert torch.equal(load_split("cifar10", path, "eval"), evals)
    assert torch.equal(load_split("cifar10", path, "train"), train)
    for bad in (0, 4):
        with pytest.raises(DataError, match=r"eval_size must be between 1 and 3"):
            load_train_eval("cifar10", path, eval_size=bad)


def test_unpacked_folder_equals_zip(tiny, tmp_path):
    path, _ = tiny
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    assert all(torch.equal(a, b) for a, b in zip(load_train_eval("cifar10", folder),
                                                   load_train_eval("cifar10", path), strict=True))
    assert torch.equal(load_images("cifar10", folder, limit=6), load_images("cifar10", path)[:6])


def test_decoded_once_and_redecoded_when_changed(tiny, rng):
    path, files = tiny
    first = load_jpeg_parts(path)
    assert load_jpeg_parts(path)[0] is first[0]  # no second decoding
    files = {**files, "train/airplane/0000.jpg": jpeg_bytes(rng)}
    before = path.stat().st_mtime_ns
    write_zip(path, files)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a changed file, on coarse clocks too
    again = load_jpeg_parts(path)[0]
    assert np.array_equal(again, expected(files, TRAIN)) and not np.array_equal(again, first[0])


def test_binary_release_wins_beside_a_zip(tiny, rng):
    path, _ = tiny
    pixels = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([np.zeros((2, 1), np.uint8), pixels.reshape(2, -1)], axis=1)
    (path.parent / "data_batch_1.bin").write_bytes(records.tobytes())
    assert torch.equal(load_images("cifar10", path.parent), unit(pixels))
    assert load_images("cifar10", path).shape[0] == 8  # the zip named itself is still read


def one_line_error(root: Path | str, match: str) -> None:
    with pytest.raises(DataError, match=match) as excinfo:
        load_train_eval("cifar10", root)
    assert "\n" not in str(excinfo.value)


def test_errors_are_one_line(tmp_path, rng):
    one_line_error(tmp_path / "nowhere", "does not exist")
    one_line_error(tmp_path, "no binary batches and no JPEG copy")
    bad = tmp_path / "cifar10-jpeg-27k.zip"
    bad.write_bytes(b"PK\x03\x04 this is no zip file" * 10)
    one_line_error(bad, "corrupt or unreadable zip")
    good = jpeg_bytes(rng)
    write_zip(bad, {"train/cat/0000.jpg": good, "test/cat/0000.jpg": good[: len(good) // 2]})
    one_line_error(bad, r"test/cat/0000\.jpg: unreadable JPEG")
    write_zip(bad, {"train/cat/0000.jpg": good, "test/cat/0000.jpg": jpeg_bytes(rng, side=16)})
    one_line_error(bad, r"is 16x16, CIFAR-10 images are 32x32")
    write_zip(bad, {"train/cat/0000.jpg": good})
    one_line_error(bad, r"no test/<class>/\*\.jpg")


def test_train_cli_wrong_root_is_one_line(tmp_path, capsys):
    code = train_main(["--data", "cifar10", "--data-root", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # decodes 27,000 JPEGs: ~3-4 s on an idle core, more on a busy one
@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason="the shared CIFAR-10 JPEG copy is not here")
def test_shared_copy():
    train, evals = load_train_eval("cifar10", SHARED_ZIP.parent)
    assert train.shape == (25_000, 3, 32, 32) and evals.shape == (1_000, 3, 32, 32)
    assert train.min() == -1 and train.max() == 1
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        tests = sorted(n for n in archive.namelist() if n.startswith("test/"))
        for index, name in ((0, "test/airplane/0000.jpg"), (999, "test/deer/0199.jpg")):
            assert tests[index] == name
            assert torch.equal(evals[index], unit(pil_decode(archive.read(name))))
        assert torch.equal(train[0], unit(pil_decode(archive.read("train/airplane/0000.jpg"))))
        assert torch.equal(train[-1], unit(pil_decode(archive.read("train/truck/2499.jpg"))))
