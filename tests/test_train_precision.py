"""Training speed options: ``--precision bf16`` (autocast networks, fp32 everything else), the
allocator setting, and ``Trainer.train_step`` as the loop's one step."""

from __future__ import annotations

import sys

import pytest
import torch

from qgen_infer.allocator import keep_freed_memory
from qgen_infer.checkpoint import load_checkpoint
from qgen_infer.cli.train import main as train_main
from qgen_infer.errors import QgenError
from qgen_infer.models import build_generator, build_sensing
from qgen_infer.train import TrainConfig, Trainer
from qgen_infer.train.precision import Autocast, in_precision

DCGAN = {"family": "dcgan", "image_shape": [3, 8, 8], "latent_dim": 12, "measurements": 5,
         "width": 4}


@pytest.fixture
def colour() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(21, 3, 8, 8, generator=g) * 2 - 1


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), measurements=5, latent_dim=12, sparsity=4, epochs=1,
                batch_size=7, steps=2)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("bits", [32, 1])
def test_bf16_networks_return_float32_close_to_fp32(bits):
    torch.manual_seed(0)
    gen, sense = build_generator({**DCGAN, "bits": bits}), build_sensing(DCGAN)
    z = torch.randn(3, 12)  # batch 3: odd, and BatchNorm in training mode
    assert in_precision(gen, "fp32") is gen
    x32, x16 = gen(z), in_precision(gen, "bf16")(z)
    assert x16.dtype == torch.float32 and x16.shape == x32.shape
    # bfloat16 keeps 8 significant bits: each layer adds ~2^-9 relative error
    torch.testing.assert_close(x16, x32, atol=0.05, rtol=0.05)
    assert not torch.equal(x16, x32)  # it did compute in bfloat16
    with torch.no_grad():
        y32, y16 = sense(x32), in_precision(sense, "bf16")(x32)
    assert y16.dtype == torch.float32
    assert float((y16 - y32).norm() / y32.norm()) < 0.05
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        in_precision(gen, "fp16")


def test_bf16_gradients_reach_the_fp32_master_weights():
    torch.manual_seed(0)
    gen = build_generator(DCGAN)
    z = torch.randn(4, 12, requires_grad=True)
    Autocast(gen, torch.bfloat16)(z).square().sum().backward()
    assert z.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.dtype == torch.float32
               for p in gen.parameters())


def test_train_step_is_the_loop_step(tmp_path, colour):
    """run() for one epoch of two batches equals two train_step calls on the same batches."""
    looped = Trainer(_cfg(tmp_path, out=str(tmp_path / "a")), colour[:14], colour[:1])
    looped.run()
    stepped = Trainer(_cfg(tmp_path, out=str(tmp_path / "b")), colour[:14], colour[:1])
    order = torch.randperm(14, generator=torch.Generator().manual_seed(0))  # epoch 0's order
    stepped.generator.train()
    stepped.sensing.train()
    for i in range(2):
        parts = stepped.train_step(colour[order[i * 7:(i + 1) * 7]])
        assert parts.shape == (4,) and not parts.requires_grad
    assert stepped.step == looped.step == 2
    for a, b in zip(looped.generator.state_dict().values(),
                    stepped.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bf16_training_runs_evaluates_in_fp32_and_resumes(tmp_path, colour):
    t = Trainer(_cfg(tmp_path, precision="bf16"), colour[:14], colour[14:])
    before = [p.detach().clone() for p in t.generator.parameters()]
    record = t.run()
    assert record["eval_psnr"] > 0 and all(p.dtype == torch.float32
                                           for p in t.generator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, t.generator.parameters(),
                                                     strict=True))
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt["train"]["settings"]["precision"] == "bf16"
    resumed = Trainer(_cfg(tmp_path, precision="bf16", epochs=2), colour[:14], colour[14:],
                      resume=True)
    assert resumed.run()["epoch"] == 2
    with pytest.raises(QgenError, match=r"precision='bf16' \(here 'fp32'\)"):
        Trainer(_cfg(tmp_path, epochs=3), colour[:14], colour[14:], resume=True)


def test_checkpoints_from_before_the_option_resume_as_fp32(tmp_path, colour):
    Trainer(_cfg(tmp_path), colour[:14], colour[14:]).run()
    path = tmp_path / "run" / "model.pt"
    ckpt = load_checkpoint(path)
    del ckpt["train"]["settings"]["precision"]
    torch.save(ckpt, path)
    with pytest.raises(QgenError, match=r"precision='fp32' \(here 'bf16'\)"):
        Trainer(_cfg(tmp_path, precision="bf16", epochs=2), colour[:14], colour[14:],
                resume=True)
    assert Trainer(_cfg(tmp_path, epochs=2), colour[:14], colour[14:], resume=True).epoch == 1


def test_unknown_precision_is_a_one_line_error(tmp_path, capsys, colour):
    with pytest.raises(QgenError, match="precision must be one of fp32, bf16"):
        Trainer(_cfg(tmp_path, precision="fp8"), colour[:14], colour[14:])
    code = train_main(["--out", str(tmp_path / "x"), "--precision", "fp8"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid choice: 'fp8'" in err and "Traceback" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_takes_effect_and_changes_no_arithmetic():
    a, b = torch.randn(64, 64, 32, 32), torch.randn(64, 64, 32, 32)
    before = a * b
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent: every Trainer calls it
    assert torch.equal(a * b, before)
