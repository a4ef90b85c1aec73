"""The default CPU thread count (qgen_infer.cpu_threads): the cores other processes leave idle,
and the training CLIs (qgen-train, qgen-demo, qgen-eval) following it when --threads is absent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qgen_infer import cpu_threads


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The CLIs set torch's process-wide thread count: put it back for the tests after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _samples(monkeypatch: pytest.MonkeyPatch, samples: list) -> None:
    it = iter(samples)
    monkeypatch.setattr(cpu_threads.IdleCoreMonitor, "_sample", staticmethod(lambda: next(it)))


def test_threads_fit_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default thread count: idle cores measured from injected /proc/stat samples."""
    assert [cpu_threads.threads_for(b, 2, 2) for b in (0.0, 0.2, 0.3, 0.8, 1.0, 3.0)] == \
        [2, 2, 1, 1, 1, 1]
    assert cpu_threads.threads_for(0.0, 8, 4) == 4
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    _samples(monkeypatch, [(0.0, 0.0, 100.0),     # (wall, own CPU seconds, machine busy seconds)
                           (1.0, 1.0, 102.0),     # 2 busy core-seconds, 1 of them ours: 1 busy
                           (1.01, 1.01, 102.02),  # 10 ms: too short to say
                           (2.0, 2.0, 103.0),     # since 1.0 s: only us busy
                           (3.0, 2.0, None)])     # no /proc/stat
    mon = cpu_threads.IdleCoreMonitor(cap=2)
    assert mon.threads(2) == 1
    assert mon.threads(1) == 1  # unmeasurable: unchanged
    assert mon.threads(1) == 2
    assert mon.threads(2) == 2


def test_follow_sets_torch_threads_and_waits_for_its_window(monkeypatch) -> None:
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    _samples(monkeypatch, [(0.0, 0.0, 100.0),   # the monitor's start
                           (0.3, 0.3, 100.6),   # 0.3 s < the 0.5 s window: not measured
                           (0.6, 0.6, 101.8),   # since 0: 1.2 busy core-s of others in 0.6 s
                           (1.0, 1.0, 102.2),   # 0.4 s since 0.6: not measured
                           (2.0, 2.0, 103.2)])  # since 0.6 s: only us busy
    torch.set_num_threads(2)
    mon = cpu_threads.IdleCoreMonitor(cap=2, min_window_s=cpu_threads.STEP_WINDOW_S)
    assert mon.follow() is None and torch.get_num_threads() == 2
    assert mon.follow() == 1 and torch.get_num_threads() == 1
    # 0.4 s window is under 0.5 s: nothing measured, the mark stays at 0.6 s
    assert mon.follow() is None and torch.get_num_threads() == 1
    assert mon.follow() == 2 and torch.get_num_threads() == 2
    assert mon.used == [2, 1, 2]  # the counts in force, a repeat merged (what CLIs report)


def test_probe_keeps_a_thread_only_when_the_other_work_yields(monkeypatch) -> None:
    """Other work that shows as busy but yields (a niced session) gives way to a probe."""
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    # (wall, own CPU s, machine busy s); every window 1 s, the machine always fully busy
    _samples(monkeypatch, [(0.0, 0.0, 100.0),
                           (1.0, 1.0, 102.0),     # others 1 core: fits 1; probe 2 at once
                           (2.0, 2.9, 104.0),     # the probe: we got 1.9 cores: keep 2
                           (3.0, 4.8, 106.0),     # others 0.1: 2 fits
                           (4.0, 5.8, 108.0),     # a competitor: others 1 core: back to 1
                           (5.0, 6.8, 110.0),     # others 1
                           # 20 s after the probe, but its 1 s window buys 1 / PROBE_PRICE s
                           (22.0, 23.8, 144.0),
                           (36.0, 37.8, 172.0),   # after 2 + 33.3 s: probe again: 2
                           (37.0, 38.8, 174.0)])  # we got 1 core of 2: the probe fails: 1
    assert cpu_threads.PROBE_PRICE == 0.03
    mon = cpu_threads.IdleCoreMonitor(cap=2, min_window_s=0.5, probe_every_s=20.0)
    assert [mon.threads(c) for c in (1, 2, 2, 2, 1, 1, 1, 2)] == [2, 2, 2, 1, 1, 1, 2, 1]
    # without probe_every_s the same samples never try more than the idle cores
    _samples(monkeypatch, [(0.0, 0.0, 100.0), (1.0, 1.0, 102.0), (2.0, 2.0, 104.0)])
    plain = cpu_threads.IdleCoreMonitor(cap=2, min_window_s=0.5)
    assert [plain.threads(1), plain.threads(1)] == [1, 1]


def test_probe_not_at_start_waits_its_period(monkeypatch) -> None:
    """Callers following per batch probe first ``probe_every_s`` after the start, not at once."""
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 2)
    _samples(monkeypatch, [(0.0, 0.0, 100.0),
                           (1.0, 1.0, 102.0),      # others 1 core: fits 1, no probe yet
                           (19.0, 19.0, 138.0),    # 19 s < 20 s: still 1
                           (20.5, 20.5, 141.0),    # the period is over: probe 2
                           (21.5, 22.4, 143.0)])   # we got 1.9 cores: keep 2
    mon = cpu_threads.IdleCoreMonitor(cap=2, probe_every_s=20.0, probe_at_start=False)
    assert [mon.threads(c) for c in (1, 1, 1, 2)] == [1, 1, 2, 2]


def test_idle_core_monitor_only_without_a_count_on_the_cpu() -> None:
    torch.set_num_threads(2)
    assert cpu_threads.idle_core_monitor(1, "cpu") is None and torch.get_num_threads() == 1
    assert cpu_threads.idle_core_monitor(None, "cuda") is None and torch.get_num_threads() == 1
    mon = cpu_threads.idle_core_monitor(None, "cpu", 0.5)
    assert isinstance(mon, cpu_threads.IdleCoreMonitor) and mon.min_window_s == 0.5


class _ScriptedCounts:
    """Stands in for IdleCoreMonitor.threads: the counts in order, then the last one; counts
    how often it was asked."""

    def __init__(self, counts: list[int]) -> None:
        self.counts, self.calls = counts, 0

    def __call__(self, _monitor: object, _current: int) -> int:
        self.calls += 1
        return self.counts[min(self.calls, len(self.counts)) - 1]


def _script(monkeypatch: pytest.MonkeyPatch, counts: list[int]) -> _ScriptedCounts:
    scripted = _ScriptedCounts(counts)
    monkeypatch.setattr(cpu_threads.IdleCoreMonitor, "threads",
                        lambda monitor, current: scripted(monitor, current))
    return scripted


def _no_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("an IdleCoreMonitor was built although the thread count is fixed")

    monkeypatch.setattr(cpu_threads.IdleCoreMonitor, "__init__", refuse)


def _monitor_options(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records the options each IdleCoreMonitor is built with (and builds it)."""
    built: list[dict] = []
    init = cpu_threads.IdleCoreMonitor.__init__

    def recording(self: cpu_threads.IdleCoreMonitor, *a: object, **k: object) -> None:
        init(self, *a, **k)
        built.append({"probe_every_s": self.probe_every_s,
                      "probes_at_start": self._next_probe == 0.0})

    monkeypatch.setattr(cpu_threads.IdleCoreMonitor, "__init__", recording)
    return built


# the per-batch CLIs probe, but only after a period (a failed probe costs a whole batch)
BATCH_PROBE = {"probe_every_s": cpu_threads.PROBE_EVERY_S, "probes_at_start": False}


def _threads_per_step(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from qgen_infer.train.trainer import Trainer

    seen: list[int] = []
    step = Trainer.train_step

    def recording(self: Trainer, x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return step(self, x)

    monkeypatch.setattr(Trainer, "train_step", recording)
    return seen


TRAIN = ["--epochs", "1", "--batch-size", "128", "--bits", "1", "-s", "20"]  # 11 steps


def test_qgen_train_follows_the_idle_cores_every_step(tmp_path: Path, monkeypatch) -> None:
    from qgen_infer.cli.train import main as train_main

    counts = _script(monkeypatch, [1, 1, 1, 2])
    seen = _threads_per_step(monkeypatch)
    assert train_main(["--out", str(tmp_path / "r"), *TRAIN]) == 0
    assert len(seen) == 11 and counts.calls == 1 + 11  # once after the set-up, then every step
    assert seen == [1, 1, 1] + [2] * 8
    log = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert log["threads"] == [1, 2]  # the counts the epoch's steps ran with


def test_qgen_train_keeps_an_explicit_count(tmp_path: Path, monkeypatch) -> None:
    from qgen_infer.cli.train import main as train_main

    _no_monitor(monkeypatch)
    seen = _threads_per_step(monkeypatch)
    assert train_main(["--out", str(tmp_path / "r"), *TRAIN, "--threads", "1"]) == 0
    assert seen == [1] * 11


@pytest.mark.parametrize("flag", [[], ["--threads", "1"]])
def test_qgen_train_under_torchrun_keeps_its_threads(tmp_path: Path, monkeypatch, flag) -> None:
    """Under torchrun no monitor: the rank keeps torchrun's OMP_NUM_THREADS or --threads."""
    import qgen_infer.distributed.env as env
    import qgen_infer.distributed.training as training
    import qgen_infer.signals as signals
    from qgen_infer.cli.train import main as train_main

    seen: list[int] = []

    class RankTrainer:  # a rank other than 0, without a process group
        writes_files = False

        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def run(self) -> dict:
            seen.append(torch.get_num_threads())
            return {}

    _no_monitor(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(training, "DistributedTrainer", RankTrainer)
    monkeypatch.setattr(signals, "stop_signals", lambda *_a, **_k: None)
    monkeypatch.setattr(env, "leave", lambda: None)
    monkeypatch.setattr(env, "exit_process", lambda code: None)
    torch.set_num_threads(2)  # as if torchrun's environment had said 2
    assert train_main(["--out", str(tmp_path / "r"), *TRAIN, *flag]) == 0
    assert seen == [1 if flag else 2]


def test_qgen_eval_follows_the_idle_cores_every_batch(tmp_path: Path, monkeypatch) -> None:
    import qgen_infer.train.trainer as trainer
    from qgen_infer.cli.evaluate import main as eval_main
    from qgen_infer.cli.train import main as train_main

    assert train_main(["--out", str(tmp_path / "r"), *TRAIN, "--threads", "1"]) == 0
    counts = _script(monkeypatch, [2, 1])
    seen: list[int] = []
    solve = trainer.reconstruct_latent

    def recording(*a: object, **k: object) -> object:
        seen.append(torch.get_num_threads())
        return solve(*a, **k)

    monkeypatch.setattr(trainer, "reconstruct_latent", recording)
    model = str(tmp_path / "r" / "model.pt")
    built = _monitor_options(monkeypatch)
    assert eval_main([model, "--count", "30", "--batch-size", "10", "--out",
                      str(tmp_path / "followed.json")]) == 0
    assert counts.calls == 1 + 3 and seen == [2, 1, 1]
    assert built == [BATCH_PROBE]
    # the results say which counts ran, as qgen-reconstruct's metrics.json does
    followed = json.loads((tmp_path / "followed.json").read_text())
    assert followed["threads"] is None and followed["threads_used"] == [2, 1]
    _no_monitor(monkeypatch)
    seen.clear()
    assert eval_main([model, "--count", "20", "--batch-size", "10", "--threads", "2", "--out",
                      str(tmp_path / "fixed.json")]) == 0
    assert seen == [2, 2]
    fixed = json.loads((tmp_path / "fixed.json").read_text())
    assert fixed["threads"] == 2 and fixed["threads_used"] == [2]


def test_qgen_demo_follows_the_idle_cores(tmp_path: Path, monkeypatch) -> None:
    """Every training step and every reconstruction batch re-check (11 steps, 1 batch)."""
    from qgen_infer.cli.demo import main as demo_main

    counts = _script(monkeypatch, [1, 2])
    seen = _threads_per_step(monkeypatch)
    assert demo_main(["--out-dir", str(tmp_path / "d"), "--bits", "1", "--epochs", "1",
                      "--batch-size", "128", "-s", "20", "--restarts", "1"]) == 0
    assert seen == [1] + [2] * 10
    assert counts.calls >= 1 + 11 + 1  # set-up, steps, at least one reconstruction batch


@pytest.fixture
def reconstruct_args(tiny_checkpoint, tmp_path: Path) -> list[str]:
    """qgen-reconstruct's arguments for 5 images of the tiny 4-bit MLP, in batches of 2."""
    import numpy as np

    import qgen_infer
    from qgen_infer.export import export_checkpoint

    qgen = export_checkpoint(tiny_checkpoint("mlp", 4, "tensor"), tmp_path / "m.qgen").path
    m = qgen_infer.load(qgen, backend="reference").config["measurements"]
    np.save(tmp_path / "y.npy", np.random.default_rng(0).standard_normal((5, m), np.float32))
    return ["--model", str(qgen), "--measurements", str(tmp_path / "y.npy"), "--backend",
            "reference", "--batch-size", "2", "--steps", "1", "--quiet", "--out",
            str(tmp_path / "rec")]


def test_qgen_reconstruct_probes_per_batch(reconstruct_args, monkeypatch) -> None:
    """Without --threads: a monitor with the batch probe, followed after the load and every
    batch; metrics.json lists the counts used."""
    from qgen_infer.cli.reconstruct import main as reconstruct_main

    built = _monitor_options(monkeypatch)
    counts = _script(monkeypatch, [2, 1])
    assert reconstruct_main(reconstruct_args) == 0
    assert built == [BATCH_PROBE] and counts.calls == 1 + 3  # after the load, then 3 batches
    out = Path(reconstruct_args[reconstruct_args.index("--out") + 1])
    assert json.loads((out / "metrics.json").read_text())["settings"]["threads_used"] == [2, 1]


def test_qgen_reconstruct_keeps_an_explicit_count(reconstruct_args, monkeypatch) -> None:
    from qgen_infer.cli.reconstruct import main as reconstruct_main

    _no_monitor(monkeypatch)
    assert reconstruct_main([*reconstruct_args, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("flag", [[], ["--threads", "1"]])
def test_qgen_reconstruct_under_torchrun_keeps_its_threads(reconstruct_args, monkeypatch,
                                                           flag) -> None:
    """Under torchrun no monitor: the ranks keep torchrun's OMP_NUM_THREADS or --threads."""
    import qgen_infer.cli.reconstruct_sharded as sharded
    import qgen_infer.distributed as distributed
    from qgen_infer.cli.reconstruct import main as reconstruct_main

    seen: list[int] = []

    def rank(args: object, out: object) -> int:
        seen.append(torch.get_num_threads())
        return 0

    _no_monitor(monkeypatch)
    monkeypatch.setattr(distributed, "launched", lambda: True)
    monkeypatch.setattr(sharded, "reconstruct_sharded_main", rank)
    torch.set_num_threads(2)  # as if torchrun's environment had said 2
    assert reconstruct_main([*reconstruct_args, *flag]) == 0
    assert seen == [1 if flag else 2]
