"""Hostile inputs: every malformed file and argument ends in one stderr line and exit code 2, or
in success with finite outputs, in bounded time and memory.

First one example of each class an adversarial run found (quadratic header parsing, metadata
used before it was validated, valid-looking files that exhaust memory, finite but absurd values,
write failures, malformed checkpoints, unbounded arguments, several stderr lines), then
property-based fuzzing (hypothesis) over the header JSON, the metadata values, the layer chain
and the command-line arguments. The CLIs run in-process through their ``main(argv)``; a few
cases run the console scripts in a subprocess under a 4 GB address-space limit, where the one
stderr line and the exit code are what the user sees.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import qgen_infer
from qgen_infer.checkpoint import save_checkpoint
from qgen_infer.cli.evaluate import main as eval_main
from qgen_infer.cli.export import main as export_main
from qgen_infer.cli.info import main as info_main
from qgen_infer.cli.measure import main as measure_main
from qgen_infer.cli.reconstruct import main as reconstruct_main
from qgen_infer.errors import FormatError, QgenError
from qgen_infer.format import read_qgen
from qgen_infer.format.writer import checksum, data_region

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# examples per fuzz test: 25 in the default run, 400 under -m slow
FUZZ_EXAMPLES = [25, pytest.param(400, marks=pytest.mark.slow)]
SECONDS_PER_CASE = 10.0  # a generous bound on a shared 2-core machine; real cases take < 1 s


# ---- building hostile files ------------------------------------------------------------------


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header: dict[str, Any] | str, data: bytes) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def resign(header: dict[str, Any], data: bytes) -> bytes:
    """The file with a checksum that matches its (edited) metadata: only the edit is wrong."""
    meta = header["__metadata__"]
    meta["checksum"] = checksum(data, meta)
    return join(header, data)


def edit_value(blob: bytes, key: str, edit: Callable[[Any], Any]) -> bytes:
    """Re-signed copy of ``blob`` whose JSON metadata value ``key`` is ``edit(value)`` (a str
    result is written verbatim, so it may be any text)."""
    header, data = split(blob)
    value = edit(json.loads(header["__metadata__"][key]))
    header["__metadata__"][key] = value if isinstance(value, str) else json.dumps(value)
    return resign(header, data)


def setting(field: str, value: Any) -> Callable[[Any], Any]:
    def edit(obj: Any) -> Any:
        obj[field] = value
        return obj
    return edit


def with_tensor(blob: bytes, name: str, change: Callable[[torch.Tensor], None]) -> bytes:
    header, _ = split(blob)
    tensors = safetensors.torch.load(blob)
    change(tensors[name])
    meta = dict(header["__metadata__"])
    draft = safetensors.torch.save(tensors, meta)
    meta["checksum"] = checksum(bytes(data_region(draft)), meta)
    return safetensors.torch.save(tensors, meta)


@pytest.fixture(scope="module")
def mlp_blob(packed_blob) -> bytes:
    return packed_blob("mlp", 2, "tensor")


@pytest.fixture(scope="module")
def dcgan_blob(packed_blob) -> bytes:
    return packed_blob("dcgan", 1, "channel")


@pytest.fixture(scope="module")
def problem(mlp_blob: bytes, tmp_path_factory) -> dict[str, Path]:
    """The MLP model and five measurements of random images, as files."""
    folder = tmp_path_factory.mktemp("hostile")
    model_path = folder / "m.qgen"
    model_path.write_bytes(mlp_blob)
    model = qgen_infer.load(model_path, backend="reference")
    x = torch.rand(5, *model.config["image_shape"]) * 2 - 1
    np.save(folder / "y.npy", qgen_infer.measure(model, x).numpy())
    return {"model": model_path, "y": folder / "y.npy", "folder": folder}


def run(main: Callable[[list[str]], int], argv: list[Any], capsys) -> tuple[int, str, str]:
    start = time.perf_counter()
    code = main([str(a) for a in argv])
    assert time.perf_counter() - start < SECONDS_PER_CASE
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, prog: str, fragment: str = "") -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert fragment in lines[0], err


# ---- 1. header parsing is linear, the tensor count bounded ---------------------------------


def _many_tensors(blob: bytes, count: int) -> bytes:
    """The valid file's metadata with ``count`` extra one-byte tensors (6.7 MB for 100,000)."""
    header, data = split(blob)
    for i in range(count):
        header[f"t{i}"] = {"dtype": "U8", "shape": [1], "data_offsets": [len(data) + i,
                                                                         len(data) + i + 1]}
    return resign(header, data + bytes(count))


@pytest.mark.parametrize("count,fragment", [(2_000, "unknown tensor 't0'"),
                                            (100_000, "tensors (limit 8192)")])
def test_many_tensor_names_are_refused_in_linear_time(mlp_blob: bytes, tmp_path: Path,
                                                      count: int, fragment: str) -> None:
    path = tmp_path / "many.qgen"
    path.write_bytes(_many_tensors(mlp_blob, count))
    start = time.perf_counter()
    with pytest.raises(FormatError, match=re.escape(fragment)):
        read_qgen(path)
    # before: one regex scan of the header per name, 3 s for 2,000 and a hang for 100,000
    assert time.perf_counter() - start < 2.0


def test_duplicate_key_spelled_with_escapes_is_found(mlp_blob: bytes, tmp_path: Path) -> None:
    (n,) = struct.unpack_from("<Q", mlp_blob)
    text = mlp_blob[8:8 + n].decode()
    # "\u0062its" is "bits": a byte search for the name would miss this second "bits"
    raw = re.sub(r'"__metadata__":\s*\{', lambda m: m.group(0) + '"\\u0062its":"2",', text,
                 count=1)
    assert raw != text
    path = tmp_path / "dup.qgen"
    path.write_bytes(join(raw, mlp_blob[8 + n:]))
    with pytest.raises(FormatError, match="duplicate name 'bits'"):
        read_qgen(path)


# ---- 2. every metadata field checked before use; the checksum covers the metadata ----------


METADATA_CASES = {  # the adversarial run's examples: name -> (key, edit, fragment)
    "hidden text": ("config", setting("hidden", "abc"), "config hidden must be an integer"),
    "hidden negative": ("config", setting("hidden", -5), "config hidden must be an integer"),
    "hidden 10**6": ("config", setting("hidden", 10**6), "config hidden must be an integer"),
    "slope null": ("config", setting("negative_slope", None), "negative_slope must be a number"),
    "measurements 10**9": ("config", setting("measurements", 10**9), "measurements must be"),
    "solver empty": ("solver", lambda s: {}, "solver lacks method"),
    "step size text": ("solver", setting("step_size", "abc"), "step_size must be a number"),
    "sparsity text": ("solver", setting("sparsity", "x"), "sparsity must be an integer"),
    "steps list": ("solver", setting("steps", [1]), "steps must be an integer"),
    "steps 10**9": ("solver", setting("steps", 10**9), "steps must be an integer in [1, 10000]"),
    "sparsity above latent": ("solver", setting("sparsity", 11), "exceeds the config's"),
    "training 1e400": ("training", lambda t: '{"epochs": 1, "loss": 1e400}', "overflows"),
    "training epochs text": ("training", setting("epochs", "many"), "epochs must be"),
    "quantizer scheme": ("quantizer", setting("scheme", "gptq"), "scheme must be one of"),
    "config unknown key": ("config", setting("depth", 3), "unknown keys ['depth']"),
    "config bits 3": ("config", setting("bits", 3), "disagree with the file's bits 2"),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_metadata_is_validated_before_use(case: str, mlp_blob: bytes, tmp_path: Path,
                                          capsys) -> None:
    key, edit, fragment = METADATA_CASES[case]
    path = tmp_path / "bad.qgen"
    path.write_bytes(edit_value(mlp_blob, key, edit))
    with pytest.raises(FormatError, match=None) as info:
        read_qgen(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    code, _, err = run(info_main, [path], capsys)
    assert_refused(code, err, "qgen-info", fragment)


@pytest.mark.parametrize("writer", ["\x1b]0;owned\x07qgen", "x" * 201, "two\nlines"])
def test_writer_text_cannot_reach_the_terminal(writer: str, mlp_blob: bytes,
                                               tmp_path: Path) -> None:
    header, data = split(mlp_blob)
    header["__metadata__"]["writer"] = writer
    path = tmp_path / "writer.qgen"
    path.write_bytes(resign(header, data))
    with pytest.raises(FormatError, match="writer must be at most 200 printable characters"):
        read_qgen(path)


def test_metadata_edit_without_resigning_is_a_checksum_mismatch(mlp_blob: bytes,
                                                                tmp_path: Path) -> None:
    header, data = split(mlp_blob)
    solver = json.loads(header["__metadata__"]["solver"])
    solver["steps"] = 4  # a valid value: only the checksum can tell it was edited
    header["__metadata__"]["solver"] = json.dumps(solver)
    path = tmp_path / "edited.qgen"
    path.write_bytes(join(header, data))
    with pytest.raises(FormatError, match="checksum mismatch"):
        read_qgen(path)


def test_version_1_files_are_still_read(mlp_blob: bytes, tmp_path: Path) -> None:
    header, data = split(mlp_blob)
    header["__metadata__"]["format_version"] = "1"
    header["__metadata__"]["checksum"] = checksum(data)  # version 1: the data region only
    path = tmp_path / "v1.qgen"
    path.write_bytes(join(header, data))
    assert read_qgen(path).format_version == 1
    shipped = Path(__file__).resolve().parents[1] / "models" / "mnist-m25-1bit.qgen"
    if shipped.is_file():
        assert read_qgen(shipped).format_version == 1


def test_consistent_config_and_sensing_mismatch_allocates_nothing(mlp_blob: bytes,
                                                                  tmp_path: Path) -> None:
    # a schema-valid hidden width the sensing tensors do not have: checked on the meta device
    path = tmp_path / "wide.qgen"
    path.write_bytes(edit_value(mlp_blob, "config", setting("hidden", 65_000)))
    with pytest.raises(FormatError, match="sensing tensors do not fit"):
        qgen_infer.load(path, backend="reference")


# ---- 3. the layer chain and memory, checked before anything is allocated -------------------


def test_stride_4096_activation_is_refused_by_the_reader(dcgan_blob: bytes, tmp_path: Path,
                                                         capsys) -> None:
    def stride(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        layer = next(d for d in layers if d["kind"] == "conv_transpose2d")
        layer["stride"] = [4096, 4096]
        return layers

    path = tmp_path / "huge.qgen"
    path.write_bytes(edit_value(dcgan_blob, "layers", stride))
    code, _, err = run(info_main, [path], capsys)
    assert_refused(code, err, "qgen-info", "activations per sample")


def test_memory_limit_refuses_load_and_batches(problem: dict[str, Path], tmp_path: Path,
                                               capsys, monkeypatch) -> None:
    monkeypatch.setenv("QGEN_MEMORY_LIMIT", "1K")
    with pytest.raises(QgenError, match="QGEN_MEMORY_LIMIT"):
        qgen_infer.load(problem["model"], backend="reference")
    monkeypatch.setenv("QGEN_MEMORY_LIMIT", "2M")
    model = qgen_infer.load(problem["model"], backend="reference")
    y = np.load(problem["y"])
    assert np.isfinite(qgen_infer.reconstruct(model, y, steps=1).x_hat).all()
    with pytest.raises(QgenError, match="latent rows needs about"):
        qgen_infer.reconstruct(model, y, steps=1, restarts=5000)
    code, _, err = run(reconstruct_main, [problem["model"], problem["y"], "--out-dir",
                                          tmp_path / "r", "--restarts", "5000", "--quiet"],
                       capsys)
    assert_refused(code, err, "qgen-reconstruct", "smaller batch size or fewer restarts")
    assert not (tmp_path / "r").exists()


def test_cli_results_go_to_disk_not_memory(problem: dict[str, Path], tmp_path: Path, capsys,
                                           monkeypatch) -> None:
    """Under a limit that holds a batch but not N results, the API (results in memory) refuses
    and the CLI (results memory-mapped in the output folder, filled batch by batch) succeeds,
    with the API's numbers."""
    from qgen_infer.reconstruction import START_CHUNK

    model = qgen_infer.load(problem["model"], backend="reference")
    n = 1200
    y = np.random.default_rng(1).standard_normal((n, int(model.config["measurements"])))
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    batch, latent = 256, int(model.config["latent_dim"])
    working = model.memory.need(batch) + 2 * START_CHUNK * latent * 4
    results = n * (int(np.prod(model.config["image_shape"])) + latent + 1) * 4
    monkeypatch.setenv("QGEN_MEMORY_LIMIT", str(working + results // 2))
    with pytest.raises(QgenError, match="into="):
        qgen_infer.reconstruct(model, y.astype(np.float32), steps=1)
    code, _, err = run(reconstruct_main, [problem["model"], tmp_path / "y.npy", "--out-dir",
                                          tmp_path / "r", "--quiet", "--backend", "reference",
                                          "--steps", "1"], capsys)
    assert code == 0, err
    monkeypatch.delenv("QGEN_MEMORY_LIMIT")
    from qgen_infer.atomic import default_mode

    # the staging folder (mkdtemp: owner-only) and files (mkstemp) get the umask's modes
    assert (tmp_path / "r").stat().st_mode & 0o777 == default_mode(folder=True)
    assert (tmp_path / "r" / "metrics.json").stat().st_mode & 0o777 == default_mode()
    expected = qgen_infer.reconstruct(model, y.astype(np.float32), steps=1)
    np.testing.assert_array_equal(np.load(tmp_path / "r" / "x_hat.npy"), expected.x_hat)
    np.testing.assert_array_equal(np.load(tmp_path / "r" / "z.npy"), expected.z)


def test_npy_row_writer_round_trip_and_cut(tmp_path: Path) -> None:
    from qgen_infer.npy_rows import NpyRowWriter

    rows = np.random.default_rng(0).standard_normal((7, 2, 3)).astype(np.float32)
    full = NpyRowWriter(tmp_path / "full.npy", rows.shape)
    full[0:3], full[3:7] = rows[:3], rows[3:]
    np.testing.assert_array_equal(full[2:5], rows[2:5])
    with pytest.raises(QgenError, match="in order"):
        full[1:2] = rows[1:2]
    full.finish()
    np.testing.assert_array_equal(np.load(tmp_path / "full.npy"), rows)
    # interrupted after 3 rows: the file holds exactly those (a header declaring 100,000 rows
    # is rewritten for 3, padded to its old length)
    for shape in [(10, 2, 3), (100_000, 3)]:
        cut = NpyRowWriter(tmp_path / "cut.npy", shape)
        part = np.arange(3 * int(np.prod(shape[1:])), dtype=np.float32).reshape(3, *shape[1:])
        cut[0:3] = part
        cut.finish()
        np.testing.assert_array_equal(np.load(tmp_path / "cut.npy"), part)


@pytest.mark.parametrize("text,expected", [("8G", 8 << 30), ("512MiB", 512 << 20),
                                           ("1.5k", 1536), ("1000", 1000)])
def test_memory_limit_sizes(text: str, expected: int) -> None:
    from qgen_infer.engine.memory import parse_size

    assert parse_size(text) == expected
    for bad in ("", "-1G", "lots", "0", "1e9"):
        with pytest.raises(QgenError):
            parse_size(bad)


# ---- 4. finite but absurd values -----------------------------------------------------------


def test_absurd_scale_is_refused(mlp_blob: bytes, tmp_path: Path) -> None:
    path = tmp_path / "scale.qgen"
    path.write_bytes(with_tensor(mlp_blob, "generator.fc1.scale", lambda t: t.fill_(3e38)))
    with pytest.raises(FormatError, match="magnitude"):
        read_qgen(path)


def test_non_finite_results_are_an_error_not_a_success(problem: dict[str, Path],
                                                       tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    import qgen_infer.reconstruction as rec_module

    solve = rec_module.reconstruct_latent

    def overflowing(*args: Any, **kwargs: Any) -> Any:
        res = solve(*args, **kwargs)
        res.x[0] = float("nan")
        return res

    monkeypatch.setattr(rec_module, "reconstruct_latent", overflowing)
    code, _, err = run(reconstruct_main, [problem["model"], problem["y"], "--out-dir",
                                          tmp_path / "r", "--quiet", "--backend",
                                          "reference"], capsys)
    assert_refused(code, err, "qgen-reconstruct", "NaN or infinite")
    assert not (tmp_path / "r").exists()


def test_non_finite_measurements_are_an_error(problem: dict[str, Path], tmp_path: Path, capsys,
                                              monkeypatch) -> None:
    import qgen_infer.measurement

    monkeypatch.setattr(qgen_infer.measurement, "measure",
                        lambda model, x, **kw: torch.full((x.shape[0], 7), float("inf")))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 6, 6), np.float32))
    code, _, err = run(measure_main, [problem["model"], "--images", x, "--out",
                                      tmp_path / "y.npy"], capsys)
    assert_refused(code, err, "qgen-measure", "NaN or infinite measurements")
    assert not (tmp_path / "y.npy").exists()


def test_decompression_bomb_png_is_one_line(problem: dict[str, Path], tmp_path: Path,
                                            capsys) -> None:
    from PIL import Image

    (tmp_path / "bomb").mkdir()
    Image.new("L", (9500, 9500)).save(tmp_path / "bomb" / "a.png")  # 90 M pixels in ~90 KB
    code, _, err = run(measure_main, [problem["model"], "--images", tmp_path / "bomb", "--out",
                                      tmp_path / "y.npy"], capsys)
    assert_refused(code, err, "qgen-measure", "decompression bomb")


# ---- 5. write failures ---------------------------------------------------------------------


def test_write_failures_are_one_line(problem: dict[str, Path], tiny_checkpoint,
                                     tmp_path: Path, capsys, monkeypatch) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 6, 6), np.float32))
    (tmp_path / "y.npy.tmp").mkdir()  # the old fixed temporary name: no longer in the way
    code, _, err = run(measure_main, [problem["model"], "--images", x, "--out",
                                      tmp_path / "y.npy"], capsys)
    assert code == 0, err
    (tmp_path / "m.qgen.tmp").mkdir()
    code, _, err = run(export_main, [tiny_checkpoint("mlp", 2, "tensor"), "--out",
                                     tmp_path / "m.qgen"], capsys)
    assert code == 0, err

    import qgen_infer.atomic

    def full_disk(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(qgen_infer.atomic.os, "replace", full_disk)
    before = sorted(os.listdir(tmp_path))
    code, _, err = run(measure_main, [problem["model"], "--images", x, "--out",
                                      tmp_path / "y2.npy"], capsys)
    assert_refused(code, err, "qgen-measure", "No space left on device")
    code, _, err = run(export_main, [tiny_checkpoint("mlp", 2, "tensor"), "--out",
                                     tmp_path / "m2.qgen"], capsys)
    assert_refused(code, err, "qgen-export", "cannot write")
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind


@pytest.mark.parametrize("exc,fragment", [
    (MemoryError("Unable to allocate 195. GiB"), "out of memory (Unable to allocate 195. GiB)"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e11 "
                  "bytes"), "out of memory (DefaultCPUAllocator"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/y.npy"),
     "cannot access '/root/y.npy' (Permission denied)"),
])
def test_machine_failures_are_one_line(exc: BaseException, fragment: str, capsys) -> None:
    from qgen_infer.cli.common import run_cli

    def body(argv: Any) -> int:
        raise exc

    assert run_cli("qgen-x", body, []) == 2
    assert_refused(2, capsys.readouterr().err, "qgen-x", fragment)


def test_bugs_keep_their_traceback() -> None:
    from qgen_infer.cli.common import run_cli

    def body(argv: Any) -> int:
        raise RuntimeError("shape mismatch in a kernel")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_cli("qgen-x", body, [])


# ---- 6. checkpoints ------------------------------------------------------------------------


CHECKPOINT_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "config text": (lambda c: c.update(config="abc"), "config must be a JSON object"),
    "log step text": (lambda c: c.update(log_step_size="abc"), "log_step_size must be"),
    "log step nan": (lambda c: c.update(log_step_size=torch.tensor(float("nan"))),
                     "step size"),
    "solver empty": (lambda c: c.update(solver={}), "solver lacks method"),
    "train list": (lambda c: c.update(train=[1, 2]), "train must be a JSON object"),
    "nan weights": (lambda c: c["generator"]["fc1.weight"].fill_(float("nan")),
                    "NaN or infinite"),
    "hidden text": (lambda c: c["config"].update(hidden="abc"), "hidden must be an integer"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_malformed_checkpoints_are_one_line(case: str, tiny_checkpoint, tmp_path: Path,
                                            capsys) -> None:
    edit, fragment = CHECKPOINT_CASES[case]
    ckpt = torch.load(tiny_checkpoint("mlp", 2, "tensor"), weights_only=True)
    edit(ckpt)
    path = tmp_path / "model.pt"
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    code, _, err = run(export_main, [path, "--out", tmp_path / "m.qgen"], capsys)
    assert_refused(code, err, "qgen-export", fragment)
    code, _, err = run(eval_main, [path, "--data", "digits"], capsys)
    assert_refused(code, err, "qgen-eval", fragment)


# ---- 7. arguments --------------------------------------------------------------------------


ARGUMENT_CASES = {
    "restarts 10**8": (["--restarts", "100000000"], "restarts must be between"),
    "threads 100000": (["--threads", "100000"], "--threads"),
    "device meta": (["--device", "meta"], "unsupported device 'meta'"),
    "steps 10**30": (["--steps", str(10**30)], "steps must be between"),
    "T 0": (["-T", "0"], "steps must be between 1"),
    "batch 10**12": (["--batch-size", str(10**12)], "batch size must be between"),
    "step size inf": (["--step-size", "inf"], "step size"),
    "not a number": (["--restarts", "many"], "invalid int value"),
}


@pytest.mark.parametrize("case", sorted(ARGUMENT_CASES))
def test_unbounded_arguments_are_refused(case: str, problem: dict[str, Path], tmp_path: Path,
                                         capsys) -> None:
    extra, fragment = ARGUMENT_CASES[case]
    code, _, err = run(reconstruct_main, [problem["model"], problem["y"], "--out-dir",
                                          tmp_path / "r", "--quiet", *extra], capsys)
    assert_refused(code, err, "qgen-reconstruct", fragment)
    assert not (tmp_path / "r").exists()


def test_eval_batch_memory_is_checked(tmp_path: Path, capsys, monkeypatch) -> None:
    from qgen_infer.models import build_generator, build_sensing

    config = {"family": "mlp", "image_shape": [1, 16, 16], "latent_dim": 10,
              "measurements": 7, "hidden": 12, "negative_slope": 0.2, "bits": 2,
              "granularity": "tensor"}  # the embedded digits' shape
    save_checkpoint(tmp_path / "model.pt", {
        "config": config, "generator": build_generator(config).state_dict(),
        "sensing": build_sensing(config).state_dict(), "log_step_size": torch.tensor(-2.0),
        "solver": {"method": "sdlss", "sparsity": 5, "steps": 2, "project": True,
                   "step_size": 0.1},
        "train": {"epochs": 0, "settings": {"dataset": "digits"}}})
    monkeypatch.setenv("QGEN_MEMORY_LIMIT", "20M")
    code, _, err = run(eval_main, [tmp_path / "model.pt", "--restarts", "10000"], capsys)
    assert_refused(code, err, "qgen-eval", "latent rows (images x restarts) needs about")
    code, out, err = run(eval_main, [tmp_path / "model.pt", "--count", "4"], capsys)
    assert code == 0 and "PSNR" in out, err


@pytest.mark.parametrize("argv,fragment", [
    (["--eval-size", "0"], "--eval-size"), (["--steps", "0"], "--steps"),
    (["--restarts", "100000000"], "--restarts"), (["--threads", "100000"], "--threads"),
    (["--step-size", "nan"], "--step-size"), (["--seed", "-1"], "--seed"),
])
def test_eval_arguments_are_bounded(argv: list[str], fragment: str, tiny_checkpoint,
                                    capsys) -> None:
    code, _, err = run(eval_main, [tiny_checkpoint("mlp", 2, "tensor"), *argv], capsys)
    assert_refused(code, err, "qgen-eval", fragment)


# ---- 8. one stderr line, as the user sees it (subprocesses under a 4 GB address limit) ------


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _console(script: str, *argv: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name(script)
    return subprocess.run([str(exe), *map(str, argv)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, preexec_fn=_limit_address_space,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(not Path(sys.executable).with_name("qgen-reconstruct").exists(),
                    reason="console scripts not installed")
def test_console_scripts_print_one_line(problem: dict[str, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "y64.npy", np.full((2, 7), 1e300))  # overflows float32
    cases = [
        ("qgen-reconstruct", [problem["model"], tmp_path / "y64.npy", "--out-dir",
                              tmp_path / "r"], "beyond the float32 range"),
        ("qgen-reconstruct", [problem["model"], problem["y"], "--out-dir", tmp_path / "r",
                              "--bogus"], "unrecognized"),
        ("qgen-info", [], "required"),
        ("qgen-measure", [problem["model"], "--images", tmp_path / "none.npy", "--out",
                          tmp_path / "y.npy", "--noise-std", "1e300"], "--noise-std"),
    ]
    for script, argv, fragment in cases:
        proc = _console(script, *argv, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"{script}: error: ") and fragment in lines[0], proc.stderr


# ---- property-based fuzzing ----------------------------------------------------------------


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, min_size=1, max_size=4),
                     st.dictionaries(st.text(max_size=6), inner, min_size=1, max_size=3))


# Hostile JSON: huge and negative integers, tiny and huge floats, text, null, empty and nested
# containers.
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 40),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
              st.sampled_from(["mlp", "dcgan", "tensor", "dcs"]), st.builds(list),
              st.builds(dict)),
    _containers, max_leaves=8)


def _json_values() -> st.SearchStrategy[Any]:
    return JSON_VALUES


FIELDS = {"config": ["family", "image_shape", "latent_dim", "measurements", "hidden",
                     "negative_slope", "bits", "granularity", "overflow_rate", "width", "extra"],
          "solver": ["method", "sparsity", "steps", "project", "step_size", "latent_dim"],
          "quantizer": ["granularity", "scheme", "trained_bits", "post_training"],
          "training": ["epochs", "step", "seed", "wall_time_s", "settings", "note"],
          "sensing": ["fc1.weight", "fc9.bias"]}


def _check_outcome(path: Path, capsys) -> None:
    """The property: ``qgen-info`` refuses in one line with exit 2, or the file loads and a
    reconstruction of two images is finite (or refused in one line as a user error); in
    bounded time (:func:`run`) and memory (the peak resident size grows by under 1 GiB)."""
    before = _rss()
    _outcome(path, capsys)
    assert _rss() - before < 1 << 30


def _outcome(path: Path, capsys) -> None:
    code, _, err = run(info_main, [path], capsys)
    if code != 0:
        assert_refused(code, err, "qgen-info")
        event("refused by the reader")
        return
    try:
        model = qgen_infer.load(path, backend="reference")
        y = np.random.default_rng(0).standard_normal((2, int(model.config["measurements"])))
        rec = qgen_infer.reconstruct(model, y.astype(np.float32), steps=2)
    except QgenError as exc:
        assert "\n" not in str(exc)
        event("refused by load or reconstruct")
        return
    assert all(np.isfinite(a).all() for a in (rec.x_hat, rec.z, rec.loss))
    event("finite reconstruction")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fuzz_metadata(mlp_blob: bytes, fuzz_dir: Path, capsys, data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(FIELDS)))
    field = data.draw(st.sampled_from(FIELDS[key]))
    value = data.draw(_json_values())
    path = fuzz_dir / "meta.qgen"
    path.write_bytes(edit_value(mlp_blob, key, setting(field, value)))
    _check_outcome(path, capsys)


@pytest.mark.parametrize("examples", FUZZ_EXAMPLES)
def test_fuzz_metadata_values(examples: int, mlp_blob: bytes, fuzz_dir: Path, capsys) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        _fuzz_metadata(mlp_blob, fuzz_dir, capsys, data)

    check()


def _fuzz_layers(dcgan_blob: bytes, fuzz_dir: Path, capsys, data: st.DataObject) -> None:
    """Numbers of the layer chain (strides, paddings, shapes, kernel sizes) replaced."""
    layers = json.loads(split(dcgan_blob)[0]["__metadata__"]["layers"])
    numbers = st.one_of(st.integers(0, 8), st.integers(9, 5000), st.integers(2**31, 2**64))
    for _ in range(data.draw(st.integers(1, 3))):
        layer = data.draw(st.sampled_from(layers))
        keys = [k for k, v in layer.items() if isinstance(v, list)]
        entries = layer[data.draw(st.sampled_from(keys))]
        entries[data.draw(st.integers(0, len(entries) - 1))] = data.draw(numbers)
    path = fuzz_dir / "layers.qgen"
    path.write_bytes(edit_value(dcgan_blob, "layers", lambda _: layers))
    _check_outcome(path, capsys)


@pytest.mark.parametrize("examples", FUZZ_EXAMPLES)
def test_fuzz_layer_chain(examples: int, dcgan_blob: bytes, fuzz_dir: Path, capsys) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        _fuzz_layers(dcgan_blob, fuzz_dir, capsys, data)

    check()


def _fuzz_header(mlp_blob: bytes, fuzz_dir: Path, data: st.DataObject) -> None:
    """The safetensors header itself: entries replaced by hostile JSON, offsets and shapes
    moved, keys repeated in the raw text."""
    header, body = split(mlp_blob)
    names = sorted(header)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(names))
        how = data.draw(st.sampled_from(["value", "offsets", "shape", "dtype"]))
        if how == "value" or name == "__metadata__" or not isinstance(header[name], dict):
            header[name] = data.draw(_json_values())
        elif how == "offsets":
            header[name]["data_offsets"] = data.draw(st.lists(st.integers(-5, 2**65),
                                                              max_size=3))
        elif how == "shape":
            header[name]["shape"] = data.draw(st.lists(st.integers(-1, 2**40), max_size=5))
        else:
            header[name]["dtype"] = data.draw(st.sampled_from(["U8", "F32", "F64", "BOOL",
                                                               "I64", "x"]))
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values()):
        meta["checksum"] = checksum(body, meta)  # so that the reader looks past the checksum
    text = json.dumps(header)
    if data.draw(st.booleans()):  # repeat an entry verbatim in the raw text
        name = data.draw(st.sampled_from(names))
        text = text[:-1] + f", {json.dumps(name)}: {json.dumps(header[name])}}}"
    path = fuzz_dir / "header.qgen"
    path.write_bytes(join(text, body))
    start = time.perf_counter()
    try:
        read_qgen(path)
    except FormatError as exc:
        assert "\n" not in str(exc)
    assert time.perf_counter() - start < SECONDS_PER_CASE


@pytest.mark.parametrize("examples", FUZZ_EXAMPLES)
def test_fuzz_header_json(examples: int, mlp_blob: bytes, fuzz_dir: Path) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        _fuzz_header(mlp_blob, fuzz_dir, data)

    check()


def _number_text() -> st.SearchStrategy[str]:
    """Half small values a run accepts, half hostile text (huge, negative, NaN, not numbers)."""
    valid = st.one_of(st.integers(1, 4).map(str), st.floats(1e-4, 0.5).map(repr))
    hostile = st.one_of(st.integers(-3, 0).map(str), st.integers(-2**80, 2**80).map(str),
                        st.floats().map(repr), st.sampled_from(["", "x", "1e400", "0x10"]))
    return st.one_of(valid, hostile)


FLAGS = ["--steps", "--restarts", "--batch-size", "--seed", "--step-size", "--sparsity",
         "--threads", "--device"]


def _fuzz_arguments(problem: dict[str, Path], capsys, data: st.DataObject) -> None:
    argv: list[Any] = [problem["model"], problem["y"], "--quiet", "--backend", "reference"]
    for flag in data.draw(st.lists(st.sampled_from(FLAGS), min_size=1, max_size=3,
                                   unique=True)):
        value = data.draw(st.sampled_from(["cpu", "cuda:7", "meta", "tpu"])) \
            if flag == "--device" else data.draw(_number_text())
        argv += [f"{flag}={value}"]
    out = problem["folder"] / "fuzz-out"
    code, _, err = run(reconstruct_main, [*argv, "--out-dir", out, "--force"], capsys)
    if code != 0:
        assert_refused(code, err, "qgen-reconstruct")
        event("refused")
        return
    for name in ("x_hat.npy", "z.npy"):
        assert np.isfinite(np.load(out / name)).all()
    event("finite reconstruction")


@pytest.mark.parametrize("examples", FUZZ_EXAMPLES)
def test_fuzz_reconstruct_arguments(examples: int, problem: dict[str, Path], capsys) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        _fuzz_arguments(problem, capsys, data)

    check()


def test_every_schema_field_is_documented() -> None:
    from qgen_infer.format import metadata

    doc = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text()
    for table in (metadata.CONFIG, metadata.SOLVER, metadata.QUANTIZER, metadata.TRAINING):
        for name in table:
            assert f"`{name}`" in doc, name
