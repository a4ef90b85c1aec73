"""Training under DistributedDataParallel (``qgen_infer.distributed.training``).

What is held here:

* ``torchrun --nproc_per_node=2 qgen-train --batch-size 8`` follows the 1-process run with the
  same global batch: every epoch's logged losses and the final weights agree to float tolerance
  (the two differ only in the order of the sums), and only rank 0 writes the run folder;
* ``--resume`` at another world size: 1 epoch on one process, resumed for a 2nd on two, ends
  where the 2-epoch one-process run ends;
* Ctrl-C on the job: one line from rank 0 saying which epoch the checkpoint holds, the
  checkpoint and the log agree, and ``--resume`` continues from there;
* the colour (DCGAN) path on two ranks follows one process too: its BatchNorm normalises with
  the global batch (:mod:`qgen_infer.distributed.batch_norm`) and its S-REC data-data pairs
  cross the ranks' slices as they cross one process's batch;
* two forked ranks' global BatchNorm equals ``nn.BatchNorm2d`` on the whole batch: outputs,
  running statistics and the gradients of a loss on an input gradient (double backward);
* in this process (a gloo group of one): the DDP trainer equals the plain trainer; a global
  batch that does not split evenly and ``--sensing-loss srec`` are refused in one line; the
  random starts a rank is given are its rows of the whole batch's draw, and its data-data pairs
  with the image before its slice are the whole batch's.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.distributed import DistEnv
from qgen_infer.distributed.batch_norm import GlobalBatchNorm2d, synchronise_batch_norm
from qgen_infer.distributed.training import DistributedTrainer, local_batch
from qgen_infer.errors import QgenError
from qgen_infer.solve import sample_latent
from qgen_infer.train import TrainConfig, Trainer
from qgen_infer.train.objective import SolverSettings, meta_learning_losses

# each torchrun launch costs 5-10 s here (interpreters, torch imports, the rendezvous)
launched_by_torchrun = pytest.mark.slow
TRAIN_ARGS = ["--data", "folder", "--eval-size", "8", "-m", "8", "--latent-dim", "20", "-s", "5",
              "--batch-size", "8", "--steps", "2", "--threads", "1", "--seed", "3"]


def _blobs(n: int = 40, size: int = 12, seed: int = 0) -> np.ndarray:
    """Smooth greyscale blobs in [0, 1]: something a tiny MLP learns a little of in a step."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(0, size, (n, 2))
    return np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blobs")
    for i, img in enumerate(_blobs()):
        Image.fromarray((img * 255).astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    return folder


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _train(image_folder: Path, out: Path, nproc: int, *extra: str, expect: int = 0
           ) -> subprocess.CompletedProcess:
    script = str(Path(sys.executable).with_name("qgen-train"))
    args = [*TRAIN_ARGS, "--data-root", str(image_folder), "--out", str(out), *extra]
    cmd = [script, *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", script, *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == (expect == 0), done.stderr[-3000:]
    return done


def _log(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_trajectory(a: Path, b: Path) -> None:
    la, lb = _log(a), _log(b)
    assert [r["epoch"] for r in la] == [r["epoch"] for r in lb]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        for key in ("loss", "measurement", "isometry", "gdl", "step_size", "eval_psnr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["epoch"], key)
    ca, cb = load_checkpoint(a / "model.pt"), load_checkpoint(b / "model.pt")
    assert torch.equal(ca["rng_state"], cb["rng_state"])  # the same draws, in the same order
    # Adam divides by the gradient's running RMS, so rounding differences grow over the steps:
    # one process run twice, its initial weights scaled by 1 + 1e-7 noise the second time,
    # ended 1.9e-4 apart in G's weights and 7.5e-4 in the measurement differences below (of
    # size 0.85; A's output bias, whose gradient is ~1e-7 because it cancels in every loss
    # term, 5e-3 apart). The tolerances are a few times those.
    for name, value in ca["generator"].items():
        torch.testing.assert_close(cb["generator"][name], value, rtol=1e-4, atol=5e-4)
    x = torch.from_numpy(2 * _blobs(16, seed=1) - 1).float().unsqueeze(1)
    ya, yb = (build_from_checkpoint(c)[1].eval()(x).detach() for c in (ca, cb))
    torch.testing.assert_close(yb - yb[:1], ya - ya[:1], rtol=1e-3, atol=2e-3)


@pytest.fixture(scope="module")
def one_process_run(image_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    _train(image_folder, out, 1, "--epochs", "2")
    return out


@launched_by_torchrun
def test_two_ranks_follow_one_process_with_the_same_global_batch(image_folder, one_process_run,
                                                                 tmp_path):
    out = tmp_path / "run"
    _train(image_folder, out, 2, "--epochs", "2")
    _assert_same_trajectory(one_process_run, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "log.jsonl", "model.pt"]
    assert len(_log(out)) == 2  # written once, by rank 0


@launched_by_torchrun
def test_resume_on_two_ranks_from_a_one_process_checkpoint(image_folder, one_process_run,
                                                           tmp_path):
    out = tmp_path / "run"
    _train(image_folder, out, 1, "--epochs", "1")
    _train(image_folder, out, 2, "--epochs", "2", "--resume")
    _assert_same_trajectory(one_process_run, out)


# -- in this process ------------------------------------------------------------------------------

@pytest.fixture
def images() -> torch.Tensor:
    return torch.from_numpy(2 * _blobs(40) - 1).float().unsqueeze(1)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), measurements=8, latent_dim=20, sparsity=5, epochs=2,
                batch_size=8, steps=2, seed=3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def group_of_one():
    """A gloo process group of one rank, in this process."""
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield DistEnv(rank=0, world_size=1)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # 8 s on 2 busy cores
def test_ddp_trainer_of_one_rank_equals_the_plain_trainer(tmp_path, images, group_of_one):
    plain = Trainer(_cfg(tmp_path / "a"), images[:32], images[32:])
    plain.run()
    ddp = DistributedTrainer(_cfg(tmp_path / "b"), images[:32], images[32:], env=group_of_one)
    ddp.run()
    assert _log(tmp_path / "a" / "run") and ddp.step == plain.step == 8
    for p, q in zip([*plain.generator.parameters(), *plain.sensing.parameters()],
                    [*ddp.generator.parameters(), *ddp.sensing.parameters()], strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_uneven_global_batch_and_srec_are_refused(tmp_path):
    assert local_batch(_cfg(tmp_path, batch_size=8), 32, 2) == 4
    assert local_batch(_cfg(tmp_path, batch_size=64), 6, 3) == 2  # the batch is at most the data
    with pytest.raises(QgenError, match="global batch 7 .* split evenly across the 2 processes"):
        local_batch(_cfg(tmp_path, batch_size=7), 32, 2)
    with pytest.raises(QgenError, match="srec is not supported under torchrun"):
        local_batch(_cfg(tmp_path, sensing_loss="srec"), 32, 2)


@launched_by_torchrun
def test_a_setting_error_is_one_line_from_rank_0(image_folder, tmp_path):
    done = _train(image_folder, tmp_path / "run", 2, "--epochs", "1", "--batch-size", "7",
                  expect=2)
    ours = [line for line in done.stderr.splitlines() if line.startswith("qgen-train")]
    assert ours == ["qgen-train: error: the global batch 7 (--batch-size) must split evenly "
                    "across the 2 processes"]
    assert not (tmp_path / "run").exists()


def _tiny_step_parts() -> tuple[torch.nn.Module, torch.nn.Module, SolverSettings, torch.Tensor]:
    """A 12x12 MLP generator and sensing net (seeded), T = 2 solver settings, log beta."""
    from qgen_infer.models import build_generator, build_sensing

    torch.manual_seed(0)
    cfg = {"family": "mlp", "image_shape": [1, 12, 12], "latent_dim": 20, "measurements": 8,
           "hidden": 16, "negative_slope": 0.2, "bits": 32}
    return (build_generator(cfg), build_sensing(cfg), SolverSettings("sdlss", 20, 5, steps=2),
            torch.tensor(-4.0))


def test_given_starts_are_the_rows_of_the_whole_batch_draw(images):
    """meta_learning_losses with z0 = rows of one draw equals drawing those rows itself."""
    gen, sense, solver, beta = _tiny_step_parts()
    x = images[:6]
    drawn = meta_learning_losses(x, gen, sense, beta, solver, gdl_weight=0.1,
                                 rng=torch.Generator().manual_seed(9))
    z0 = sample_latent(6, 20, 5, generator=torch.Generator().manual_seed(9))
    given = meta_learning_losses(x, gen, sense, beta, solver, gdl_weight=0.1,
                                 rng=torch.Generator(), z0=z0)
    assert torch.equal(drawn.total, given.total)
    # a rank's half of the batch with its rows of the starts: the same per-image losses
    half = meta_learning_losses(x[3:], gen, sense, beta, solver, gdl_weight=0.1,
                                rng=torch.Generator(), z0=z0[3:])
    first = meta_learning_losses(x[:3], gen, sense, beta, solver, gdl_weight=0.1,
                                 rng=torch.Generator(), z0=z0[:3])
    torch.testing.assert_close((half.total + first.total) / 2, drawn.total)


def test_a_ranks_data_pairs_with_the_image_before_its_slice_are_the_whole_batchs(images):
    """The S-REC data-data pair pairs each image with the one before it in the global batch:
    two slices, each given the image before it, average to the whole batch's losses."""
    gen, sense, solver, beta = _tiny_step_parts()
    x = images[:6]
    z0 = sample_latent(6, 20, 5, generator=torch.Generator().manual_seed(9))

    def losses(rows: slice, before: torch.Tensor | None) -> torch.Tensor:
        out = meta_learning_losses(x[rows], gen, sense, beta, solver, gdl_weight=0.1,
                                   rng=torch.Generator(), z0=z0[rows], data_pairs=True,
                                   pair_before=before)
        return torch.stack([out.total, out.isometry])

    whole = losses(slice(0, 6), None)
    torch.testing.assert_close(losses(slice(0, 6), x[-1:]), whole)  # the same pairs
    halves = (losses(slice(0, 3), x[-1:]) + losses(slice(3, 6), x[2:3])) / 2
    torch.testing.assert_close(halves, whole)
    # the pairs within each slice alone (what a rank formed before) are another loss
    alone = (losses(slice(0, 3), None) + losses(slice(3, 6), None)) / 2
    assert not torch.allclose(alone, whole, rtol=1e-4)


def _batch_norm_rank(rank: int, store_path: str, out_path: str) -> None:
    """One of two ranks: GlobalBatchNorm2d on its half of the batch; saves what it computed."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            store=dist.FileStore(store_path, 2))
    try:
        torch.save(_batch_norm_case(GlobalBatchNorm2d, slice(3 * rank, 3 * rank + 3)), out_path)
    finally:
        dist.destroy_process_group()


def _batch_norm_case(kind: type, rows: slice) -> dict[str, torch.Tensor]:
    """BatchNorm ``kind`` inside a loss on an input gradient, as Algorithm 1 differentiates
    through its solver: out, the gradients of that loss, the running statistics."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 5, 7, generator=g, dtype=torch.float64)[rows].requires_grad_(True)
    target = torch.randn(6, 3, 5, 7, generator=g, dtype=torch.float64)[rows]
    bn = kind(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
    out = bn(torch.tanh(x))
    inner = ((out - target) ** 2).sum()
    (grad_x,) = torch.autograd.grad(inner, x, create_graph=True)
    outer = (grad_x ** 2).sum() + out.sum()
    outer.backward()
    return {"out": out.detach(), "grad_x": grad_x.detach(), "x_grad": x.grad,
            "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def test_global_batch_norm_on_two_ranks_equals_batch_norm_on_the_whole_batch(tmp_path):
    whole = _batch_norm_case(torch.nn.BatchNorm2d, slice(0, 6))
    ctx = multiprocessing.get_context("fork")  # the ranks inherit this process's imports
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    ranks = [ctx.Process(target=_batch_norm_rank, args=(r, str(tmp_path / "store"), str(o)))
             for r, o in enumerate(outs)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
    assert [p.exitcode for p in ranks] == [0, 0]
    a, b = (torch.load(o) for o in outs)
    for name in ("out", "grad_x", "x_grad"):  # rows: each rank holds its half
        torch.testing.assert_close(torch.cat([a[name], b[name]]), whole[name])
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(a[name], whole[name])
        torch.testing.assert_close(b[name], whole[name])
    # DDP averages the ranks' parameter gradients; each rank's loss is its half's sum here
    for name in ("weight_grad", "bias_grad"):
        torch.testing.assert_close(a[name] + b[name], whole[name])


def test_batch_norm_is_synchronised_in_place():
    from qgen_infer.models import build_generator

    gen = build_generator({"family": "dcgan", "image_shape": [3, 16, 16], "latent_dim": 8,
                           "measurements": 4, "width": 4, "bits": 32})
    params = [id(p) for p in gen.parameters()]
    assert synchronise_batch_norm(gen) == 3
    assert [id(p) for p in gen.parameters()] == params  # an optimizer's parameters stay
    assert all(type(m) is not torch.nn.BatchNorm2d for m in gen.modules())
    x = torch.randn(4, 8)
    gen.train()
    assert gen(x).shape == (4, 3, 16, 16)  # no process group: plain BatchNorm


COLOUR_ARGS = ["--data", "folder", "--eval-size", "4", "-m", "6", "--latent-dim", "12", "-s",
               "4", "--batch-size", "8", "--steps", "2", "--threads", "1", "--seed", "3",
               "--epochs", "2"]


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """24 16x16 RGB blobs: the DCGAN family (BatchNorm, data-data pairs by default)."""
    folder = tmp_path_factory.mktemp("colour")
    channels = [_blobs(24, 16, seed=c) for c in range(3)]
    for i in range(24):
        rgb = np.stack([ch[i] for ch in channels], -1)
        Image.fromarray((rgb * 255).astype(np.uint8), mode="RGB").save(folder / f"{i:03d}.png")
    return folder


@launched_by_torchrun
def test_two_ranks_train_the_dcgan_as_one_process(colour_folder, tmp_path):
    """Measured here: epoch 1's loss 1.5e-7 apart (without the global BatchNorm 6.5e-4, with
    the pairs inside each slice 4.3e-3); later epochs drift as one process does between 1 and
    2 threads (7e-6 in the loss, 1.4e-3 in the tiny measurement loss; 1 vs 2 threads: 9e-6 and
    1.9e-3)."""
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        script = str(Path(sys.executable).with_name("qgen-train"))
        args = [*COLOUR_ARGS, "--data-root", str(colour_folder), "--out", str(out)]
        cmd = [script, *args] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", script, *args]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = _log(out)
    one, two = runs[1], runs[2]
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["srec_data_pairs"]
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert two[0]["isometry"] == pytest.approx(one[0]["isometry"], rel=1e-5)
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "isometry", "gdl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["epoch"], key)
        assert b["measurement"] == pytest.approx(a["measurement"], abs=1e-4)
        assert b["step_size"] == pytest.approx(a["step_size"], rel=3e-3)


@launched_by_torchrun
def test_ctrl_c_stops_with_one_line_and_resume_continues(image_folder, tmp_path):
    out = tmp_path / "run"
    script = str(Path(sys.executable).with_name("qgen-train"))
    args = [*TRAIN_ARGS, "--data-root", str(image_folder), "--out", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           script, *args, "--epochs", "500"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # a group, as in a terminal
    deadline = time.monotonic() + 120
    while not (out / "model.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    epochs = load_checkpoint(out / "model.pt")["train"]["epochs"]
    ours = [line for line in err.splitlines() if line.startswith("qgen-train")]
    assert ours == [f"qgen-train: stopped by SIGINT; {out}/model.pt holds epoch {epochs}: rerun "
                    f"with --resume to continue"], err
    assert not [line for line in err.splitlines()
                if line.strip().startswith("File ") and "qgen_infer" in line], err
    assert 1 <= epochs < 500 and len(_log(out)) == epochs  # checkpoint and log agree
    _train(image_folder, out, 2, "--epochs", str(epochs + 1), "--resume")
    assert [r["epoch"] for r in _log(out)] == list(range(1, epochs + 2))
