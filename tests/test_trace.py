"""The per-step trace of a chain (trace.safetensors): every sampler step, consistent with samples."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import bayesian_lora.train as train_module
from bayesian_lora.callbacks.trace import TRACE_FILE, TRACE_FORMAT, load_trace
from bayesian_lora.models.prior import parameter_group
from bayesian_lora.runs import load_samples
from bayesian_lora.train import train
from tests.helpers import AtStep, compose_train, inject, smoke_overrides

CHAIN = [
    "data=mrpc",
    "sampler=sgld",
    "sampler.warmup.steps=3",
    "sampler.burn_in=2",
    "sampler.thin=2",
    "sampler.num_samples=3",
    "prior_std=0.5",
    "callbacks.trace.flush_every_steps=3",
    "callbacks.trace.probe_size=8",
    "evaluate_on_fit_end=false",
]


@pytest.mark.slow
def test_trace_has_every_sampler_step_and_agrees_with_the_samples(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    train(compose_train(smoke_overrides(synthetic_data_dir, tmp_path, *CHAIN)))
    trace = load_trace(tmp_path)
    samples, manifest = load_samples(tmp_path)
    with safe_open(str(tmp_path / TRACE_FILE), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == TRACE_FORMAT and meta["probe_size"] == "8"
    assert trace["step"].tolist() == list(range(3, 11))  # burn-in 3, 4; sampling 5..10
    kept = trace["step"][trace["kept"].bool()].tolist()
    assert kept == manifest["steps"] == [6, 8, 10]
    groups = meta["groups"].split(",")
    assert set(groups) == {"lora_A", "lora_B", "head"}
    # norms at kept steps are the kept samples' norms
    for g in groups:
        by_hand = torch.stack(
            [
                torch.stack(
                    [t[k].pow(2).sum() for n, t in samples.items() if parameter_group(n) == g]
                )
                .sum()
                .sqrt()
                for k in range(3)
            ]
        )
        torch.testing.assert_close(trace[f"norm.{g}"][trace["kept"].bool()], by_hand)
    # u - nll is the prior term at the parameters before the update: ||theta||^2 / (2 s^2 N)
    sq = sum(trace[f"norm.{g}"].double() ** 2 for g in groups)
    prior = (trace["u"] - trace["nll"]).double()[1:]
    torch.testing.assert_close(
        prior, sq[:-1] / (2 * 0.5**2 * manifest["num_data"]), rtol=1e-3, atol=1e-6
    )
    assert torch.isfinite(trace["probe_loglik"]).all() and (trace["probe_loglik"] < 0).all()


@pytest.mark.slow
def test_trace_of_a_resumed_chain_is_the_uninterrupted_trace(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = [*CHAIN, "callbacks.checkpoint.every_n_train_steps=4"]
    reference = tmp_path / "reference"
    train(compose_train(smoke_overrides(synthetic_data_dir, reference, *chain)))
    stopped = tmp_path / "stopped"
    inject(monkeypatch, AtStep(7, lambda m: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit):
        train_module.train(compose_train(smoke_overrides(synthetic_data_dir, stopped, *chain)))
    assert load_trace(stopped)["step"].tolist() == [3, 4, 5, 6]  # flushed on the signal
    monkeypatch.undo()
    train_module.train(compose_train([f"resume={stopped}", "paths.output_dir=unused"]))
    expected, resumed = load_trace(reference), load_trace(stopped)
    assert set(resumed) == set(expected)
    for name, t in expected.items():
        torch.testing.assert_close(resumed[name], t, rtol=0, atol=0, msg=name)
