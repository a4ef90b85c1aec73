"""Sharded reconstruction (``qgen_infer.distributed``): under ``torchrun --nproc_per_node=2``
(gloo, CPU, one thread per rank) and as a job of one in this process.

What is held here:

* the merged outputs equal a single-process ``qgen-reconstruct`` run's bit for bit (x_hat.npy,
  z.npy, grid.png; metrics.json but for its timings and the ``distributed`` block), with an
  odd image count, a ragged last batch and two restarts;
* a rank killed after its first shard fails the job, leaves no outputs and no shard that looks
  finished but is not, and a rerun of the same command skips the finished shards and gives the
  same outputs;
* a rank that raises makes every rank stop, and exactly one line names it;
* in one process: resume, refusal of a rerun with other settings, ``fresh``, input errors that
  name the row in the whole file, a damaged shard file, the memory-mapped input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qgen_infer
from qgen_infer.arrays import measurement_rows, open_measurements
from qgen_infer.cli.reconstruct import main as reconstruct_main
from qgen_infer.distributed import reconstruct_sharded
from qgen_infer.distributed.dispatch import measure_products, measuring_batches
from qgen_infer.distributed.sharded import MANIFEST, shard_path
from qgen_infer.errors import QgenError
from qgen_infer.export import export_checkpoint
from qgen_infer.reconstruction import solver_options

# each torchrun launch costs 4-10 s here (interpreters, torch imports, the rendezvous)
launched_by_torchrun = pytest.mark.slow
N_IMAGES = 23  # with batch size 4: five full batches and a ragged one of 3
SOLVER_ARGS = ["--batch-size", "4", "--restarts", "2", "--seed", "5", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def problem(tiny_checkpoint, tmp_path_factory) -> dict[str, Any]:
    """The 4-bit tiny MLP as a .qgen, N_IMAGES truths and their measurements as .npy files."""
    folder = tmp_path_factory.mktemp("sharded")
    qgen = export_checkpoint(tiny_checkpoint("mlp", 4, "tensor"), folder / "m.qgen").path
    model = qgen_infer.load(qgen, backend="cpu")
    x = np.random.default_rng(3).uniform(-0.9, 0.9, (N_IMAGES, *model.config["image_shape"]))
    x = x.astype(np.float32)
    with torch.no_grad():
        y = model.sensing(torch.from_numpy(x)).numpy()
    np.save(folder / "y.npy", y)
    np.save(folder / "x.npy", x)
    args = ["--model", str(qgen), "--measurements", str(folder / "y.npy"),
            "--truth", str(folder / "x.npy"), "--backend", "cpu", *SOLVER_ARGS]
    return {"folder": folder, "qgen": qgen, "model": model, "y": y, "args": args}


@pytest.fixture(scope="module")
def single(problem) -> Path:
    """The outputs of a single-process ``qgen-reconstruct`` run (one thread)."""
    out = problem["folder"] / "single"
    threads = torch.get_num_threads()
    try:
        assert reconstruct_main([*problem["args"], "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _console_script() -> str:
    return str(Path(sys.executable).with_name("qgen-reconstruct"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _torchrun(program: str, args: list[str], nproc: int = 2,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc program args`` (a free port each time)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", program, *args]
    return subprocess.run(cmd, env={**_env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=120)


def _fault_script(tmp_path: Path, patch: str) -> str:
    """A program that runs ``qgen-reconstruct`` after ``patch`` replaced a function of
    :mod:`qgen_infer.distributed.sharded` (the faults are injected from outside the package)."""
    script = tmp_path / "faulty_reconstruct.py"
    script.write_text(textwrap.dedent("""\
        import os, signal, sys
        from qgen_infer.distributed import sharded
        from qgen_infer.cli.reconstruct import main
        """) + textwrap.dedent(patch) + "sys.exit(main())\n")
    return str(script)


def _our_traceback(stderr: str) -> list[str]:
    """The traceback lines in a rank's code (torchrun adds its own report on a failed job)."""
    return [line for line in stderr.splitlines()
            if line.strip().startswith("File ") and "qgen_infer" in line]


def _metrics_without_timing(folder: Path) -> dict[str, Any]:
    """metrics.json but for what describes the run rather than its results: timings, the
    ranks, and where the cpu dispatcher's cost table was (its choices stay compared)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("distributed", None)
    metrics.pop("timing")
    metrics.get("dispatch", {}).pop("cost_table", None)
    return metrics


def _assert_same_outputs(single: Path, sharded: Path) -> None:
    for name in ("x_hat.npy", "z.npy", "grid.png"):
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), name
    assert _metrics_without_timing(single) == _metrics_without_timing(sharded)


@launched_by_torchrun
def test_two_ranks_equal_one_process_bit_for_bit(problem, single, tmp_path):
    out = tmp_path / "out"
    done = _torchrun(_console_script(), [*problem["args"], "--out", str(out)])
    assert done.returncode == 0, done.stderr
    _assert_same_outputs(single, out)
    dist = json.loads((out / "metrics.json").read_text())["distributed"]
    assert dist["world_size"] == 2 and dist["shards_skipped"] == 0
    # whole batches of 4 per shard, so each batch is the one the single run solved
    assert dist["shard_images"] % 4 == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        MANIFEST, *(shard_path(out, k).name for k in range(dist["shards"]))]
    assert "2 processes, 0 of" in done.stdout


@launched_by_torchrun
def test_resume_after_one_rank_is_killed(problem, single, tmp_path):
    """Rank 1 is killed (SIGKILL, as a lost node) right after writing its first shard, while
    rank 0 is still busy with its own first one (slowed down, as on a busy machine)."""
    out = tmp_path / "out"
    killer = _fault_script(tmp_path, """\
        import time
        real_write = sharded._write_shard
        def write_then_die(*args, **kwargs):
            if os.environ["RANK"] == "0":
                time.sleep(60)  # torchrun stops this rank when rank 1 dies
            real_write(*args, **kwargs)
            if os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGKILL)
        sharded._write_shard = write_then_die
        """)
    failed = _torchrun(killer, [*problem["args"], "--out", str(out)])
    assert failed.returncode != 0
    # torchrun stops rank 0 with SIGTERM: one line from it, no traceback of ours
    ours = [line for line in failed.stderr.splitlines() if line.startswith("qgen-reconstruct")]
    assert len(ours) == 1 and ours[0].startswith("qgen-reconstruct: stopped by SIGTERM; 1 "
                                                 "finished shard(s) kept"), failed.stderr
    assert not _our_traceback(failed.stderr), failed.stderr
    assert not (out / "x_hat.npy").exists() and not (out / "metrics.json").exists()
    plan = json.loads((out / "shards" / MANIFEST).read_text())
    count = -(-plan["images"] // plan["shard_images"])
    finished = [k for k in range(count) if shard_path(out / "shards", k).is_file()]
    assert len(finished) == 1  # rank 1's first shard, nothing of rank 0's
    for k in finished:  # every file that looks finished is a whole, readable shard
        with np.load(shard_path(out / "shards", k)) as shard:
            assert shard["x_hat"].shape[0] == plan["shard_images"] or k == count - 1

    rerun = _torchrun(_console_script(), [*problem["args"], "--out", str(out)])
    assert rerun.returncode == 0, rerun.stderr
    dist = json.loads((out / "metrics.json").read_text())["distributed"]
    assert dist["shards_skipped"] == len(finished)
    _assert_same_outputs(single, out)
    assert not list((out / "shards").glob(".*.tmp"))


def _interrupt_when(cmd: list[str], ready: Any, timeout: float = 120
                    ) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a process group of its own, as a terminal does, and send the group
    SIGINT (Ctrl-C) once ``ready()``."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@launched_by_torchrun
def test_ctrl_c_stops_every_rank_with_one_line_and_a_rerun_resumes(problem, single, tmp_path):
    """Ctrl-C while rank 0 is inside its first shard and rank 1, done with every other shard,
    waits for it in a collective: one line, the finished shards kept whole, no outputs, and
    the same command afterwards gives the single-process outputs."""
    out = tmp_path / "out"
    slow = _fault_script(tmp_path, """\
        import time
        real_write = sharded._write_shard
        def slow_on_rank_0(*args, **kwargs):
            if os.environ["RANK"] == "0":
                time.sleep(60)  # interrupted here
            real_write(*args, **kwargs)
        sharded._write_shard = slow_on_rank_0
        """)
    shards = out / "shards"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           slow, *problem["args"], "--out", str(out)]
    count = -(-N_IMAGES // 4)  # one batch of 4 per shard for two ranks
    stopped = _interrupt_when(cmd, lambda: len(list(shards.glob("shard-*.npz"))) == count - 1)
    assert stopped.returncode != 0
    ours = [line for line in stopped.stderr.splitlines() if line.startswith("qgen-reconstruct")]
    assert ours == [f"qgen-reconstruct: stopped by SIGINT; {count - 1} finished shard(s) kept in "
                    f"{shards}: rerun the same command (without --force) to continue"]
    assert not _our_traceback(stopped.stderr), stopped.stderr
    assert sorted(p.name for p in out.iterdir()) == ["shards"]  # no outputs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []  # no stage
    for path in shards.glob("shard-*.npz"):  # whole: batches of 4, the last one of 3
        with np.load(path) as shard:
            assert shard["x_hat"].shape[0] == min(4, N_IMAGES - int(shard["start"]))

    rerun = _torchrun(_console_script(), [*problem["args"], "--out", str(out)])
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "metrics.json").read_text())["distributed"]["shards_skipped"] == (
        count - 1)
    _assert_same_outputs(single, out)


@launched_by_torchrun
def test_a_failing_rank_fails_the_job_with_one_line_naming_it(problem, tmp_path):
    out = tmp_path / "out"
    faulty = _fault_script(tmp_path, """\
        real_reconstruct = sharded.reconstruct
        def fail_on_rank_1(*args, **kwargs):
            if os.environ["RANK"] == "1":
                raise OSError("disk on fire")
            return real_reconstruct(*args, **kwargs)
        sharded.reconstruct = fail_on_rank_1
        """)
    done = _torchrun(faulty, [*problem["args"], "--out", str(out)])
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("qgen-reconstruct")]
    assert ours == ["qgen-reconstruct: error: rank 1 of 2 failed: OSError: disk on fire"]
    assert not _our_traceback(done.stderr), done.stderr
    assert not (out / "x_hat.npy").exists()
    # rank 0 solved every other shard and kept them; the one rank 1 took is not there
    plan = json.loads((out / "shards" / MANIFEST).read_text())
    count = -(-plan["images"] // plan["shard_images"])
    finished = [k for k in range(count) if shard_path(out / "shards", k).is_file()]
    assert count > 2 and len(finished) == count - 1
    assert not list((out / "shards").glob(".*.tmp"))


@launched_by_torchrun
def test_the_same_input_error_on_every_rank_is_one_line(problem, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an existing folder without shards, and no --force
    done = _torchrun(_console_script(), [*problem["args"], "--out", str(out)])
    ours = [line for line in done.stderr.splitlines() if line.startswith("qgen-reconstruct")]
    assert len(ours) == 1 and "exists and holds no shards" in ours[0], done.stderr
    assert not _our_traceback(done.stderr), done.stderr
    assert done.returncode != 0 and list(out.iterdir()) == []  # torchrun exits 1 on any failure
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left

@launched_by_torchrun
def test_ranks_take_rank_0s_dispatch_choices(problem, single, tmp_path):
    """``--backend auto`` with no cost table, rank 1 timing the dense path faster and rank 0
    the packed kernels (as two busy cores can): rank 1 adopts rank 0's choices, so the merge
    equals the single-process run, where every product runs the kernels."""
    out = tmp_path / "out"
    biased = _fault_script(tmp_path, """\
        from qgen_infer.engine import cpu_dispatch
        FAST = "packed" if os.environ["RANK"] == "0" else "dense"
        def biased(path, run):
            return (1e-3 if path == FAST else 2e-3), run()
        cpu_dispatch.time_call = cpu_dispatch.thread_time_call = biased
        """)
    args = [a if a != "cpu" else "auto" for a in problem["args"]]
    done = _torchrun(biased, [*args, "--out", str(out)],
                     extra_env={"QGEN_CPU_DISPATCH_CACHE": "off"})
    assert done.returncode == 0, done.stderr
    for name in ("x_hat.npy", "z.npy"):
        assert (single / name).read_bytes() == (out / name).read_bytes(), name
    choices = json.loads((out / "metrics.json").read_text())["dispatch"]["choices"]
    assert choices and {c["path"] for c in choices} == {"packed"}



# -- a job of one, in this process ---------------------------------------------------------------

def test_one_process_job_equals_reconstruct_and_resumes(problem, tmp_path):
    model, y = problem["model"], problem["folder"] / "y.npy"
    want = qgen_infer.reconstruct(model, problem["y"], batch_size=4, restarts=2, seed=5)
    first = reconstruct_sharded(model, y, tmp_path, batch_size=4, restarts=2, seed=5,
                                shard_images=7)  # rounded up to whole batches: 8
    assert first.plan.shard_images == 8 and first.plan.count == 3 and first.skipped == 0
    for name in ("x_hat", "z", "loss"):
        assert np.array_equal(getattr(first.result, name), getattr(want, name)), name
    shard_path(tmp_path, 1).unlink()  # as if its rank had been lost
    (tmp_path / ".shard-00001.npz.x1y2.tmp").write_bytes(b"half a shard")
    again = reconstruct_sharded(model, y, tmp_path, batch_size=4, restarts=2, seed=5)
    assert again.skipped == 2 and again.solved_here == 1
    assert np.array_equal(again.result.x_hat, want.x_hat)
    assert not (tmp_path / ".shard-00001.npz.x1y2.tmp").exists()


def test_rank_0s_measuring_run_meets_every_product_of_the_job(problem, monkeypatch):
    """What rank 0 measures before the shards (two steps of each batch size the job runs)
    covers every product the whole solve then runs: no rank meets one it must time alone."""
    monkeypatch.setenv("QGEN_CPU_DISPATCH_CACHE", "off")
    model = qgen_infer.load(problem["qgen"], backend="auto")
    assert model.backend.dispatch == "measured"
    # batches of 5 rows and a last one of 3: two batch buckets (8 and 4), both to be measured
    opts = solver_options(model, batch_size=5, restarts=1, seed=5)
    assert measuring_batches(N_IMAGES, 5) == [5, 3] and measuring_batches(8, 4) == [4]
    assert measuring_batches(3, 4) == [3]
    y = problem["y"]
    measured = measure_products(model, lambda start, stop: y[start:stop], N_IMAGES, opts)
    assert "gemm" in {key.op for _, key in measured}
    qgen_infer.reconstruct(model, y, opts)
    assert model.backend.dispatcher.choices == measured


def test_a_rerun_with_other_settings_is_refused_and_fresh_starts_over(problem, tmp_path):
    model, y = problem["model"], problem["folder"] / "y.npy"
    reconstruct_sharded(model, y, tmp_path, batch_size=4, seed=5)
    with pytest.raises(QgenError, match=r"another job \(settings\.seed was 5, now 6\)"):
        reconstruct_sharded(model, y, tmp_path, batch_size=4, seed=6)
    run = reconstruct_sharded(model, y, tmp_path, batch_size=4, seed=6, fresh=True)
    assert run.skipped == 0
    want = qgen_infer.reconstruct(model, problem["y"], batch_size=4, seed=6)
    assert np.array_equal(run.result.z, want.z)


def test_an_array_input_and_a_single_image(problem, tmp_path):
    model = problem["model"]
    one = problem["y"][5:6]
    run = reconstruct_sharded(model, one, tmp_path, seed=2)
    want = qgen_infer.reconstruct(model, one, seed=2)
    assert run.plan.count == 1 and np.array_equal(run.result.x_hat, want.x_hat)


def test_a_non_finite_row_is_named_by_its_index_in_the_file(problem, tmp_path):
    y = problem["y"].copy()
    y[17, 2] = np.nan
    np.save(tmp_path / "bad.npy", y)
    with pytest.raises(QgenError, match=r"first at index \(17, 2\)"):
        reconstruct_sharded(problem["model"], tmp_path / "bad.npy", tmp_path / "shards",
                            batch_size=4)
    assert not list((tmp_path / "shards").glob("shard-*"))  # checked before any solving


def test_a_damaged_shard_file_is_reported_at_the_merge(problem, tmp_path, monkeypatch):
    model, y = problem["model"], problem["folder"] / "y.npy"
    reconstruct_sharded(model, y, tmp_path, batch_size=4)
    shard_path(tmp_path, 0).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(QgenError, match="shard file .*shard-00000.npz is unreadable"):
        reconstruct_sharded(model, y, tmp_path, batch_size=4)


def test_measurements_are_memory_mapped_and_read_in_rows(problem):
    path = problem["folder"] / "y.npy"
    arr = open_measurements(path, problem["y"].shape[1])
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    rows = measurement_rows(arr, 4, 9, path)
    assert rows.flags.writeable and rows.dtype == np.float32
    assert np.array_equal(rows, problem["y"][4:9])
    with pytest.raises(QgenError, match="values per image"):
        open_measurements(path, problem["y"].shape[1] + 1)


def test_a_follower_runs_cached_choices_at_once_and_waits_for_rank_0_on_the_rest(tmp_path):
    """Rank 1's dispatcher: a product in the cost table runs without rank 0 (whose choices file
    does not exist yet, so waiting would hang); one the table lacks takes rank 0's published
    path, one rank 0 did not meet is measured; a rank whose path differs from rank 0's for a
    product is named."""
    from qgen_infer.distributed.dispatch import FollowerDispatcher, disagreements, publish_choices
    from qgen_infer.engine.cpu_dispatch import CostTable, Dispatcher, ProductKey

    table_key = ProductKey("gemm", 1, 500, 25, 4, True)
    other_key = ProductKey("gemm_t", 1, 500, 25, 4, False)
    table = CostTable(None)
    table.put("ctx", table_key, 1e-3, 2e-3)  # packed faster
    follower = FollowerDispatcher(Dispatcher(table), tmp_path)
    assert follower.known("ctx", table_key).path == "packed"

    leader = Dispatcher(CostTable(None))
    leader.run("ctx", other_key, lambda: "p", lambda: "d")  # measured by rank 0 here
    leader.choices[("ctx", table_key)] = follower.choices[("ctx", table_key)]
    publish_choices(tmp_path, type("M", (), {"backend": type("B", (), {
        "dispatcher": leader})()})(), None)
    assert follower.known("ctx", other_key).path == leader.choices[("ctx", other_key)].path
    assert follower.known("ctx", other_key).source == "rank 0"
    # a product rank 0's run did not meet: measured here (compared with rank 0's afterwards)
    unmet = ProductKey("gemm", 1, 7, 7, 4, False)
    assert follower.known("ctx", unmet) is None
    assert follower.run("ctx", unmet, lambda: "p", lambda: "d") in ("p", "d")
    assert follower.choices[("ctx", unmet)].source == "measured"

    assert disagreements([{"a": "packed", "b": "dense"}, {"a": "packed"}, {"b": "dense"}]) == []
    assert disagreements([{"a": "packed"}, {"a": "dense", "c": "packed"}, {"c": "x"}]) == [1]

    failed = tmp_path / "failed"
    failed.mkdir()
    publish_choices(failed, None, OSError("disk on fire"))
    with pytest.raises(QgenError, match="rank 0 could not measure"):
        FollowerDispatcher(Dispatcher(CostTable(None)), failed).known("ctx", other_key)


def test_each_job_records_its_own_phase_timeline(problem, tmp_path):
    model, y = problem["model"], problem["folder"] / "y.npy"
    first = reconstruct_sharded(model, y, tmp_path / "a", batch_size=4)
    second = reconstruct_sharded(model, y, tmp_path / "b", batch_size=4)
    for run in (first, second):
        (marks,) = run.timeline  # one rank
        labels = [label for label, _ in marks if label != "process start"]
        assert labels == ["sharded start", "plan agreed", "inputs checked", "shards solved",
                          "all ranks solved", "merged"]
        times = [t for _, t in marks]
        assert times == sorted(times)


def test_rank_0s_first_shard_publishes_after_its_first_batch(problem, monkeypatch):
    """Rank 0 solves its first shard's first batch alone, publishes its dispatch choices, then
    solves the rest: the same values as one call, every image counted once; a failure in that
    first batch is published too (the other ranks may be waiting for the choices)."""
    from qgen_infer.distributed import sharded

    model = problem["model"]
    source = sharded._Measurements(problem["folder"] / "y.npy", problem["y"].shape[1])
    opts = solver_options(model, batch_size=4, restarts=2, seed=5)
    events: list[Any] = []

    class Leader:
        def publish(self, met: int | None) -> None:
            events.append(("publish", met))

        def failed(self, exc: BaseException) -> None:
            events.append(("failed", str(exc)))

    rec = sharded._solve_shard(model, source, (4, 15), opts, events.append, Leader())
    want = qgen_infer.reconstruct(model, problem["y"][4:15], opts, first_index=4)
    for name in ("x_hat", "z", "loss"):
        assert np.array_equal(getattr(rec, name), getattr(want, name)), name
    assert rec.done == 11 and len(rec.batch_seconds) == 3
    assert events == [4, ("publish", 4), 4, 3]

    events.clear()
    monkeypatch.setattr(sharded, "reconstruct", lambda *a, **k: (_ for _ in ()).throw(
        OSError("disk on fire")))
    with pytest.raises(OSError):
        sharded._solve_shard(model, source, (4, 15), opts, None, Leader())
    assert events == [("failed", "disk on fire")]
