"""Mean-field VI (BLoB's family) on a conjugate model whose exact posterior is diagonal."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from bayesian_lora.methods.blob import MeanFieldGaussian, forward_with, negative_elbo_per_datum
from bayesian_lora.models.module import gaussian_nll

SIGMA, PRIOR = 0.5, 1.0


def conjugate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = X a + noise with orthogonal columns: the posterior of a is a diagonal Gaussian."""
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    h8 = torch.kron(torch.kron(h2, h2), h2)
    x = (h8[:, 1:4] * torch.tensor([0.3, 1.0, 0.1], dtype=torch.float64)).repeat(2, 1)
    g = torch.Generator().manual_seed(0)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = y + SIGMA * torch.randn(len(x), generator=g, dtype=torch.float64)
    precision = (x * x).sum(0) / SIGMA**2 + 1 / PRIOR**2  # diagonal: X^T X is diagonal
    mean = (x.T @ y / SIGMA**2) / precision
    return x, y, mean, precision.rsqrt()


@pytest.mark.slow
def test_mean_field_vi_reaches_the_exact_diagonal_posterior() -> None:
    x, y, mean, sd = conjugate()
    q = MeanFieldGaussian({"a": torch.zeros(3, dtype=torch.float64)}, init_std=0.1, prior_std=PRIOR)
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    steps = 3000
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        a = q.rsample(gen, num=64)["a"]  # [64, 3]
        mean_nll = gaussian_nll(a @ x.T, y[None], SIGMA).mean()  # E_q, over draws and data
        loss = negative_elbo_per_datum(mean_nll, q, len(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    mu, s = q.mu["a"].detach(), q.std()["a"].detach()
    print(f"VI: mean error / sd {((mu - mean) / sd).abs().max():.4f}, sd ratio {(s / sd).tolist()}")
    assert ((mu - mean) / sd).abs().max() < 0.05
    torch.testing.assert_close(s, sd, rtol=0.03, atol=0.0)


def test_kl_matches_the_closed_form_and_draws_have_q_moments() -> None:
    q = MeanFieldGaussian({"w": torch.tensor([0.5, -1.0])}, init_std=0.3, prior_std=2.0)
    p = torch.distributions.Normal(torch.zeros(2), 2.0)
    qd = torch.distributions.Normal(q.mu["w"].detach(), q.std()["w"].detach())
    assert float(q.kl()) == pytest.approx(float(torch.distributions.kl_divergence(qd, p).sum()))
    draws = q.sample(100_000, torch.Generator().manual_seed(0))["w"]
    torch.testing.assert_close(draws.mean(0), torch.tensor([0.5, -1.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.full((2,), 0.3), atol=0, rtol=0.02)
    assert math.isclose(float(q.std()["w"][0]), 0.3, rel_tol=1e-6)


def test_forward_with_drawn_lora_a_equals_swapping_it_in() -> None:
    from bayesian_lora.config import CONFIG_DIR
    from bayesian_lora.models.lora import ModelSettings, build_lora_model, sampled_parameters

    torch.manual_seed(0)
    settings = ModelSettings.from_config(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))
    model = build_lora_model(settings, 2).eval()
    a_names = [n for n in sampled_parameters(model) if "lora_A" in n]
    q = MeanFieldGaussian({n: p for n, p in sampled_parameters(model).items() if n in a_names})
    draw = q.sample(1, torch.Generator().manual_seed(0))
    draw = {n: t[0] + 0.5 for n, t in draw.items()}  # far from the current A
    ids = torch.randint(5, 40, (2, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    got = forward_with(model, draw, **batch).logits  # type: ignore[attr-defined]
    with torch.no_grad():
        params = sampled_parameters(model)
        for n, t in draw.items():
            params[n].copy_(t)
        expected = model(**batch).logits
    torch.testing.assert_close(got, expected)
