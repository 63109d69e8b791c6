"""One W&B group rule for training and evaluation runs (config.wandb_group)."""

from __future__ import annotations

from pathlib import Path

from bayesian_lora.config import wandb_group
from bayesian_lora.evaluation.wandb_logging import run_group, training_sweep

MANIFEST = {"model": {"name": "tiny"}}


def _run_folder(path: Path, mode: str | None) -> Path:
    path.mkdir(parents=True)
    if mode is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n")
    return path


def _result(*runs: Path, kind: str = "chain") -> dict:
    return {
        "task": "mrpc",
        "kind": kind,
        "runs": [{"run_dir": str(r), "sampler": "sgld"} for r in runs],
    }


def test_evaluations_of_a_sweep_join_the_sweep_group(tmp_path: Path) -> None:
    sweep = tmp_path / "2026-12-01_10-00-00_train"
    a = _run_folder(sweep / "0_tiny_mrpc_sgld_s0", "MULTIRUN")
    b = _run_folder(sweep / "1_tiny_mrpc_sgld_s1", "MULTIRUN")
    assert training_sweep(a) == sweep.resolve()
    # the training runs' group under -m (sweep_group) is the sweep folder's name too
    assert run_group(_result(a), MANIFEST) == wandb_group("tiny", "mrpc", "sgld", sweep)
    assert run_group(_result(a, b, kind="pooled_chains"), MANIFEST) == sweep.name


def test_single_runs_and_mixed_sweeps_fall_back_to_model_task_sampler(tmp_path: Path) -> None:
    single = _run_folder(tmp_path / "outputs" / "run", "RUN")
    bare = _run_folder(tmp_path / "bare", None)
    assert training_sweep(single) is None and training_sweep(bare) is None
    assert run_group(_result(single), MANIFEST) == "tiny-mrpc-sgld"
    other = _run_folder(tmp_path / "sweep_b" / "0_job", "MULTIRUN")
    mine = _run_folder(tmp_path / "sweep_a" / "0_job", "MULTIRUN")
    assert (
        run_group(_result(mine, other, kind="pooled_chains"), MANIFEST) == "tiny-mrpc-pooled_chains"
    )
