"""qgen_infer.data: every format from fixtures written here byte by byte, pixel-exact."""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from qgen_infer.data import (
    DATASETS,
    dataset_info,
    family_for_shape,
    load_images,
    load_split,
    split_train_eval,
)
from qgen_infer.data.cifar10 import load_cifar10
from qgen_infer.data.stl10 import load_stl10
from qgen_infer.data.svhn import load_svhn
from qgen_infer.errors import DataError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def unit(pixels: np.ndarray) -> torch.Tensor:
    """The documented mapping, uint8 v -> v / 127.5 - 1, in float32."""
    pixels = np.asarray(pixels, dtype=np.float32)
    return torch.from_numpy(np.asarray(pixels / np.float32(127.5) - np.float32(1.0)))


def random_pixels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 pixels that include both ends of the range."""
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    flat = pixels.reshape(-1)
    flat[0], flat[-1] = 0, 255
    return pixels


@contextlib.contextmanager
def raises_one_line(match: str) -> Iterator[pytest.ExceptionInfo[DataError]]:
    """pytest.raises(DataError, match=...) that also holds the message to one line, as the CLI
    prints it."""
    with pytest.raises(DataError, match=match) as excinfo:
        yield excinfo
    assert "\n" not in str(excinfo.value)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------------------- MNIST


def idx_bytes(images: np.ndarray, magic: int = 0x803) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_idx_round_trip(tmp_path, rng, compressed):
    images = random_pixels(rng, (5, 28, 28))
    data = idx_bytes(images)
    name = "t10k-images-idx3-ubyte"
    if compressed:
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(data))
    else:
        (tmp_path / name).write_bytes(data)
    x = load_images("mnist", tmp_path)
    assert x.dtype == torch.float32 and x.shape == (5, 1, 28, 28)
    assert torch.equal(x, unit(images[:, None]))
    assert x.min() == -1.0 and x.max() == 1.0
    # and back: the float values recover every byte exactly
    assert np.array_equal(np.rint((x.numpy() + 1) * 127.5).astype(np.uint8)[:, 0], images)
    assert torch.equal(load_images("mnist", tmp_path, limit=2), x[:2])


def test_mnist_torchvision_layout_prefers_train(tmp_path, rng):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train, test = random_pixels(rng, (3, 28, 28)), random_pixels(rng, (2, 28, 28))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(test)))
    assert torch.equal(load_images("mnist", tmp_path), unit(test[:, None]))
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(train))
    assert torch.equal(load_images("mnist", tmp_path), unit(train[:, None]))
    # the file itself is accepted as root too
    assert load_images("mnist", raw / "t10k-images-idx3-ubyte.gz").shape == (2, 1, 28, 28)


def test_mnist_other_image_sizes_and_resize(tmp_path, rng):
    images = random_pixels(rng, (4, 7, 7))
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(images))  # dotted mirror name
    assert torch.equal(load_images("mnist", tmp_path), unit(images[:, None]))
    x = load_images("mnist", tmp_path, image_size=14)
    assert x.shape == (4, 1, 14, 14) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\x00\x08", "truncated IDX file"),
        (struct.pack(">IIII", 0x803, 10, 28, 28) + bytes(100), "truncated"),
        (struct.pack(">IIII", 0x803, 1, 2, 2) + bytes(5), "trailing bytes"),
        (struct.pack(">IIII", 0x1234, 1, 2, 2) + bytes(4), "magic 0x00001234"),
        (struct.pack(">III", 0x801, 1, 7), "label file"),
    ],
)
def test_mnist_malformed(tmp_path, content, match):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(content)
    with raises_one_line(match):
        load_images("mnist", tmp_path)


def test_mnist_corrupt_gzip_and_missing(tmp_path, rng):
    packed = gzip.compress(idx_bytes(random_pixels(rng, (3, 28, 28))))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    with raises_one_line("corrupt or truncated gzip"):
        load_images("mnist", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_one_line("looked for train-images-idx3-ubyte"):
        load_images("mnist", empty)
    with raises_one_line("does not exist"):
        load_images("mnist", tmp_path / "nope")
    with raises_one_line("mnist needs a data folder"):
        load_images("mnist")


def test_real_mnist_t10k():
    folder = Path(os.environ.get("QGEN_MNIST_DIR", MNIST_DIR))
    if not folder.is_dir():
        pytest.skip(f"no MNIST folder at {folder} (set QGEN_MNIST_DIR)")
    x = load_images("mnist", folder)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # the published t10k pixel mean is 0.1325 on [0, 1]; a layout error would move it
    assert abs(((x + 1) / 2).mean().item() - 0.1325) < 1e-3
    train, evaluation = split_train_eval(x, 1000)
    assert torch.equal(load_split("mnist", folder, "train"), train)
    assert torch.equal(load_split("mnist", folder, "eval"), x[9000:])


# ------------------------------------------------------------------------------------ CIFAR-10


def cifar_records(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray]:
    images = random_pixels(rng, (n, 3, 32, 32))
    labels = rng.integers(0, 10, size=(n, 1), dtype=np.uint8)
    return np.concatenate([labels, images.reshape(n, -1)], axis=1).tobytes(), images


def test_cifar10_binary_round_trip(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = []
    for i in (1, 2):  # a partial download: only two data batches
        data, images = cifar_records(rng, 3)
        (folder / f"data_batch_{i}.bin").write_bytes(data)
        expected.append(images)
    test_data, test_images = cifar_records(rng, 2)
    (folder / "test_batch.bin").write_bytes(test_data)
    x = load_images("cifar10", tmp_path)
    assert torch.equal(x, unit(np.concatenate(expected)))
    assert torch.equal(load_images("cifar10", folder, limit=4), x[:4])  # across a batch border
    assert np.array_equal(load_cifar10(tmp_path, part="test"), test_images)
    assert torch.equal(load_images("cifar10", folder / "test_batch.bin"), unit(test_images))


def test_cifar10_test_batch_only(tmp_path, rng):
    data, images = cifar_records(rng, 2)
    (tmp_path / "test_batch.bin").write_bytes(data)
    assert torch.equal(load_images("cifar10", tmp_path), unit(images))


def test_cifar10_malformed(tmp_path, rng):
    data, _ = cifar_records(rng, 2)
    (tmp_path / "data_batch_1.bin").write_bytes(data[:-1])
    with raises_one_line("not a whole number of 3073-byte"):
        load_images("cifar10", tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x0b" + data[1:])
    with raises_one_line("labels outside 0..9"):
        load_images("cifar10", tmp_path)


def test_cifar10_pickle_refused(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(pickle.dumps({"data": b"x"}))
    with raises_one_line("pickle.*binary version"):
        load_images("cifar10", tmp_path)
    renamed = tmp_path / "data_batch_1.bin"
    renamed.write_bytes(pickle.dumps({"data": b"x" * 3072}))
    with raises_one_line("looks like a Python pickle"):
        load_images("cifar10", renamed)
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_one_line("no binary batches"):
        load_images("cifar10", empty)


# ---------------------------------------------------------------------------------------- SVHN


def test_svhn_mat_round_trip(tmp_path, rng):
    x_mat = random_pixels(rng, (32, 32, 3, 4))  # MATLAB order [H, W, C, N]
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x_mat, "y": np.ones((4, 1))})
    x = load_images("svhn", tmp_path)
    assert x.shape == (4, 3, 32, 32)
    assert torch.equal(x, unit(x_mat.transpose(3, 2, 0, 1)))
    assert x[1, 2, 5, 7] == unit(x_mat[5, 7, 2, 1])  # [n, c, h, w] == X[h, w, c, n]
    assert torch.equal(load_images("svhn", tmp_path, limit=2), x[:2])
    train = random_pixels(rng, (32, 32, 3, 1))
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": train})
    assert load_images("svhn", tmp_path).shape == (1, 3, 32, 32)  # train preferred


def test_svhn_malformed(tmp_path):
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2))})  # float
    with raises_one_line("expected uint8"):
        load_images("svhn", tmp_path)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"Z": np.zeros(3)})
    with raises_one_line("no variable 'X'"):
        load_images("svhn", tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with raises_one_line("unreadable MAT file"):
        load_images("svhn", tmp_path)
    with raises_one_line("no test_32x32.mat in"):
        load_svhn(tmp_path, part="test")


def write_v73(path: Path, x_mat: np.ndarray) -> None:
    """A MAT v7.3 file as MATLAB writes it: 512-byte user block with the text header, then
    HDF5 holding X with its axes reversed."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as f:
        f["X"] = x_mat.transpose(3, 2, 1, 0)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def test_svhn_v73_needs_h5py(tmp_path, monkeypatch):
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    with raises_one_line("v7.3.*install h5py"):
        load_images("svhn", tmp_path)


def test_svhn_v73_with_h5py(tmp_path, rng):
    x_mat = random_pixels(rng, (32, 32, 3, 3))
    write_v73(tmp_path / "train_32x32.mat", x_mat)
    assert torch.equal(load_images("svhn", tmp_path), unit(x_mat.transpose(3, 2, 0, 1)))


# --------------------------------------------------------------------------------------- STL10


def stl_bytes(images: np.ndarray) -> bytes:
    """[N, 3, H, W] -> the file's column-major channel planes."""
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


def test_stl10_round_trip_and_resize(tmp_path, rng):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = random_pixels(rng, (3, 3, 96, 96))
    images[0, 0, 0, 1] = 7  # row 0, column 1: stored at byte 96 of the plane
    (folder / "unlabeled_X.bin").write_bytes(stl_bytes(images))
    x = load_images("stl10", tmp_path)
    assert torch.equal(x, unit(images))
    raw = (folder / "unlabeled_X.bin").read_bytes()
    assert raw[96] == 7
    assert torch.equal(load_images("stl10", folder, limit=1), x[:1])
    small = load_images("stl10", tmp_path, image_size=64)
    assert small.shape == (3, 3, 64, 64) and small.min() >= -1 and small.max() <= 1
    flat = np.full((1, 3, 96, 96), 200, dtype=np.uint8)
    (folder / "train_X.bin").write_bytes(stl_bytes(flat))  # train preferred over unlabeled
    # a flat image stays flat through the resize (to rounding: the weights sum to 1 +- 1 ulp)
    torch.testing.assert_close(load_images("stl10", tmp_path, image_size=64),
                               unit(np.full((1, 3, 64, 64), 200, dtype=np.uint8)),
                               rtol=0, atol=1e-6)
    assert np.array_equal(load_stl10(tmp_path, part="unlabeled"), images)


def test_stl10_malformed(tmp_path):
    (tmp_path / "test_X.bin").write_bytes(bytes(96 * 96 * 3 + 5))
    with raises_one_line("not a whole number of 27648-byte"):
        load_images("stl10", tmp_path)
    with raises_one_line("unknown part"):
        load_stl10(tmp_path, part="val")
    with raises_one_line("no train_X.bin"):
        load_stl10(tmp_path, part="train")


# -------------------------------------------------------------------------------------- folder


def test_folder_png_round_trip(tmp_path, rng):
    images = random_pixels(rng, (3, 5, 6, 3))  # N, H, W, RGB
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(["a.png", "b.PNG", "sub/c.png"]):
        Image.fromarray(images[i]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    x = load_images("folder", tmp_path)
    assert torch.equal(x, unit(images.transpose(0, 3, 1, 2)))  # sorted a, b, sub/c; [N,C,H,W]
    assert torch.equal(load_images("folder", tmp_path, limit=1), x[:1])


def test_folder_grey_mixed_and_jpeg(tmp_path, rng):
    grey = random_pixels(rng, (8, 8))
    Image.fromarray(grey).save(tmp_path / "a.png")
    Image.fromarray(grey).save(tmp_path / "b.jpg", quality=95)
    x = load_images("folder", tmp_path)
    assert x.shape == (2, 1, 8, 8)
    assert torch.equal(x[0, 0], unit(grey))
    Image.fromarray(random_pixels(rng, (8, 8, 3))).save(tmp_path / "c.png")
    x = load_images("folder", tmp_path)
    assert x.shape == (3, 3, 8, 8)  # one colour image makes all RGB, grey replicated
    assert torch.equal(x[0], unit(np.stack([grey] * 3)))


def test_folder_16bit_grey_scaled(tmp_path):
    wide = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "a.png")
    x = load_images("folder", tmp_path)
    assert torch.equal(x[0, 0], unit(np.array([[0, 1, 255, 128]], dtype=np.uint8)))


def test_folder_sizes(tmp_path, rng):
    Image.fromarray(random_pixels(rng, (10, 20, 3))).save(tmp_path / "a.png")
    Image.fromarray(random_pixels(rng, (12, 12, 3))).save(tmp_path / "b.png")
    with raises_one_line("b.png is 12x12 but .*a.png is 20x10; pass image_size"):
        load_images("folder", tmp_path)
    x = load_images("folder", tmp_path, image_size=8)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    # centre crop of a 10x20 image with no resize: columns 5..14
    exact = load_images("folder", tmp_path, image_size=10, limit=1)
    original = np.asarray(Image.open(tmp_path / "a.png")).transpose(2, 0, 1)
    assert torch.equal(exact[0], unit(original[:, :, 5:15]))


def test_folder_errors(tmp_path):
    with raises_one_line("no \\*.png"):
        load_images("folder", tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with raises_one_line("bad.png: unreadable image"):
        load_images("folder", tmp_path)
    (tmp_path / "bad.png").unlink()
    buffer = tmp_path / "cut.png"
    Image.fromarray(np.arange(4096, dtype=np.uint32).astype(np.uint8).reshape(64, 64)).save(buffer)
    buffer.write_bytes(buffer.read_bytes()[:-40])
    with raises_one_line("cut.png: unreadable image"):
        load_images("folder", tmp_path)
    with raises_one_line("folder needs root"):
        load_images("folder")
    with raises_one_line("is not a folder"):
        load_images("folder", buffer)


# ------------------------------------------------------------------------------------ embedded


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_digits_default(offline):
    x = load_images(None)
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() <= 1.0 and x.max() > 0.9
    assert torch.equal(load_images("digits", limit=10), x[:10])
    assert load_images("digits", image_size=28).shape == (1797, 1, 28, 28)
    assert load_split(None, split="train").shape == (1500, 1, 16, 16)
    assert torch.equal(load_split(None), x[1500:])  # the default split is eval, as qgen-measure's
    assert torch.equal(load_split("digits", split="eval"), x[1500:])


def test_patches(offline):
    import skimage.data

    x = load_images("patches")
    assert x.shape == (3259, 3, 32, 32) and x.min() == -1.0 and x.max() == 1.0
    astronaut = skimage.data.astronaut()
    assert torch.equal(x[0], unit(astronaut[:32, :32].transpose(2, 0, 1)))
    assert torch.equal(x[1], unit(astronaut[:32, 16:48].transpose(2, 0, 1)))
    assert torch.equal(x[31], unit(astronaut[16:48, :32].transpose(2, 0, 1)))  # 31 per row
    assert torch.equal(load_images("patches", limit=5), x[:5])


# --------------------------------------------------------------------------------------- split


def test_split_contiguous_and_seeded():
    images = torch.arange(20, dtype=torch.float32).reshape(20, 1, 1, 1)
    train, evaluation = split_train_eval(images, 5)
    assert torch.equal(train.flatten(), torch.arange(15.0))
    assert torch.equal(evaluation.flatten(), torch.arange(15.0, 20.0))
    a_train, a_eval = split_train_eval(images, 5, seed=3)
    b_train, b_eval = split_train_eval(images, 5, seed=3)
    assert torch.equal(a_train, b_train) and torch.equal(a_eval, b_eval)
    assert not torch.equal(split_train_eval(images, 5, seed=4)[1], a_eval)
    together = torch.cat([a_train, a_eval]).flatten().sort().values
    assert torch.equal(together, torch.arange(20.0))  # a partition
    assert torch.all(a_eval.flatten()[1:] > a_eval.flatten()[:-1])  # original order kept
    for bad in (0, 20, -1):
        with raises_one_line("eval_size must be between 1 and 19"):
            split_train_eval(images, bad)
    with raises_one_line("seed must be an integer"):
        split_train_eval(images, 2, seed="x")


def test_load_split_defaults_and_errors():
    assert load_split("patches", split="eval").shape[0] == 326  # 10% of 3,259
    assert load_split("patches", split="all").shape[0] == 3259
    a = load_split("patches", split="eval", seed=1, image_size=8)
    assert torch.equal(a, load_split("patches", split="eval", seed=1, image_size=8))
    with raises_one_line("unknown split 'test'"):
        load_split("digits", split="test")


# ------------------------------------------------------------------------------------ registry


def test_registry_and_argument_errors(tmp_path):
    assert DATASETS == ("mnist", "cifar10", "svhn", "stl10", "folder", "digits", "patches")
    for name in DATASETS:
        info = dataset_info(name)
        assert info["name"] == name and info["description"]
        assert info["family"] in ("mlp", "dcgan", None)
    assert dataset_info(None)["image_shape"] == [1, 16, 16]
    assert dataset_info("MNIST") == dataset_info("mnist")
    assert family_for_shape([1, 28, 28]) == "mlp" and family_for_shape([3, 64, 64]) == "dcgan"
    with raises_one_line("unknown dataset 'imagenet'; choose one of: mnist, cifar10"):
        load_images("imagenet")
    with raises_one_line("takes no root"):
        load_images("digits", tmp_path)
    with raises_one_line("limit must be a positive integer"):
        load_images("digits", limit=0)
    with raises_one_line("image_size must be a positive integer"):
        load_images("digits", image_size=2.5)
