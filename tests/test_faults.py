"""Faults never lose samples: SIGTERM + resume, divergence, determinism (tiny model, CPU)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import bayesian_lora.train as train_module
from bayesian_lora.callbacks.sample_store import load_samples
from bayesian_lora.models.module import DivergenceError
from tests.helpers import AtStep, compose_train, inject, smoke_overrides

CHAIN = [
    "data=mrpc",
    "sampler=sgld",
    "sampler.warmup.steps=3",
    "sampler.burn_in=2",
    "sampler.thin=3",
    "sampler.num_samples=6",
    "callbacks.checkpoint.every_n_train_steps=4",
    "callbacks.samples.flush_every=2",
    "evaluate_on_fit_end=false",
]
TOTAL_STEPS = 3 + 2 + 6 * 3


def run(data_dir: Path, out: Path, *extra: str) -> None:
    train_module.train(compose_train(smoke_overrides(data_dir, out, *CHAIN, *extra)))


@pytest.fixture(scope="module")
def reference_chain(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run(synthetic_data_dir, out)
    return out


def test_same_seed_same_samples(
    reference_chain: Path, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    run(synthetic_data_dir, tmp_path)
    a, b = load_samples(reference_chain)[0], load_samples(tmp_path)[0]
    assert all(torch.equal(a[n], b[n]) for n in a)
    run(synthetic_data_dir, tmp_path / "other", "seed=1")
    c = load_samples(tmp_path / "other")[0]
    assert not all(torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("stop_at", [9, 13])  # mid-epoch (5 steps/epoch) and between kept steps
def test_sigterm_then_resume_gives_the_uninterrupted_chain(
    stop_at: int,
    reference_chain: Path,
    synthetic_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inject(monkeypatch, AtStep(stop_at, lambda m: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit):
        run(synthetic_data_dir, tmp_path)
    partial, manifest = load_samples(tmp_path)
    assert manifest["status"].startswith("interrupted")
    assert manifest["steps"] == [s for s in manifest["kept_steps_planned"] if s < stop_at]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

    monkeypatch.undo()
    train_module.train(compose_train([f"resume={tmp_path}", "paths.output_dir=unused"]))
    resumed, manifest = load_samples(tmp_path)
    reference, ref_manifest = load_samples(reference_chain)
    assert manifest["steps"] == ref_manifest["steps"], "a sample is duplicated or missing"
    assert manifest["status"] == "complete"
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name


def test_divergence_stops_with_a_clear_message_and_keeps_samples(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def poison(module: Any) -> None:
        next(iter(module.sampled_parameters().values())).data.fill_(float("nan"))

    inject(monkeypatch, AtStep(12, poison))
    with pytest.raises(
        DivergenceError, match=r"step 12 \(sampling phase\) with SGLD, step size 0\.01"
    ):
        run(synthetic_data_dir, tmp_path, "sampler.lr=0.01")
    _, manifest = load_samples(tmp_path)
    assert manifest["steps"] == [7, 10]  # kept before the blow-up, flushed on the exception
    assert manifest["status"] == "interrupted: DivergenceError"


def test_divergence_backoff_retries_from_the_last_good_state(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, float] = {}

    def poison(module: Any) -> None:
        next(iter(module.sampled_parameters().values())).data.fill_(float("nan"))

    inject(monkeypatch, AtStep(12, poison))
    original = train_module.evaluate_module_on_test
    monkeypatch.setattr(
        train_module,
        "evaluate_module_on_test",
        lambda module, *a: seen.update(scale=module.lr_scale) or original(module, *a),
    )
    run(synthetic_data_dir, tmp_path, "divergence_backoff=0.5", "evaluate_on_fit_end=true")
    samples, manifest = load_samples(tmp_path)
    assert manifest["status"] == "complete" and manifest["num_samples"] == 6
    assert all(torch.isfinite(t).all() for t in samples.values())
    assert seen["scale"] == 0.5


def test_rerun_into_a_finished_run_folder_is_refused(
    reference_chain: Path, synthetic_data_dir: Path
) -> None:
    before = (reference_chain / "samples.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="resume="):
        run(synthetic_data_dir, reference_chain)
    assert (reference_chain / "samples.safetensors").read_bytes() == before


def test_from_run_picks_the_map_run_of_this_seed_in_a_sweep(tmp_path: Path) -> None:
    from bayesian_lora.callbacks.sample_store import write_manifest
    from bayesian_lora.config import resolve_from_run

    for job, (seed, sampler) in enumerate([(0, "map"), (1, "map"), (1, "sgld")]):
        write_manifest(tmp_path / f"{job}_run", {"seed": seed, "sampler": {"name": sampler}})
    assert resolve_from_run(tmp_path, 1) == (tmp_path / "1_run").resolve()
    with pytest.raises(FileNotFoundError, match="0 MAP runs with seed 2"):
        resolve_from_run(tmp_path, 2)
