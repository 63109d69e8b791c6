"""Tests of the SG-MCMC samplers: stationary distributions on Gaussians, exact identities,
RNG/state handling and argument validation.

Gaussian targets: ``u(theta) = 0.5 (theta - mu)^T P (theta - mu) / N`` with ``N = 100``, so
``U = N u`` and ``pi_T = N(mu, T Sigma)``, ``Sigma = P^-1``. Many independent chains run as
one ``[chains, d]`` parameter (``u`` sums over chains: a product target). Reported errors:

* mean error: ``max_i |mean_i - mu_i| / sqrt(T Sigma_ii)``, tolerance ``MEAN_TOL``;
* covariance error: ``||C - T Sigma||_F / ||T Sigma||_F``, tolerance ``COV_TOL``.

The discretisation bias at the chosen step sizes is <= 1% (SGLD variance factor
``1 / (1 - eta lambda_max / (2 N))``); the rest of the budget is Monte Carlo error (about
2-5% here). ``test_checker_has_power`` shows a 25% covariance error is rejected.
"""

from __future__ import annotations

import copy
import functools
import io
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.samplers import (
    ASGLD,
    PSGLD,
    SAMPLERS,
    SAMSGLD,
    SGHMC,
    SGLD,
    LangevinSampler,
    SAMSGLDRank1,
)

N_DATA = 100
MEAN_TOL = 0.10
COV_TOL = 0.10
TRACE_RATIO_TOL = 0.10  # |tr(C_T2) / tr(C_T1) - 2| / 2
ASGLD_COV_TOL = 0.12  # default drift: bias (about 4% contraction) + Monte Carlo error

# Step sizes: eta lambda_max(P) / N = 0.02 for (S)GLD/SGHMC on the 10-D target. pSGLD's
# preconditioner G ~ N / sqrt(P_ii) makes its effective step eta G / N, hence the smaller lr;
# it runs with the shipped default hparams (conf/sampler/psgld.yaml: beta 0.999) and a burn-in of
# five time constants 1 / (1 - beta) of V, so that V has stabilised before sampling (checked).
# With beta = 0.99 V tracks the current |g| and the omitted Gamma term inflates the covariance
# by ~40% on these noiseless-gradient targets; with 0.9999 V is still growing during sampling.
PSGLD_SHIPPED = dict(OmegaConf.load(CONFIG_DIR / "sampler" / "psgld.yaml").hparams)
BURN_IN = {"psgld": 5000}  # steps; 2000 for the others
SETTINGS: dict[str, tuple[type[LangevinSampler], float, dict[str, Any]]] = {
    "sgld": (SGLD, 0.2, {}),
    "psgld": (PSGLD, 0.005, PSGLD_SHIPPED),
    "sghmc": (SGHMC, 0.2, {"friction": 0.1}),
    "sam_sgld_rho0": (SAMSGLD, 0.2, {"rho": 0.0}),
}


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    # Tiny tensors: intra-op threads only add synchronisation (badly so on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_target(d: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mu, Sigma, P): correlated 2-D (rho = 0.8) or anisotropic 10-D (eigenvalues 0.1..1)."""
    if d == 2:
        cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
        mu = torch.tensor([1.0, -0.5], dtype=torch.float64)
    else:
        g = torch.Generator().manual_seed(1234)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        cov = q @ torch.diag(torch.logspace(-1, 0, d, dtype=torch.float64)) @ q.T
        mu = torch.randn(d, generator=g, dtype=torch.float64)
    return mu, cov, torch.linalg.inv(cov)


@functools.cache
def run_gaussian(
    name: str, d: int, temperature: float = 1.0, seed: int = 0, **override: Any
) -> tuple[Tensor, Tensor]:
    """Mean and covariance (float64) of all chains over the post-burn-in steps."""
    if name in SETTINGS:
        cls, lr, hp = SETTINGS[name]
    else:
        cls, lr, hp = SAMPLERS[name], 0.2, {}
    hp = {**hp, **override}
    chains = 500 if d == 2 else 200
    burn_in, steps = BURN_IN.get(name, 2000), 4000
    mu64, _, prec64 = gaussian_target(d)
    mu, prec = mu64.float(), prec64.float()
    # Start away from the target so that burn-in, not the initialisation, must do the work.
    theta = torch.nn.Parameter(torch.zeros(chains, d))
    sampler = cls([theta], lr=lr, num_data=N_DATA, temperature=temperature, seed=seed, **hp)

    def closure() -> Tensor:
        diff = theta.detach() - mu
        p_diff = diff @ prec
        theta.grad = p_diff / N_DATA
        return 0.5 * (p_diff * diff).sum() / N_DATA

    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = torch.zeros(d, d, dtype=torch.float64)
    for k in range(burn_in + steps):
        sampler.step(closure)
        if k >= burn_in:
            x = theta.detach().double()
            s1 += x.sum(0)
            s2 += x.T @ x
    n = chains * steps
    mean = s1 / n
    return mean, s2 / n - torch.outer(mean, mean)


def errors(mean: Tensor, cov: Tensor, d: int, temperature: float = 1.0) -> tuple[float, float]:
    mu, sigma, _ = gaussian_target(d)
    target_cov = temperature * sigma
    mean_err = ((mean - mu).abs() / target_cov.diagonal().sqrt()).max().item()
    cov_err = (
        torch.linalg.matrix_norm(cov - target_cov) / torch.linalg.matrix_norm(target_cov)
    ).item()
    return mean_err, cov_err


def quadratic_closure(params: list[Tensor], sampler: torch.optim.Optimizer) -> Callable[[], Tensor]:
    """Autograd closure for u = sum_p 0.5 ||p - 1||^2 (the way a training step calls it)."""

    def closure() -> Tensor:
        sampler.zero_grad()
        loss = sum(0.5 * ((p - 1.0) ** 2).sum() for p in params)
        loss.backward()
        return loss

    return closure


def make(name: str, params: Any, **kwargs: Any) -> LangevinSampler:
    kwargs.setdefault("lr", 0.01)
    kwargs.setdefault("num_data", 50)
    return SAMPLERS[name](params, **kwargs)


# ----------------------------------------------------------------------------- Gaussians
@pytest.mark.parametrize("d", [2, 10])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_matches_gaussian(name: str, d: int) -> None:
    mean_err, cov_err = errors(*run_gaussian(name, d), d)
    print(f"{name} d={d}: mean_err={mean_err:.4f} cov_err={cov_err:.4f}")
    assert mean_err < MEAN_TOL
    assert cov_err < COV_TOL


@pytest.mark.parametrize("name", list(SETTINGS))
def test_temperature_two_doubles_covariance(name: str) -> None:
    d = 10
    mean2, cov2 = run_gaussian(name, d, temperature=2.0, seed=1)
    _, cov1 = run_gaussian(name, d)
    mean_err, cov_err = errors(mean2, cov2, d, temperature=2.0)
    ratio = (torch.trace(cov2) / torch.trace(cov1)).item()
    print(f"{name} T=2: mean_err={mean_err:.4f} cov_err={cov_err:.4f} trace ratio={ratio:.4f}")
    assert mean_err < MEAN_TOL
    assert cov_err < COV_TOL
    assert abs(ratio / 2.0 - 1.0) < TRACE_RATIO_TOL


def test_checker_has_power() -> None:
    """The same SGLD samples are rejected against a covariance 25% off (the tests can fail)."""
    d = 10
    mean, cov = run_gaussian("sgld", d)
    assert errors(mean, cov, d, temperature=1.25)[1] > COV_TOL
    assert errors(mean, cov, d, temperature=0.8)[1] > COV_TOL


def test_asgld_zero_drift_is_sgld_bitwise() -> None:
    torch.manual_seed(0)
    init = [torch.randn(4, 3), torch.randn(5)]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    sgld = SGLD(a, lr=0.05, num_data=10, seed=3)
    asgld = ASGLD(b, lr=0.05, num_data=10, seed=3, drift=0.0)
    for _ in range(30):
        sgld.step(quadratic_closure(a, sgld))
        asgld.step(quadratic_closure(b, asgld))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("d", [2, 10])
def test_asgld_default_drift_bias(d: int) -> None:
    """Measured bias of the default drift (1e-3): a few % contraction of the covariance."""
    assert ASGLD([torch.zeros(1, requires_grad=True)], lr=1.0, num_data=1).defaults[
        "drift"
    ] == pytest.approx(1e-3)
    mean, cov = run_gaussian("asgld", d)
    mean_err, cov_err = errors(mean, cov, d)
    _, sigma, _ = gaussian_target(d)
    ratio = (torch.trace(cov) / torch.trace(sigma)).item()
    print(f"asgld(drift=1e-3) d={d}: mean_err={mean_err:.4f} cov_err={cov_err:.4f} tr={ratio:.4f}")
    assert mean_err < MEAN_TOL
    assert cov_err < ASGLD_COV_TOL
    assert 0.9 < ratio < 1.05


def test_asgld_large_drift_contracts() -> None:
    """The adaptive term is active: drift 1e-2 shrinks the spread (~40% on this target)."""
    _, cov = run_gaussian("asgld", 10, drift=1e-2)
    _, sigma, _ = gaussian_target(10)
    assert (torch.trace(cov) / torch.trace(sigma)).item() < 0.8


def test_sghmc_unit_friction_is_sgld() -> None:
    torch.manual_seed(0)
    init = torch.randn(6)
    a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    sgld = SGLD([a], lr=0.05, num_data=10, seed=1)
    sghmc = SGHMC([b], lr=0.05, num_data=10, seed=1, friction=1.0)
    for _ in range(20):
        sgld.step(quadratic_closure([a], sgld))
        sghmc.step(quadratic_closure([b], sghmc))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- SAM-SGLD
def test_sam_sgld_rho_zero_is_sgld_bitwise() -> None:
    torch.manual_seed(0)
    init = [torch.randn(3, 2), torch.randn(4)]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    sgld = SGLD(a, lr=0.05, num_data=10, seed=5)
    sam = SAMSGLD(b, lr=0.05, num_data=10, seed=5, rho=0.0)
    for _ in range(20):
        sgld.step(quadratic_closure(a, sgld))
        sam.step(quadratic_closure(b, sam))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("cls", [SAMSGLD, SAMSGLDRank1])
def test_sam_two_closures_global_perturbation(cls: type[SAMSGLD]) -> None:
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(3, 4))
    w2 = torch.nn.Parameter(torch.randn(7))
    rho, lr = 0.3, 0.1
    # Two param groups: the norm must still be global.
    sampler = cls([{"params": [w1]}, {"params": [w2]}], lr=lr, num_data=10, rho=rho)
    sampler.noise_enabled = False
    seen: list[tuple[Tensor, Tensor]] = []
    scale = torch.tensor([2.0, -1.0, 0.5])

    def closure() -> Tensor:
        seen.append((w1.detach().clone(), w2.detach().clone()))
        sampler.zero_grad()
        # Non-quadratic so that grad u(theta + e) differs from grad u(theta).
        loss = (scale[:, None] * w1**2).sum() + torch.sin(w2).sum() + 0.1 * (w2**3).sum()
        loss.backward()
        return loss * (len(seen) == 1)  # only the first call returns a nonzero loss

    for step in range(3):
        before = (w1.detach().clone(), w2.detach().clone())
        g1 = (2 * scale[:, None] * before[0]).clone()
        g2 = torch.cos(before[1]) + 0.3 * before[1] ** 2
        seen.clear()
        loss = sampler.step(closure)
        assert len(seen) == 2, f"step {step}: closure called {len(seen)} times"
        assert loss.item() != 0.0  # the first closure's loss is returned
        assert loss.grad_fn is None  # detached: its graph is let go before the 2nd pass
        assert torch.equal(seen[0][0], before[0]) and torch.equal(seen[0][1], before[1])
        e1, e2 = seen[1][0] - before[0], seen[1][1] - before[1]
        norm = torch.sqrt(e1.square().sum() + e2.square().sum())
        torch.testing.assert_close(norm, torch.tensor(rho), rtol=1e-4, atol=0)
        g_norm = torch.sqrt(g1.square().sum() + g2.square().sum())
        torch.testing.assert_close(e1, rho * g1 / g_norm, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(e2, rho * g2 / g_norm, rtol=1e-4, atol=1e-6)
        # theta restored exactly, then the drift with the gradient at theta + e.
        assert torch.equal(w1.detach(), before[0].add(w1.grad, alpha=-lr))
        assert torch.equal(w2.detach(), before[1].add(w2.grad, alpha=-lr))


def test_rank1_zero_scale_is_sam_sgld_bitwise() -> None:
    torch.manual_seed(0)
    init = [torch.randn(3, 2), torch.randn(4)]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    sam = SAMSGLD(a, lr=0.05, num_data=10, seed=2, rho=0.1)
    r1 = SAMSGLDRank1(b, lr=0.05, num_data=10, seed=2, rho=0.1, direction_scale=0.0)
    for _ in range(20):
        sam.step(quadratic_closure(a, sam))
        r1.step(quadratic_closure(b, r1))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_rank1_directional_noise_variance() -> None:
    """Linear u = c . theta: every gradient (also at theta + e) is c, so d = c / ||c||.

    The increments theta' - theta + eta c are the noise: along d its variance must be
    (1 + s)^2 times the base 2 eta T / N; orthogonal to d (also inside span of the per-tensor
    directions, which a per-tensor normalisation would inflate) it must be the base variance.
    """
    s, lr, n_data, temperature, steps = 1.0, 0.02, 10, 1.5, 4000
    c1 = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.0])
    c2 = torch.tensor([0.5, 0.5, -1.0, 2.0])
    w1, w2 = torch.nn.Parameter(torch.zeros(6)), torch.nn.Parameter(torch.zeros(4))
    sampler = SAMSGLDRank1(
        [{"params": [w1]}, {"params": [w2]}],
        lr=lr,
        num_data=n_data,
        temperature=temperature,
        rho=0.05,
        direction_scale=s,
        seed=11,
    )

    def closure() -> Tensor:
        sampler.zero_grad()
        loss = (c1 * w1).sum() + (c2 * w2).sum()
        loss.backward()
        return loss

    c = torch.cat([c1, c2])
    d = c / c.norm()
    # Unit vector in span(c1-part, c2-part), orthogonal to d.
    u = torch.cat([c1 * c2.norm() ** 2, -c2 * c1.norm() ** 2])
    u = u / u.norm()
    other = torch.zeros(10)
    other[4] = 1.0  # c1[4] == 0: a coordinate orthogonal to both
    increments = torch.empty(steps, 10, dtype=torch.float64)
    for k in range(steps):
        before = torch.cat([w1.detach(), w2.detach()]).double()
        sampler.step(closure)
        after = torch.cat([w1.detach(), w2.detach()]).double()
        increments[k] = after - before + lr * c.double()
    base = 2 * lr * temperature / n_data
    var_d = (increments @ d.double()).var().item() / base
    var_u = (increments @ u.double()).var().item() / base
    var_o = (increments @ other.double()).var().item() / base
    print(f"rank-1 variance ratios: along d {var_d:.3f} (expect 4), orth {var_u:.3f}, {var_o:.3f}")
    # 4000 samples: relative standard error of a variance ~ 2.2%; tolerance 10%.
    assert var_d == pytest.approx((1 + s) ** 2, rel=0.1)
    assert var_u == pytest.approx(1.0, rel=0.1)
    assert var_o == pytest.approx(1.0, rel=0.1)


# ----------------------------------------------------------------------------- state / RNG
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_state_dict_round_trip_continues_chain(name: str) -> None:
    torch.manual_seed(0)
    init = [torch.randn(3, 4), torch.randn(5)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    sampler = make(name, params, seed=7, lr=0.05)
    closure = quadratic_closure(params, sampler)
    for _ in range(5):
        sampler.step(closure)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)  # as in a checkpoint
    saved_params = [p.detach().clone() for p in params]
    for _ in range(5):
        sampler.step(closure)
    expected = [p.detach().clone() for p in params]

    restored = [torch.nn.Parameter(t.clone()) for t in saved_params]
    new = make(name, restored, seed=999, lr=0.05)  # the seed comes from the state dict
    buffer.seek(0)
    new.load_state_dict(torch.load(buffer, weights_only=True))
    assert new.seed == 7
    new_closure = quadratic_closure(restored, new)
    for _ in range(5):
        new.step(new_closure)
    assert all(torch.equal(x, y) for x, y in zip(expected, restored, strict=True))


def test_state_dict_before_first_step() -> None:
    a = torch.nn.Parameter(torch.ones(4))
    first = SGLD([a], lr=0.1, num_data=5, seed=4)
    b = torch.nn.Parameter(torch.ones(4))
    second = SGLD([b], lr=0.1, num_data=5, seed=0)
    second.load_state_dict(first.state_dict())
    for p, s in ((a, first), (b, second)):
        s.step(quadratic_closure([p], s))
    assert torch.equal(a, b)


def test_same_seed_same_chain_different_seed_differs() -> None:
    results = []
    for seed in (1, 1, 2):
        p = torch.nn.Parameter(torch.zeros(8))
        s = SGLD([p], lr=0.1, num_data=5, seed=seed)
        s.step(quadratic_closure([p], s))
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_cuda_generator_round_trip(name: str) -> None:
    p = torch.nn.Parameter(torch.randn(16, device="cuda"))
    sampler = make(name, [p], seed=3)
    closure = quadratic_closure([p], sampler)
    sampler.step(closure)
    assert sampler._get_generator().device.type == "cuda"
    # Copy: like any torch optimizer, state_dict() holds references to the live state tensors.
    sd = copy.deepcopy(sampler.state_dict())
    assert sd["sampler_rng"]["generator_state"].device.type == "cpu"
    saved = p.detach().clone()
    sampler.step(closure)
    q = torch.nn.Parameter(saved.clone())
    new = make(name, [q], seed=0)
    new.load_state_dict(sd)
    new.step(quadratic_closure([q], new))
    assert torch.equal(p, q)


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_noise_disabled_is_pure_drift(name: str) -> None:
    torch.manual_seed(0)
    init = torch.randn(5)
    p = torch.nn.Parameter(init.clone())
    hp: dict[str, Any] = {
        "asgld": {"drift": 0.0},
        "sam_sgld": {"rho": 0.0},
        "sam_sgld_r1": {"rho": 0.0},
        "sghmc": {"friction": 1.0},
    }.get(name, {})
    sampler = make(name, [p], lr=0.1, **hp)
    sampler.noise_enabled = False
    sampler.step(quadratic_closure([p], sampler))
    grad = init - 1.0
    if name == "psgld":  # V = (1 - beta) g^2 after one step
        precond = 1.0 / (1e-5 + ((1 - 0.99) * grad**2).sqrt())
        torch.testing.assert_close(p.detach(), init - 0.1 * precond * grad)
    else:
        assert torch.equal(p.detach(), init.add(grad, alpha=-0.1))


def test_params_without_grad_untouched() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3))
    for name in SAMPLERS:
        sampler = make(name, [a, b])

        def closure(sampler: LangevinSampler = sampler) -> Tensor:
            sampler.zero_grad(set_to_none=True)
            loss = (a**2).sum()
            loss.backward()
            return loss

        sampler.step(closure)
        assert torch.equal(b, torch.zeros(3)), name
        assert not torch.equal(a, torch.zeros(3)), name


def test_per_group_temperature() -> None:
    """Zero potential: the increment is pure noise, std sqrt(2 eta T / N) per group."""
    a = torch.nn.Parameter(torch.zeros(20000))
    b = torch.nn.Parameter(torch.zeros(20000))
    sampler = SGLD([{"params": [a]}, {"params": [b], "temperature": 4.0}], lr=0.5, num_data=4)

    def closure() -> Tensor:
        a.grad = torch.zeros_like(a)
        b.grad = torch.zeros_like(b)
        return torch.tensor(0.0)

    sampler.step(closure)
    assert a.detach().std().item() == pytest.approx(math.sqrt(2 * 0.5 * 1 / 4), rel=0.03)
    assert b.detach().std().item() == pytest.approx(math.sqrt(2 * 0.5 * 4 / 4), rel=0.03)
    sampler.param_groups[1]["temperature"] = 1.0  # schedules may change it between steps
    before = b.detach().clone()
    sampler.step(closure)
    assert (b.detach() - before).std().item() == pytest.approx(math.sqrt(0.25), rel=0.03)


def test_bf16_parameters_keep_dtype() -> None:
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    for name in SAMPLERS:
        sampler = make(name, [p])
        sampler.step(quadratic_closure([p], sampler))
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all(), name


def test_registry_and_closure_required() -> None:
    assert set(SAMPLERS) == {"sgld", "psgld", "asgld", "sam_sgld", "sam_sgld_r1", "sghmc", "sgd"}
    p = torch.nn.Parameter(torch.zeros(2))
    for name, cls in SAMPLERS.items():
        sampler = make(name, [p])
        assert isinstance(sampler, torch.optim.Optimizer) and isinstance(sampler, cls)
        assert sampler.noise_enabled is (name != "sgd")  # SWAG's SGD iterates are noiseless
        with pytest.raises(ValueError, match="closure"):
            sampler.step()


# ----------------------------------------------------------------------------- validation
BAD_ARGS = [
    ("sgld", {"lr": 0.0}, "lr"),
    ("sgld", {"lr": -1e-3}, "lr"),
    ("sgld", {"lr": float("nan")}, "lr"),
    ("sgld", {"num_data": 0}, "num_data"),
    ("sgld", {"num_data": 10.5}, "num_data"),
    ("sgld", {"num_data": True}, "num_data"),
    ("sgld", {"temperature": 0.0}, "temperature"),
    ("sgld", {"temperature": -1.0}, "temperature"),
    ("sgld", {"seed": 1.5}, "seed"),
    ("psgld", {"beta": 1.0}, "beta"),
    ("psgld", {"beta": -0.1}, "beta"),
    ("psgld", {"eps": 0.0}, "eps"),
    ("asgld", {"drift": -0.1}, "drift"),
    ("asgld", {"beta1": 1.0}, "beta1"),
    ("asgld", {"beta2": 1.5}, "beta2"),
    ("asgld", {"eps": -1.0}, "eps"),
    ("sam_sgld", {"rho": -0.01}, "rho"),
    ("sam_sgld_r1", {"rho": -0.01}, "rho"),
    ("sam_sgld_r1", {"direction_scale": -2.0}, "direction_scale"),
    ("sghmc", {"friction": 0.0}, "friction"),
    ("sghmc", {"friction": 1.5}, "friction"),
]


@pytest.mark.parametrize(("name", "kwargs", "arg"), BAD_ARGS)
def test_bad_arguments(name: str, kwargs: dict[str, Any], arg: str) -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=arg) as info:
        make(name, [p], **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)  # names the bad value


def test_bad_param_group_override() -> None:
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="temperature"):
        SGLD([{"params": [p]}, {"params": [q], "temperature": -1.0}], lr=0.1, num_data=3)


def test_psgld_shipped_preconditioner_is_stationary_during_sampling() -> None:
    """With the shipped beta, V has settled by the end of burn-in (mean drift < 5% after)."""
    _, _, prec = gaussian_target(10)
    mu = torch.zeros(10)
    theta = torch.nn.Parameter(torch.ones(200, 10))
    sampler = PSGLD([theta], lr=0.005, num_data=N_DATA, seed=0, **PSGLD_SHIPPED)

    def closure() -> Tensor:
        theta.grad = (theta.detach() - mu) @ prec.float() / N_DATA
        return theta.grad.sum()

    v_means = []
    for k in range(BURN_IN["psgld"] + 4000):
        sampler.step(closure)
        if k + 1 in (BURN_IN["psgld"], BURN_IN["psgld"] + 4000):
            v_means.append(float(sampler.state[theta]["square_avg"].mean()))
    assert abs(v_means[1] / v_means[0] - 1) < 0.05, v_means
