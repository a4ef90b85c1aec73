"""How the Triton kernels' launch configs are chosen: no tuning unless asked, one deterministic
rule, the shipped Hopper table (valid, loaded, used), and a reconstruction that compiles each
kernel once whatever its batch sizes (checked under ``TRITON_INTERPRET=1`` by recording every
launch's specialisation as Triton keys its compile cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import qgen_infer  # noqa: E402
from qgen_infer.export import export_checkpoint  # noqa: E402
from qgen_infer.kernels import configs  # noqa: E402
from qgen_infer.kernels.configs import KernelConfig, TuneKey  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


class FakeCudaTensor:
    """What ``select`` reads of an activation: a CUDA device, a dtype, its element size."""

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        self.device = torch.device("cuda", 0)
        self.dtype = dtype

    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """``select`` as on an H200 with an empty user cache, without a GPU."""
    monkeypatch.setattr(configs, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(configs, "device_arch", lambda device: "sm_90")
    monkeypatch.setattr(configs, "sm_count", lambda: 132)
    monkeypatch.setenv("QGEN_TRITON_CONFIGS", str(tmp_path / "user.json"))
    monkeypatch.delenv(configs.AUTOTUNE_ENV, raising=False)
    configs.reset_cache()
    yield
    configs.reset_cache()


def _never(*args, **kwargs):
    raise AssertionError("autotune must not run")


def test_autotune_is_off_by_default(fake_gpu, monkeypatch) -> None:
    assert not configs.autotune_requested()
    monkeypatch.setattr(configs, "autotune", _never)
    launched = []
    cfg = configs.select("gemm", FakeCudaTensor(), 1, 100, 3000, 3000, launched.append)
    assert launched == [cfg]  # the rule's first entry, probed once (it fits): no timing
    assert cfg == configs.heuristic_ladder(128, 3000, 3000, "gemm", sms=132)[0]
    assert not Path(os.environ["QGEN_TRITON_CONFIGS"]).exists()  # nothing written


def test_autotune_when_asked(fake_gpu, monkeypatch) -> None:
    monkeypatch.setenv(configs.AUTOTUNE_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    best = KernelConfig("dot", 64, 64, 64)
    timed = []
    monkeypatch.setattr(configs, "autotune", lambda run, cands: timed.append(cands) or (best, 3.0))
    assert configs.select("gemm", FakeCudaTensor(), 1, 100, 3000, 3000, _never) == best
    assert len(timed) == 1
    stored = json.loads(Path(os.environ["QGEN_TRITON_CONFIGS"]).read_text())["entries"]
    assert [e["config"] for e in stored] == [asdict(best)] and stored[0]["m_bucket"] == 128


def test_selection_is_deterministic_per_bucket(fake_gpu) -> None:
    """Same key, same config, every time and in any order; every M of a bucket (the 256 and
    232 batches of 1,000 images) gets one config, so one compiled kernel."""
    shapes = [(op, n, k, dt) for op in configs.OPS for n, k in ((3000, 3000), (40, 9000))
              for dt in (torch.float16, torch.float32)]
    first = {}
    for m in (129, 232, 256, 200):
        for op, n, k, dt in reversed(shapes):
            cfg = configs.select(op, FakeCudaTensor(dt), 2, m, n, k, lambda c: None)
            assert first.setdefault((op, n, k, dt), cfg) == cfg
    # the fp32 tile never is the 128x128 one that overflowed an H200's shared memory
    for m in (256, 4096):
        assert configs.heuristic(m, 8192, 8192, "gemm", act_bytes=4).block_m < 128
        assert configs.heuristic(m, 8192, 8192, "gemm", act_bytes=2).block_m == 128


def test_shipped_hopper_table_is_valid_and_used(fake_gpu) -> None:
    tables = configs.shipped_tables()
    assert [t.name for t in tables] == ["sm_90.json"]
    table = configs.read_table(tables[0])
    raw = json.loads(tables[0].read_text())["entries"]
    assert len(table) == len(raw) > 0
    assert all(e["source"] == "rule" or e["source"].startswith("qgen-tune") for e in raw)
    assert all((e["time_us"] is None) == (e["source"] == "rule") for e in raw)
    # the reconstruction products of the shipped MNIST models, every width, fp16 and fp32
    for n, k in ((500, 784), (500, 500), (784, 500)):
        for op in configs.OPS:
            for bits in (1, 2, 3, 4):
                for dt in (torch.float16, torch.float32):
                    key = TuneKey("sm_90", op, bits, configs.dtype_name(dt), 256, n, k)
                    assert key in table
                    # looked up by architecture: an H200 or an H100 finds it, nothing launched
                    assert configs.select(op, FakeCudaTensor(dt), bits, 232, n, k,
                                          _never) == table[key]


def test_user_entries_win_over_shipped(fake_gpu) -> None:
    key = TuneKey("NVIDIA H200", "gemm", 1, "float16", 256, 500, 784)
    mine = KernelConfig("dot", 16, 16, 32)
    configs.store(key, mine, 9.0)
    configs.reset_cache()
    assert configs.select("gemm", FakeCudaTensor(), 1, 256, 500, 784, _never) == mine


GOOD = {"device": "sm_90", "op": "gemm", "bits": 1, "dtype": "float16", "m_bucket": 256,
        "n": 500, "k": 784, "time_us": None, "config": asdict(KernelConfig("dot", 32, 32, 64))}


@pytest.mark.parametrize("change,match", [
    ({"op": "conv"}, "op must be"), ({"bits": 5}, "bits must be"), ({"bits": True}, "bits"),
    ({"dtype": "int8"}, "dtype"), ({"m_bucket": 200}, "power of two"), ({"n": 0}, "positive"),
    ({"time_us": "fast"}, "time_us"), ({"config": {"path": "dot"}}, "config"),
    ({"config": {**GOOD["config"], "block_m": 24}}, "power of two"),
    ({"config": {**GOOD["config"], "colour": 1}}, "fields"),
    ({"config": {**GOOD["config"], "num_warps": 0}}, "num_warps"),
    ({"config": {**GOOD["config"], "path": "gemv"}}, "block_m 1"),
])
def test_bad_entries_are_rejected(tmp_path, change: dict, match: str) -> None:
    configs.parse_entry(GOOD)
    bad = {**GOOD, **change}
    with pytest.raises(ValueError, match=match):
        configs.parse_entry(bad)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": configs.FORMAT, "version": configs.VERSION,
                                "entries": [GOOD, bad]}))
    with pytest.raises(ValueError, match="entry 1"):
        configs.read_table(path)


def test_bad_user_entries_are_skipped_at_run_time(fake_gpu, caplog) -> None:
    path = Path(os.environ["QGEN_TRITON_CONFIGS"])
    good = {**GOOD, "device": "NVIDIA H200", "config": asdict(KernelConfig("dot", 16, 16, 32))}
    path.write_text(json.dumps({"format": configs.FORMAT, "version": configs.VERSION,
                                "entries": [{**GOOD, "bits": 9}, good]}))
    key, cfg = configs.parse_entry(good)
    assert configs.lookup(key) == cfg
    assert "skipping bad entry" in caplog.text


# --- specialisations a reconstruction compiles ------------------------------------------------

def _spec_key(kernel, args: tuple, kwargs: dict) -> tuple:
    """What Triton compiles a launch for: the constexprs and launch options, and per runtime
    argument its dtype, and for integers (unless ``do_not_specialize``) and pointers whether they
    are 1 / divisible by 16 (Triton's specialisation rule)."""
    names = kernel.arg_names
    skip = set(kernel.kwargs.get("do_not_specialize") or ())
    sig = []
    for name, v in zip(names, args, strict=False):  # constexprs come as keywords
        if torch.is_tensor(v):
            sig.append((name, str(v.dtype), v.data_ptr() % 16 == 0))
        elif isinstance(v, bool) or not isinstance(v, int):
            sig.append((name, type(v).__name__))
        elif name in skip:
            sig.append((name, "i32"))
        else:
            sig.append((name, v == 1, v % 16 == 0))
    return (kernel.fn.__name__, tuple(sig), tuple(sorted(kwargs.items(), key=str)))


class Recorder:
    def __init__(self, kernel, seen: set) -> None:
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.add(_spec_key(self.kernel, args, {k: str(v) for k, v in kwargs.items()}))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.skipif(not INTERPRET, reason="records interpreted launches")
def test_reconstruction_compiles_each_kernel_once(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """A second batch size of the same bucket (the 256 + 232 of 1,000 images, here 16 + 13)
    launches nothing that would need a new compile, and each step launches a fixed set."""
    from qgen_infer.kernels import gemm, gemm_t, splitk

    seen: set = set()
    for mod, names in ((gemm, ("gemm_kpack_dot_kernel", "gemm_kpack_gemv_kernel")),
                       (gemm_t, ("gemm_t_kpack_dot_kernel", "gemm_t_kpack_gemv_kernel")),
                       (splitk, ("splitk_reduce_kernel",))):
        for name in names:
            monkeypatch.setattr(mod, name, Recorder(getattr(mod, name), seen))
    path = export_checkpoint(tiny_checkpoint("mlp", 1, "tensor"), tmp_path / "m.qgen").path
    model = qgen_infer.load(path, backend="triton")
    y = np.random.default_rng(0).normal(size=(29, model.config["measurements"]))
    qgen_infer.reconstruct(model, y[:16].astype(np.float32), batch_size=16, steps=2)
    after_first = set(seen)
    # 3 layers forward (3 epilogues) + 3 fused input gradients: 6 kernels
    assert len(after_first) == 6, sorted(k[0] for k in after_first)
    qgen_infer.reconstruct(model, y.astype(np.float32), batch_size=16, steps=2)  # 16 + 13
    assert seen == after_first


def test_qgen_tune_without_gpu_is_one_line(tmp_path) -> None:
    if torch.cuda.is_available() and not INTERPRET:
        pytest.skip("a GPU is here: qgen-tune would run")
    model = ROOT / "models" / "mnist-m25-1bit.qgen"
    proc = subprocess.run([sys.executable, "-m", "qgen_infer.cli.tune", str(model)],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "CUDA device" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "qgen_infer.cli.tune",
                           str(tmp_path / "none.qgen")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.slow
def test_wheel_ships_the_tables(tmp_path) -> None:
    """The built wheel holds ``qgen_infer/kernels/tuned/*.json`` (package data)."""
    env = {**os.environ, "QGEN_NO_EXT": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, env=env,
                   capture_output=True)
    (wheel,) = tmp_path.glob("qgen_infer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"qgen_infer/kernels/tuned/{t.name}" for t in configs.shipped_tables()} <= set(names)
