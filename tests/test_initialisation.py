"""The calibrated start: A's gain to the isometry, β₀ from the first inner step's length."""

import math

import pytest
import torch
from torch import nn

from qgen_infer.checkpoint import load_checkpoint
from qgen_infer.errors import QgenError
from qgen_infer.models import build_generator, build_sensing, complete_config
from qgen_infer.solve import measurement_loss, sample_latent
from qgen_infer.train import TrainConfig, Trainer
from qgen_infer.train.initialisation import (
    calibrate_sensing,
    sensing_gain,
    step_size_for_movement,
)
from qgen_infer.train.objective import SolverSettings

# A colour net at its smallest: 3 x 8 x 8 images build the DCGAN family (spectrally normalised
# sensing convolutions), whose initial gain is the problem the calibration solves.
DCGAN = {"family": "dcgan", "image_shape": [3, 8, 8], "latent_dim": 24, "measurements": 10,
         "width": 4}


@pytest.fixture
def colour_images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(40, 3, 8, 8, generator=g) * 2 - 1


def test_sensing_gain_of_a_scaled_orthogonal_map_is_its_scale():
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    a = nn.Linear(12, 12, bias=True).double()
    with torch.no_grad():
        a.weight.copy_(2.5 * q)
    x = torch.randn(7, 12, dtype=torch.float64)  # odd: the 7th image is left unpaired
    assert sensing_gain(a, x) == pytest.approx(2.5, rel=1e-12)


def test_sensing_gain_needs_two_different_images():
    a = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="at least 2"):
        sensing_gain(a, torch.randn(1, 4))
    with pytest.raises(ValueError, match="different"):
        sensing_gain(a, torch.ones(4, 4))


@pytest.mark.parametrize("family", ["mlp", "dcgan"])
def test_calibration_makes_the_gain_one_and_scales_only_the_last_layer(family, colour_images):
    torch.manual_seed(0)
    if family == "mlp":
        cfg = complete_config({"family": "mlp", "image_shape": [1, 6, 6], "measurements": 5,
                               "hidden": 16})
        x = torch.rand(9, 1, 6, 6)
    else:
        cfg, x = complete_config(DCGAN), colour_images
    a = build_sensing(cfg).eval()  # eval: spectral norm's power iteration stands still
    before = {k: v.clone() for k, v in a.state_dict().items()}
    before_gain = sensing_gain(a, x)
    assert calibrate_sensing(a, x) == pytest.approx(before_gain, rel=1e-6)
    assert sensing_gain(a, x) == pytest.approx(1.0, rel=1e-5)
    after = a.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"} if family == "dcgan" else {"fc3.weight",
                                                                          "fc3.bias"}
    key = "fc.weight" if family == "dcgan" else "fc3.weight"
    torch.testing.assert_close(after[key], before[key] / before_gain)


def _first_step_lengths(g, a, x, solver, seed):
    y = a(x).detach()
    z = sample_latent(x.shape[0], solver.latent_dim, solver.sparsity, project=solver.project,
                      generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    (grad,) = torch.autograd.grad(measurement_loss(y, a(g(z))).sum(), z)
    return grad.norm(dim=1)


def test_step_size_gives_the_asked_first_step_length(colour_images):
    torch.manual_seed(1)
    cfg = complete_config(DCGAN)
    g, a = build_generator(cfg).eval(), build_sensing(cfg).eval()
    solver = SolverSettings("sdlss", 24, 6)
    beta = step_size_for_movement(g, a, colour_images, solver, 0.3,
                                  rng=torch.Generator().manual_seed(5))
    lengths = _first_step_lengths(g, a, colour_images, solver, 5)
    assert beta * float(lengths.median()) == pytest.approx(0.3, rel=1e-5)
    with pytest.raises(ValueError, match="positive"):
        step_size_for_movement(g, a, colour_images, solver, 0.0, rng=torch.Generator())


def _trainer(tmp_path, images, name="run", **kw):
    cfg = TrainConfig(out=str(tmp_path / name), measurements=10, latent_dim=24, sparsity=6,
                      epochs=1, batch_size=16, steps=2, **kw)
    return Trainer(cfg, images[:32], images[32:])


def test_dcgan_starts_calibrated_and_its_inner_loop_moves_the_latent(tmp_path, colour_images):
    calibrated = _trainer(tmp_path, colour_images)
    plain = _trainer(tmp_path, colour_images, "plain", init_scale="plain")
    assert calibrated.init_scale == "calibrated" and plain.init_scale == "plain"
    init = calibrated.initialisation
    assert init["init_scale"] == "calibrated" and 0 < init["sensing_gain"] < 0.1
    assert float(calibrated.log_step_size.detach()) == pytest.approx(math.log(init["step_size"]))
    assert float(plain.log_step_size.detach()) == pytest.approx(math.log(0.01))
    assert plain.initialisation == {}
    # The property the calibration exists for: the training-time first step moves z by ~0.1
    # (0.1 in median), while the plain start barely moves it.
    x = calibrated.train_images[:16]
    moved = {}
    for name, t in (("calibrated", calibrated), ("plain", plain)):
        lengths = _first_step_lengths(t.generator, t.sensing, x, t.solver, 11)
        moved[name] = float(t.log_step_size.detach().exp()) * float(lengths.median())
    assert 0.02 < moved["calibrated"] < 0.5
    assert moved["plain"] < 1e-3 * moved["calibrated"]


def test_calibrated_start_is_seeded_saved_and_kept_on_resume(tmp_path, colour_images):
    a = _trainer(tmp_path, colour_images, "a")
    b = _trainer(tmp_path, colour_images, "b")
    for p, q in zip(a.sensing.state_dict().values(), b.sensing.state_dict().values(),
                    strict=True):
        assert torch.equal(p, q)
    assert a.initialisation == b.initialisation
    a.run()
    saved = load_checkpoint(tmp_path / "a" / "model.pt")["train"]["initialisation"]
    assert saved == a.initialisation
    resumed = Trainer(a.cfg, colour_images[:32], colour_images[32:], resume=True)
    assert resumed.initialisation == a.initialisation
    assert torch.equal(resumed.log_step_size, a.log_step_size)


def test_mlp_starts_plain_unless_asked(tmp_path):
    x = torch.rand(40, 1, 6, 6) * 2 - 1
    assert _trainer(tmp_path, x, "m").init_scale == "plain"
    t = _trainer(tmp_path, x, "c", init_scale="calibrated")
    assert t.initialisation["init_scale"] == "calibrated"
    assert sensing_gain(t.sensing, t.train_images[:16]) == pytest.approx(1.0, rel=0.5)


@pytest.mark.parametrize("kw,needle", [
    ({"init_scale": "huge"}, "init_scale"),
    ({"initial_step_size": 0.0}, "step size"),
    ({"initial_step_size": float("nan")}, "step size"),
])
def test_bad_initialisation_settings_are_user_errors(tmp_path, colour_images, kw, needle):
    with pytest.raises(QgenError, match=needle):
        _trainer(tmp_path, colour_images, **kw)
