"""``qgen-reconstruct``: recover images from measurements with a packed .qgen model."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgen_infer.cli.common import EXIT_INTERRUPTED, ArgumentParser, int_in, run_cli
from qgen_infer.errors import QgenError
from qgen_infer.limits import max_threads

DESCRIPTION = """\
Reconstruct images x from measurements y = A(x) by latent proximal gradient descent,
z <- P_s(z - beta grad_z ||y - A(G(z))||^2), keeping the s largest latent entries, through the
PACKED 1-4-bit generator of a .qgen file (forward and input-gradient run on the packed weights).
Writes DIR/x_hat.npy, DIR/z.npy, DIR/metrics.json (the input files, per-image measurement loss;
PSNR/SSIM with --truth; backend, bits, timings) and DIR/grid.png (the first 64 images, truth
beside reconstruction with --truth; its title and metrics.json say which).
Solver defaults are the ones the model was trained with (stored in the file).
"""

EPILOG = """\
examples:
  qgen-reconstruct models/mnist-m25-1bit.qgen y.npy --out-dir recon/
  qgen-reconstruct m.qgen y.npy --truth x.npy --restarts 4 --out-dir recon/
Ctrl-C keeps the batches already finished (readable files, metrics marked interrupted), exit 130.
Under torchrun the images are split across the processes, in shards kept in DIR/shards (a rerun
of the same command, without --force, skips the finished ones; Ctrl-C keeps them); the outputs
are the same:
  torchrun --nproc_per_node=2 $(which qgen-reconstruct) m.qgen y.npy --threads 1 \\
      --out-dir recon/
"""

OUTPUTS = ("x_hat.npy", "z.npy", "metrics.json", "grid.png")
GRID_IMAGES = 64  # grid.png shows the first GRID_IMAGES images


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-reconstruct", description=DESCRIPTION, epilog=EPILOG)
    p.add_input("model", metavar="MODEL.qgen", old_flag="--model",
                help="packed model file written by qgen-export")
    p.add_input("measurements", metavar="Y.npy", old_flag="--measurements",
                help="the measurements, a float array (N, m) written by qgen-measure")
    p.add_argument("-o", "--out-dir", dest="out", metavar="DIR", required=True,
                   help="folder to write the results to (must not exist, or --force)")
    p.rename("--out", "--out-dir")
    p.add_argument("--truth", metavar="X.npy", default=None,
                   help="the true images (N, C, H, W) in [-1, 1] (qgen-measure --truth-out): "
                        "adds PSNR/SSIM and the grid's truth column")
    p.add_argument("--backend", choices=("auto", "reference", "cpu", "triton"), default="auto",
                   help="auto: triton on a CUDA device, else the C++ cpu kernels, else "
                        "reference (plain torch on dequantized weights)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available for "
                   "triton, else cpu)")
    p.add_argument("-s", "--sparsity", type=int, default=None,
                   help="latent non-zeros s (default: as trained)")
    p.add_argument("-T", "--steps", type=int, default=None, help="proximal steps (default: as "
                   "trained)")
    p.add_argument("--step-size", type=float, default=None,
                   help="beta (default: the learned step size)")
    p.add_argument("--restarts", type=int, default=1,
                   help="random starts per image; the lowest measurement loss wins")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images solved together: speed and memory, not the result (each "
                   "image's random starts depend on --seed, --restarts and its index only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each solver step from a captured CUDA graph (same result, one "
                   "launch per step; default: on for a CUDA device)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="activations of the generator and sensing net; fp16/bf16 on a CUDA "
                        "device use its tensor cores (the latent and its update stay fp32); on "
                        "the CPU, bf16 runs the sensing net only in bf16 (AMX/AVX512-BF16 "
                        "CPUs; not exact). auto (default): fp32, except with the cpu backend "
                        "on an AVX-512 CPU with AMX or AVX512-BF16, where the sensing net runs "
                        "in bf16: 1.2-1.4x faster on the MNIST models, ~2x on a CIFAR-10 DCGAN "
                        "(less on short runs: ~20 ms per new batch shape to build the bf16 "
                        "kernels), and the mean PSNR within 0.01 dB of fp32 on both (measured: "
                        "bench/results/reconstruct-tiers.md). Most CPUs (no AMX/AVX512-BF16), "
                        "--backend reference and CUDA devices stay fp32; fp32 forces exact. "
                        "metrics.json and the last line say which ran")
    p.add_argument("--autotune", action="store_true",
                   help="time the Triton kernels' launch configs on first use and cache the "
                        "best (minutes of compiles; by default a fixed rule and the shipped "
                        "tables pick them: see qgen-tune)")
    p.add_argument("--threads", type=int_in(1, max_threads()), default=None,
                   help="CPU threads of torch and of the cpu backend's kernels (default: the "
                        "cores other processes leave idle, re-checked after every batch, and "
                        "from a minute on now and then one batch with a thread more, kept if "
                        "the other work yields; metrics.json lists the counts used)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_out(out: Path, force: bool) -> None:
    """Refuse an output folder that would lose data, before any work is done."""
    if out.exists():
        if not force:
            raise QgenError(f"output folder {str(out)!r} exists; pass --force to replace it")
        if not out.is_dir():
            raise QgenError(f"{str(out)!r} exists and is not a folder")
    elif not out.parent.is_dir():
        raise QgenError(f"folder {str(out.parent)!r} does not exist")


def _make_stage(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` (same file system, so moves are renames). Results
    are written there and moved into ``out`` only once complete: an error or a Ctrl-C never
    leaves ``out`` half-written, and an existing ``out`` stays as it was until then."""
    from qgen_infer.atomic import default_mode

    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}.", suffix=".partial",
                                      dir=out.parent))
        stage.chmod(default_mode(folder=True))  # it becomes the user's output folder
        return stage
    except OSError as exc:
        raise QgenError(f"cannot write in folder {str(out.parent)!r} ({exc.strerror})") from None


def _commit(stage: Path, out: Path) -> None:
    """Move the finished results from ``stage`` into ``out``.

    A new ``out`` is the stage folder renamed. With ``--force`` on an existing folder the
    previous outputs (``OUTPUTS``) are replaced and any other file in it is left alone: the
    folder may hold the user's own files, which a ``--force`` typo must not delete."""
    if not out.exists():
        os.replace(stage, out)
        return
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    for item in stage.iterdir():
        os.replace(item, out / item.name)
    stage.rmdir()


def _results_on_disk(stage: Path, n: int, image_shape: list[int], latent_dim: int) -> Any:
    """x_hat and z as ``.npy`` files in the staging folder, written batch by batch
    (:class:`~qgen_infer.npy_rows.NpyRowWriter`), so N images need disk, not memory."""
    from qgen_infer.npy_rows import NpyRowWriter
    from qgen_infer.reconstruction import Reconstruction

    return Reconstruction(x_hat=NpyRowWriter(stage / "x_hat.npy", (n, *image_shape)),
                          z=NpyRowWriter(stage / "z.npy", (n, latent_dim)),
                          loss=np.full(n, np.nan, np.float32))


def _image_scores(truth: np.ndarray, x_hat: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-image PSNR and SSIM (None for images under 7 pixels a side) of the first
    ``len(truth)`` rows of ``x_hat`` (an array or a row file), a chunk at a time so that scoring
    N images needs no N-sized temporaries."""
    import torch

    from qgen_infer.metrics import psnr, ssim

    chunk, ps, ss = 1024, [], []
    with_ssim = min(truth.shape[-2:]) >= 7
    for i in range(0, truth.shape[0], chunk):
        stop = min(i + chunk, truth.shape[0])
        t = torch.from_numpy(np.ascontiguousarray(truth[i:stop]))
        r = torch.from_numpy(np.ascontiguousarray(x_hat[i:stop]))
        ps.append(psnr(t, r).numpy())
        if with_ssim:
            ss.append(ssim(t, r).numpy())
    return np.concatenate(ps), np.concatenate(ss) if with_ssim else None


def _write_results(out: Path, model: Any, rec: Any, truth: np.ndarray | None,
                   settings: dict[str, Any], interrupted: bool,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from qgen_infer.arrays import save_npy_atomic, write_text_atomic
    from qgen_infer.npy_rows import NpyRowWriter
    from qgen_infer.visual import save_grid

    n = rec.done
    x_hat = rec.x_hat  # an array, or a row file in ``out`` (_results_on_disk) read in slices
    images: list[dict[str, float]] = [{"measurement_loss": float(v)} for v in rec.loss[:n]]
    summary: dict[str, Any] = {"images": n, "images_requested": int(rec.x_hat.shape[0]),
                               "mean_measurement_loss": float(rec.loss[:n].mean())
                               if n else None}
    if truth is not None and n:
        p, s = _image_scores(truth[:n], x_hat)  # before the files are finished
        for i in range(n):
            images[i]["psnr"] = float(p[i])
            if s is not None:
                images[i]["ssim"] = float(s[i])
        summary["psnr"] = float(p.mean())
        if s is not None:
            summary["ssim"] = float(s.mean())
    secs = rec.seconds
    labels = ["truth", "recon"] if truth is not None else ["recon"]
    shown = min(n, GRID_IMAGES)
    metrics = {
        "model": str(model.path), "bits": model.bits, "backend": model.backend.name,
        "device": str(model.device), "interrupted": interrupted, "settings": settings,
        "summary": summary,
        "timing": {"seconds": secs, "images_per_second": n / secs if secs > 0 else None,
                   "batch_seconds": rec.batch_seconds},
        "per_image": images,
        "grid": {"file": "grid.png", "images": f"the first {shown} of {n} (indices 0-{shown - 1})"
                 if n else "none", "columns": labels},
        **(extra or {}),
    }
    dispatch_report = getattr(model.backend, "dispatch_report", None)
    if dispatch_report is not None:  # the cpu backend: which path ran each layer's products
        metrics["dispatch"] = dispatch_report()
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    shown_x = x_hat[:min(n, GRID_IMAGES)]
    for name, arr in (("x_hat.npy", rec.x_hat), ("z.npy", rec.z)):
        if isinstance(arr, NpyRowWriter):
            arr.finish()  # written in place; an interrupted run's file is cut to its n rows
        else:
            save_npy_atomic(out / name, arr[:n])
    if n:
        cols = [truth[:GRID_IMAGES], shown_x] if truth is not None else [shown_x]
        save_grid(out / "grid.png", cols, labels=labels, count=GRID_IMAGES,
                  title=f"{model.bits}-bit {model.backend.name}: images 0-{shown - 1} of {n}")
    return metrics


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before the imports below (torch)
    args = build_parser().parse_args(argv)

    import torch

    from qgen_infer.arrays import load_measurements
    from qgen_infer.distributed import launched

    if args.threads is not None:
        if args.threads < 1:
            raise QgenError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.autotune:  # read by qgen_infer.kernels.configs at the first launch
        os.environ["QGEN_TRITON_AUTOTUNE"] = "1"
    out = Path(args.out)
    if launched():  # under torchrun: the images are split across its ranks
        from qgen_infer.cli.reconstruct_sharded import reconstruct_sharded_main

        return reconstruct_sharded_main(args, out)
    _check_out(out, args.force)
    monitor = None
    if args.threads is None:  # the cores other processes leave idle, measured over the load
        from qgen_infer.cpu_threads import PROBE_EVERY_S, IdleCoreMonitor

        # the probe tries a thread more than the idle cores suggest (niced work yields it), first
        # after PROBE_EVERY_S: a failed probe costs a batch, which a short run would not earn back
        monitor = IdleCoreMonitor(probe_every_s=PROBE_EVERY_S, probe_at_start=False)
    model, opts, settings = _setup(args, _device(args))
    _start_threads(args, model, settings, monitor)
    y = load_measurements(args.measurements, int(model.config["measurements"]))
    truth = _load_truth(args, model, y.shape[0])
    # Everything is validated; results go to a staging folder until they are complete.
    stage = _make_stage(out)
    try:
        return _run(args, model, y, truth, opts, settings, stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already after a commit


def _start_threads(args: argparse.Namespace, model: Any, settings: dict[str, Any],
                   monitor: Any) -> None:
    """Without --threads on the CPU: as many threads as the monitor found idle cores (the
    batches re-check, see _run); metrics.json records every count used."""
    import torch

    args.monitor = monitor if model.device.type == "cpu" else None
    if args.monitor is not None:
        args.monitor.follow()
    settings["threads"] = args.threads  # None: chosen from the idle cores, as threads_used says
    # the monitor's own record, which grows as the batches follow the load
    settings["threads_used"] = (args.monitor.used if args.monitor is not None
                                else [torch.get_num_threads()])


def _device(args: argparse.Namespace) -> str | None:
    import torch

    if args.device is None and args.backend in ("auto", "triton") and torch.cuda.is_available():
        return "cuda"
    return args.device


def _load_truth(args: argparse.Namespace, model: Any, images: int) -> np.ndarray | None:
    from qgen_infer.arrays import load_images_npy

    if not args.truth:
        return None
    truth = load_images_npy(args.truth, model.config["image_shape"], "truth images")
    if truth.shape[0] != images:
        raise QgenError(f"--truth has {truth.shape[0]} images but the measurements "
                        f"{str(args.measurements)!r} have {images} rows")
    return truth


def _setup(args: argparse.Namespace, device: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """The model on ``device`` and the validated solver options, with the settings
    metrics.json records."""
    from qgen_infer.engine import load
    from qgen_infer.reconstruction import check_precision, resolve_precision, solver_options

    model = load(args.model, backend=args.backend, device=device)
    opts = solver_options(model, sparsity=args.sparsity, steps=args.steps,
                          step_size=args.step_size, restarts=args.restarts,
                          batch_size=args.batch_size, seed=args.seed)
    settings = {k: getattr(opts, k) for k in ("latent_dim", "sparsity", "steps", "step_size",
                                             "project", "restarts", "batch_size", "seed")}
    # the files scored, so that a metrics.json says what it measured
    settings["inputs"] = {"measurements": str(args.measurements),
                          "truth": str(args.truth) if args.truth else None}
    if args.cuda_graph is None:
        args.cuda_graph = model.device.type == "cuda"
    if args.cuda_graph and model.device.type != "cuda":
        raise QgenError(f"--cuda-graph needs a CUDA device; the model is on {model.device}")
    settings["cuda_graph"] = args.cuda_graph
    check_precision(model, args.precision, "--precision")
    settings["precision_requested"] = args.precision
    args.precision = settings["precision"] = resolve_precision(model, args.precision)
    return model, opts, settings


def _run(args: argparse.Namespace, model: Any, y: np.ndarray, truth: np.ndarray | None,
         opts: Any, settings: dict[str, Any], stage: Path, out: Path) -> int:
    import tqdm

    from qgen_infer.reconstruction import reconstruct

    bar = None if args.quiet else tqdm.tqdm(total=y.shape[0], unit="img",
                                              desc=f"{model.backend.name} {model.bits}-bit")

    def on_batch(rec: Any, done: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)
        monitor = getattr(args, "monitor", None)
        if monitor is not None:  # follow the load: other processes start and stop
            monitor.follow()

    into = _results_on_disk(stage, y.shape[0], model.config["image_shape"], opts.latent_dim)
    try:
        rec = reconstruct(model, y, opts, on_batch=on_batch, cuda_graph=args.cuda_graph,
                          precision=args.precision, into=into)
    except KeyboardInterrupt as exc:
        if bar is not None:
            bar.close()
        partial = getattr(exc, "partial", None)
        if partial is not None and partial.done:
            _write_results(stage, model, partial, truth, settings, interrupted=True)
            _commit(stage, out)
            print(f"qgen-reconstruct: interrupted; {partial.done} of {y.shape[0]} images saved "
                  f"in {out}", file=sys.stderr)
        else:
            print("qgen-reconstruct: interrupted before the first batch finished; nothing "
                  "written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if bar is not None:
        bar.close()
    m = _write_results(stage, model, rec, truth, settings, interrupted=False)
    _commit(stage, out)
    print(_summary_line(m, model, out))
    return 0


def _summary_line(m: dict[str, Any], model: Any, out: Path) -> str:
    s = m["summary"]
    precision = m["settings"]["precision"]
    sensing = "" if precision == "fp32" else (
        f" (sensing net {precision})" if model.device.type == "cpu" else f" ({precision})")
    line = (f"qgen-reconstruct: {s['images']} images with {model.backend.name} {model.bits}-bit"
            f"{sensing} in {m['timing']['seconds']:.2f} s "
            f"({m['timing']['images_per_second']:.1f} img/s); "
            f"mean measurement loss {s['mean_measurement_loss']:.4g}")
    if "psnr" in s:
        line += f"; PSNR {s['psnr']:.2f} dB"
    if "ssim" in s:
        line += f", SSIM {s['ssim']:.4f}"
    return line + f" -> {out}"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-reconstruct", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
