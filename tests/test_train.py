"""Algorithm-1 training: losses, checkpoints, resume, reproducibility, warm start, CLI errors."""

import json

import numpy as np
import pytest
import torch

from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.cli.evaluate import main as eval_main
from qgen_infer.cli.train import main as train_main
from qgen_infer.errors import FormatError, QgenError
from qgen_infer.models import QLinear
from qgen_infer.quant import quantize_codes
from qgen_infer.train import (
    DEFAULT_LR,
    DEFAULT_SREC_DATA_PAIRS,
    DEFAULT_STEP_SIZE_LR,
    TrainConfig,
    Trainer,
    gradient_difference_loss,
    kept_checkpoint,
)
from qgen_infer.train.objective import meta_learning_losses


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    # smooth blobs in [-1, 1]: something a 16x16 MLP can learn a little of in a few steps
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    centres = torch.rand(60, 2, generator=g) * 12
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    return (2 * torch.exp(-d2 / 8) - 1).unsqueeze(1)


def _cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), measurements=8, latent_dim=20, sparsity=5, epochs=2,
                batch_size=16, steps=2)
    base.update(kw)
    return TrainConfig(**base)


def _train(cfg, images, resume=False):
    t = Trainer(cfg, images[:48], images[48:], resume=resume)
    t.run()
    return t


def test_gdl_is_zero_for_equal_images_and_sees_edges():
    x = torch.rand(2, 1, 5, 5)
    assert gradient_difference_loss(x, x) == 0
    # a constant shift has the same gradients (up to float rounding of the shifted values)
    assert gradient_difference_loss(x, x + 3.0) < 1e-10
    y = x.clone()
    y[0, 0, 2, 2] += 1.0
    # one changed pixel changes 4 differences by 1 each; mean over a batch of 2
    torch.testing.assert_close(gradient_difference_loss(x, y), torch.tensor(2.0))


def test_training_writes_checkpoint_and_log(tmp_path, images):
    t = _train(_cfg(tmp_path, bits=2), images)
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")  # weights_only=True inside
    assert ckpt["train"]["epochs"] == 2 and ckpt["train"]["final"]
    assert ckpt["config"]["bits"] == 2 and ckpt["solver"]["sparsity"] == 5
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    rec = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rec] == [1, 2]
    assert all("eval_psnr" in r and r["steps_per_s"] > 0 for r in rec)
    g, _ = build_from_checkpoint(ckpt)
    # the rebuilt generator fake-quantizes exactly like the trained one
    z = torch.randn(3, 20)
    t.generator.eval()
    assert torch.equal(g(z), t.generator(z))
    fc = next(m for m in g.modules() if isinstance(m, QLinear))
    assert fc.quantized_weight().unique().numel() <= 4


def test_training_updates_all_parts(tmp_path, images):
    cfg = _cfg(tmp_path, epochs=1)
    t = Trainer(cfg, images[:48], images[48:])
    before = [p.detach().clone() for p in (*t.generator.parameters(), *t.sensing.parameters())]
    beta0 = float(t.log_step_size.detach())
    t.run()
    after = list((*t.generator.parameters(), *t.sensing.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert float(t.log_step_size.detach()) != beta0


def test_seeded_runs_are_reproducible_and_resume_is_exact(tmp_path, images):
    straight = _train(_cfg(tmp_path / "a", epochs=3), images)
    _train(_cfg(tmp_path / "b", epochs=1), images)
    resumed = _train(_cfg(tmp_path / "b", epochs=3), images, resume=True)
    for p, q in zip(straight.generator.state_dict().values(),
                    resumed.generator.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    again = _train(_cfg(tmp_path / "c", epochs=3), images)
    assert torch.equal(again.log_step_size, straight.log_step_size)


def test_default_learning_rate_is_the_network_familys(tmp_path, images):
    mlp = Trainer(_cfg(tmp_path / "m"), images[:48], images[48:])
    assert mlp.cfg.lr == DEFAULT_LR["mlp"] == 1e-3
    colour = torch.rand(20, 3, 8, 8) * 2 - 1
    dcgan = Trainer(_cfg(tmp_path / "d"), colour[:16], colour[16:])
    assert dcgan.net["family"] == "dcgan" and dcgan.cfg.lr == DEFAULT_LR["dcgan"] == 2e-4
    assert [g["lr"] for g in dcgan.optimizer.param_groups] == [2e-4, 1e-2]
    assert DEFAULT_STEP_SIZE_LR == {"mlp": None, "dcgan": 1e-2}
    assert mlp.cfg.step_size_lr == 1e-3  # None: the network's rate
    dcgan.run()
    saved = load_checkpoint(tmp_path / "d" / "run" / "model.pt")["train"]["settings"]
    assert saved["lr"] == 2e-4 and saved["step_size_lr"] == 1e-2  # the rates used, not None
    assert DEFAULT_SREC_DATA_PAIRS == {"mlp": False, "dcgan": True}
    assert saved["srec_data_pairs"] is True and mlp.cfg.srec_data_pairs is False
    assert Trainer(_cfg(tmp_path / "n", srec_data_pairs=False), colour[:16],
                   colour[16:]).cfg.srec_data_pairs is False
    mine = Trainer(_cfg(tmp_path / "x", lr=5e-4), colour[:16], colour[16:])
    assert mine.cfg.lr == 5e-4
    for bad in (0.0, -1e-3, float("inf")):
        with pytest.raises(QgenError, match="learning rate"):
            Trainer(_cfg(tmp_path / "b", lr=bad), images[:48], images[48:])


def _one_group_adam(t):
    """The optimizer as it was before log β had its own group (plus an empty second group, so
    that the trainer's per-group rates still apply)."""
    params = [*t.generator.parameters(), *t.sensing.parameters(), t.log_step_size]
    return torch.optim.Adam([{"params": params}, {"params": []}], lr=t.cfg.lr)


def test_step_size_rate_defaults_to_lr_and_then_trains_exactly_as_one_adam_group(tmp_path, images):
    two = Trainer(_cfg(tmp_path / "a", epochs=2), images[:48], images[48:])
    assert [g["lr"] for g in two.optimizer.param_groups] == [1e-3, 1e-3]
    one = Trainer(_cfg(tmp_path / "b", epochs=2), images[:48], images[48:])
    one.optimizer = _one_group_adam(one)
    one.run()
    two.run()
    for p, q in zip(one.generator.state_dict().values(), two.generator.state_dict().values(),
                    strict=True):
        assert torch.equal(p, q)
    assert torch.equal(one.log_step_size, two.log_step_size)


def test_step_size_moves_at_its_own_rate(tmp_path, images):
    # one Adam step (16 images, batch 16) moves each parameter by at most its rate (by the rate
    # exactly for gradients well above Adam's eps; log β's is ~1e-8 at initialisation)
    t = Trainer(_cfg(tmp_path, epochs=1, lr_schedule="constant", step_size_lr=0.05),
                images[:16], images[48:])
    beta0 = float(t.log_step_size.detach())
    w0 = t.sensing.fc3.bias.detach().clone()
    t.run()
    assert 0.02 < abs(float(t.log_step_size.detach()) - beta0) <= 0.05 + 1e-6
    assert (t.sensing.fc3.bias.detach() - w0).abs().max() <= 1e-3 + 1e-7
    saved = load_checkpoint(tmp_path / "run" / "model.pt")["train"]["settings"]
    assert saved["step_size_lr"] == 0.05
    # the cosine schedule scales both rates alike
    c = Trainer(_cfg(tmp_path / "c", epochs=3, step_size_lr=0.05), images[:48], images[48:])
    c.run()
    lr, beta_lr = (g["lr"] for g in c.optimizer.param_groups)
    assert lr == pytest.approx(c.learning_rate(2)) and lr < 1e-3
    assert beta_lr == pytest.approx(50 * lr)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(QgenError, match="step size's learning rate"):
            Trainer(_cfg(tmp_path / "b", step_size_lr=bad), images[:48], images[48:])


def _step_gradients(t, seed=5):
    """The gradients t._backward leaves for one batch, and that batch's losses recomputed."""
    x = t.train_images[:16]

    def losses():
        return meta_learning_losses(x, t.generator, t.sensing, t.log_step_size, t.solver,
                                    gdl_weight=t.cfg.gdl_weight,
                                    rng=torch.Generator().manual_seed(seed))
    t.optimizer.zero_grad(set_to_none=True)
    t._backward(losses())
    return [p.grad for p in t.sensing.parameters()], [p.grad for p in t.generator.parameters()], \
        losses()


@pytest.mark.parametrize("sensing_loss", ["total", "srec"])
def test_sensing_loss_chooses_what_trains_the_sensing_network(tmp_path, images, sensing_loss):
    t = Trainer(_cfg(tmp_path, sensing_loss=sensing_loss), images[:48], images[48:])
    t.sensing.train()
    sensing_grads, generator_grads, again = _step_gradients(t)
    phi = list(t.sensing.parameters())
    theta = list(t.generator.parameters())
    # θ always follows the whole loss of Eq. (3)
    for got, want in zip(generator_grads, torch.autograd.grad(again.total, theta,
                                                              retain_graph=True), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    want = again.total if sensing_loss == "total" else again.isometry
    other = again.isometry if sensing_loss == "total" else again.total
    differs = False
    for got, w, o in zip(sensing_grads, torch.autograd.grad(want, phi, retain_graph=True),
                         torch.autograd.grad(other, phi), strict=True):
        torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-9)
        differs |= not torch.allclose(w, o)
    assert differs  # the two choices are different updates of φ


def test_sensing_loss_must_be_known(tmp_path, images):
    with pytest.raises(QgenError, match="sensing_loss"):
        Trainer(_cfg(tmp_path, sensing_loss="measurement"), images[:48], images[48:])


def test_srec_data_pairs_add_the_data_data_pair_to_the_isometry_mean(tmp_path, images):
    t = Trainer(_cfg(tmp_path), images[:48], images[48:])
    t.sensing.eval()  # BatchNorm on running statistics: A(x) the same in every call
    x = t.train_images[:7]  # odd batch: the roll pairs image i with image i - 1

    def losses(data_pairs, batch=x):
        return meta_learning_losses(batch, t.generator, t.sensing, t.log_step_size, t.solver,
                                    gdl_weight=0.1, rng=torch.Generator().manual_seed(3),
                                    data_pairs=data_pairs)
    dcs, both = losses(False), losses(True)
    with torch.no_grad():
        ax = t.sensing(x)
        r = torch.stack([((ax[i] - ax[i - 1]).norm() - (x[i] - x[i - 1]).norm()) ** 2
                         for i in range(len(x))]).mean()
    assert float(r) > 1e-3
    torch.testing.assert_close(both.isometry, (3 * dcs.isometry + r) / 4, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.measurement, dcs.measurement)
    torch.testing.assert_close(both.total - both.isometry, dcs.total - dcs.isometry)
    # one image: the data pair is the image with itself, r = 0
    one = x[:1]
    torch.testing.assert_close(losses(True, one).isometry, 3 * losses(False, one).isometry / 4)
    # the option reaches the training steps and the checkpoint's settings
    runs = {flag: _train(_cfg(tmp_path / str(flag), epochs=1, srec_data_pairs=flag), images)
            for flag in (False, True)}
    assert not torch.equal(runs[False].sensing.fc1.weight, runs[True].sensing.fc1.weight)
    saved = load_checkpoint(tmp_path / "True" / "run" / "model.pt")["train"]["settings"]
    assert saved["srec_data_pairs"] is True


def test_resume_converts_a_one_group_optimizer_state(tmp_path, images):
    old = Trainer(_cfg(tmp_path, epochs=1), images[:48], images[48:])
    old.optimizer = _one_group_adam(old)
    old.run()
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    # as saved before log β had its own group and its own rate
    del ckpt["optimizer"]["param_groups"][1]
    del ckpt["train"]["settings"]["step_size_lr"]
    torch.save(ckpt, tmp_path / "run" / "model.pt")
    with pytest.raises(QgenError, match=r"step_size_lr=0.001 \(here 0.01\)"):
        Trainer(_cfg(tmp_path, epochs=2, step_size_lr=0.01), images[:48], images[48:],
                resume=True)
    t = Trainer(_cfg(tmp_path, epochs=2), images[:48], images[48:], resume=True)
    groups = t.optimizer.param_groups
    assert [len(g["params"]) for g in groups] == [len(groups[0]["params"]), 1]
    assert groups[1]["lr"] == groups[0]["lr"] == 1e-3
    assert groups[1]["params"][0] is t.log_step_size
    moments = t.optimizer.state[t.log_step_size]
    assert torch.equal(moments["exp_avg"], old.optimizer.state[old.log_step_size]["exp_avg"])
    t.run()
    assert t.epoch == 2


def test_warm_start_at_another_bit_width(tmp_path, images):
    _train(_cfg(tmp_path / "fp", bits=32, epochs=1), images)
    t = Trainer(_cfg(tmp_path / "q", bits=1, epochs=1, init_from=str(tmp_path / "fp/run/model.pt")),
                images[:48], images[48:])
    fp = load_checkpoint(tmp_path / "fp/run/model.pt")
    assert torch.equal(t.generator.fc1.weight, fp["generator"]["fc1.weight"])
    q = quantize_codes(t.generator.fc1.weight, t.generator.fc1.quant)
    assert torch.equal(t.generator.fc1.quantized_weight(), q.dequantize())


def test_keep_epochs_keeps_that_epochs_checkpoint_while_model_pt_moves_on(tmp_path, images):
    t = _train(_cfg(tmp_path, epochs=3, keep_epochs=(1, 2)), images)
    kept = {e: load_checkpoint(kept_checkpoint(t.out, e)) for e in (1, 2)}
    assert [kept[e]["train"]["epochs"] for e in (1, 2)] == [1, 2]
    assert not kept_checkpoint(t.out, 3).exists()  # model.pt holds the last epoch
    last = load_checkpoint(t.out / "model.pt")
    assert last["train"]["epochs"] == 3
    assert not torch.equal(kept[1]["generator"]["fc1.weight"], last["generator"]["fc1.weight"])
    # a run warm-started from a kept epoch starts from exactly that state
    w = Trainer(_cfg(tmp_path / "w", bits=1, epochs=1, init_from=str(kept_checkpoint(t.out, 1))),
                images[:48], images[48:])
    assert torch.equal(w.generator.fc1.weight, kept[1]["generator"]["fc1.weight"])


def test_overflow_rate_reaches_the_layers_and_the_checkpoint(tmp_path, images):
    """--overflow-rate is the generator layers' quantizer during training, is saved in the
    checkpoint's config, and a warm start from a max|w| checkpoint may change it."""
    _train(_cfg(tmp_path / "a", bits=2, epochs=1), images)
    t = Trainer(_cfg(tmp_path / "b", bits=2, epochs=1, overflow_rate=0.2,
                     init_from=str(tmp_path / "a/run/model.pt")), images[:48], images[48:])
    assert {m.quant.overflow_rate for m in t.generator.modules() if hasattr(m, "quant")} == {0.2}
    t.run()
    assert load_checkpoint(tmp_path / "b/run/model.pt")["config"]["overflow_rate"] == 0.2
    q = quantize_codes(t.generator.fc1.weight, t.generator.fc1.quant)
    assert torch.equal(t.generator.fc1.quantized_weight(), q.dequantize())
    assert (q.codes == 0).any() or (q.codes == 3).any()


def test_resume_refuses_a_different_network(tmp_path, images):
    _train(_cfg(tmp_path, bits=4, epochs=1), images)
    with pytest.raises(QgenError, match=r"bits=4 \(here 2\)"):
        Trainer(_cfg(tmp_path, bits=2, epochs=2), images[:48], images[48:], resume=True)


@pytest.mark.parametrize("change", [
    {"srec_data_pairs": True}, {"lr": 5e-4}, {"step_size_lr": 0.05}, {"sensing_loss": "srec"},
    {"gdl_weight": 0.0}, {"batch_size": 8}, {"seed": 1}, {"lr_schedule": "constant"},
    {"sparsity": 6}, {"steps": 3}, {"project": False}, {"method": "dcs"},
])
def test_resume_refuses_settings_that_change_the_training(tmp_path, images, change):
    """Resuming under another loss, rate, batch or solver would splice two runs into one
    checkpoint; the error names the setting with both values."""
    _train(_cfg(tmp_path, epochs=1), images)
    (name, value), = change.items()
    with pytest.raises(QgenError, match=rf"{name}=.* \(here {value!r}\)"):
        Trainer(_cfg(tmp_path, epochs=2, **change), images[:48], images[48:], resume=True)


def test_resume_may_change_length_evaluation_and_an_explicit_default(tmp_path, images):
    _train(_cfg(tmp_path, epochs=1), images)
    # the MLP's default rate given explicitly is the same run; eval and length settings are free
    t = _train(_cfg(tmp_path, epochs=2, lr=DEFAULT_LR["mlp"], eval_restarts=2,
                    initial_step_size=0.5), images, resume=True)
    assert t.epoch == 2


def test_resume_takes_options_added_later_at_their_earlier_behaviour(tmp_path, images):
    """A checkpoint saved before --srec-data-pairs trained without the pair: it resumes with
    False and refuses True."""
    _train(_cfg(tmp_path, epochs=1), images)
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    for name in ("srec_data_pairs", "step_size_lr", "sensing_loss"):
        del ckpt["train"]["settings"][name]
    torch.save(ckpt, tmp_path / "run" / "model.pt")
    with pytest.raises(QgenError, match=r"srec_data_pairs=False \(here True\)"):
        Trainer(_cfg(tmp_path, epochs=2, srec_data_pairs=True), images[:48], images[48:],
                resume=True)
    assert _train(_cfg(tmp_path, epochs=2), images, resume=True).epoch == 2


def test_cli_resume_takes_the_checkpoints_settings_and_refuses_a_conflict(tmp_path, capsys):
    out = str(tmp_path / "r")
    first = ["--out", out, "--epochs", "1", "--batch-size", "128", "--bits", "1", "-s", "20",
             "--gdl-weight", "0.3", "--no-project", "--srec-data-pairs"]
    assert train_main(first) == 0
    # nothing but the length given: bits, s, GDL weight, projection and the pair come back
    assert train_main(["--out", out, "--resume", "--epochs", "2"]) == 0
    ckpt = load_checkpoint(tmp_path / "r" / "model.pt")
    settings = ckpt["train"]["settings"]
    assert ckpt["train"]["epochs"] == 2 and ckpt["config"]["bits"] == 1
    assert (settings["gdl_weight"], settings["project"], settings["srec_data_pairs"],
            settings["sparsity"]) == (0.3, False, True, 20)
    capsys.readouterr()
    assert train_main(["--out", out, "--resume", "--epochs", "3", "--gdl-weight", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "gdl_weight=0.3 (here 0.1)" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "r" / "model.pt")["train"]["epochs"] == 2
    assert train_main(["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "drop --resume" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_saves_a_checkpoint_that_resumes_on_the_cpu(tmp_path, images):
    on_gpu = _train(_cfg(tmp_path, epochs=1, device="cuda"), images)
    assert next(on_gpu.generator.parameters()).is_cuda
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    tensors = [*ckpt["generator"].values(), *ckpt["sensing"].values(), ckpt["log_step_size"]]
    assert all(v.device.type == "cpu" for v in tensors)
    resumed = _train(_cfg(tmp_path, epochs=2, device="cpu"), images, resume=True)
    assert resumed.epoch == 2 and torch.isfinite(resumed.log_step_size).all()
    assert not next(resumed.generator.parameters()).is_cuda


def test_cli_device_auto_trains_where_it_can(tmp_path):
    out = tmp_path / "auto"
    assert train_main(["--out", str(out), "--epochs", "1", "--batch-size", "128", "--bits", "1",
                       "-s", "20", "--device", "auto"]) == 0
    settings = load_checkpoint(out / "model.pt")["train"]["settings"]
    assert settings["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_corrupt_checkpoint_is_a_format_error(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError):
        load_checkpoint(p)
    torch.save({"format": "something-else"}, p)
    with pytest.raises(FormatError, match="not a qgen checkpoint"):
        load_checkpoint(p)


@pytest.mark.parametrize("argv,needle", [
    (["--bits", "5"], "invalid choice"),
    (["--data", "imagenet"], "invalid choice"),
    (["-m", "0"], "measurements"),
    (["-m", "99999999999"], "exceeds"),
    (["-s", "1000"], "sparsity"),
    (["--epochs", "0"], "epochs"),
    (["--data", "mnist", "--data-root", "/nonexistent/folder"], "nonexistent"),
    (["--bits", "2", "--overflow-rate", "1.5"], "overflow_rate"),
    (["--overflow-rate", "-0.01"], "overflow_rate"),
    (["--grid", "symmetric"], "invalid choice"),
    (["--device", "tpu"], "--device"),
    (["--device", "bogus:x"], "--device"),
    (["--initial-step-size", "0"], "step size"),
    (["--lr", "0"], "learning rate"),
    (["--step-size-lr", "-1"], "step size's learning rate"),
    (["--initial-step-size=-1e-3"], "step size"),
    (["--keep-epochs", "0"], "counted from 1"),
    (["--keep-epochs", "four"], "expected epochs"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")]))
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    code = train_main(["--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


def test_cli_help_explains_and_exits_0(capsys):
    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "proximal" in out and "--resume" in out and "--bits" in out


def test_cli_train_then_eval_on_embedded_digits(tmp_path, capsys):
    out = tmp_path / "digits"
    assert train_main(["--out", str(out), "--epochs", "1", "--batch-size", "128",
                       "--bits", "4", "-s", "20", "--srec-data-pairs"]) == 0
    # the MLP default is off: the flag turns it on
    assert load_checkpoint(out / "model.pt")["train"]["settings"]["srec_data_pairs"] is True
    assert eval_main([str(out / "model.pt"), "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["bits"] == 4 and res["images"] == 297 and 5 < res["psnr"] < 60
    # every image's scores, whose means are the summary
    per = res["per_image"]
    assert len(per) == 297 and set(per[0]) == {"measurement_loss", "psnr", "ssim"}
    assert abs(np.mean([r["psnr"] for r in per]) - res["psnr"]) < 1e-4
    assert abs(np.mean([r["ssim"] for r in per]) - res["ssim"]) < 1e-5
    assert "PSNR" in capsys.readouterr().out


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    from qgen_infer.cli.demo import main as demo_main

    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--epochs", "1", "--bits", "2",
                      "--backend", "reference", "--restarts", "1"]) == 0
    text = capsys.readouterr().out
    assert "| 2 | 126,500 B | 16.0x |" in text  # 2-bit codes of the 16x16 MLP generator
    assert (out / "digits-2bit.qgen").is_file() and (out / "grid-2bit.png").is_file()


def test_grid_reaches_the_layers_and_the_checkpoint(tmp_path, images):
    """--grid mid-rise is the layers' quantizer during training and is saved in the config; a
    warm start from a mid-tread checkpoint may change it, a resume may not."""
    _train(_cfg(tmp_path / "a", bits=2, epochs=1), images)
    assert load_checkpoint(tmp_path / "a/run/model.pt")["config"]["grid"] == "mid-tread"
    t = Trainer(_cfg(tmp_path / "b", bits=2, epochs=1, grid="mid-rise",
                     init_from=str(tmp_path / "a/run/model.pt")), images[:48], images[48:])
    assert {m.quant.grid for m in t.generator.modules() if hasattr(m, "quant")} == {"mid-rise"}
    t.run()
    assert load_checkpoint(tmp_path / "b/run/model.pt")["config"]["grid"] == "mid-rise"
    q = quantize_codes(t.generator.fc1.weight, t.generator.fc1.quant)
    assert torch.equal(t.generator.fc1.quantized_weight(), q.dequantize())
    assert float(q.zero[0]) == 1.5
    # resuming under the other grid is refused, naming both
    with pytest.raises(QgenError, match="grid='mid-rise' \\(here 'mid-tread'\\)"):
        _train(_cfg(tmp_path / "b", bits=2, epochs=2), images, resume=True)
