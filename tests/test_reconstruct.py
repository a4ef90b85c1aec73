"""Reconstruction through the packed generator: ``qgen_infer.reconstruct`` and ``qgen-reconstruct``.

What is held here:

* correctness ladder step 4: reconstructing from the packed ``.qgen`` (reference backend) equals
  running the solver on the fake-quantized checkpoint's G and A with the same per-batch seeds;
  the ``cpu`` and ``triton`` backends equal the reference backend (triton under
  ``TRITON_INTERPRET=1`` in a subprocess, so this module never imports Triton kernels itself);
* seeding: an image's random starts depend on ``seed``, ``restarts`` and its index only (drawn
  in chunks of 256 images seeded by ``seed * 1_000_003 + chunk``): the same settings give
  bit-identical results, a batch does not depend on the other batches, and ``--batch-size``
  changes speed, not the result;
* the CLI's contract on bad input: one ``error:`` line on stderr, exit code 2, and the output
  folder neither created nor modified; Ctrl-C keeps finished batches (exit 130).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qgen_infer
from qgen_infer import reconstruction
from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.cli.reconstruct import OUTPUTS
from qgen_infer.cli.reconstruct import main as reconstruct_main
from qgen_infer.engine import backend_available
from qgen_infer.errors import QgenError
from qgen_infer.export import export_checkpoint
from qgen_infer.reconstruction import StartLatents, solver_options
from qgen_infer.solve import reconstruct_latent

N_IMAGES = 7  # with batch size 3: two full batches and a ragged one
needs_cpu = pytest.mark.skipif(not backend_available("cpu"),
                               reason="the C++ cpu backend (qgen_infer._cpu) is not built")


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tmp_path_factory) -> Any:
    """``models(family, bits)`` -> (checkpoint path, exported .qgen path), cached per module."""
    cache: dict[tuple[str, int], tuple[Path, Path]] = {}
    folder = tmp_path_factory.mktemp("qgen")

    def get(family: str = "mlp", bits: int = 4) -> tuple[Path, Path]:
        if (family, bits) not in cache:
            ckpt = tiny_checkpoint(family, bits, "tensor")
            out = export_checkpoint(ckpt, folder / f"{family}-{bits}.qgen").path
            cache[(family, bits)] = (ckpt, out)
        return cache[(family, bits)]

    return get


def _images(shape: list[int], n: int = N_IMAGES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (n, *shape)).astype(np.float32)


def _measure(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.sensing(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def problem(models, tmp_path_factory) -> dict[str, Any]:
    """The 4-bit tiny MLP, N_IMAGES truths and their measurements, also saved as .npy files."""
    ckpt, qgen = models("mlp", 4)
    model = qgen_infer.load(qgen, backend="reference")
    x = _images(model.config["image_shape"])
    y = _measure(model, x)
    folder = tmp_path_factory.mktemp("inputs")
    np.save(folder / "y.npy", y)
    np.save(folder / "x.npy", x)
    return {"ckpt": ckpt, "qgen": qgen, "model": model, "x": x, "y": y,
            "y_path": folder / "y.npy", "x_path": folder / "x.npy", "inputs": folder}


def _assert_same(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for name in ("x_hat", "z", "loss"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol,
                                   err_msg=name)


# --- correctness ----------------------------------------------------------------------------


@pytest.mark.parametrize("family,bits", [("mlp", 1), ("mlp", 2), ("mlp", 3), ("mlp", 4),
                                         ("dcgan", 2)])
def test_packed_file_equals_fake_quantized_checkpoint(models, family: str, bits: int) -> None:
    """Ladder step 4: the packed model's reconstruction equals the solver run on the training
    networks (fake-quantized G, A_φ) batch by batch with the documented seed rule."""
    ckpt_path, qgen = models(family, bits)
    model = qgen_infer.load(qgen, backend="reference")
    n, batch, seed, restarts = (N_IMAGES, 3, 5, 2) if family == "mlp" else (3, 2, 5, 1)
    y = _measure(model, _images(model.config["image_shape"], n))
    rec = qgen_infer.reconstruct(model, y, batch_size=batch, seed=seed, restarts=restarts)

    gen, sense = build_from_checkpoint(load_checkpoint(ckpt_path))
    gen.requires_grad_(False)
    sense.requires_grad_(False)
    opts = solver_options(model, seed=seed, restarts=restarts)
    starts = StartLatents(opts)
    for start in range(0, n, batch):
        yb = torch.from_numpy(y[start:start + batch])
        res = reconstruct_latent(
            yb, gen, sense, latent_dim=opts.latent_dim, steps=opts.steps,
            step_size=opts.step_size, sparsity=opts.sparsity, project=opts.project,
            restarts=restarts, z0=starts.rows(start, yb.shape[0]))
        rows = slice(start, start + batch)
        np.testing.assert_allclose(rec.z[rows], res.z.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec.x_hat[rows], res.x.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec.loss[rows], res.loss.numpy(), rtol=1e-4, atol=1e-6)
    assert rec.done == n and len(rec.batch_seconds) == -(-n // batch)


@needs_cpu
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_cpu_backend_equals_reference(models, bits: int, monkeypatch) -> None:
    # the exact kernels and fp32 sensing net (under QGEN_CPU_ISA=avx2 the default would round
    # 1-bit tables to int8, on AMX CPUs run the sensing net in bf16: those paths are held to
    # their PSNR in tests/test_lut_i8.py and bench/results/reconstruct-tiers.md)
    monkeypatch.setenv("QGEN_CPU_INT_TABLES", "off")
    _, qgen = models("mlp", bits)
    ref = qgen_infer.load(qgen, backend="reference")
    cpu = qgen_infer.load(qgen, backend="cpu")
    y = _measure(ref, _images(ref.config["image_shape"]))
    kw = {"batch_size": 3, "restarts": 2, "seed": 1, "steps": 5, "precision": "fp32"}
    _assert_same(qgen_infer.reconstruct(cpu, y, **kw), qgen_infer.reconstruct(ref, y, **kw))


@needs_cpu
def test_cpu_backend_equals_reference_dcgan(models) -> None:
    _, qgen = models("dcgan", 3)
    ref = qgen_infer.load(qgen, backend="reference")
    cpu = qgen_infer.load(qgen, backend="cpu")
    y = _measure(ref, _images(ref.config["image_shape"], 2))
    kw = {"steps": 2, "precision": "fp32"}  # exact (auto would round A on AMX CPUs)
    _assert_same(qgen_infer.reconstruct(cpu, y, **kw), qgen_infer.reconstruct(ref, y, **kw))


_TRITON_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import qgen_infer
    from qgen_infer.engine import backend_available
    if not backend_available("triton"):
        print("SKIP: triton not installed")
        sys.exit(0)
    model = qgen_infer.load(sys.argv[1], backend="triton")
    rec = qgen_infer.reconstruct(model, np.load(sys.argv[2]), batch_size=8, restarts=2,
                                 steps=2, seed=3)
    np.savez(sys.argv[3], x_hat=rec.x_hat, z=rec.z, loss=rec.loss)
""")


@pytest.mark.parametrize("bits", [1, 3])
def test_triton_backend_equals_reference(models, tmp_path: Path, bits: int) -> None:
    """The Triton kernels under the interpreter, in a subprocess: TRITON_INTERPRET must be set
    before Triton is imported, and must not leak into the rest of the test session."""
    _, qgen = models("mlp", bits)
    ref = qgen_infer.load(qgen, backend="reference")
    y = _measure(ref, _images(ref.config["image_shape"], 5))
    np.save(tmp_path / "y.npy", y)
    env = {**os.environ, "TRITON_INTERPRET": "1", "QGEN_TRITON_AUTOTUNE": "0",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, str(qgen), str(tmp_path / "y.npy"),
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    got = np.load(tmp_path / "out.npz")
    want = qgen_infer.reconstruct(ref, y, batch_size=8, restarts=2, steps=2, seed=3)
    for name in ("x_hat", "z", "loss"):
        np.testing.assert_allclose(got[name], getattr(want, name), rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_precision_is_checked_in_the_api(problem) -> None:
    model, y = problem["model"], problem["y"]
    with pytest.raises(QgenError, match="precision fp16 needs a CUDA device"):
        qgen_infer.reconstruct(model, y, precision="fp16")
    with pytest.raises(QgenError, match="precision must be one of"):
        qgen_infer.reconstruct(model, y, precision="int8")
    fp32 = qgen_infer.reconstruct(model, y, precision="fp32", batch_size=3)
    np.testing.assert_array_equal(fp32.x_hat, qgen_infer.reconstruct(model, y, batch_size=3).x_hat)


def test_cpu_bf16_runs_the_sensing_net_only_in_bf16(problem, monkeypatch, tmp_path: Path,
                                                   capsys) -> None:
    """precision="bf16" on the CPU: G stays the packed fp32 one, A is a bf16 copy whose
    measurements come back as fp32; refused (one line) on a CPU without bf16 matrix hardware."""
    import copy

    model, y = problem["model"], problem["y"]
    if not reconstruction.cpu_has_bf16_matmul():
        with pytest.raises(QgenError, match="AMX or AVX512-BF16"):
            qgen_infer.reconstruct(model, y, precision="bf16")
        return
    g_net, a_net = reconstruction._networks(model, "bf16")
    assert g_net is model.generator
    x = torch.from_numpy(problem["x"][:5])
    by_hand = copy.deepcopy(model.sensing).to(torch.bfloat16)(x.bfloat16()).float()
    got = a_net(x)
    assert got.dtype == torch.float32 and torch.equal(got, by_hand)
    with torch.no_grad():
        exact = model.sensing(x)
    assert not torch.equal(got, exact)
    torch.testing.assert_close(got, exact, rtol=2e-2, atol=2e-2 * float(exact.abs().max()))
    bf16 = qgen_infer.reconstruct(model, y, precision="bf16", batch_size=3)
    fp32 = qgen_infer.reconstruct(model, y, batch_size=3)
    assert np.abs(bf16.x_hat - fp32.x_hat).max() < 0.2  # a 3-step solve from the same starts
    code, _, err = _run(_args(problem, tmp_path / "rec", "--precision", "bf16"), capsys)
    assert code == 0, err
    monkeypatch.setattr(reconstruction, "cpu_has_bf16_matmul", lambda: False)
    model.__dict__.pop("_low_precision", None)
    with pytest.raises(QgenError, match="AMX or AVX512-BF16"):
        qgen_infer.reconstruct(model, y, precision="bf16")


def _on_cpu_tier(isa: str) -> Any:
    """A stand-in for a model on the cpu backend's ``isa`` tier: what
    :func:`reconstruction.resolve_precision` reads, on any machine."""
    from types import SimpleNamespace

    return SimpleNamespace(device=torch.device("cpu"), backend=SimpleNamespace(name="cpu",
                                                                               isa=isa))


def test_precision_auto_is_bf16_only_where_it_was_measured(models, problem,
                                                           monkeypatch) -> None:
    """precision="auto": the sensing net in bf16 on the cpu backend's AVX-512 tier of a CPU
    with bf16 hardware, for MLP and conv sensing nets alike; fp32 without that hardware, on a
    lower (forced) tier and always on the reference backend. Explicit ones stay."""
    resolve = reconstruction.resolve_precision
    dcgan = models("dcgan", 4)[1]
    loaded = [qgen_infer.load(dcgan, backend="reference"), problem["model"]]
    if backend_available("cpu"):
        loaded += [qgen_infer.load(dcgan, backend="cpu"),
                   qgen_infer.load(problem["qgen"], backend="cpu")]
    for native in (True, False):
        monkeypatch.setattr(reconstruction, "cpu_has_bf16_matmul", lambda native=native: native)
        assert resolve(_on_cpu_tier("avx512"), "auto") == ("bf16" if native else "fp32")
        for isa in ("avx2", "portable"):
            assert resolve(_on_cpu_tier(isa), "auto") == "fp32"
        for model in loaded:  # reference: the fp32 oracle
            bf16 = native and model.backend.name == "cpu" and model.backend.isa == "avx512"
            assert resolve(model, "auto") == ("bf16" if bf16 else "fp32")
        for explicit in ("fp32", "fp16", "bf16"):
            assert resolve(_on_cpu_tier("avx512"), explicit) == explicit


def test_default_precision_runs_what_auto_resolves(problem, monkeypatch) -> None:
    """reconstruct's default "auto" gives bit for bit the result of the precision it resolves
    to, and says which; the reference backend is never rounded; fp32 forces exact."""
    model, y = problem["model"], problem["y"]
    monkeypatch.setattr(reconstruction, "cpu_has_bf16_matmul", lambda: True)
    ref = qgen_infer.reconstruct(model, y, batch_size=3)
    assert ref.precision == "fp32"
    np.testing.assert_array_equal(
        ref.x_hat, qgen_infer.reconstruct(model, y, precision="fp32", batch_size=3).x_hat)
    if not backend_available("cpu"):
        return
    cpu = qgen_infer.load(problem["qgen"], backend="cpu")
    fp32 = qgen_infer.reconstruct(cpu, y, precision="fp32", batch_size=3)
    bf16 = qgen_infer.reconstruct(cpu, y, precision="bf16", batch_size=3)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert not np.array_equal(fp32.x_hat, bf16.x_hat)
    for auto_bf16, want in ((False, fp32), (True, bf16)):
        monkeypatch.setattr(reconstruction, "auto_sensing_bf16", lambda m, on=auto_bf16: on)
        got = qgen_infer.reconstruct(cpu, y, batch_size=3)
        assert got.precision == want.precision
        for name in ("x_hat", "z", "loss"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)


def test_cli_records_the_precision_that_ran(problem, monkeypatch, tmp_path: Path,
                                            capsys) -> None:
    """metrics.json's settings give the precision asked for and the one that ran; the last
    line names a bf16 sensing net."""
    monkeypatch.setattr(reconstruction, "cpu_has_bf16_matmul", lambda: True)
    cases = [((), "auto", "fp32")]  # --backend reference: never rounded
    if backend_available("cpu"):  # as on an AVX-512 CPU with AMX / AVX512-BF16
        cases += [(("--backend", "cpu"), "auto", "bf16"),
                  (("--backend", "cpu", "--precision", "fp32"), "fp32", "fp32")]
    for i, (extra, asked, ran) in enumerate(cases):
        if i == 1:
            monkeypatch.setattr(reconstruction, "auto_sensing_bf16", lambda m: True)
        out = tmp_path / f"rec{i}"
        code, stdout, err = _run(_args(problem, out, *extra), capsys)
        assert code == 0, err
        settings = json.loads((out / "metrics.json").read_text())["settings"]
        assert (settings["precision_requested"], settings["precision"]) == (asked, ran)
        assert ("(sensing net bf16)" in stdout) == (ran == "bf16"), stdout


def test_same_seed_same_result_different_seed_differs(problem) -> None:
    model, y = problem["model"], problem["y"]
    a = qgen_infer.reconstruct(model, y, batch_size=3, seed=7)
    b = qgen_infer.reconstruct(model, y, batch_size=3, seed=7)
    c = qgen_infer.reconstruct(model, y, batch_size=3, seed=8)
    for name in ("x_hat", "z", "loss"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.z, c.z)


def test_a_batch_does_not_depend_on_the_other_batches(problem) -> None:
    """Changing the measurements of batch 2 leaves batches 1 and 3 bit-identical."""
    model, y = problem["model"], problem["y"].copy()
    a = qgen_infer.reconstruct(model, y, batch_size=3)
    y[3:6] = y[3:6][::-1] * 0.5
    b = qgen_infer.reconstruct(model, y, batch_size=3)
    for rows in (slice(0, 3), slice(6, 7)):
        np.testing.assert_array_equal(a.x_hat[rows], b.x_hat[rows])
    assert not np.array_equal(a.x_hat[3:6], b.x_hat[3:6])


def test_batch_size_does_not_change_the_result(problem) -> None:
    """An image's starts depend on (seed, restarts, its index) only: batch sizes 1, 3 and all
    give the same reconstructions (to float rounding of differently-sized products)."""
    model, y = problem["model"], problem["y"]
    kw = {"seed": 4, "restarts": 2}
    full = qgen_infer.reconstruct(model, y, batch_size=N_IMAGES, **kw)
    for batch in (1, 3):
        _assert_same(qgen_infer.reconstruct(model, y, batch_size=batch, **kw), full)
    assert not np.array_equal(full.z, qgen_infer.reconstruct(model, y, seed=5, restarts=2).z)


def test_start_latents_chunks_and_straddling_rows() -> None:
    """Rows from any (start, count) equal the slices of whole-chunk draws, across a chunk edge."""
    opts = reconstruction.SolverOptions(latent_dim=12, sparsity=3, steps=1, step_size=0.1,
                                        project=True, restarts=2, seed=6)
    chunk = reconstruction.START_CHUNK
    full = StartLatents(opts).rows(0, 2 * chunk).reshape(2, 2 * chunk, 12)
    got = StartLatents(opts).rows(chunk - 3, 7).reshape(2, 7, 12)
    assert torch.equal(got, full[:, chunk - 3:chunk + 4])
    assert ((got != 0).sum(-1) == 3).all()
    assert reconstruction.chunk_seed(2, 6) == 2 * 1_000_003 + 6
    with pytest.raises(ValueError, match="z0 must have shape"):
        reconstruct_latent(torch.zeros(3, 4), lambda z: z, lambda x: x, latent_dim=12, steps=1,
                           step_size=0.1, z0=torch.zeros(5, 12))


def test_tensor_and_array_inputs_agree(problem) -> None:
    model, y = problem["model"], problem["y"]
    a = qgen_infer.reconstruct(model, y)
    b = qgen_infer.reconstruct(model, torch.from_numpy(y.astype(np.float64)))
    np.testing.assert_array_equal(a.x_hat, b.x_hat)


def test_top_level_api_and_options_object(problem) -> None:
    model = problem["model"]
    opts = solver_options(model, steps=2, restarts=3, batch_size=4, seed=9)
    assert (opts.steps, opts.restarts, opts.batch_size, opts.seed) == (2, 3, 4, 9)
    assert opts.sparsity == model.solver["sparsity"] and opts.project is True
    assert opts.step_size == pytest.approx(model.solver["step_size"])
    a = qgen_infer.reconstruct(model, problem["y"], opts)
    b = reconstruction.reconstruct(model, problem["y"], steps=2, restarts=3, batch_size=4, seed=9)
    np.testing.assert_array_equal(a.z, b.z)
    assert a.x_hat.shape == (N_IMAGES, *model.config["image_shape"])
    assert a.x_hat.dtype == np.float32 and np.abs(a.x_hat).max() <= 1
    assert ((a.z != 0).sum(axis=1) <= opts.sparsity).all()
    with pytest.raises(QgenError, match="not both"):
        qgen_infer.reconstruct(model, problem["y"], opts, steps=3)


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 0}, "sparsity"), ({"sparsity": 11}, "sparsity"), ({"steps": -1}, "steps"),
    ({"step_size": float("nan")}, "step size"), ({"step_size": 0.0}, "step size"),
    ({"restarts": 0}, "restarts"), ({"batch_size": 0}, "batch size"), ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
])
def test_solver_options_refuse_bad_values(problem, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(QgenError, match=match):
        solver_options(problem["model"], **kwargs)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 8), np.float32), "shape"),
    (np.zeros(7, np.float32), "shape"),
    (np.ones((2, 7), np.int64), "dtype"),
    (np.ones((2, 7), bool), "dtype"),
    (np.ones((2, 7), np.complex64), "dtype"),
    (np.full((2, 7), np.nan, np.float32), "NaN"),
    (torch.ones(2, 7, dtype=torch.int32), "dtype"),
    (torch.full((2, 7), float("inf")), "NaN"),
])
def test_api_refuses_bad_measurements(problem, bad: Any, match: str) -> None:
    with pytest.raises(QgenError, match=match):
        qgen_infer.reconstruct(problem["model"], bad)


# --- the command line -----------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = reconstruct_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _args(problem: dict[str, Any], out: Path, *extra: Any, y: Any = None) -> list[Any]:
    return ["--model", problem["qgen"], "--measurements", y or problem["y_path"], "--out", out,
            "--backend", "reference", "--quiet", "--batch-size", "3", *extra]


def test_cli_writes_outputs_equal_to_the_api(problem, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rec"
    code, stdout, err = _run(_args(problem, out, "--truth", problem["x_path"], "--seed", 4,
                                   "--restarts", 2), capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)
    assert os.listdir(tmp_path) == ["rec"]  # no staging folder left behind
    want = qgen_infer.reconstruct(problem["model"], problem["y"], batch_size=3, seed=4,
                                  restarts=2)
    np.testing.assert_array_equal(np.load(out / "x_hat.npy"), want.x_hat)
    np.testing.assert_array_equal(np.load(out / "z.npy"), want.z)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "reference" and metrics["bits"] == 4
    assert metrics["interrupted"] is False
    assert metrics["settings"]["restarts"] == 2 and metrics["settings"]["seed"] == 4
    assert metrics["summary"]["images"] == N_IMAGES
    losses = [im["measurement_loss"] for im in metrics["per_image"]]
    np.testing.assert_allclose(losses, want.loss, rtol=1e-6)
    assert all("psnr" in im for im in metrics["per_image"])
    assert "ssim" not in metrics["summary"]  # 6x6 images: below SSIM's 7x7 window
    assert len(metrics["timing"]["batch_seconds"]) == 3
    assert "PSNR" in stdout and str(out) in stdout


def test_cli_metrics_with_ssim_and_grid(models, tmp_path: Path, capsys) -> None:
    """A 16x16 colour model: SSIM is reported, and the grid shows truth beside reconstruction."""
    from PIL import Image

    _, qgen = models("dcgan", 4)
    model = qgen_infer.load(qgen)
    x = _images(model.config["image_shape"], 3)
    np.save(tmp_path / "y.npy", _measure(model, x))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "rec"
    code, _, err = _run(["--model", qgen, "--measurements", tmp_path / "y.npy", "--truth",
                         tmp_path / "x.npy", "--out", out, "--steps", 1, "--quiet"], capsys)
    assert code == 0, err
    s = json.loads((out / "metrics.json").read_text())["summary"]
    assert -1 <= s["ssim"] <= 1 and np.isfinite(s["psnr"])
    with Image.open(out / "grid.png") as grid:
        assert grid.mode == "RGB" and grid.width > 2 * 16 * 2  # two columns of 2x-scaled images


def test_cli_auto_backend_picks_cpu_when_built(problem, tmp_path: Path, capsys) -> None:
    args = _args(problem, tmp_path / "rec")
    args[args.index("--backend") + 1] = "auto"
    code, _, err = _run(args, capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert metrics["backend"] == ("cpu" if backend_available("cpu") else "reference")
    # no --threads: counts from the idle cores, each within 1 .. the cores
    assert metrics["settings"]["threads"] is None
    assert all(1 <= t <= os.cpu_count() for t in metrics["settings"]["threads_used"])
    if backend_available("cpu"):  # which path (kernels or dense fp32) ran each product
        dispatch = metrics["dispatch"]
        assert dispatch["mode"] == "measured" and dispatch["choices"]
        assert {c["path"] for c in dispatch["choices"]} <= {"packed", "dense"}


def test_cli_big_endian_is_converted_with_a_note(problem, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "be.npy", problem["y"].astype(">f4"))
    code, _, err = _run(_args(problem, tmp_path / "be", y=tmp_path / "be.npy"), capsys)
    assert code == 0, err
    assert "note:" in err and "byte order" in err
    code, _, err = _run(_args(problem, tmp_path / "native"), capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "be" / "x_hat.npy"),
                                  np.load(tmp_path / "native" / "x_hat.npy"))


def _npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy file with a hand-written header dict."""
    raw = header.encode("latin1")
    raw += b" " * (63 - (10 + len(raw)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + data


def _bad_measurements() -> dict[str, Any]:
    """name -> (writer of the bad y file, a fragment of the expected message)."""
    m = 7

    def save(arr: np.ndarray, **kw: Any) -> Any:
        return lambda p: np.save(p, arr, **kw)

    def raw(data: bytes) -> Any:
        return lambda p: p.write_bytes(data)

    def truncated(p: Path) -> None:
        np.save(p, np.ones((50, m), np.float32))
        p.write_bytes(p.read_bytes()[:300])

    def f4(shape: str, tail: str = ", }") -> Any:  # a float32 header with a given shape text
        return raw(_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': "
                                    + shape + tail))

    return {
        "wrong-m": (save(np.zeros((3, m + 1), np.float32)), "m = 7"),
        "ndim-1": (save(np.zeros(m, np.float32)), "2-D"),
        "ndim-3": (save(np.zeros((2, m, 1), np.float32)), "2-D"),
        "int": (save(np.ones((3, m), np.int64)), "dtype int64"),
        "bool": (save(np.ones((3, m), bool)), "dtype bool"),
        "complex": (save(np.ones((3, m), np.complex64)), "complex"),
        "structured": (save(np.zeros((3, m), [("a", "<f4")])), "float array"),
        "nan": (save(np.where(np.eye(3, m) > 0, np.nan, 0).astype(np.float32)), "NaN"),
        "inf": (save(np.full((3, m), np.inf, np.float32)), "infinite"),
        "empty": (save(np.zeros((0, m), np.float32)), "empty"),
        "object": (save(np.array([[1.0] * m] * 2, dtype=object), allow_pickle=True),
                   "object array"),
        "not-npy": (raw(b"0.1,0.2,0.3\n"), "not a .npy"),
        "zero-bytes": (raw(b""), "not a .npy"),
        "truncated": (truncated, "truncated"),
        "huge-shape": (f4("(4611686018427387904, 4611686018427387904)"), "truncated"),
        "shape-2**64": (f4("(18446744073709551616,)"), "truncated"),  # OverflowError in np.load
        "shape-expr": (f4("(2**62, 2**62)"), "header"),
        "forged-size": (f4("(100000000, 7)"), "truncated"),  # np.load would allocate 2.8 GB
        "negative": (f4("(-2, 7)"), "negative"),
        "syntax": (f4("(2, 7)", ", "), "header"),  # tokenize error: unclosed brace
        "bad-string": (f4("(2, 7)", "} '''"), "header"),  # tokenize error: unclosed string
        "bad-descr": (raw(_npy_with_header("{'descr': 'zz', 'fortran_order': False, "
                                           "'shape': (2, 7), }")), "header"),
        "not-a-dict": (raw(_npy_with_header("[1, 2, 3]")), "header"),
        "header-only": (raw(b"\x93NUMPY\x01\x00\xff"), "header"),
        "missing": (None, "does not exist"),
    }


BAD_MEASUREMENTS = _bad_measurements()


def _assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qgen-reconstruct: error: "), err
    assert fragment in lines[0], err


@pytest.mark.parametrize("name", sorted(BAD_MEASUREMENTS))
def test_cli_bad_measurements_fail_cleanly(problem, tmp_path: Path, capsys, name: str) -> None:
    writer, fragment = BAD_MEASUREMENTS[name]
    y_path = tmp_path / "inputs" / "y.npy"
    y_path.parent.mkdir()
    if writer is not None:
        writer(y_path)
    work = tmp_path / "work"
    work.mkdir()
    code, _, err = _run(_args(problem, work / "rec", y=y_path), capsys)
    _assert_one_line_error(code, err, fragment)
    assert os.listdir(work) == []  # neither the output nor a staging folder


@pytest.mark.parametrize("case", ["shape", "count", "range", "int"])
def test_cli_bad_truth_fails_cleanly(problem, tmp_path: Path, capsys, case: str) -> None:
    x = problem["x"]
    bad = {"shape": x[:, :, :5], "count": x[:4], "range": x * 3,
           "int": (x > 0).astype(np.int8)}[case]
    np.save(tmp_path / "t.npy", bad)
    code, _, err = _run(_args(problem, tmp_path / "rec", "--truth", tmp_path / "t.npy"),
                        capsys)
    fragment = {"shape": "must have shape", "count": "4 images", "range": "[-1, 1]",
                "int": "dtype int8"}[case]
    _assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "rec").exists()


def test_cli_model_errors(problem, tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    work.mkdir()
    good = problem["qgen"].read_bytes()
    (tmp_path / "half.qgen").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.qgen").write_bytes(np.random.default_rng(0).bytes(4096))
    for model, fragment in [(tmp_path / "missing.qgen", "missing.qgen"),
                            (tmp_path / "half.qgen", "half.qgen"),
                            (tmp_path / "noise.qgen", "noise.qgen")]:
        args = _args(problem, work / "rec")
        args[1] = model
        code, _, err = _run(args, capsys)
        _assert_one_line_error(code, err, fragment)
    assert os.listdir(work) == []


@pytest.mark.parametrize("extra,fragment", [
    (["--sparsity", "0"], "sparsity"), (["--steps", "-1"], "steps"),
    (["--step-size", "-0.1"], "step size"), (["--restarts", "0"], "restarts"),
    (["--batch-size", "0"], "batch size"), (["--seed", "-3"], "seed"),
    (["--threads", "0"], "threads"), (["--device", "nonsense"], "device"),
    (["--backend", "fpga"], "invalid choice"),
    (["--backend", "reference", "--device", "cpu", "--cuda-graph"], "needs a CUDA device"),
    (["--backend", "reference", "--device", "cpu", "--precision", "fp16"], "needs a CUDA device"),
    (["--precision", "fp8"], "invalid choice"),
])
def test_cli_bad_flags(problem, tmp_path: Path, capsys, extra: list[str], fragment: str) -> None:
    code, _, err = _run(_args(problem, tmp_path / "rec", *extra), capsys)
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "rec").exists()


def test_cli_existing_output_needs_force(problem, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rec"
    out.mkdir()
    (out / "x_hat.npy").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    code, _, err = _run(_args(problem, out), capsys)
    _assert_one_line_error(code, err, "--force")
    assert (out / "x_hat.npy").read_bytes() == b"old"
    # --force replaces the outputs; files that are not outputs are the user's and stay
    code, _, err = _run(_args(problem, out, "--force"), capsys)
    assert code == 0, err
    assert np.load(out / "x_hat.npy").shape[0] == N_IMAGES
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["rec"]
    # a file where the folder should be is refused even with --force
    (tmp_path / "file").write_text("x")
    code, _, err = _run(_args(problem, tmp_path / "file", "--force"), capsys)
    _assert_one_line_error(code, err, "not a folder")
    # and a missing parent folder is an error, not a traceback
    code, _, err = _run(_args(problem, tmp_path / "no" / "rec"), capsys)
    _assert_one_line_error(code, err, "does not exist")


def _interrupt_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the solver raise KeyboardInterrupt on its ``n``-th call (1-based)."""
    calls = {"n": 0}

    def solver(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return reconstruct_latent(*args, **kwargs)

    monkeypatch.setattr(reconstruction, "reconstruct_latent", solver)


def test_ctrl_c_keeps_finished_batches(problem, tmp_path: Path, capsys, monkeypatch) -> None:
    full = qgen_infer.reconstruct(problem["model"], problem["y"], batch_size=3)
    _interrupt_on_call(monkeypatch, 2)
    out = tmp_path / "rec"
    code, _, err = _run(_args(problem, out, "--truth", problem["x_path"]), capsys)
    assert code == 130
    assert "interrupted" in err and "3 of 7" in err
    np.testing.assert_array_equal(np.load(out / "x_hat.npy"), full.x_hat[:3])
    np.testing.assert_array_equal(np.load(out / "z.npy"), full.z[:3])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    assert metrics["summary"]["images"] == 3 and metrics["summary"]["images_requested"] == 7
    assert len(metrics["per_image"]) == 3 and "psnr" in metrics["per_image"][0]
    assert (out / "grid.png").is_file()
    assert os.listdir(tmp_path) == ["rec"]


def test_ctrl_c_before_the_first_batch_leaves_nothing(problem, tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    _interrupt_on_call(monkeypatch, 1)
    code, _, err = _run(_args(problem, tmp_path / "rec"), capsys)
    assert code == 130 and "nothing written" in err
    assert os.listdir(tmp_path) == []
    # with --force on an existing folder, the folder is left exactly as it was
    old = tmp_path / "old"
    old.mkdir()
    (old / "x_hat.npy").write_bytes(b"previous run")
    (old / "notes.txt").write_text("mine")
    _interrupt_on_call(monkeypatch, 1)  # a fresh counter
    code, _, _ = _run(_args(problem, old, "--force"), capsys)
    assert code == 130
    assert sorted(os.listdir(old)) == ["notes.txt", "x_hat.npy"]
    assert (old / "x_hat.npy").read_bytes() == b"previous run"
    assert os.listdir(tmp_path) == ["old"]


def test_api_interrupt_carries_the_partial_result(problem, monkeypatch) -> None:
    _interrupt_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt) as info:
        qgen_infer.reconstruct(problem["model"], problem["y"], batch_size=3)
    partial = info.value.partial  # type: ignore[attr-defined]
    assert partial.done == 6 and len(partial.batch_seconds) == 2
    assert np.isnan(partial.loss[6:]).all() and np.isfinite(partial.loss[:6]).all()


def test_cli_help_explains(capsys) -> None:
    assert reconstruct_main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("Y.npy", "--out-dir", "--truth", "--backend", "--restarts", "--force",
                 "PACKED", "metrics.json", "Ctrl-C"):
        assert word in text
    assert reconstruct_main([]) == 2  # missing required flags: argparse's usage error
    assert "required" in capsys.readouterr().err


def test_console_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("qgen-reconstruct")
    if not exe.exists():
        pytest.skip("console script not installed")
    proc = subprocess.run([str(exe), "--model", tmp_path / "none.qgen", "--measurements",
                           tmp_path / "y.npy", "--out", tmp_path / "o"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("qgen-reconstruct: error:")
    assert "Traceback" not in proc.stderr
