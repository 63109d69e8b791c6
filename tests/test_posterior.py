"""End-to-end posterior check: a chain through the real code path against a closed form.

Only the head is sampled (``prior=head_only``, no warm start; LoRA B starts at zero, so the
frozen LoRA adds nothing and the head sees fixed features phi(x)). With the regression task's
Gaussian likelihood (STS-B schema, ``data.obs_std`` known) the head theta = (w, b) is Bayesian
linear regression: with Phi = [phi(x_i), 1] (N x (d+1)) and the prior's precision Lambda,

    U(theta) = |y - Phi theta|^2 / (2 obs_std^2) + theta' Lambda theta / 2 + const
    H = Phi'Phi / obs_std^2 + Lambda,   mean m = H^-1 Phi'y / obs_std^2,   pi_T = N(m, T H^-1).

Full-batch SGLD on u = U/N with step eta is theta <- theta - e grad U + sqrt(2 e T) xi,
e = eta / N, whose stationary law is exactly N(m, T (H - e H^2 / 2)^-1): the mean is the
posterior's, and the covariance is the posterior's with the discretisation correction
(I - e H / 2)^-1, known in closed form. The test compares the kept samples with that law, so the
step can be large (e lambda_max(H) = 1) and the chain mixes in a few hundred steps.

What is exercised: the Hydra config (model, data, prior group, sampler), ``train()`` with its
wiring of N = num_data into the potential and the sampler, ``BayesianLoRAModule.potential`` with
the per-group prior scales, the held-fixed groups, the sample collector and the samples file.
The features are taken from the model that the run builds (a hook on the head's input during
training), not recomputed from a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

import bayesian_lora.train as train_module
from bayesian_lora.config import build_datamodule
from bayesian_lora.models.lora import ModelSettings, build_lora_model
from bayesian_lora.runs import load_samples
from tests.helpers import compose_train, inject

OBS_STD = 2.0
STEP = 1.0  # e * lambda_max(H): < 2 is stable; the correction makes any such step exact
BURN_IN, NUM_SAMPLES = 100, 600
#: Tolerances, with the measured values of the four design points in the README.
MEAN_TOL = 0.35  # max |sample mean - m| in stationary standard deviations
COV_TOL = 0.35  # relative Frobenius error of the sample covariance
VAR_RATIO = (0.65, 1.5)  # sample / exact variance along each eigenvector of H


def overrides(data_dir: Path, out: Path, n: int, sigma: float, temperature: float) -> list[str]:
    return [
        "model=tiny",
        "model.tiny.hidden_size=8",
        "model.tiny.num_hidden_layers=1",
        "model.tiny.intermediate_size=16",
        "+model.tiny.initializer_range=0.5",  # varied features (0.02 makes them near-constant)
        "model.max_length=16",
        "data=stsb",
        f"data.max_train_samples={n}",
        f"data.batch_size={n}",  # full batch: no mini-batch noise
        "data.max_eval_samples=4",
        f"data.obs_std={OBS_STD}",
        "prior=head_only",
        f"prior.head={sigma}",
        "sampler=sgld",
        f"sampler.temperature={temperature}",
        "sampler.warmup.steps=0",
        f"sampler.burn_in={BURN_IN}",
        "sampler.thin=1",
        f"sampler.num_samples={NUM_SAMPLES}",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "+trainer.limit_val_batches=0",
        "logger=none",
        "evaluate_on_fit_end=false",
        "callbacks.checkpoint.every_n_train_steps=100000",
        f"callbacks.samples.flush_every={NUM_SAMPLES}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out}",
    ]


def head_of(model: Any) -> torch.nn.Module:
    return model.base_model.model.classifier


class FeatureRecorder(L.Callback):
    """Records the head's input (the frozen features) in the training forward of the first
    steps (not the trace's probe forward after the update)."""

    def __init__(self) -> None:
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self._armed = False

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        def hook(module: Any, args: tuple[torch.Tensor, ...]) -> None:
            if self._armed:
                self._armed = False
                self.features.append(args[0].detach().double().clone())

        head_of(pl_module.model).register_forward_pre_hook(hook)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, *a: Any) -> None:
        if len(self.labels) < 3:
            self._armed = True
            self.labels.append(batch["labels"].detach().double().clone())


@dataclass
class Target:
    mean: np.ndarray
    cov: np.ndarray  # the chain's exact stationary covariance
    posterior_cov: np.ndarray  # T H^-1
    hessian: np.ndarray


def design_features(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """The features and labels of the training set, from the model the config builds (used to
    choose the step size before the run; the run's own features are checked against them)."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_lora_model(ModelSettings.from_config(cfg.model), 1).eval()
    feats: list[torch.Tensor] = []
    head_of(model).register_forward_pre_hook(lambda m, a: feats.append(a[0].detach().double()))
    labels = []
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            model(**{k: v for k, v in batch.items() if k != "labels"})
            labels.append(batch["labels"].double())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def closed_form(
    phi: np.ndarray, y: np.ndarray, sigma: float, temperature: float, e: float
) -> Target:
    design = np.hstack([phi, np.ones((len(phi), 1))])
    hessian = design.T @ design / OBS_STD**2 + np.eye(design.shape[1]) / sigma**2
    mean = np.linalg.solve(hessian, design.T @ y / OBS_STD**2)
    cov = temperature * np.linalg.inv(hessian - e * hessian @ hessian / 2)
    return Target(mean, cov, temperature * np.linalg.inv(hessian), hessian)


def head_samples(run_dir: Path) -> tuple[np.ndarray, dict[str, torch.Tensor], dict[str, Any]]:
    samples, manifest = load_samples(run_dir)
    weight = next(
        v for n, v in samples.items() if n.endswith("classifier.modules_to_save.default.weight")
    )
    bias = next(
        v for n, v in samples.items() if n.endswith("classifier.modules_to_save.default.bias")
    )
    theta = torch.cat([weight[:, 0, :], bias], dim=1).double().numpy()
    return theta, samples, manifest


def errors(theta: np.ndarray, target: Target) -> dict[str, float]:
    """Mean error (in sd), covariance relative Frobenius error, variance ratios along H's axes."""
    sd = np.sqrt(np.diag(target.cov))
    mean_err = float(np.max(np.abs(theta.mean(0) - target.mean) / sd))
    cov = np.cov(theta, rowvar=False)
    cov_err = float(np.linalg.norm(cov - target.cov) / np.linalg.norm(target.cov))
    _, axes = np.linalg.eigh(target.hessian)
    ratios = np.diag(axes.T @ cov @ axes) / np.diag(axes.T @ target.cov @ axes)
    return {
        "mean": mean_err,
        "cov": cov_err,
        "ratio_min": float(ratios.min()),
        "ratio_max": float(ratios.max()),
    }


def run_check(
    data_dir: Path,
    out: Path,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    sigma: float,
    temperature: float,
) -> dict[str, float]:
    """One chain of the real train() and its errors against the closed form."""
    base = compose_train(overrides(data_dir, out, n, sigma, temperature))
    phi, y = design_features(base)
    assert phi.shape == (n, 8) and phi.std(0).min() > 1e-2, "features must vary over inputs"
    design_h = closed_form(phi, y, sigma, temperature, 0.0).hessian
    lr = STEP * n / float(np.linalg.eigvalsh(design_h)[-1])
    cfg = compose_train([*overrides(data_dir, out, n, sigma, temperature), f"sampler.lr={lr}"])
    recorder = FeatureRecorder()
    inject(monkeypatch, recorder)
    train_module.train(cfg)

    # The features the head was fed during the chain are the frozen ones used above (each
    # epoch is the whole training set in a new order).
    fed = recorder.features[0].numpy()
    labels = recorder.labels[0].numpy()
    for later in recorder.features:
        np.testing.assert_allclose(later.numpy().T @ later.numpy(), phi.T @ phi, rtol=1e-6)
    np.testing.assert_allclose(np.sort(labels), np.sort(y))

    theta, samples, manifest = head_samples(out)
    assert manifest["num_data"] == n and manifest["num_samples"] == NUM_SAMPLES
    held = manifest["prior"]["held_fixed"]
    assert held and all("lora_" in name for name in held)
    for name in held:  # stored with every sample, at their starting value
        assert torch.equal(samples[name], samples[name][:1].expand_as(samples[name]))
        if "lora_B" in name:
            assert not samples[name].any()
    target = closed_form(fed, labels, sigma, temperature, lr / n)
    result = errors(theta, target)
    correction = np.linalg.norm(target.cov - target.posterior_cov) / np.linalg.norm(
        target.posterior_cov
    )
    print(f"N={n} sigma={sigma} T={temperature} lr={lr:.4g}: {result}, correction {correction:.3f}")
    return result


def assert_within(result: dict[str, float]) -> None:
    assert result["mean"] < MEAN_TOL, result
    assert result["cov"] < COV_TOL, result
    assert VAR_RATIO[0] < result["ratio_min"] and result["ratio_max"] < VAR_RATIO[1], result


#: (N, prior sigma, T): both values of each, in four runs (a half fraction of the 2^3 design).
DESIGN = [(16, 0.3, 1.0), (16, 0.15, 0.5), (40, 0.15, 1.0), (40, 0.3, 0.5)]


@pytest.mark.slow
@pytest.mark.parametrize(("n", "sigma", "temperature"), DESIGN)
def test_head_posterior_is_bayesian_linear_regression(
    n: int,
    sigma: float,
    temperature: float,
    synthetic_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_within(run_check(synthetic_data_dir, tmp_path, monkeypatch, n, sigma, temperature))
