"""Hydra launchers: a sweep of seeds is the standard way to get several chains.

``hydra/launcher=local_parallel`` (joblib) runs them side by side on one machine;
``hydra/launcher=slurm`` (submitit) submits one SLURM job per chain; no cluster is needed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bayesian_lora.runs import load_samples
from tests.helpers import compose_config

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the launchers extra")


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    return compose_config("train", overrides, hydra_config=True)


@pytest.mark.slow
def test_joblib_sweep_runs_two_chains_at_once(synthetic_data_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "bayesian_lora.train",
        "-m",
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=seed${seed}",
        "model=tiny",
        "data=mrpc",
        "debug=smoke",
        "sampler=sgld",
        "sampler.warmup.steps=2",
        "sampler.burn_in=1",
        "sampler.thin=1",
        "sampler.num_samples=2",
        "evaluate_on_fit_end=false",
        "trainer.enable_progress_bar=false",
        f"paths.data_dir={synthetic_data_dir}",
        "seed=0,1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Joblib.Parallel" in proc.stderr + proc.stdout  # the joblib launcher ran the sweep
    assert (sweep / "multirun.yaml").is_file()
    samples = {}
    for seed in (0, 1):
        run = sweep / f"seed{seed}"
        samples[seed], manifest = load_samples(run)
        assert manifest["num_samples"] == 2 and manifest["seed"] == seed
        hydra_cfg = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra
        assert hydra_cfg.runtime.choices["hydra/launcher"] == "local_parallel"
        assert hydra_cfg.launcher.n_jobs == 2
    assert not all(torch.equal(samples[0][n], samples[1][n]) for n in samples[0]), (
        "two seeds must give two different chains"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # nothing outside the sweep


def test_local_parallel_is_our_joblib_config() -> None:
    cfg = compose_with_hydra(["hydra/launcher=local_parallel"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2 and launcher.prefer == "processes"


def test_slurm_launcher_composes_without_a_cluster() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the launchers extra")
    cfg = compose_with_hydra(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.signal_delay_s=300",
        ]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.partition == "gpu" and launcher.max_num_timeout == 0
    # SIGTERM (which runs checkpoint and flush on) arrives signal_delay_s before the time limit.
    params = instantiate(launcher).params  # what the launcher hands to submitit
    assert params["additional_parameters"] == {"signal": "TERM@300", "no_requeue": True}
    from submitit.slurm.slurm import _make_sbatch_string

    sbatch = _make_sbatch_string(
        command="python -m bayesian_lora.train",
        folder="/tmp/submitit",
        signal_delay_s=params["signal_delay_s"],
        additional_parameters=params["additional_parameters"],
    )
    assert "#SBATCH --signal=TERM@300" in sbatch and "--signal=USR2" not in sbatch
    assert "#SBATCH --no-requeue" in sbatch
