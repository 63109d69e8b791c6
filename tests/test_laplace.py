"""Laplace against Bayesian linear regression: exact posterior mean, covariance and evidence."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

from bayesian_lora.config_validation import ConfigError
from bayesian_lora.laplace import fit_laplace
from bayesian_lora.methods.laplace import (
    LaplacePosterior,
    fit_curvature,
    glm_logit_covariance,
    glm_logit_draws,
    probit_probs,
)
from bayesian_lora.models.module import gaussian_nll
from bayesian_lora.report import build_report
from bayesian_lora.reporting.discovery import is_run_folder
from bayesian_lora.runs import load_samples
from tests.helpers import (
    compose_config,
    mcqa_batch,
    mcqa_rows,
    model_settings,
    run_eval,
    train_run,
)

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


# ----------------------------------------------------------------------------- tiny model, end to end


@pytest.mark.slow
def test_laplace_cli_on_a_tiny_map_run_then_evaluate(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    run = train_run(synthetic_data_dir, tmp_path / "map", "trainer.max_epochs=1", "prior_std=1.0")
    info = fit_laplace(compose_config("laplace", [f"run_dir={run}", "num_samples=5"]))
    out = tmp_path / "map_laplace_kron"
    draws, manifest = load_samples(out)
    assert manifest["num_samples"] == 5 and manifest["sampler"]["name"] == "laplace"
    # the config: the MAP's (its prior_std, not the fitted one, which differs between seeds)
    # with the Laplace options as the sampler, so the fits of several seeds group as one
    config = OmegaConf.load(out / "config.yaml")
    assert config.prior_std == 1.0 and manifest["prior_std"] == pytest.approx(info["prior_std"])
    assert OmegaConf.to_container(config.sampler) == {
        "name": "laplace",
        "structure": "kron",
        "prior_precision": "marglik",
        "num_samples": 5,
        "max_batches": None,
        "from_run": str(run.resolve()),
    }
    # evaluate_on_fit_end: a finished run folder, with train's end-of-run test evaluation
    assert is_run_folder(out) and (out / "predictions.safetensors").is_file()
    fit_end = json.loads((out / "metrics.json").read_text())
    assert fit_end["num_samples"] == 5
    assert info["prior_precision"] > 0 and math.isfinite(info["log_marglik"])
    assert info["log_marglik"] >= info["log_marglik_at_run_prior"] - 1e-9  # the maximiser
    assert info["compute"]["curvature_backward_passes"] > 0
    # compute: the curvature batches are the Laplace run's own gradient evaluations, the MAP's
    # block its warm start, so evaluate's ensemble cost adds the two
    _, map_manifest = load_samples(run)
    compute = manifest["compute"]
    assert compute == info["compute"] and compute["warm_start"] == map_manifest["compute"]
    assert compute["curvature_examples"] == manifest["num_data"] == info["num_data"]
    assert compute["grad_evals"] == {"curvature": compute["curvature_batches"]}
    assert compute["total_grad_evals"] == compute["curvature_batches"] >= 1
    assert compute["curvature_backward_passes"] == 2 * compute["curvature_batches"]  # C = 2
    assert compute["prior_search_evaluations"] > 0 and compute["prior_search_forward_passes"] == 0
    assert compute["train_seconds"] >= compute["curvature_seconds"] > 0
    assert set(load_file(str(out / "laplace.safetensors"))) >= {f"theta/{n}" for n in draws}
    result = run_eval(f"run_dir={out}", "plots=false")
    assert result["num_members"] == 5 and result["runs"][0]["sampler"] == "laplace"
    assert result["predictive"] == {"kind": "samples"}
    for key, value in result["ensemble"].items():  # the same draws through the same forward
        assert fit_end["ensemble"][key] == pytest.approx(value, abs=1e-6), key
    # the linearised predictive beside it: logit draws (mc) and the probit, with OOD inputs
    glm = run_eval(f"run_dir={out}", "predictive=glm", "glm_samples=64", "ood=sst2", "plots=false")
    p = glm["predictive"]
    assert p["kind"] == "glm" and p["link"] == "mc" and p["logit_draws"] == 64
    assert p["runs"][0]["prior_precision"] == pytest.approx(info["prior_precision"])
    assert p["passes_per_example"] == {"forward": 1, "backward": 2}
    assert glm["num_members"] == 64 and glm["runs"][0]["samples_used"] == []
    assert glm["compute"]["forward_passes_per_example"] == 1
    assert glm["compute"]["backward_passes_per_example"] == 2
    assert glm["compute"]["train_grad_evals"] == result["compute"]["train_grad_evals"]
    assert glm["out_dir"] == str(out / "evaluation_glm") and glm["ood"]["n_out"] > 0
    saved = json.loads((out / "evaluation_glm" / "metrics.json").read_text())
    assert saved["predictive"]["kind"] == "glm"
    probit = run_eval(f"run_dir={out}", "predictive=glm", "glm_link=probit", "plots=false")
    assert probit["predictive"]["link"] == "probit" and probit["num_members"] == 1
    assert probit["out_dir"] == str(out / "evaluation_glm_probit")
    # the probit and 64 logit draws approximate one predictive: close, not equal
    gap = abs(probit["ensemble"]["nll"] - glm["ensemble"]["nll"])
    assert 0 < gap < 0.05, (probit["ensemble"], glm["ensemble"])
    with pytest.raises(ConfigError, match="predictive=glm is not allowed for run_dir=.*'map' run"):
        run_eval(f"run_dir={run}", "predictive=glm")
    with pytest.raises(ConfigError, match="'map' run"):  # a glob, checked once expanded
        run_eval(f"run_dirs=[{tmp_path}/ma*]", "predictive=glm")
    map_total = map_manifest["compute"]["total_grad_evals"]
    assert map_total > 0
    assert result["compute"]["train_grad_evals"] == map_total + compute["curvature_batches"]
    expected_seconds = map_manifest["compute"]["train_seconds"] + compute["train_seconds"]
    assert result["compute"]["train_seconds"] == pytest.approx(expected_seconds, abs=2e-3)

    diag = fit_laplace(
        compose_config(
            "laplace",
            [
                f"run_dir={run}",
                "structure=diag",
                "prior_precision=val_nll",
                "num_samples=3",
                "val_nll_draws=2",
                "val_nll_grid=[0.1,10.0]",
            ],
        )
    )
    assert diag["prior_precision"] in (0.1, 10.0) and len(diag["val_nll_grid"]) == 2
    val_batches = diag["compute"]["prior_search_forward_passes"] / (2 * 2)  # 2 deltas x 2 draws
    assert diag["compute"]["prior_search_evaluations"] == 2 and val_batches == int(val_batches) > 0

    # one report over the MAP run and its two fits: every row, with the MAP fit in the cost
    report = build_report([tmp_path], plots=False)
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == [
        "map",
        "laplace (diag)",
        "laplace (kron)",
        "laplace (kron) GLM (mc)",
        "laplace (kron) GLM (probit)",
    ]
    kron = rows["laplace (kron)"]
    assert kron["nll_mean"] == pytest.approx(fit_end["ensemble"]["nll"]) and kron["members"] == 5
    assert kron["train_grad_evals"] == map_total + compute["curvature_batches"]
    assert kron["train_seconds"] == pytest.approx(expected_seconds, abs=2e-3)
    assert (
        rows["laplace (diag)"]["train_grad_evals"]
        == map_total + diag["compute"]["curvature_batches"]
    )
    mc = rows["laplace (kron) GLM (mc)"]
    assert mc["nll_mean"] == pytest.approx(glm["ensemble"]["nll"]) and mc["ood_task"] == "sst2"
    assert mc["ood_auroc_mi_mean"] == pytest.approx(glm["ood"]["mutual_information"]["auroc"])
    assert (mc["members"], mc["backward_passes"]) == (1, 2)
    assert rows["laplace (kron) GLM (probit)"]["nll_mean"] == pytest.approx(
        probit["ensemble"]["nll"]
    )


def test_bad_laplace_options_are_refused_before_loading(tmp_path: Path) -> None:
    for override, match in [
        ("structure=full", "structure='full' is not allowed: one of diag, kron"),
        ("prior_precision=-1", "prior_precision=-1 is not allowed"),
        ("prior_precision=evidence", "marglik or val_nll, or a number > 0"),
        ("num_samples=0", "num_samples=0 is not allowed"),
        ("evaluate_on_fit_end=1", "evaluate_on_fit_end=1 is not allowed: true or false"),
        ("+num_draws=3", "num_draws=3 is not allowed: unknown key, nothing reads it"),
    ]:
        with pytest.raises(ConfigError, match=match):
            fit_laplace(compose_config("laplace", [f"run_dir={tmp_path}", override]))


def tiny_lora_model_and_batches(
    name: str = "tiny",
) -> tuple[Any, dict[str, nn.Parameter], list[dict[str, Tensor]]]:
    """A tiny LoRA model (eval mode, every trained tensor moved off its init) and two padded
    batches of 3 examples: ``tiny``, MRPC-shaped rows padded on the right (LoRA + head);
    ``tiny_causal``, left-padded MCQA prompts showing 3-5 letters, the others masked to -inf
    (LoRA on q_proj, v_proj; no head)."""
    from bayesian_lora.data.tasks import get_task
    from bayesian_lora.models.lora import build_lora_model, build_tokenizer
    from bayesian_lora.models.module import BayesianLoRAModule

    torch.manual_seed(0)
    settings = model_settings(name)
    task = get_task("obqa" if name == "tiny_causal" else "mrpc")
    model = build_lora_model(settings, task.num_labels)
    module = BayesianLoRAModule(model, task=task, num_data=6).eval()
    params = module.sampled_parameters()
    with torch.no_grad():  # LoRA B starts at zero; move off it so every block has curvature
        for p in params.values():
            p.add_(0.3 * torch.randn_like(p))
    if name == "tiny_causal":
        rows = mcqa_rows(6)
        rows[1]["label"] = 3  # labels B and D (the rows show 3, 4, 5, 3, 4, 5 letters)
        tokenizer = build_tokenizer(settings)
        return module, params, [mcqa_batch(tokenizer, rows[i : i + 3]) for i in (0, 3)]
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        mask = torch.ones(3, 7, dtype=torch.long)
        mask[1, 4:] = 0
        mask[2, 2:] = 0
        ids = torch.randint(5, 40, (3, 7), generator=g) * mask
        batches.append(
            {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
        )
    return module, params, batches


@pytest.mark.parametrize("name", ["tiny", "tiny_causal"])
def test_hooked_ggn_diagonal_equals_brute_force_on_the_tiny_lora_model(name: str) -> None:
    """The known answer, from per-example autograd with padded sequences: for a softmax the GGN
    is the Fisher under the model's own predictive, H = sum_i sum_y p_iy g_iy g_iy^T with g_iy
    the gradient of -log p(y | x_i), so its diagonal is sum_i sum_y p_iy g_iy^2 (y over the
    classes, or over the letters a row shows: the others have p = 0). The hooks must reproduce
    it for every sampled tensor (LoRA A, B and the head; the causal LM's LoRA on q_proj, v_proj
    read out at the answer letters), and KFAC's factors must be finite."""
    module, params, batches = tiny_lora_model_and_batches(name)
    curv = fit_curvature(
        module, module.model, params, batches, module.per_example_nll, "classification", "diag"
    )
    expected = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for batch in batches:
        for i in range(3):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            out = module(one)
            p = out.detach().double().softmax(-1)[0]
            for y in torch.isfinite(out[0]).nonzero()[:, 0]:  # the classes a row shows
                nll = module.per_example_nll(out, y.view(1)).sum()
                grads = torch.autograd.grad(nll, list(params.values()), retain_graph=True)
                for n, gr in zip(params, grads, strict=True):
                    expected[n] += p[y] * gr.double() ** 2
    got = {}
    for b in curv.blocks:
        got[b.weight] = b.diag_w
        if b.bias:
            got[b.bias] = b.diag_b
    assert set(got) == set(expected)
    for n in expected:
        assert expected[n].abs().max() > 0, n  # every tensor has curvature to compare
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-9)
    kron = fit_curvature(
        module, module.model, params, batches, module.per_example_nll, "classification", "kron"
    )
    for b in kron.blocks:
        assert b.A is not None and b.G is not None and b.G.abs().max() > 0
        assert torch.isfinite(b.A).all() and torch.isfinite(b.G).all(), b.weight


def test_laplace_compute_block_adds_to_its_map_warm_start() -> None:
    """A curvature batch is one gradient evaluation; ensemble_cost adds the MAP's (once)."""
    from bayesian_lora.compute import ensemble_cost, total_grad_evals
    from bayesian_lora.laplace import laplace_compute

    post, _ = laplace_at_mean("random", "kron", delta=2.0)  # 40 examples in 5 batches of 8
    curv = post.curvature
    assert curv.batches == 5 and curv.num_data == 40 and curv.backward_passes == 5 * 2
    post.optimize_prior_precision()
    assert post.search_evaluations > 0
    map_compute = {"total_grad_evals": 100, "train_seconds": 10.0, "grad_evals": {"map": 100}}
    search = {"evaluations": post.search_evaluations, "forward_passes": 0}
    block = laplace_compute(curv, search, 0.5, 2.0, map_compute)
    assert block["total_grad_evals"] == 5 and block["grad_evals"] == {"curvature": 5}
    assert block["curvature_examples"] == block["train_examples"] == 40
    assert block["curvature_backward_passes"] == 10 and block["warm_start"] == map_compute
    assert block["prior_search_evaluations"] == post.search_evaluations
    assert total_grad_evals(block) == 105
    # two Laplace fits (kron, diag) of one MAP run: the MAP fit counted once
    cost = ensemble_cost([block, laplace_compute(curv, search, 0.5, 3.0, map_compute)])
    assert cost == {"train_grad_evals": 110, "train_seconds": 15.0, "warm_starts": 1}
    assert "warm_start" not in laplace_compute(curv, search, 0.5, 2.0, None)


# ----------------------------------------------------------------------------- GLM predictive
# Bayesian linear regression: the linearisation is exact, so the GLM predictive is the exact
# posterior predictive N(x'm, x' S x + sigma^2); a tiny nonlinear token model: the hooked
# J Sigma J^T equals the brute force with torch.autograd.functional.jacobian.


@pytest.mark.parametrize(("kind", "structure"), [("orthogonal", "diag"), ("random", "kron")])
def test_glm_predictive_equals_the_exact_posterior_predictive(kind: str, structure: str) -> None:
    post, _ = laplace_at_mean(kind, structure, delta=2.0)
    x, y = data(kind)
    mean, _ = exact_posterior(x, y, 2.0)
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    cov_row = torch.linalg.inv(xa.T @ xa / SIGMA**2 + 2.0 * torch.eye(4, dtype=x.dtype))
    x_test = torch.randn(25, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    xt = torch.cat([x_test, torch.ones(25, 1, dtype=x.dtype)], dim=1)
    model = post.curvature.blocks[0].module
    f, cov = glm_logit_covariance(
        lambda b: model(b["x"]), post, [{"x": x_test[i : i + 10]} for i in range(0, 25, 10)]
    )
    exact_var = torch.einsum("ni,ij,nj->n", xt, cov_row, xt)  # x' S x, the same for each output
    expected_cov = exact_var[:, None, None] * torch.eye(2, dtype=x.dtype)
    torch.testing.assert_close(f, xt @ mean.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, expected_cov, rtol=1e-10, atol=1e-14)
    # the predictive of y: N(x'm, x' S x + sigma^2), checked by its log density at the labels
    var_y = torch.diagonal(cov, dim1=1, dim2=2) + SIGMA**2
    exact = torch.distributions.Normal(xt @ mean.T, (exact_var[:, None] + SIGMA**2).sqrt())
    y_test = xt @ mean.T + 0.1
    got = torch.distributions.Normal(f, var_y.sqrt()).log_prob(y_test)
    torch.testing.assert_close(got, exact.log_prob(y_test), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- brute force: MLP


class TokenMLP(nn.Module):
    """Per-token Linear -> tanh -> masked mean over tokens -> Linear (the classifier)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Linear(3, 4).double()
        self.head = nn.Linear(4, 3).double()
        self.proj = nn.Linear(4, 4, bias=False).double()  # a bias-free block, like LoRA A/B

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        h = self.proj(torch.tanh(self.inner(batch["x"])))  # [B, T, 4]
        w = batch["attention_mask"].to(h.dtype)[:, :, None]
        return self.head((h * w).sum(1) / w.sum(1))


def token_batches(num: int, seed: int, labels: bool = True) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        mask = torch.ones(4, 5, dtype=torch.long)
        mask[1, 3:] = 0
        mask[3, 1:] = 0
        b = {"x": torch.randn(4, 5, 3, generator=g, dtype=torch.float64), "attention_mask": mask}
        if labels:
            b["labels"] = torch.randint(0, 3, (4,), generator=g)
        out.append(b)
    return out


def brute_force_jsj(
    model: TokenMLP, post: LaplacePosterior, batches: list[dict[str, Tensor]]
) -> Tensor:
    """J (autograd.functional.jacobian, one example at a time) Sigma (dense) J^T."""
    names = [n for b in post.curvature.blocks for n in b.names]  # covariance()'s order
    params = dict(model.named_parameters())
    theta = [params[n].detach().clone() for n in names]
    sigma = post.covariance()
    out = []
    for batch in batches:
        for i in range(batch["x"].shape[0]):
            one = {k: v[i : i + 1] for k, v in batch.items() if k != "labels"}

            def f(*flat: Tensor, one: dict[str, Tensor] = one) -> Tensor:
                return torch.func.functional_call(
                    model, dict(zip(names, flat, strict=True)), (one,)
                )[0]

            jac = torch.autograd.functional.jacobian(f, tuple(theta))
            j = torch.cat([t.flatten(1) for t in jac], dim=1)  # [K, D]
            out.append(j @ sigma @ j.T)
    return torch.stack(out)


@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_glm_covariance_equals_brute_force_jacobian_on_a_tiny_nonlinear_model(
    structure: str,
) -> None:
    model = TokenMLP()
    params = dict(model.named_parameters())
    curv = fit_curvature(
        model,
        model,
        params,
        token_batches(3, seed=1),
        lambda f, t: nn.functional.cross_entropy(f, t, reduction="none"),
        "classification",
        structure,  # type: ignore[arg-type]
    )
    post = LaplacePosterior(curv, 0.7)
    test = token_batches(2, seed=2, labels=False)
    f, cov = glm_logit_covariance(model, post, test)
    expected = brute_force_jsj(model, post, test)
    assert cov.shape == (8, 3, 3) and torch.linalg.eigvalsh(cov).min() > 0
    torch.testing.assert_close(f, torch.cat([model(b) for b in test]).detach())
    torch.testing.assert_close(cov, expected, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in params.values())


# ----------------------------------------------------------------------------- the links


@pytest.mark.parametrize(("mu", "var"), [(3.0, 9.0), (-1.0, 4.0), (0.5, 0.25), (2.0, 25.0)])
def test_probit_matches_the_sigmoid_gaussian_integral(mu: float, var: float) -> None:
    """Two classes, logits (f, 0) with f ~ N(mu, var): E[sigmoid(f)] by Gauss-Hermite quadrature;
    MacKay's sigmoid(mu / sqrt(1 + pi var / 8)) is within 0.02 of it (1 + var, say, is not)."""
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.hermite_e.hermegauss(80))
    exact = float((weights * torch.sigmoid(mu + math.sqrt(var) * nodes)).sum() / weights.sum())
    cov = torch.tensor([[[var, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    p = probit_probs(torch.tensor([[mu, 0.0]], dtype=torch.float64), cov)
    assert float(p.sum()) == pytest.approx(1.0)
    assert float(p[0, 0]) == pytest.approx(exact, abs=0.02)


def test_logit_draws_have_the_glm_mean_and_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    root = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    cov = root @ root.transpose(1, 2)
    cov[1, 2, :] = cov[1, :, 2] = 0.0  # a singular one: a class with no variance
    mean = torch.randn(2, 3, generator=g, dtype=torch.float64)
    draws = glm_logit_draws(mean, cov, 200_000, torch.Generator().manual_seed(1))
    assert draws.shape == (200_000, 2, 3)
    for n in range(2):
        torch.testing.assert_close(draws[:, n].mean(0), mean[n], atol=0.02, rtol=0)
        rel = torch.linalg.matrix_norm(torch.cov(draws[:, n].T) - cov[n])
        assert rel / torch.linalg.matrix_norm(cov[n]) < 0.02
    assert float(draws[:, 1, 2].std()) < 1e-6


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ("predictive=glm k=3", "k=3 is not allowed with predictive=glm"),
        ("predictive=glm mc_dropout=4", "mc_dropout=4 is not allowed with predictive=glm"),
        ("predictive=linear", "predictive='linear' is not allowed: one of samples, glm"),
        ("predictive=glm glm_link=logit", "glm_link='logit' is not allowed: one of mc, probit"),
        ("predictive=glm glm_samples=0", "glm_samples=0 is not allowed: an integer >= 1"),
    ],
)
def test_bad_glm_options_are_refused(overrides: str, match: str, tmp_path: Path) -> None:
    from bayesian_lora.evaluate import check_options
    from tests.helpers import compose_eval

    with pytest.raises(ConfigError, match=match):
        check_options(compose_eval([f"run_dir={tmp_path}", *overrides.split()]))


@pytest.mark.slow
def test_glm_on_a_map_run_is_refused_in_one_line_before_torch_loads(tmp_path: Path) -> None:
    from tests.helpers import fake_run_folder

    run = fake_run_folder(tmp_path / "map", [[[0.6, 0.4]]], [0])
    script = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from bayesian_lora.config import CONFIG_DIR\n"
        "from bayesian_lora.evaluate import check_options\n"
        "cfg = OmegaConf.load(CONFIG_DIR / 'evaluate.yaml')\n"
        "del cfg['defaults'], cfg['hydra']\n"
        f"cfg.run_dir, cfg.predictive = {str(run)!r}, 'glm'\n"
        "try:\n"
        "    check_options(cfg)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first.startswith("ConfigError predictive=glm is not allowed for run_dir=")
    assert "a 'map' run; the linearised (GLM) predictive needs a Laplace run folder" in first
    assert second == "torch loaded: False"
    cli = subprocess.run(
        [sys.executable, "-m", "bayesian_lora.evaluate", f"run_dir={run}", "predictive=glm"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    errors = [line for line in cli.stderr.splitlines() if line.startswith("error: ")]
    assert cli.returncode == 2 and len(errors) == 1 and "'map' run" in errors[0], cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize("name", ["tiny", "tiny_causal"])
@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_glm_covariance_equals_brute_force_on_the_tiny_lora_model(
    structure: str, name: str
) -> None:
    """The real model path (LoRA A and B in attention, the head, padded batches; the causal LM
    read out at its answer letters, left-padded, letters masked): the hooked J Sigma J^T equals
    autograd.functional.jacobian's J times the dense Sigma times J^T; a masked letter has f* =
    -inf, no variance, and probability exactly 0 under the probit."""
    module, params, batches = tiny_lora_model_and_batches(name)
    curv = fit_curvature(
        module, module.model, params, batches, module.per_example_nll, "classification", structure
    )  # type: ignore[arg-type]
    post = LaplacePosterior(curv, 3.0)
    test = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    f, cov = glm_logit_covariance(module, post, test)
    names = [n for b in curv.blocks for n in b.names]
    theta = tuple(params[n].detach().clone() for n in names)
    sigma = post.covariance()
    expected = []
    for batch in test:
        for i in range(batch["input_ids"].shape[0]):
            one = {k: v[i : i + 1] for k, v in batch.items()}

            def out(*flat: Tensor, one: dict[str, Tensor] = one) -> Tensor:
                return module(one, overrides=dict(zip(names, flat, strict=True)))[0]

            jac = torch.autograd.functional.jacobian(out, theta)
            j = torch.cat([t.flatten(1) for t in jac], dim=1).double()
            expected.append(j @ sigma @ j.T)
    assert sigma.shape[0] == sum(p.numel() for p in params.values())
    torch.testing.assert_close(cov, torch.stack(expected), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(f, torch.cat([module(b) for b in test]).detach().double())
    shown = torch.isfinite(f)
    assert torch.isfinite(cov).all() and torch.equal(shown, f > -math.inf)
    assert (torch.diagonal(cov, dim1=1, dim2=2)[shown] > 0).all()
    assert not (cov * ~shown[:, :, None]).any() and not (cov * ~shown[:, None, :]).any()
    probs = probit_probs(f, cov)
    assert torch.equal(probs == 0, ~shown) and torch.allclose(probs.sum(-1), torch.ones(6).double())
    if name == "tiny_causal":
        assert not shown.all()


@pytest.mark.slow
def test_glm_predictive_of_a_tiny_regression_run(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """STS-B: members are draws of the mean; their mixture with obs_std approximates the
    closed-form N(f*, J Sigma J^T + obs_std^2), whose NLL ``predictive.closed_form`` holds;
    probit refused."""
    run = train_run(
        synthetic_data_dir, tmp_path / "map", "data=stsb", "trainer.max_epochs=1", "prior_std=1.0"
    )
    fit_laplace(compose_config("laplace", [f"run_dir={run}", "structure=diag", "num_samples=2"]))
    out = tmp_path / "map_laplace_diag"
    result = run_eval(f"run_dir={out}", "predictive=glm", "glm_samples=400", "plots=false")
    p = result["predictive"]
    assert p["kind"] == "glm" and p["link"] == "mc" and result["num_members"] == 400
    assert p["passes_per_example"] == {"forward": 1, "backward": 1}
    closed = p["closed_form"]
    assert math.isfinite(closed["nll"]) and closed["rmse"] > 0
    # the MC mixture's -log of an average is biased up (Jensen), most in the tails: 400 draws
    # of the mean come within a few percent of the exact NLL; the mean is f* up to MC noise
    mc = result["ensemble"]
    assert closed["nll"] - 0.02 < mc["nll"] < 1.05 * closed["nll"], (mc, closed)
    assert mc["rmse"] == pytest.approx(closed["rmse"], rel=0.02)
    with pytest.raises(ConfigError, match="glm_link=probit is not allowed: it is a softmax link"):
        run_eval(f"run_dir={out}", "predictive=glm", "glm_link=probit")
