"""Laplace against Bayesian linear regression: exact posterior mean, covariance and evidence."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from bayesian_lora.methods.laplace import LaplacePosterior, fit_curvature
from bayesian_lora.models.module import gaussian_nll

SIGMA = 0.5


class Linear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out).double()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.lin(batch["x"])


def design(kind: str) -> Tensor:
    if kind == "orthogonal":  # columns of a Hadamard matrix: X_aug^T X_aug is diagonal
        h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        h8 = torch.kron(torch.kron(h2, h2), h2)
        return (h8[:, 1:4] * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)).repeat(5, 1)
    return torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def data(kind: str) -> tuple[Tensor, Tensor]:
    x = design(kind)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 3, generator=g, dtype=torch.float64)
    y = x @ w.T + 0.3 + SIGMA * torch.randn(len(x), 2, generator=g, dtype=torch.float64)
    return x, y


def exact_posterior(x: Tensor, y: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Mean [2, 4] of [W | b] and covariance over (W row-major, then b)."""
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    prec = xa.T @ xa / SIGMA**2 + delta * torch.eye(4, dtype=x.dtype)
    cov_row = torch.linalg.inv(prec)
    mean = (cov_row @ xa.T @ y / SIGMA**2).T
    full = torch.kron(torch.eye(2, dtype=x.dtype), cov_row.contiguous())  # rows of [W | b]
    idx = torch.arange(8).view(2, 4)
    order = torch.cat([idx[:, :3].flatten(), idx[:, 3]])
    return mean, full[order][:, order]


def exact_log_evidence(x: Tensor, y: Tensor, delta: float) -> float:
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    cov = SIGMA**2 * torch.eye(len(x), dtype=x.dtype) + xa @ xa.T / delta
    dist = torch.distributions.MultivariateNormal(torch.zeros(len(x), dtype=x.dtype), cov)
    return float(sum(dist.log_prob(y[:, o]) for o in range(y.shape[1])))


def laplace_at_mean(kind: str, structure: str, delta: float) -> tuple[LaplacePosterior, Tensor]:
    x, y = data(kind)
    mean, cov = exact_posterior(x, y, delta)
    model = Linear(3, 2)
    with torch.no_grad():
        model.lin.weight.copy_(mean[:, :3])
        model.lin.bias.copy_(mean[:, 3])
    batches = [{"x": x[i : i + 8], "labels": y[i : i + 8]} for i in range(0, len(x), 8)]
    curv = fit_curvature(
        model,
        model,
        dict(model.named_parameters()),
        batches,
        lambda f, t: gaussian_nll(f, t, SIGMA).sum(-1),
        "regression",
        structure,  # type: ignore[arg-type]
        obs_std=SIGMA,
    )
    return LaplacePosterior(curv, delta), cov


@pytest.mark.parametrize(("kind", "structure"), [("orthogonal", "diag"), ("random", "kron")])
def test_laplace_equals_the_exact_posterior(kind: str, structure: str) -> None:
    post, cov = laplace_at_mean(kind, structure, delta=2.0)
    torch.testing.assert_close(post.covariance(), cov, rtol=1e-10, atol=1e-12)
    # the MAP of U = sum NLL + delta/2 ||theta||^2 found numerically is the exact mean
    x, y = data(kind)
    mean, _ = exact_posterior(x, y, 2.0)
    theta = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta],
        tolerance_grad=1e-14,
        tolerance_change=0.0,
        max_iter=1000,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        f = x @ theta[:, :3].T + theta[:, 3]
        u = gaussian_nll(f, y, SIGMA).sum() + 1.0 * theta.pow(2).sum()
        u.backward()
        return u

    opt.step(closure)
    torch.testing.assert_close(theta.detach(), mean, rtol=1e-7, atol=1e-7)


def test_draws_have_the_posterior_covariance() -> None:
    post, cov = laplace_at_mean("random", "kron", delta=2.0)
    draws = post.sample(200_000, torch.Generator().manual_seed(0))
    flat = torch.cat([draws["lin.weight"].flatten(1), draws["lin.bias"]], dim=1)
    rel = torch.linalg.matrix_norm(torch.cov(flat.T) - cov) / torch.linalg.matrix_norm(cov)
    assert rel < 0.02, rel


def test_diag_is_not_exact_on_a_correlated_design() -> None:
    """The known-answer test can fail: diag Laplace misses the correlations of a random design."""
    post, cov = laplace_at_mean("random", "diag", delta=2.0)
    assert not torch.allclose(post.covariance(), cov, rtol=1e-3)


@pytest.mark.parametrize(("kind", "structure"), [("orthogonal", "diag"), ("random", "kron")])
def test_marginal_likelihood_and_its_optimal_prior_precision(kind: str, structure: str) -> None:
    x, y = data(kind)
    for delta in (0.1, 2.0, 30.0):  # Laplace's evidence at the exact mean is the exact evidence
        post, _ = laplace_at_mean(kind, structure, delta)
        assert post.log_marglik() == pytest.approx(exact_log_evidence(x, y, delta), rel=1e-10)
    res = minimize_scalar(
        lambda t: -exact_log_evidence(x, y, math.exp(t)),
        bounds=(-10, 10),
        method="bounded",
        options={"xatol": 1e-10},
    )
    best = math.exp(res.x)  # the closed-form evidence maximiser
    post, _ = laplace_at_mean(kind, structure, best)
    post.prior_precision = 1.0  # start elsewhere
    found = post.optimize_prior_precision()
    print(f"{structure}: evidence maximiser {best:.6f}, Laplace marglik optimum {found:.6f}")
    assert found == pytest.approx(best, rel=1e-4)
