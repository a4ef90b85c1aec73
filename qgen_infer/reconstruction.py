"""Reconstruction with a loaded ``.qgen`` model: batched latent proximal GD through the packed G.

``reconstruct(model, y)`` splits the measurements into batches and, per batch, runs
``z ← P_s(z − β ∇_z ‖y − A(G(z))‖²)`` from ``restarts`` random sparse starts
(:func:`qgen_infer.solve.reconstruct_latent`), where ``G`` is the model's packed generator (its
backward is the backend's transposed packed kernel) and ``A`` its sensing net (fp32; bf16 under
the default ``precision="auto"`` on AMX / AVX512-BF16 CPUs). Defaults come from the file's solver
metadata (the settings the model was trained with).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qgen_infer.engine.memory import FP32_BYTES, check_fits
from qgen_infer.errors import QgenError
from qgen_infer.limits import MAX_BATCH, MAX_RESTARTS, MAX_STEP_SIZE, MAX_STEPS
from qgen_infer.solve import reconstruct_latent, sample_latent

if TYPE_CHECKING:
    from qgen_infer.engine.loader import QgenModel

SEED_STRIDE = 1_000_003  # chunk seeds: seed * SEED_STRIDE + chunk (distinct for chunk < it)
START_CHUNK = 256  # images whose random starts are drawn together (see StartLatents)
# the largest seed whose chunk seeds stay below 2**63 for any N < SEED_STRIDE * START_CHUNK
MAX_SEED = (2**63 - 1) // SEED_STRIDE - SEED_STRIDE


@dataclass
class SolverOptions:
    """Resolved reconstruction settings (see :func:`solver_options`)."""

    latent_dim: int
    sparsity: int | None
    steps: int
    step_size: float
    project: bool
    restarts: int = 1
    batch_size: int = 256
    seed: int = 0


@dataclass
class Reconstruction:
    """``x_hat`` ``[N, C, H, W]`` in [-1, 1], ``z`` ``[N, d]``, per-image measurement ``loss``
    ``[N]``; ``batch_seconds``: wall time of each finished batch. After an interruption only the
    first ``done`` images are filled."""

    x_hat: np.ndarray
    z: np.ndarray
    loss: np.ndarray
    done: int = 0
    batch_seconds: list[float] = field(default_factory=list)
    precision: str = "fp32"  # what ran: "auto" resolved (resolve_precision)

    @property
    def seconds(self) -> float:
        return float(sum(self.batch_seconds))


def solver_options(model: Any, *, sparsity: int | None = None, steps: int | None = None,
                   step_size: float | None = None, restarts: int | None = None,
                   batch_size: int | None = None, seed: int | None = None,
                   project: bool | None = None) -> SolverOptions:
    """The file's solver defaults (and :class:`SolverOptions`' for ``restarts``, ``batch_size``
    and ``seed``), overridden by any argument that is not None; validated."""
    sv = model.solver
    latent = int(model.config["latent_dim"])
    s = sparsity if sparsity is not None else sv.get("sparsity")
    run = {k: int(v) for k, v in (("restarts", restarts), ("batch_size", batch_size),
                                  ("seed", seed)) if v is not None}
    opts = SolverOptions(
        latent_dim=latent,
        sparsity=None if s is None else int(s),
        steps=int(steps if steps is not None else sv.get("steps", 3)),
        step_size=float(step_size if step_size is not None else sv.get("step_size", 0.01)),
        project=bool(project if project is not None else sv.get("project", True)), **run)
    if opts.sparsity is not None and not 1 <= opts.sparsity <= latent:
        raise QgenError(f"sparsity must be between 1 and the latent dimension {latent}, "
                        f"got {opts.sparsity}")
    if not 1 <= opts.steps <= MAX_STEPS:
        raise QgenError(f"steps must be between 1 and {MAX_STEPS}, got {opts.steps}")
    if not (np.isfinite(opts.step_size) and 0 < opts.step_size <= MAX_STEP_SIZE):
        raise QgenError(f"step size must be a positive number up to {MAX_STEP_SIZE:g}, got "
                        f"{opts.step_size}")
    if not 1 <= opts.restarts <= MAX_RESTARTS:
        raise QgenError(f"restarts must be between 1 and {MAX_RESTARTS}, got {opts.restarts}")
    if not 1 <= opts.batch_size <= MAX_BATCH:
        raise QgenError(f"batch size must be between 1 and {MAX_BATCH}, got {opts.batch_size}")
    # Each chunk seeds torch.Generator with seed * SEED_STRIDE + chunk, which must fit its
    # 64-bit seed (a larger value is a RuntimeError deep inside torch).
    if not 0 <= opts.seed <= MAX_SEED:
        raise QgenError(f"seed must be between 0 and {MAX_SEED}, got {opts.seed}")
    return opts


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of the random starts of the images ``chunk * START_CHUNK`` onwards (one chunk)."""
    return seed * SEED_STRIDE + chunk


class StartLatents:
    """The random starts of a reconstruction, independent of how it is cut into batches.

    Image ``i``'s starts come from chunk ``c = i // START_CHUNK``, whose ``[restarts, START_CHUNK,
    d]`` block is one :func:`sample_latent` draw seeded by :func:`chunk_seed`. So an image's
    result depends on ``seed``, ``restarts`` and its index, never on ``batch_size`` or on the
    other images (a batch that straddles chunks draws both). Drawing whole chunks costs what the
    per-batch draws did at the default batch of 256.
    """

    def __init__(self, opts: SolverOptions, dtype: torch.dtype = torch.float32) -> None:
        self.opts, self.dtype = opts, dtype
        self._cache: dict[int, torch.Tensor] = {}

    def _chunk(self, c: int) -> torch.Tensor:
        if c not in self._cache:
            o = self.opts
            rng = torch.Generator().manual_seed(chunk_seed(o.seed, c))
            z = sample_latent(o.restarts * START_CHUNK, o.latent_dim, o.sparsity,
                              project=o.project, generator=rng, dtype=self.dtype)
            if len(self._cache) >= 2:  # batches walk forward: keep the current and next chunk
                self._cache.pop(min(self._cache))
            self._cache[c] = z.reshape(o.restarts, START_CHUNK, o.latent_dim)
        return self._cache[c]

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Starts of images ``[start, start + count)``: ``[restarts * count, d]``, restart-major
        (the layout :func:`qgen_infer.solve.reconstruct_latent` takes as ``z0``)."""
        parts, i = [], start
        while i < start + count:
            c, off = divmod(i, START_CHUNK)
            take = min(START_CHUNK - off, start + count - i)
            parts.append(self._chunk(c)[:, off:off + take])
            i += take
        return torch.cat(parts, dim=1).reshape(-1, self.opts.latent_dim)


def _measurements_tensor(y: np.ndarray | torch.Tensor, m: int) -> torch.Tensor:
    """``y`` as a float tensor ``[N, m]``; the checks the CLI makes on a file, for API callers."""
    if torch.is_tensor(y):
        y_t = y.detach()
    else:
        arr = np.asarray(y)
        if arr.dtype.kind != "f":  # no silent casts of ints, bools, complex or objects
            raise QgenError(f"measurements must be a real float array, got dtype {arr.dtype}")
        y_t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not y_t.is_floating_point():
        raise QgenError(f"measurements must be a real float tensor, got dtype {y_t.dtype}")
    if y_t.ndim != 2 or y_t.shape[1] != m:
        raise QgenError(f"measurements must have shape (N, {m}), got {tuple(y_t.shape)}")
    if not bool(torch.isfinite(y_t).all()):
        raise QgenError("measurements contain NaN or infinite values")
    return y_t


def _check_memory(model: Any, n: int, opts: SolverOptions, results_in_memory: bool) -> None:
    """Refuse, before anything is allocated, a reconstruction whose batch (images x restarts
    latent rows), random starts (two chunks) or result arrays (unless the caller provides them)
    exceed the machine's memory."""
    plan = getattr(model, "memory", None)
    if plan is None:  # a model assembled by hand, not by qgen_infer.load
        return
    fp32 = FP32_BYTES
    rows = min(n, opts.batch_size) * opts.restarts
    starts = 2 * opts.restarts * START_CHUNK * opts.latent_dim * fp32
    results = n * (math.prod(model.config["image_shape"]) + opts.latent_dim + 1) * fp32 \
        if results_in_memory else 0
    hint = "use a smaller batch size or fewer restarts" + (
        ", or pass result arrays (into=) that live on disk" if results_in_memory else "")
    cpu = torch.device("cpu")
    if model.device.type == "cuda":
        check_fits(plan.need(rows), model.device, f"a batch of {rows} latent rows", hint)
        check_fits(starts + results, cpu, f"{n} results and the random starts", hint)
    else:
        check_fits(plan.need(rows) + starts + results, cpu,
                   f"{n} images with a batch of {rows} latent rows", hint)


def _check_finite(start: int, *arrays: np.ndarray) -> None:
    """Results are finite or an error: weights or a step size that overflow float32 must not
    end as NaN images with a success."""
    for arr in arrays:
        bad = ~np.isfinite(arr)
        if bad.any():
            row = start + int(np.argwhere(bad)[0][0])
            raise QgenError(f"the reconstruction of image {row} produced NaN or infinite "
                            f"values (the model's weights or the step size overflow float32); "
                            f"try a smaller step size")


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles or AVX512-BF16), where
    torch's bf16 products beat fp32; elsewhere they are emulated, slower than fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)()
               for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


PRECISION_CHOICES = ("auto", *PRECISIONS)


def auto_sensing_bf16(model: Any) -> bool:
    """What ``precision="auto"`` runs the sensing net in on this model: bf16 on the ``cpu``
    backend's AVX-512 tier of a CPU with bf16 matrix hardware, where it cut a 1-bit MNIST solve
    by a quarter and moved the mean PSNR of the 1,000 MNIST eval images by at most 0.0073 dB at
    any width, and a CIFAR-10 DCGAN's by 0.0008 dB (bench/results/reconstruct-tiers.md). Never
    on ``reference`` (the plain fp32 oracle), on CUDA (fp32 unless asked), or on a lower forced
    tier (``QGEN_CPU_ISA=avx2`` stands in for a CPU without AVX-512, hence without bf16
    hardware)."""
    backend = model.backend
    return (model.device.type == "cpu" and backend.name == "cpu"
            and getattr(backend, "isa", None) == "avx512" and cpu_has_bf16_matmul())


def resolve_precision(model: Any, precision: str) -> str:
    """``precision`` with ``"auto"`` replaced by what it runs on ``model``: ``"bf16"`` where
    :func:`auto_sensing_bf16` holds, else ``"fp32"``."""
    if precision != "auto":
        return precision
    return "bf16" if auto_sensing_bf16(model) else "fp32"


def check_precision(model: Any, precision: str, name: str = "precision") -> None:
    """Refuse a ``precision`` (resolved, or ``"auto"``) that ``model`` cannot run, in one line
    naming the option as ``name`` (the CLIs pass their flag)."""
    if precision == "auto":
        return
    if precision not in PRECISIONS:
        raise QgenError(f"{name} must be one of {', '.join(PRECISION_CHOICES)}, got "
                        f"{precision!r}")
    on_cpu = model.device.type == "cpu"
    if precision != "fp32" and model.device.type != "cuda" and not (on_cpu
                                                                   and precision == "bf16"):
        raise QgenError(f"{name} {precision} needs a CUDA device; the model is on "
                        f"{model.device} (on the CPU: bf16, for the sensing net only)")
    if precision == "bf16" and on_cpu and not cpu_has_bf16_matmul():
        raise QgenError(f"{name} bf16 on the CPU needs AMX or AVX512-BF16, which this CPU "
                        "lacks (its bf16 products would be emulated, slower than fp32)")


def _networks(model: Any, precision: str) -> tuple[Callable, Callable]:
    """``(G, A)`` running on ``precision`` activations. fp16/bf16 on CUDA cast the latent into G
    and G's image into a copy of A in that dtype, and return A's measurements in fp32: the loss,
    the gradient's last step and the update stay fp32. bf16 on the CPU casts A only (the packed
    G kernels compute in fp32), for CPUs with bf16 matrix hardware (AMX: ~5x fp32 on A's
    products). The wrappers are kept on the model, so repeated calls find the graphs captured
    for them."""
    check_precision(model, precision)
    if precision == "fp32":
        return model.generator, model.sensing
    on_cpu = model.device.type == "cpu"
    cache = model.__dict__.setdefault("_low_precision", {})
    key = (id(model.generator), id(model.sensing), precision)
    if key not in cache:
        dtype, gen = PRECISIONS[precision], model.generator
        sensing = copy.deepcopy(model.sensing).to(dtype)
        g_net = gen if on_cpu else lambda z: gen(z.to(dtype))
        cache[key] = (g_net, lambda x: sensing(x.to(dtype)).float(), sensing)
    return cache[key][:2]


def _low_precision_sensing(model: Any, precision: str) -> Any:
    """The copy of the sensing net in ``precision`` that :func:`_networks` made (and keeps)."""
    _networks(model, precision)
    return model.__dict__["_low_precision"][(id(model.generator), id(model.sensing),
                                             precision)][2]


def _graph_solver(model: Any, generator: Callable, sensing: Callable,
                  opts: SolverOptions) -> Any:
    """The model's CUDA-graph solver for these networks and settings, kept on the model so that
    later calls replay the graphs captured by earlier ones (a capture is 3 eager warm-up steps,
    ~ms each). Keyed by the networks' identities: a shallow copy of the model with another
    generator or sensing net shares the dict but never an entry."""
    from qgen_infer.solve.cuda_graph import CudaGraphSolver

    solvers = model.__dict__.setdefault("_graph_solvers", {})
    key = (id(generator), id(sensing), opts.step_size, opts.sparsity, opts.project)
    if key not in solvers:  # the solver holds both networks: their ids stay theirs
        solvers[key] = CudaGraphSolver(generator, sensing, step_size=opts.step_size,
                                       sparsity=opts.sparsity, project=opts.project)
    return solvers[key]


def _fused_solver(model: Any, opts: SolverOptions, precision: str, cuda_graph: bool,
                  rows: int) -> Any:
    """The model's fused-step solver for these settings, kept on the model like the graphs."""
    from qgen_infer.engine.fused_step import FusedStepSolver

    solvers = model.__dict__.setdefault("_fused_solvers", {})
    key = (opts.step_size, opts.sparsity, opts.project, precision, cuda_graph, rows)
    if key not in solvers:
        solvers[key] = FusedStepSolver(model, step_size=opts.step_size, sparsity=opts.sparsity,
                                       project=opts.project, precision=precision,
                                       cuda_graph=cuda_graph, rows_per_program=rows)
    return solvers[key]


def _cpu_mlp_supported(model: Any) -> bool:
    from qgen_infer.engine.cpu_mlp_step import CpuMlpSolver

    return CpuMlpSolver.supports(model)


def _cpu_mlp_solver(model: Any, opts: SolverOptions, precision: str) -> Any:
    """The cpu backend's autograd-free MLP step (:mod:`qgen_infer.engine.cpu_mlp_step`: the
    same operations as the eager solver, bit for bit, without autograd's bookkeeping), with
    the sensing net in ``precision``."""
    from qgen_infer.engine.cpu_mlp_step import CpuMlpSolver

    sensing = None if precision == "fp32" else _low_precision_sensing(model, precision)
    return CpuMlpSolver(model, step_size=opts.step_size, sparsity=opts.sparsity,
                        project=opts.project, sensing=sensing)


def reconstruct(model: QgenModel, y: np.ndarray | torch.Tensor,
                options: SolverOptions | None = None, *, steps: int | None = None,
                restarts: int | None = None, sparsity: int | None = None,
                step_size: float | None = None, batch_size: int | None = None,
                seed: int | None = None, project: bool | None = None,
                cuda_graph: bool | None = None, precision: str = "auto",
                on_batch: Callable[[Reconstruction, int], None] | None = None,
                first_index: int = 0, into: Reconstruction | None = None,
                fused_step: bool | int = False) -> Reconstruction:
    """Recover images from measurements ``y`` ``[N, m]`` (an array or a tensor, e.g. from
    :func:`qgen_infer.measure`) with a model from :func:`qgen_infer.load`, by latent proximal
    gradient descent through its packed generator:
    ``z <- P_s(z - step_size * grad_z ||y - A(G(z))||^2)``.

    Solver settings; None takes the default named, which for the first four is the value stored
    in the file (the one the model was trained with), as in ``qgen-reconstruct``:

    * ``steps``: proximal steps T; ``sparsity``: latent non-zeros s kept by the hard threshold;
      ``step_size``: beta (the learned one); ``project``: z projected to the unit sphere.
    * ``restarts`` (default 1): random starts per image; the lowest measurement loss wins.
    * ``batch_size`` (default 256): images solved together; speed and memory, not the result.
    * ``seed`` (default 0): an image's random starts depend on ``seed``, ``restarts`` and its
      index only (:class:`StartLatents`), never on ``batch_size`` or the other images (beyond
      float rounding of differently-sized products).
    * ``options``: a :class:`SolverOptions` from :func:`solver_options` instead of the seven
      solver keywords above (passing both is an error).

    ``cuda_graph`` (default: on when the model is on a CUDA device) replays each solver step
    from a captured CUDA graph (:mod:`qgen_infer.solve.cuda_graph`); same result, no per-step
    launches. ``precision``: ``"fp32"``, or ``"fp16"`` / ``"bf16"`` activations for the networks
    on a CUDA device (tensor cores; the latent, loss and update stay fp32); on the CPU,
    ``"bf16"`` runs the sensing net only in bf16 (AMX or AVX512-BF16 CPUs; it moves the result:
    bench/results/reconstruct-tiers.md). ``"auto"`` (default): fp32, except on the ``cpu``
    backend's AVX-512 tier of a CPU with AMX or AVX512-BF16, where the sensing net runs in bf16
    (:func:`auto_sensing_bf16`); the result's ``precision`` says which ran.
    ``on_batch(result, done)`` is called after each batch (progress bars, partial saves).
    ``first_index``: the index of ``y``'s first row in a larger set that is solved in parts
    (a shard of :mod:`qgen_infer.distributed`): row ``i`` gets image ``first_index + i``'s starts.
    ``into``: result arrays to fill instead of new ones, e.g. ``.npy`` files memory-mapped with
    ``numpy.lib.format.open_memmap``, so that the results of a large ``y`` need no memory.
    ``fused_step``: run each step as one Triton kernel (MLP models on the triton backend;
    :mod:`qgen_infer.engine.fused_step`), 16 batch rows per program, or as many as an int
    says; off by default until GPU timing decides.

    Returns a :class:`Reconstruction` (``x_hat`` ``[N, C, H, W]`` in [-1, 1], ``z``, per-image
    measurement ``loss``, ``seconds``). On KeyboardInterrupt the partial result is attached to
    the exception as ``.partial``.
    """
    given = {k: v for k, v in (("steps", steps), ("restarts", restarts), ("sparsity", sparsity),
                               ("step_size", step_size), ("batch_size", batch_size),
                               ("seed", seed), ("project", project)) if v is not None}
    if options is not None and given:
        raise QgenError(f"pass either options or solver keywords, not both "
                        f"(got {', '.join(sorted(given))})")
    opts = options or solver_options(model, **given)
    y_t = _measurements_tensor(y, int(model.config["measurements"]))
    n = y_t.shape[0]
    shape = tuple(model.config["image_shape"])
    _check_memory(model, n, opts, results_in_memory=into is None)
    out = into if into is not None else Reconstruction(
        x_hat=np.zeros((n, *shape), np.float32), z=np.zeros((n, opts.latent_dim), np.float32),
        loss=np.full(n, np.nan, np.float32))
    expected = {"x_hat": (n, *shape), "z": (n, opts.latent_dim), "loss": (n,)}
    for name, want in expected.items():
        if tuple(getattr(out, name).shape) != want:
            raise QgenError(f"into.{name} has shape {tuple(getattr(out, name).shape)}, "
                            f"expected {want}")
    dev = model.device
    precision = out.precision = resolve_precision(model, precision)
    generator, sensing = _networks(model, precision)
    if cuda_graph is None:
        cuda_graph = dev.type == "cuda"
    graphed = None
    if cuda_graph and dev.type != "cuda":
        raise QgenError(f"CUDA graphs need the model on a CUDA device, not {dev}")
    if fused_step:
        rows = 16 if fused_step is True else int(fused_step)
        graphed = _fused_solver(model, opts, precision, cuda_graph, rows)
    elif cuda_graph:
        graphed = _graph_solver(model, generator, sensing, opts)
    elif precision in ("fp32", "bf16") and dev.type == "cpu" and _cpu_mlp_supported(model):
        graphed = _cpu_mlp_solver(model, opts, precision)
    starts = StartLatents(opts)
    try:
        for start in range(0, n, opts.batch_size):
            yb = y_t[start:start + opts.batch_size].to(dev, torch.float32)
            t0 = time.perf_counter()
            res = reconstruct_latent(
                yb, generator, sensing, latent_dim=opts.latent_dim, steps=opts.steps,
                step_size=opts.step_size, sparsity=opts.sparsity, project=opts.project,
                restarts=opts.restarts, graphed=graphed,
                z0=starts.rows(first_index + start, yb.shape[0]))
            x_hat, z, loss = (t.detach().float().cpu().numpy() for t in (res.x, res.z, res.loss))
            _check_finite(start, x_hat, z, loss)
            out.batch_seconds.append(time.perf_counter() - t0)
            end = start + yb.shape[0]
            out.x_hat[start:end], out.z[start:end], out.loss[start:end] = x_hat, z, loss
            out.done = end
            if on_batch is not None:
                on_batch(out, end)
    except KeyboardInterrupt as exc:
        exc.partial = out  # type: ignore[attr-defined]
        raise
    return out
