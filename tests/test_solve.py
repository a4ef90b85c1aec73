"""Latent proximal gradient descent: P_s, the update rule, differentiability, restarts."""

import pytest
import torch

from qgen_infer.solve import (
    hard_threshold,
    measurement_loss,
    project_sphere,
    proximal_gradient_descent,
    reconstruct_latent,
    sample_latent,
)


def _linear_problem(d=40, n=30, m=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, d, generator=g) / d**0.5
    A = torch.randn(m, n, generator=g) / n**0.5
    return (lambda z: z @ G.T), (lambda x: x @ A.T), G, A


def test_hard_threshold_keeps_the_s_largest():
    z = torch.tensor([[0.1, -3.0, 2.0, 0.5, -0.2], [1.0, 1.5, -0.1, 0.0, 4.0]])
    out = hard_threshold(z, 2)
    assert torch.equal(out, torch.tensor([[0.0, -3.0, 2.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0, 4.0]]))
    assert hard_threshold(z, None) is z
    assert hard_threshold(z, 5) is z


@pytest.mark.parametrize("s", [1, 7, 39])
def test_sample_latent_support_and_sphere(s):
    z = sample_latent(16, 40, s, project=True, generator=torch.Generator().manual_seed(1))
    assert ((z != 0).sum(dim=1) == s).all()
    torch.testing.assert_close(z.norm(dim=1), torch.ones(16))


def test_one_step_matches_the_formula():
    gen, sense, G, A = _linear_problem()
    M = A @ G
    y = torch.randn(3, 20)
    z0 = torch.randn(3, 40)
    beta, s = 0.05, 10
    res = proximal_gradient_descent(y, gen, sense, z0, steps=1, step_size=beta, sparsity=s)
    grad = -2 * (y - z0 @ M.T) @ M  # ∇ ||y - M z||² per row
    expected = hard_threshold(z0 - beta * grad, s)
    torch.testing.assert_close(res.z, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.loss, measurement_loss(y, sense(gen(expected))))


def test_recovers_a_sparse_latent_through_a_linear_generator():
    # A G is a well-conditioned m x d map (singular values 0.8..1.2) hidden behind random
    # orthogonal factors, where iterative hard thresholding provably recovers s-sparse codes.
    d, n, m = 30, 80, 60
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    G = q[:, :d] * torch.linspace(0.8, 1.2, d, dtype=torch.float64)
    A = q[:, :m].T
    gen, sense = (lambda z: z @ G.T), (lambda x: x @ A.T)
    z_true = hard_threshold(torch.randn(4, d, generator=g, dtype=torch.float64), 5)
    y = sense(gen(z_true))
    res = proximal_gradient_descent(y, gen, sense, torch.zeros(4, d, dtype=torch.float64),
                                    steps=200, step_size=0.3, sparsity=5, record_history=True)
    torch.testing.assert_close(res.z, z_true, atol=1e-8, rtol=1e-8)
    assert (res.loss < 1e-12).all()
    assert res.history.shape == (201, 4)
    assert (res.history[-1] <= res.history[0]).all()


def test_differentiable_mode_reaches_step_size_and_parameters():
    lin = torch.nn.Linear(10, 12)
    A = torch.nn.Linear(12, 5)
    log_beta = torch.tensor(-2.0, requires_grad=True)
    y = torch.randn(2, 5)
    z0 = project_sphere(torch.randn(2, 10))
    res = proximal_gradient_descent(y, lin, A, z0, steps=3, step_size=log_beta.exp(),
                                    sparsity=4, project=True, differentiable=True)
    res.loss.sum().backward()
    assert log_beta.grad is not None and torch.isfinite(log_beta.grad)
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0

    # the gradient w.r.t. the step size agrees with a finite difference (float64)
    lin64, A64 = lin.double(), A.double()

    def f(lb):
        r = proximal_gradient_descent(y.double(), lin64, A64, z0.double(), steps=3,
                                      step_size=torch.exp(lb), sparsity=4, project=True,
                                      differentiable=True)
        return r.loss.sum()

    lb = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(lb), lb)
    eps = 1e-6
    fd = float((f(torch.tensor(-2.0 + eps, dtype=torch.float64))
                - f(torch.tensor(-2.0 - eps, dtype=torch.float64))).detach()) / (2 * eps)
    assert abs(float(g) - float(fd)) < 1e-5 * max(1.0, abs(float(fd)))


def test_inference_mode_keeps_no_graph():
    lin, A = torch.nn.Linear(10, 12), torch.nn.Linear(12, 5)
    res = proximal_gradient_descent(torch.randn(2, 5), lin, A, torch.randn(2, 10), steps=2,
                                    step_size=0.1)
    assert not res.z.requires_grad and not res.x.requires_grad


def test_restarts_keep_the_best_run_per_sample():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(16, 20), torch.nn.Tanh())
    A = torch.nn.Linear(20, 6)
    y = torch.randn(5, 6)
    kw = dict(latent_dim=16, steps=4, step_size=0.2, sparsity=4, project=True)
    best = reconstruct_latent(y, lin, A, restarts=4, seed=7, **kw)
    # the same 4 starts, run as one batch without selection
    z0 = sample_latent(20, 16, 4, project=True, generator=torch.Generator().manual_seed(7))
    every = proximal_gradient_descent(y.repeat(4, 1), lin, A, z0, steps=4, step_size=0.2,
                                      sparsity=4, project=True)
    per_run = every.loss.reshape(4, 5)
    torch.testing.assert_close(best.loss, per_run.min(dim=0).values)
    assert best.z.shape == (5, 16) and best.x.shape == (5, 20)
    again = reconstruct_latent(y, lin, A, restarts=4, seed=7, **kw)
    assert torch.equal(again.z, best.z)


def test_bad_arguments():
    lin, A = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    with pytest.raises(ValueError):
        proximal_gradient_descent(torch.zeros(1, 2), lin, A, torch.zeros(1, 4), steps=-1,
                                  step_size=0.1)
    with pytest.raises(ValueError):
        reconstruct_latent(torch.zeros(1, 2), lin, A, latent_dim=4, steps=1, step_size=0.1,
                           restarts=0)
