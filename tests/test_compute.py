"""Compute accounting (``bayesian_lora.compute``): counts checked against the plan by hand."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bayesian_lora.compute import ComputeMeter, total_grad_evals, total_train_seconds
from bayesian_lora.runs import load_samples
from tests.helpers import CHAIN, AtStep, compose_train, inject, run_eval, train_run

# CHAIN: 3 warm-up steps, 2 burn-in steps, then samples at sampling steps 2, 4, 6 -> 3+2+6 = 11
CHAIN_STEPS = {"warmup": 3, "burn_in": 2, "sampling": 6}


def test_meter_sums_phases_and_resumes_its_clock() -> None:
    meter = ComputeMeter()
    for phase, n in (("warmup", 2), ("sampling", 3)):
        for _ in range(n):
            meter.gradient(phase, examples=4)
            meter.step(phase)
    meter.gradient("sampling", examples=4)  # SAM-style second gradient of the last step
    state = meter.state_dict() | {"train_seconds": 10.0}
    again = ComputeMeter()
    again.load_state_dict(state)
    s = again.summary()
    assert s["steps"] == {"warmup": 2, "sampling": 3} and s["total_steps"] == 5
    assert s["grad_evals"] == {"warmup": 2, "sampling": 4} and s["total_grad_evals"] == 6
    assert s["train_examples"] == 24 and s["train_seconds"] == 10.0
    again.warm_start = {"total_grad_evals": 100, "train_seconds": 5.0}
    assert total_grad_evals(again.summary()) == 106
    assert total_train_seconds(again.summary()) == 15.0
    assert total_grad_evals({}) is None and total_train_seconds(None) is None


@pytest.mark.parametrize(
    ("sampler", "grads_per_step"), [("sgld", 1), ("sam_sgld", 2), ("swag", 1), ("blob", 1)]
)
def test_a_chain_records_its_steps_and_gradients(
    sampler: str, grads_per_step: int, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    extra = {"swag": ["sampler.swag.num_draws=3", "sampler.swag.rank=2"]}.get(sampler, [])
    train_run(synthetic_data_dir, tmp_path, f"sampler={sampler}", *CHAIN, *extra)
    compute = load_samples(tmp_path)[1].compute
    assert compute["steps"] == CHAIN_STEPS
    sampler_grads = grads_per_step * (CHAIN_STEPS["burn_in"] + CHAIN_STEPS["sampling"])
    assert compute["total_grad_evals"] == CHAIN_STEPS["warmup"] + sampler_grads
    batch = int(compose_train(["debug=smoke", "model=tiny"]).data.batch_size)
    # every batch is full but an epoch's last (the synthetic train split is not a multiple)
    assert (compute["total_grad_evals"] - 2) * batch < compute["train_examples"]
    assert compute["train_examples"] <= compute["total_grad_evals"] * batch
    assert compute["train_seconds"] > 0


def test_a_chain_from_a_map_run_carries_its_cost_and_evaluate_adds_it_up(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    map_dir = train_run(synthetic_data_dir, tmp_path / "map", "trainer.max_epochs=2")
    map_compute = load_samples(map_dir)[1].compute
    assert (
        map_compute["steps"] == {"map": map_compute["total_steps"]} and map_compute["total_steps"]
    )
    chain = train_run(
        synthetic_data_dir,
        tmp_path / "chain",
        "sampler=sgld",
        *CHAIN,
        f"sampler.warmup.from_run={map_dir}",
    )
    compute = load_samples(chain)[1].compute
    assert "warmup" not in compute["steps"]
    assert compute["warm_start"]["total_grad_evals"] == map_compute["total_grad_evals"]
    own = CHAIN_STEPS["burn_in"] + CHAIN_STEPS["sampling"]
    result = run_eval(f"run_dir={chain}", "plots=false")
    assert result["compute"]["train_grad_evals"] == own + map_compute["total_grad_evals"]
    assert result["compute"]["forward_passes_per_example"] == 3
    assert result["compute"]["eval_seconds"] > 0


def test_a_resumed_chain_counts_each_step_once(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject(monkeypatch, AtStep(7, lambda m: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit):
        train_run(synthetic_data_dir, tmp_path, "sampler=sgld", *CHAIN)
    monkeypatch.undo()
    from bayesian_lora.train import train

    train(compose_train([f"resume={tmp_path}", "paths.output_dir=unused"]))
    compute = load_samples(tmp_path)[1].compute
    assert compute["steps"] == CHAIN_STEPS
    assert compute["total_grad_evals"] == sum(CHAIN_STEPS.values())
