"""BLoB: mean-field VI on a conjugate model whose exact posterior is diagonal (the family alone,
and through the module's loss), the loss the module minimises against a hand-computed ELBO / N,
and sampler=blob through train, resume and evaluate on the tiny model."""

from __future__ import annotations

import copy
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import bayesian_lora.train as train_module
from bayesian_lora.methods.blob import (
    BLOB_FILE,
    MeanFieldGaussian,
    forward_with,
    negative_elbo_per_datum,
)
from bayesian_lora.models.module import gaussian_nll
from bayesian_lora.runs import load_samples
from tests.helpers import AtStep, compose_train, inject, run_eval, smoke_overrides

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


# ---------------------------------------------------------------- sampler=blob through train
BLOB = [
    "data=mrpc",
    "sampler=blob",
    "sampler.warmup.steps=3",
    "sampler.burn_in=1",
    "sampler.thin=2",
    "sampler.num_samples=3",
    "sampler.blob.num_draws=4",
    "callbacks.checkpoint.every_n_train_steps=4",
    "callbacks.samples.flush_every=1",
]


@pytest.mark.slow
def test_blob_run_through_train_resume_and_evaluate(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = tmp_path / "ref"
    train_module.train(compose_train(smoke_overrides(synthetic_data_dir, ref, *BLOB)))
    draws, manifest = load_samples(ref)
    assert manifest["num_samples"] == 4 and manifest["status"] == "complete"
    assert manifest["steps"] == [5, 7, 9]  # snapshots: warm-up 3, burn-in 1, every 2nd step
    assert manifest["sampler"]["name"] == "blob" and manifest["posterior"]["method"] == "blob"
    assert manifest["compute"]["grad_evals"] == {"warmup": 3, "burn_in": 1, "sampling": 6}
    q = load_file(str(ref / BLOB_FILE))
    a_names = [n for n in draws if ".lora_A." in n]
    assert a_names and sorted(manifest["posterior"]["variational"]) == sorted(a_names)
    assert set(q) == {f"{m}/{n}" for m in ("mu", "std") for n in a_names}
    for name, stack in draws.items():
        if name in a_names:  # draws of A from q: the rows differ, and (A - mu)/s is N(0, 1)
            assert not torch.equal(stack[0], stack[1])
            z = (stack - q[f"mu/{name}"]) / q[f"std/{name}"]
            assert abs(float(z.mean())) < 0.25 and 0.8 < float(z.std()) < 1.2, name
        else:  # B and head: one point estimate in every row
            assert torch.equal(stack, stack[:1].expand_as(stack)), name

    # SIGTERM mid-VI (mid-epoch) -> exit 143 -> resume: the same q and the same draws, bit for bit
    out = tmp_path / "resumed"
    inject(monkeypatch, AtStep(8, lambda m: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit) as stopped:
        train_module.train(compose_train(smoke_overrides(synthetic_data_dir, out, *BLOB)))
    assert stopped.value.code == 143
    assert load_samples(out)[1]["status"].startswith("interrupted")
    monkeypatch.undo()
    train_module.train(compose_train([f"resume={out}", "paths.output_dir=unused"]))
    again = load_file(str(out / BLOB_FILE))
    assert all(torch.equal(again[k], q[k]) for k in q)
    resumed, resumed_manifest = load_samples(out)
    assert all(torch.equal(resumed[n], draws[n]) for n in draws)
    assert resumed_manifest["compute"]["grad_evals"] == manifest["compute"]["grad_evals"]

    result = run_eval(f"run_dir={ref}", "plots=false")
    assert result["num_members"] == 4 and result["runs"][0]["sampler"] == "blob"


def _hand_elbo(module: Any, batch: dict[str, torch.Tensor], num_data: int) -> float:
    """L for the draw the module is about to make, from first principles: eps from a copy of the
    objective's generator, A = mu + softplus(rho) eps swapped into a copy of the model, the
    closed-form Gaussian KL with sigma_A solved from prior.dW_fraction and prior.lora_B per layer,
    the point prior of B (sigma 0.05) and the head (1/sqrt(fan_in), biases 1), all over N."""
    objective = module.objective
    gen = torch.Generator().set_state(objective.generator(torch.device("cpu")).get_state())
    model = copy.deepcopy(module.model).eval()
    params = dict(model.named_parameters())
    scale2_r = (8 / 4) ** 2 * 4  # tiny: alpha 8, r 4
    kl = torch.zeros((), dtype=torch.float64)
    for name in objective.q.names:  # the objective's draw order
        mu = params[name].detach().clone()
        s = torch.nn.functional.softplus(objective.q.rho[name.replace(".", "__")].detach())
        eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype)
        base = model.get_submodule(name.split(".lora_A.")[0]).base_layer.weight
        sigma_a = math.sqrt(0.01 * float(base.detach().float().var()) / scale2_r) / 0.05
        q = torch.distributions.Normal(mu.double(), s.double())
        p = torch.distributions.Normal(torch.zeros_like(mu.double()), sigma_a)
        kl += torch.distributions.kl_divergence(q, p).sum()
        params[name].data.copy_(mu + s * eps)
    point = torch.zeros((), dtype=torch.float64)
    for name, t in params.items():
        if not t.requires_grad or ".lora_A." in name:
            continue
        head_sigma = 1 / math.sqrt(t.shape[1]) if t.ndim == 2 else 1.0
        sigma = 0.05 if ".lora_B." in name else head_sigma
        point += t.detach().double().pow(2).sum() / (2 * sigma**2)
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        nll = torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).double()
    return float(nll + (kl + point) / num_data)


class HandComputedELBO(L.Callback):
    """Before each VI step: the hand-computed L; after it: the loss the module minimised."""

    def __init__(self) -> None:
        self.pairs: list[tuple[float, float]] = []
        self._expected: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        vi = pl_module.plan.phase(pl_module.chain_step) != "warmup"
        num_data = trainer.datamodule.num_train_examples  # type: ignore[attr-defined]
        self._expected = _hand_elbo(pl_module, batch, num_data) if vi else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self._expected is not None:
            self.pairs.append((float(pl_module.last_stats["u"]), self._expected))


def test_the_module_minimises_the_hand_computed_elbo_over_n(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prior.lora_B=0.05 makes sigma_A differ from sigma_B and from layer to layer."""
    watch = HandComputedELBO()
    extra = [
        *BLOB,
        "sampler.warmup.steps=2",
        "sampler.burn_in=0",
        "sampler.thin=1",
        "prior.lora_B=0.05",
        "prior.dW_fraction=0.01",  # the value _hand_elbo solves sigma_A with
        "evaluate_on_fit_end=false",
    ]
    inject(monkeypatch, watch)
    train_module.train(compose_train(smoke_overrides(synthetic_data_dir, tmp_path, *extra)))
    assert len(watch.pairs) == 3
    for got, expected in watch.pairs:
        assert got == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- conjugate, through the module
class Regressor(torch.nn.Module):
    """y = w.x (w frozen at 0): with LoRA r = 1 and B = 1 the output is a.x, a = LoRA A."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(d, 1, bias=False)
        torch.nn.init.zeros_(self.lin.weight)

    def forward(self, x: torch.Tensor) -> Any:
        return SimpleNamespace(logits=self.lin(x))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_vi_through_the_module_reaches_the_exact_diagonal_posterior(temperature: float) -> None:
    """The module's loss (training_loss of the sampler phase, the optimizer it builds with the
    rho group) on Bayesian linear regression with orthogonal features: the exact posterior
    N(m, T H^-1) is diagonal, so mean-field VI reaches it exactly (prior sigma_A = 0.4 dominates
    the third coordinate). One reparameterised draw per step, as in training."""
    from peft import LoraConfig, get_peft_model

    from bayesian_lora.data.tasks import get_task
    from bayesian_lora.methods.blob import build_objective
    from bayesian_lora.models.module import BayesianLoRAModule
    from bayesian_lora.models.prior import PriorSettings, build_prior
    from bayesian_lora.samplers.chain import ChainPlan

    sigma_a = 0.4
    x, y, _, _ = conjugate()
    precision = (x * x).sum(0) / SIGMA**2 + 1 / sigma_a**2  # diagonal: X^T X is diagonal
    mean, sd = (x.T @ y / SIGMA**2) / precision, (temperature / precision).sqrt()
    torch.manual_seed(0)
    lora = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=["lin"])
    model = get_peft_model(Regressor(3), lora)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data.fill_(1.0 if "lora_B" in name else 0.0)
    settings = PriorSettings(dW_fraction=None, lora_A=sigma_a, lora_B=1.0, sampled=["lora_A"])
    prior = build_prior(model, settings)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    blob = SimpleNamespace(init_std_fraction=0.2, rho_lr_scale=1.0)
    objective = build_objective(prior, trained, blob, temperature, seed=1)
    module = BayesianLoRAModule(
        model,
        get_task("stsb"),
        num_data=len(y),
        prior=prior,
        obs_std=SIGMA,
        sampler_factory=torch.optim.AdamW,
        plan=ChainPlan(warmup_steps=0, burn_in=0, thin=1, num_samples=1),
        objective=objective,
    )
    module._freeze_held()  # B stays at 1 (prior.sampled = [lora_A])
    opt = module.configure_optimizers()[1]
    batch = {"x": x.float(), "labels": y.float()}
    steps, lr0, lr1 = 2000, 0.05, 1e-4
    for i in range(steps):
        lr = lr1 + 0.5 * (lr0 - lr1) * (1 + math.cos(math.pi * i / steps))
        for group in opt.param_groups:  # as training_step sets it
            group["lr"] = lr * group.get("lr_scale", 1.0)
        opt.zero_grad()
        loss, _ = module.training_loss(batch, "sampling")
        loss.backward()
        opt.step()
    (name,) = objective.variational_names
    mu = objective.q.mean(name).detach().double().flatten()
    s = objective.q.std()[name].detach().double().flatten()
    print(
        f"T={temperature}: mean error / sd {((mu - mean) / sd).abs().max():.4f}, sd ratio {s / sd}"
    )
    assert ((mu - mean) / sd).abs().max() < 0.15
    torch.testing.assert_close(s, sd, rtol=0.06, atol=0.0)
