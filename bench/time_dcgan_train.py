#!/usr/bin/env python
"""Training step time of the paper-size DCGAN (32x32x3, width 64, latent 512, m = 100, s = 100,
T = 3, batch 64 unless --batch-size; SDLSS unless --method dcs) on the CPU:
``Trainer.train_step`` as ``qgen-train`` runs it, on random images (a step's cost does not
depend on the pixels).

Each source tree (a folder holding ``qgen_infer/``) runs in a worker process of its own, with
``PYTHONPATH`` set to it. On a busy machine the load changes from one second to the next, so the
workers take turns step by step (A, B, A, B, ...) and the ratio is taken per adjacent pair; the
median over the pairs is the result. Trees from before ``train_step`` existed run the same
calls as their training loop did::

    python bench/time_dcgan_train.py .                                  # this tree alone
    python bench/time_dcgan_train.py /tmp/base . --pairs 8 --threads 1 2
    python bench/time_dcgan_train.py /tmp/base .:bf16                   # qgen-train --precision
    python bench/time_dcgan_train.py .:bf16 --batch-size 32 64 128       # per-image cost
    python bench/time_dcgan_train.py .:bf16 .:bf16+QGEN_KEEP_FREED_MEMORY=0   # an environment A/B

Every tree runs once per ``--batch-size`` (workers = trees x batch sizes). Prints one line per
turn and a summary per thread count: seconds per step (median of each worker) and the median of
the per-turn speed-ups of every worker over the first, per image (so batch sizes compare), in
wall time and in the
worker's CPU time (``time.process_time``: on a shared machine the less noisy of the two with one
thread, as it leaves out the time spent waiting for a core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(threads: int, bits: int, method: str, precision: str, batch: int) -> None:
    """Build a Trainer and run one training step per line read from stdin, answering with the
    step's seconds (the first line's step is the warm-up, answered like the others)."""
    import torch

    import qgen_infer
    from qgen_infer.train import TrainConfig, Trainer

    torch.set_num_threads(threads)
    images = torch.rand(batch * 4 + 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = images * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        extra = {} if precision == "fp32" else {"precision": precision}  # older trees: fp32
        cfg = TrainConfig(out=tmp, method=method, bits=bits, measurements=100,
                          sparsity=100 if method == "sdlss" else None, epochs=1,
                          batch_size=batch, threads=threads, **extra)
        trainer = Trainer(cfg, images[:-2], images[-2:])
        trainer.generator.train()
        trainer.sensing.train()
        step = getattr(trainer, "train_step", None) or (lambda x: _step_before(trainer, x))
        tree = str(Path(qgen_infer.__file__).resolve().parents[1])
        print(json.dumps({"tree": f"{tree} ({precision})"}), flush=True)
        for i, _ in enumerate(sys.stdin):
            x = images[(i % 4) * batch:(i % 4 + 1) * batch]
            t0, c0 = time.perf_counter(), time.process_time()
            step(x)
            print(json.dumps({"s": time.perf_counter() - t0, "cpu": time.process_time() - c0}),
                  flush=True)


def _step_before(trainer, x):  # noqa: ANN001, ANN202 - the loop body of trees without train_step
    from qgen_infer.train.objective import meta_learning_losses

    losses = meta_learning_losses(
        x, trainer.generator, trainer.sensing, trainer.log_step_size, trainer.solver,
        gdl_weight=trainer.cfg.gdl_weight, rng=trainer.rng,
        data_pairs=trainer.cfg.srec_data_pairs)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._backward(losses)
    trainer.optimizer.step()


class Worker:
    def __init__(self, tree: str, threads: int, batch: int, args: argparse.Namespace) -> None:
        tree, _, assignments = tree.partition("+")
        tree, _, precision = tree.partition(":")
        extra = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
        env = {**os.environ, **extra, "PYTHONPATH": str(Path(tree).resolve()),
               "OMP_NUM_THREADS": str(threads)}
        self.batch = batch
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--threads", str(threads), "--bits",
             str(args.bits), "--method", args.method, "--precision", precision or "fp32",
             "--batch-size", str(batch)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=tempfile.gettempdir())
        self.tree = json.loads(self._line())["tree"] + "".join(f" {k}={v}" for k, v in
                                                               extra.items()) + f", batch {batch}"

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker for {self.proc.args} ended (rc {self.proc.wait()})")
        return line

    def step(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the process) of one step."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        answer = json.loads(self._line())
        return float(answer["s"]), float(answer["cpu"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="*", default=["."],
                   help="source trees to time (first = A), each TREE[:bf16][+VAR=VALUE,...]: "
                        "qgen-train --precision, and environment variables for that worker")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--batch-size", type=int, nargs="+", default=[64],
                   help="images per step; each tree runs with each (default 64, the paper's)")
    p.add_argument("--pairs", type=int, default=5, help="timed turns per tree (after a warm-up)")
    p.add_argument("--bits", type=int, default=32, choices=(1, 2, 3, 4, 32))
    p.add_argument("--method", default="sdlss", choices=("sdlss", "dcs"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.threads[0], args.bits, args.method, args.precision, args.batch_size[0])
        return
    for threads in args.threads:
        workers = [Worker(tree, threads, batch, args) for tree in args.trees
                   for batch in args.batch_size]
        for w in workers:
            w.step()  # warm-up
        times: list[list[tuple[float, float]]] = [[] for _ in workers]
        for turn in range(args.pairs):
            for w, t in zip(workers, times, strict=True):
                t.append(w.step())
            print(f"threads {threads} turn {turn + 1} (wall / CPU s per step): "
                  + ", ".join(f"{t[-1][0]:.2f} / {t[-1][1]:.2f}" for t in times), flush=True)
        for w in workers:
            w.close()
        for w, t in zip(workers, times, strict=True):
            line = f"threads {threads}: {w.tree}: median " + " / ".join(
                f"{statistics.median(v[k] for v in t):.2f}" for k in (0, 1)) + " s/step"
            if t is not times[0]:
                pairs = list(zip(times[0], t, strict=True))
                per_image = w.batch / workers[0].batch
                line += ", median per-turn speed-up per image over the first " + " / ".join(
                    f"{statistics.median(per_image * a[k] / b[k] for a, b in pairs):.2f}x"
                    for k in (0, 1))
            print(line + " (wall / CPU)", flush=True)


if __name__ == "__main__":
    main()
