"""Launch configs for every packed kernel: one selector, one JSON tuning cache, one autotuner.

Selection for a call (``select``), in order:

1. under ``TRITON_INTERPRET=1``: one fixed small config per path (autotuning the interpreter is
   pointless and slow);
2. a tuned entry for the key ``(device, op, bits, dtype, m_bucket, n, k)`` from the tables, looked
   up under the device's name (``NVIDIA H200``: the user's own tuning) and then under its
   architecture (``sm_90``: the tables shipped in ``kernels/tuned/``);
3. on a miss, only when autotuning was asked for (``QGEN_TRITON_AUTOTUNE=1``, which
   ``qgen-tune`` and ``--autotune`` set) and the stream is not being captured into a CUDA graph:
   time the candidates with ``triton.testing.do_bench``, keep the fastest and write it to the
   user cache;
4. otherwise (the default) the deterministic rule :func:`heuristic_ladder`: its first entry, or
   the next one down when a tile does not fit in shared memory (one compile per key).

By default nothing is timed at run time: a run compiles exactly the kernels it launches, once
each. Cache files (read lazily on the first GPU call, never at import): every
``kernels/tuned/*.json`` shipped with the package, then the user file ``$QGEN_TRITON_CONFIGS``
(default ``~/.cache/qgen_infer/triton-configs.json``), whose entries win. Format::

    {"format": "qgen-triton-configs", "version": 1,
     "entries": [{"device": "NVIDIA H100 80GB HBM3", "op": "gemm", "bits": 4, "dtype": "float16",
                  "m_bucket": 16, "n": 4096, "k": 4096, "time_us": 11.2,
                  "config": {"path": "dot", "block_m": 16, "block_n": 64, "block_k": 128,
                             "split": 4, "num_warps": 4, "num_stages": 3}}]}

``device`` is a name as ``torch.cuda.get_device_name`` gives it or an architecture ``sm_XY``;
``n`` is always the weight's N (output width of ``gemm``, reduction length of ``gemm_t``) and
``k`` its K; ``m_bucket`` is M rounded up to a power of two (capped at 8192); ``time_us`` is the
measured time or null, and an optional ``source`` says where the entry comes from.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PATHS = ("dot", "gemv")
OPS = ("gemm", "gemm_t")
FORMAT = "qgen-triton-configs"
VERSION = 1
_TUNED_DIR = Path(__file__).with_name("tuned")


@dataclass(frozen=True)
class KernelConfig:
    """How one product is launched.

    ``path``: ``dot`` (tensor-core ``tl.dot`` tiles) or ``gemv`` (one activation row per program,
    FMA + ``tl.sum``: no padding of M to 16). ``block_n``/``block_k`` tile the weight's N and K
    axes whatever the op (for ``gemm`` N is the output axis, for ``gemm_t`` the reduction axis).
    ``split``: number of slices of the reduction axis (split-K for ``gemm``, split-N for
    ``gemm_t``); > 1 writes fp32 partials that ``splitk`` reduces.
    ``word_decode``: load each packed word once and split it into its codes in registers
    (``common.load_code_tile``; needs ``block_k >= 32``) instead of one load per code
    (``common.load_codes``). Which is faster is the GPU's call: the autotuner times both.
    """

    path: str
    block_m: int
    block_n: int
    block_k: int
    split: int = 1
    num_warps: int = 4
    num_stages: int = 2
    word_decode: bool = False

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.split < 1:
            raise ValueError(f"split must be >= 1, got {self.split}")
        if self.word_decode and self.block_k < 32:
            raise ValueError(f"word_decode needs block_k >= 32 (whole words per column at "
                             f"every width), got {self.block_k}")

    @classmethod
    def from_dict(cls, d: dict) -> KernelConfig:
        return cls(**{f: d[f] for f in cls.__dataclass_fields__ if f in d})


@dataclass(frozen=True)
class TuneKey:
    device: str
    op: str
    bits: int
    dtype: str
    m_bucket: int
    n: int
    k: int


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (read at call time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def bucket_m(m: int) -> int:
    """M rounded up to a power of two, capped at 8192: the batch axis of the cache key."""
    return min(1 << max(m - 1, 0).bit_length(), 8192)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- fixed, candidate and heuristic configs ------

def interpreter_config(m: int) -> KernelConfig:
    """The interpreter's config: GEMV for tiny M, one small tensor-core tile otherwise."""
    if m <= 4:
        return KernelConfig("gemv", 1, 32, 32)
    return KernelConfig("dot", 16, 32, 32)


def candidates(m: int, out_dim: int, red_dim: int, op: str,
               sms: int | None = None) -> list[KernelConfig]:
    """GPU autotuning candidates for an ``[m, red_dim] -> [m, out_dim]`` product (a short list:
    each one is a compile), each with both decodes where its K tile allows word decoding."""
    base = _base_candidates(m)
    if m > 16:  # small-tile, split-reduction launches that fill the SMs (one wave)
        sms = sms or sm_count()
        for bm, b_out, b_red, warps, stages in _FILL_TILES:
            cfg = _tile(op, bm, b_out, b_red, 1, warps, stages)
            split = fill_split(cfg, m, out_dim, red_dim, op, sms)
            if split > 1 and (fill := replace(cfg, split=split)) not in base:
                base.append(fill)
    return base + [replace(c, word_decode=True) for c in base if c.block_k >= 32]


def _base_candidates(m: int) -> list[KernelConfig]:
    if m <= 16:
        out = [KernelConfig("dot", 16, 64, 128, s, 4, 3) for s in (1, 4, 8)]
        out += [KernelConfig("dot", 16, 128, 64, 4, 4, 3)]
        if m <= 4:
            out += [KernelConfig("gemv", 1, 64, 128, s, 4, 2) for s in (1, 4, 8)]
            out += [KernelConfig("gemv", 1, 128, 64, 2, 4, 2)]
        return out
    if m <= 64:
        return [KernelConfig("dot", 32, 64, 128, 1, 4, 3),
                KernelConfig("dot", 64, 64, 64, 1, 4, 4),
                KernelConfig("dot", 64, 128, 64, 1, 4, 3),
                KernelConfig("dot", 32, 64, 128, 4, 4, 3)]
    return [KernelConfig("dot", 64, 128, 64, 1, 4, 3), KernelConfig("dot", 128, 64, 64, 1, 4, 4),
            KernelConfig("dot", 128, 128, 64, 1, 8, 3), KernelConfig("dot", 128, 256, 64, 1, 8, 3),
            KernelConfig("dot", 64, 64, 64, 1, 4, 4), KernelConfig("dot", 64, 64, 32, 1, 4, 3)]


# Tiles for M > 16, largest first, as (block_m, output block, reduction block, warps, stages).
# The MNIST layers (M = 256, 500-784 wide) make 8-32 programs of a 64-128 tile on a 132-SM GPU,
# each walking the whole reduction: latency-bound (23-55 µs against cuBLAS's 5-7 µs on an H200,
# gpu-kernels.md). Smaller tiles and split reductions give every SM work.
_FILL_TILES = ((64, 64, 64, 4, 4), (32, 64, 64, 4, 3), (32, 32, 64, 4, 2))
# Fallbacks when a tile does not fit in shared memory, in decreasing (rows + columns) x depth.
_SMALLER_TILES = ((64, 64, 32, 4, 3), (32, 32, 32, 4, 2), (16, 32, 32, 4, 2))
DEFAULT_SMS = 132  # H100 / H200 SXM


def sm_count() -> int:
    """Streaming multiprocessors of the current CUDA device (``DEFAULT_SMS`` without one)."""
    return _sm_count(torch.cuda.current_device()) if torch.cuda.is_available() else DEFAULT_SMS


@functools.cache
def _sm_count(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def _tile(op: str, bm: int, b_out: int, b_red: int, split: int, warps: int, stages: int,
          path: str = "dot") -> KernelConfig:
    """A config from output / reduction blocks: ``block_n`` tiles N and ``block_k`` tiles K
    whatever the op, so for ``gemm_t`` (output K, reduction N) they swap."""
    n_blk, k_blk = (b_out, b_red) if op == "gemm" else (b_red, b_out)
    return KernelConfig(path, bm, n_blk, k_blk, split, warps, stages)


def programs(cfg: KernelConfig, m: int, out_dim: int, op: str) -> int:
    """Programs one slice of the reduction launches (the grid without its split axis)."""
    b_out = cfg.block_n if op == "gemm" else cfg.block_k
    rows = m if cfg.path == "gemv" else -(-m // cfg.block_m)
    return rows * -(-out_dim // b_out)


def fill_split(cfg: KernelConfig, m: int, out_dim: int, red_dim: int, op: str,
               target: int) -> int:
    """Slices of the reduction that bring the launch to about ``target`` programs, at most 16
    and keeping two reduction blocks per slice (one block per program would leave the
    software pipeline nothing to overlap)."""
    b_red = cfg.block_k if op == "gemm" else cfg.block_n
    red_blocks = -(-red_dim // b_red)
    want = -(-target // programs(cfg, m, out_dim, op))
    return max(1, min(16, want, red_blocks // 2))


def heuristic_ladder(m: int, out_dim: int, red_dim: int, op: str,
                     sms: int | None = None, act_bytes: int = 2) -> list[KernelConfig]:
    """Untuned GPU defaults, best first: a pure function of its arguments (``select`` passes M
    rounded up to its bucket, so every batch of a bucket shares one compiled kernel). For
    M > 16 the largest tile that fills three quarters of the SMs on its own, else the smallest
    with a split reduction that fills one wave; for M <= 16 a 16-row (or GEMV) tile split to
    fill ~2 waves. The 128x128 tile is offered to 2-byte activations only: with fp32 ones
    (``act_bytes`` 4) it asked an H200 for 296 KB of shared memory of 227 (2026-11-30,
    ``bench/results/gpu-kernels.md``). The later entries need less shared memory still (3-bit
    words have two planes), and the first entry that launches is kept (``select``).

    Every entry decodes whole words (``word_decode``): compiled for sm_90, a 64x64x64 1-bit tile
    has 10 async-copy instructions instead of 134 and needs 18 KB of shared memory instead of
    64 KB (``bench/kernel_resources.py``)."""
    sms = sms or sm_count()
    if m > 16:
        tiles = [(128, 128, 64, 8, 3)] if m >= 128 and act_bytes <= 2 else []
        tiles += list(_FILL_TILES)
        first = next((t for t in tiles
                      if programs(_tile(op, *t[:3], 1, *t[3:]), m, out_dim, op) * 4 >= sms * 3),
                     None)
        if first is None:
            small = _tile(op, *_FILL_TILES[-1][:3], 1, *_FILL_TILES[-1][3:])
            head = replace(small, split=fill_split(small, m, out_dim, red_dim, op, sms))
        else:
            head = _tile(op, *first[:3], 1, *first[3:])
        b_out, b_red = (head.block_n, head.block_k) if op == "gemm" else (head.block_k,
                                                                          head.block_n)
        ladder = [head] + [_tile(op, *t[:3], head.split, *t[3:]) for t in _SMALLER_TILES
                           if (t[0] + t[1]) * t[2] < (head.block_m + b_out) * b_red]
    else:
        path, bm, b_out, b_red = ("gemv", 1, 64, 128) if m <= 4 else ("dot", 16, 64, 128)
        tiles = -(-out_dim // b_out) * (m if path == "gemv" else 1)
        split = max(1, min(16, -(-2 * sms // tiles), -(-red_dim // b_red)))
        stages = 3 if path == "dot" else 2
        ladder = [_tile(op, bm, b_out, b_red, split, 4, stages, path),
                  _tile(op, bm, b_out // 2, b_red // 2, split, 4, stages, path),
                  _tile(op, bm, 32, 32, split, 4, 2, path)]
    return [replace(c, word_decode=c.block_k >= 32) for c in ladder]


def heuristic(m: int, out_dim: int, red_dim: int, op: str, act_bytes: int = 2) -> KernelConfig:
    """The first (largest) entry of :func:`heuristic_ladder`."""
    return heuristic_ladder(m, out_dim, red_dim, op, act_bytes=act_bytes)[0]


# --- the cache ------

_lock = threading.Lock()
_cache: dict[TuneKey, KernelConfig] | None = None
_fallbacks: dict[TuneKey, KernelConfig] = {}  # untuned keys -> the ladder entry that launched


def user_cache_path() -> Path:
    env = os.environ.get("QGEN_TRITON_CONFIGS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "qgen_infer" / "triton-configs.json"


def _read_entries(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable Triton config cache %s: %s", path, e)
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        log.warning("ignoring Triton config cache %s: not %s version %d", path, FORMAT, VERSION)
        return []
    return list(data.get("entries", []))


def _entry_key(e: dict) -> TuneKey:
    return TuneKey(str(e["device"]), str(e["op"]), int(e["bits"]), str(e["dtype"]),
                   int(e["m_bucket"]), int(e["n"]), int(e["k"]))


def parse_entry(e: object) -> tuple[TuneKey, KernelConfig]:
    """One table entry checked field by field; ValueError naming the bad field otherwise."""
    if not isinstance(e, dict):
        raise ValueError(f"an entry must be an object, got {type(e).__name__}")
    missing = [f for f in (*TuneKey.__dataclass_fields__, "config") if f not in e]
    if missing:
        raise ValueError(f"entry lacks {', '.join(missing)}")
    for f in ("bits", "m_bucket", "n", "k"):
        if isinstance(e[f], bool) or not isinstance(e[f], int) or e[f] < 1:
            raise ValueError(f"{f} must be a positive integer, got {e[f]!r}")
    key = _entry_key(e)
    if key.op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {key.op!r}")
    if key.bits not in (1, 2, 3, 4):
        raise ValueError(f"bits must be 1..4, got {key.bits}")
    if key.dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {key.dtype!r}")
    if bucket_m(key.m_bucket) != key.m_bucket:
        raise ValueError(f"m_bucket must be a power of two <= 8192, got {key.m_bucket}")
    if e.get("time_us") is not None and not isinstance(e["time_us"], (int, float)):
        raise ValueError(f"time_us must be a number or null, got {e['time_us']!r}")
    cfg = e["config"]
    if not isinstance(cfg, dict) or set(cfg) - set(KernelConfig.__dataclass_fields__):
        raise ValueError(f"config must be an object with fields of KernelConfig, got {cfg!r}")
    try:
        config = KernelConfig.from_dict(cfg)
    except TypeError as err:  # a missing required field
        raise ValueError(f"config {cfg!r}: {err}") from None
    for f in ("split", "num_warps", "num_stages"):
        v = getattr(config, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"config {f} must be a positive integer, got {v!r}")
    if config.path == "gemv" and config.block_m != 1:
        raise ValueError(f"a gemv config has block_m 1, got {config.block_m}")
    return key, config


def read_table(path: Path) -> dict[TuneKey, KernelConfig]:
    """Every entry of a config file, strictly: ValueError on any malformed entry (the shipped
    tables are held to this by the tests; at run time ``_loaded`` skips bad entries instead)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} version {VERSION} file")
    if not isinstance(data.get("entries"), list):
        raise ValueError(f"{path}: 'entries' must be a list")
    table: dict[TuneKey, KernelConfig] = {}
    for i, e in enumerate(data["entries"]):
        try:
            key, cfg = parse_entry(e)
        except ValueError as err:
            raise ValueError(f"{path}: entry {i}: {err}") from None
        if key in table:
            raise ValueError(f"{path}: entry {i} repeats the key {key}")
        table[key] = cfg
    return table


def shipped_tables() -> list[Path]:
    """The config tables that ship inside the package (``kernels/tuned/*.json``)."""
    return sorted(_TUNED_DIR.glob("*.json"))


def _loaded() -> dict[TuneKey, KernelConfig]:
    global _cache
    with _lock:
        if _cache is None:
            files = shipped_tables() + [user_cache_path()]
            cache: dict[TuneKey, KernelConfig] = {}
            for f in files:
                for e in _read_entries(f):
                    try:
                        key, cfg = parse_entry(e)
                    except ValueError as err:
                        log.warning("skipping bad entry in %s: %s", f, err)
                        continue
                    cache[key] = cfg
            _cache = cache
        return _cache


def reset_cache() -> None:
    """Forget what was read (tests; or after editing a cache file)."""
    global _cache
    with _lock:
        _cache = None
        _fallbacks.clear()


def lookup(key: TuneKey) -> KernelConfig | None:
    return _loaded().get(key)


def store(key: TuneKey, config: KernelConfig, time_us: float) -> None:
    """Remember ``config`` for ``key`` and rewrite the user cache file (atomically)."""
    _loaded()[key] = config
    path = user_cache_path()
    with _lock:
        entries = [e for e in _read_entries(path) if _entry_key(e) != key]
        entries.append({**asdict(key), "time_us": round(time_us, 3), "config": asdict(config)})
        entries.sort(key=lambda e: (e["device"], e["op"], e["bits"], e["dtype"], e["n"], e["k"],
                                    e["m_bucket"]))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "entries": entries},
                                      indent=1) + "\n")
            tmp.replace(path)
        except OSError as e:
            log.warning("could not write Triton config cache %s: %s", path, e)


AUTOTUNE_ENV = "QGEN_TRITON_AUTOTUNE"


def autotune_requested() -> bool:
    """Whether the user asked for run-time tuning (``QGEN_TRITON_AUTOTUNE=1``; off by default:
    tuning a reconstruction's products took minutes of compiles on a fresh H200)."""
    return os.environ.get(AUTOTUNE_ENV, "0") == "1"


def _autotune_allowed() -> bool:
    return autotune_requested() and not torch.cuda.is_current_stream_capturing()


def _agrees(out: torch.Tensor, ref: torch.Tensor) -> bool:
    """Whether two candidates' results are the same product up to accumulation order:
    relative Frobenius error under 1e-2 (fp16 outputs differ by ~1e-3; a wrong kernel by ~1)."""
    out, ref = out.float(), ref.float()
    if out.shape != ref.shape or not torch.equal(out.isfinite(), ref.isfinite()):
        return False
    fin = ref.isfinite()
    err = torch.linalg.vector_norm((out - ref)[fin])
    return bool(err <= 1e-2 * torch.linalg.vector_norm(ref[fin]).clamp_min(1e-30))


def autotune(run: Callable[[KernelConfig], torch.Tensor], configs: list[KernelConfig]
             ) -> tuple[KernelConfig, float] | None:
    """Time each config (``run(cfg)`` launches the product and returns its output) and return
    the fastest with its time in µs. Configs that fail to compile or launch (e.g. too much
    shared memory) are skipped, and so is any whose result disagrees with the first config
    that ran (``_agrees``): the tuner picks the fastest *correct* kernel, even if a variant
    miscompiles on some GPU."""
    import triton.testing

    best: tuple[KernelConfig, float] | None = None
    ref: tuple[KernelConfig, torch.Tensor] | None = None
    for cfg in configs:
        try:
            out = run(cfg).clone()
            if ref is None:
                ref = (cfg, out)
            elif not _agrees(out, ref[1]):
                log.warning("autotune: config %s disagrees with %s; skipped", cfg, ref[0])
                continue
            ms = triton.testing.do_bench(lambda cfg=cfg: run(cfg), warmup=5, rep=20)
        except Exception as e:  # a config the device cannot run is not an error: skip it
            log.info("config %s failed: %s", cfg, e)
            continue
        if best is None or ms * 1e3 < best[1]:
            best = (cfg, ms * 1e3)
    return best


def _first_that_launches(key: TuneKey, ladder: list[KernelConfig],
                         run: Callable[[KernelConfig], object]) -> KernelConfig:
    """The first config of ``ladder`` that fits the device's shared memory (tried once per key,
    by launching it: what a tile needs depends on Triton's pipelining, not on a formula)."""
    from triton.runtime.errors import OutOfResources

    cfg = _fallbacks.get(key)
    if cfg is None:
        for cfg in ladder[:-1]:
            try:
                run(cfg)
                break
            except OutOfResources as e:
                log.info("config %s does not fit: %s", cfg, e)
        else:
            cfg = ladder[-1]
        _fallbacks[key] = cfg
    return cfg


def device_arch(device: torch.device) -> str:
    """``sm_XY`` of a CUDA device (``sm_90`` for H100 and H200): the shipped tables' key."""
    return _device_arch(device.index if device.index is not None else
                        torch.cuda.current_device())


@functools.cache
def _device_arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def select(op: str, x: torch.Tensor, bits: int, m: int, n: int, k: int,
           run: Callable[[KernelConfig], object]) -> KernelConfig:
    """The config for one call (module docstring); ``run(cfg)`` launches a candidate when
    autotuning or when probing the heuristic ladder (once per key)."""
    if interpreting() or x.device.type != "cuda":
        return interpreter_config(m)
    key = TuneKey(torch.cuda.get_device_name(x.device), op, bits, dtype_name(x.dtype),
                  bucket_m(m), n, k)
    cfg = lookup(key) or lookup(replace(key, device=device_arch(x.device)))
    if cfg is not None:
        return cfg
    out_dim, red_dim = (n, k) if op == "gemm" else (k, n)
    found = autotune(run, candidates(m, out_dim, red_dim, op)) if _autotune_allowed() else None
    if found is None:
        ladder = heuristic_ladder(key.m_bucket, out_dim, red_dim, op,
                                  act_bytes=x.element_size())
        return _first_that_launches(key, ladder, run)
    store(key, *found)
    return found[0]
