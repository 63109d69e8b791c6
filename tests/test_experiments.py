"""Every shipped ``experiment=`` config composes and runs a few steps with ``model=tiny debug=smoke``.

An experiment overrides ``debug=`` (it comes later in the defaults list), so the chain and data
sizes of the smoke run are given on the command line too; a sweep experiment runs its first job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.runs import load_samples
from bayesian_lora.train import train
from tests.helpers import CHAIN, compose_train, smoke_overrides, sweep_first_job

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("[!_]*.yaml"))
SMALL = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "data.max_train_samples=32",
    "data.max_eval_samples=16",
    "data.batch_size=8",
    *CHAIN,
]


def test_there_are_experiments() -> None:
    assert len(EXPERIMENTS) >= 10 and "mrpc_minilm_map_cpu" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_runs_on_the_tiny_model(
    experiment: str, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    first_job = sweep_first_job(experiment)
    causal = compose_train([f"experiment={experiment}"]).model.get("kind") == "causal"
    tiny = "tiny_causal" if causal else "tiny"  # MCQA experiments need a causal LM
    smoke = smoke_overrides(synthetic_data_dir, tmp_path, *SMALL)
    cfg = compose_train(
        [f"experiment={experiment}", *first_job]
        + [f"model={tiny}" if o == "model=tiny" else o for o in smoke]
    )
    assert cfg.model.name == tiny
    train(cfg)
    _, manifest = load_samples(tmp_path)
    assert manifest["status"] == "complete"
    swag = manifest["sampler"].get("swag")  # SWAG's stack holds its draws, not its collections
    expected = 1 if manifest["sampler"]["name"] == "map" else (swag["num_draws"] if swag else 3)
    assert manifest["num_samples"] == expected
