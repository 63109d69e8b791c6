"""Every shipped ``experiment=`` config composes and runs a few steps with ``model=tiny debug=smoke``.

``debug=`` comes last in ``conf/train.yaml``'s defaults (after ``experiment=``), so
``experiment=X debug=smoke`` shrinks the experiment (its chain, data and epochs) and puts it on
the CPU trainer; the test runs pass still smaller sizes on the command line to stay fast. A sweep
experiment runs its first job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.runs import load_samples
from bayesian_lora.train import train
from tests.helpers import CHAIN, compose_train, smoke_overrides, sweep_first_job

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("[!_]*.yaml"))
# Step sizes are tuned to the experiment's model: on the tiny model (weights of std 0.02, 32
# training examples) the prior's curvature 1 / (sigma^2 N) is far larger than on MiniLM, and a
# MiniLM step such as cSGLD's peak 0.2 diverged under the earlier default prior (dW_fraction 0.01).
MAX_TINY_LR = 0.05
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


@pytest.mark.parametrize("experiment", ["mrpc_minilm_sgld_cpu", "mcqa_llama2", "quickstart"])
def test_debug_smoke_shrinks_an_experiment(experiment: str) -> None:
    """debug=smoke composes after the experiment: its sizes win over the experiment's."""
    full = compose_train([f"experiment={experiment}"])
    smoke = compose_train([f"experiment={experiment}", "debug=smoke"])
    expected = OmegaConf.load(CONFIG_DIR / "debug" / "smoke.yaml")
    assert smoke.trainer.accelerator == "cpu" and smoke.trainer.max_epochs == 1
    assert smoke.data.max_train_samples == expected.data.max_train_samples
    assert smoke.data.batch_size == expected.data.batch_size
    assert (full.data.max_train_samples or 10**9) > smoke.data.max_train_samples
    if full.sampler.name != "map":
        for key in ("burn_in", "thin", "num_samples"):
            assert smoke.sampler[key] == expected.sampler[key] < full.sampler[key], key
        assert smoke.sampler.warmup.steps == expected.sampler.warmup.steps
    # the experiment's other choices stay
    assert smoke.model.name == full.model.name and smoke.data.task == full.data.task
    assert smoke.sampler.name == full.sampler.name and list(smoke.tags) == list(full.tags)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_runs_on_the_tiny_model(
    experiment: str, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    first_job = sweep_first_job(experiment)
    causal = compose_train([f"experiment={experiment}"]).model.get("kind") == "causal"
    tiny = "tiny_causal" if causal else "tiny"  # MCQA experiments need a causal LM
    smoke = smoke_overrides(synthetic_data_dir, tmp_path, *SMALL)
    overrides = [f"experiment={experiment}", *first_job] + [
        f"model={tiny}" if o == "model=tiny" else o for o in smoke
    ]
    cfg = compose_train(overrides)
    if float(cfg.sampler.lr) > MAX_TINY_LR:  # step sizes are tuned to the experiment's model
        cfg = compose_train([*overrides, f"sampler.lr={MAX_TINY_LR}"])
    assert cfg.model.name == tiny
    train(cfg)
    _, manifest = load_samples(tmp_path)
    assert manifest["status"] == "complete"
    # SWAG's and BLoB's stacks hold their draws, not their collections / snapshots
    drawn = manifest["sampler"].get("swag") or manifest["sampler"].get("blob")
    expected = 1 if manifest["sampler"]["name"] == "map" else (drawn["num_draws"] if drawn else 3)
    assert manifest["num_samples"] == expected
