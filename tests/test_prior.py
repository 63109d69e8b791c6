"""The prior group: per-group scales, the implied Var(dW), sampled/held groups (tiny model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.config_validation import ConfigError, validate_config
from bayesian_lora.data.tasks import get_task
from bayesian_lora.models.lora import ModelSettings, build_lora_model
from bayesian_lora.models.module import BayesianLoRAModule
from bayesian_lora.models.prior import PriorSettings, build_prior
from bayesian_lora.runs import load_samples
from bayesian_lora.train import train
from tests.helpers import compose_train, run_eval, smoke_overrides


def tiny_model(*modules_to_save: str) -> torch.nn.Module:
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    if modules_to_save:
        cfg.lora.modules_to_save = list(modules_to_save)
    return build_lora_model(ModelSettings.from_config(cfg), 2)


#: The shipped default's Var(dW) / Var(W) (chosen on validation; the README says how)
F = float(OmegaConf.load(CONFIG_DIR / "prior" / "default.yaml").dW_fraction)


def settings(**kwargs: object) -> PriorSettings:
    return PriorSettings.from_config(
        {**OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "prior" / "default.yaml")), **kwargs}
    )


def test_default_prior_makes_dw_a_stated_fraction_of_each_layers_weights() -> None:
    model = tiny_model()
    prior = build_prior(model, settings())
    assert len(prior.layers) == 4  # query and value of two layers
    for layer in prior.layers:
        assert layer.sigma_A == layer.sigma_B
        # Var(dW_ij) = (alpha/r)^2 r sigma_A^2 sigma_B^2 = f Var(W), by hand: alpha 8, r 4
        assert layer.scaling == 2.0 and layer.r == 4
        assert 4.0 * 4 * layer.sigma_A**2 * layer.sigma_B**2 == pytest.approx(F * layer.var_W)
        assert layer.ratio == pytest.approx(F)
        weight = model.get_submodule(layer.layer).get_base_layer().weight
        assert layer.var_W == pytest.approx(float(weight.var()))
    # and a Monte Carlo draw of dW from the prior has that variance
    layer = prior.layers[0]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 4, 32, generator=gen) * layer.sigma_A
    b = torch.randn(2000, 32, 4, generator=gen) * layer.sigma_B
    dw = layer.scaling * b @ a
    assert float(dw.var()) == pytest.approx(layer.var_dW, rel=0.03)


def test_one_given_lora_sigma_solves_the_other_and_two_are_reported() -> None:
    model = tiny_model()
    for layer in build_prior(model, settings(lora_A=0.05)).layers:
        assert layer.sigma_A == 0.05 and layer.ratio == pytest.approx(F)
    for layer in build_prior(model, settings(lora_B=0.01, dW_fraction=0.1)).layers:
        assert layer.sigma_B == 0.01 and layer.ratio == pytest.approx(0.1)
    layer = build_prior(model, settings(lora_A=1.0, lora_B=1.0)).layers[0]
    assert layer.var_dW == pytest.approx(4.0 * 4)  # (alpha/r)^2 r: the old N(0, 1) prior
    with pytest.raises(ValueError, match="dW_fraction=null"):
        build_prior(model, settings(dW_fraction=None))


def test_head_sigmas_default_to_one_over_sqrt_fan_in_and_can_be_set_per_module() -> None:
    model = tiny_model("classifier", "pooler")
    prior = build_prior(model, settings(modules={"pooler": 0.5}))
    head = {n: s for n, s in prior.sigmas.items() if prior.groups[n] == "head"}
    weight = next(n for n in head if n.endswith("classifier.modules_to_save.default.weight"))
    bias = next(n for n in head if n.endswith("classifier.modules_to_save.default.bias"))
    assert head[weight] == pytest.approx(1 / math.sqrt(32)) and head[bias] == 1.0
    assert all(s == 0.5 for n, s in head.items() if ".pooler." in n)
    assert build_prior(model, settings(head=0.3)).sigmas[weight] == 0.3
    with pytest.raises(ValueError, match="not trained head modules"):
        build_prior(tiny_model(), settings(modules={"pooler": 0.5}))


def test_prior_std_is_an_isotropic_override() -> None:
    prior = build_prior(tiny_model(), PriorSettings.from_config(None, prior_std=0.7))
    assert set(prior.sigmas.values()) == {0.7}
    assert prior.settings.sampled == ["lora_A", "lora_B", "head"]


def test_prior_term_is_the_per_group_gaussian_over_n() -> None:
    model = tiny_model()
    prior = build_prior(model, settings(lora_A=0.1, lora_B=0.2, head=3.0))
    module = BayesianLoRAModule(model, task=get_task("mrpc"), num_data=37, prior=prior)
    with torch.no_grad():
        for p in module.sampled_parameters().values():
            p.normal_()
    by_hand = 0.0
    for name, p in module.sampled_parameters().items():
        sigma = {"lora_A": 0.1, "lora_B": 0.2, "head": 3.0}[prior.groups[name]]
        by_hand += float(p.double().pow(2).sum()) / (2 * sigma**2 * 37)
    assert float(module.prior_term()) == pytest.approx(by_hand, rel=1e-5)


def test_sampled_groups_select_the_samplers_parameters() -> None:
    model = tiny_model()
    module = BayesianLoRAModule(
        model,
        task=get_task("mrpc"),
        num_data=8,
        prior=build_prior(model, settings(sampled=["lora_A"])),
    )
    moved = module.sampler_parameters()
    assert moved and all(".lora_A." in n for n in moved)
    assert len(module.sampled_parameters()) == 10  # all trained tensors are still stored
    no_head = tiny_model()
    for name, p in no_head.named_parameters():
        if "classifier" in name:
            p.requires_grad_(False)
    with pytest.raises(ValueError, match="selects none"):
        build_prior(no_head, settings(sampled=["head"]))
    with pytest.raises(ValueError, match="non-empty list"):
        build_prior(model, settings(sampled=[]))


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("prior.sampled=[lora_C]", "prior.sampled", "lora_A, lora_B, head"),
        ("prior.sampled=[]", "prior.sampled", "non-empty"),
        ("prior.lora_A=-1", "prior.lora_A", "a number > 0"),
        ("prior.dW_fraction=null", "prior.dW_fraction", "when prior.lora_A"),
        ("+prior.modules.pooler=0.1", "prior.modules", "model.lora.modules_to_save"),
        ("+prior.scale=2", "prior.scale", "unknown key"),
        ("prior_std=0", "prior_std", "null or a number > 0"),
    ],
)
def test_bad_prior_values_are_refused_before_loading(
    override: str, key: str, allowed: str, tmp_path: Path
) -> None:
    cfg = compose_train(smoke_overrides(tmp_path, tmp_path, "sampler=sgld", override))
    with pytest.raises(ConfigError, match=f"{key}=.*{allowed}"):
        validate_config(cfg)


@pytest.mark.slow
def test_a_only_chain_stores_held_groups_and_evaluate_reproduces_the_model(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:

    chain = [
        "sampler=sgld",
        "sampler.warmup.steps=4",
        "sampler.burn_in=2",
        "sampler.thin=2",
        "sampler.num_samples=3",
        "prior=a_only",
        "data=mrpc",
    ]
    metrics = train(compose_train(smoke_overrides(synthetic_data_dir, tmp_path, *chain)))
    samples, manifest = load_samples(tmp_path)
    held = set(manifest["prior"]["held_fixed"])
    assert held == {n for n in samples if ".lora_A." not in n}
    assert manifest["prior"]["sampled"] == ["lora_A"]
    for name, t in samples.items():
        constant = torch.equal(t, t[:1].expand_as(t))
        assert constant == (name in held), name
    lora_b = next(t for n, t in samples.items() if ".lora_B." in n)
    assert lora_b.abs().sum() > 0  # trained by the warm start, then held
    saved = json.loads((tmp_path / "manifest.json").read_text())["prior"]["layers"]
    assert len(saved) == 4 and all(
        {"var_W", "var_dW", "var_dW_over_var_W"} <= set(layer) for layer in saved
    )
    again = run_eval(f"run_dir={tmp_path}", f"out_dir={tmp_path / 'again'}")
    assert again["ensemble"] == pytest.approx(metrics["ensemble"], rel=1e-5)
