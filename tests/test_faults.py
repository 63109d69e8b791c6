"""Faults never lose samples: SIGTERM + resume, divergence, reruns, warm starts (tiny model, CPU)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

import bayesian_lora.train as train_module
from bayesian_lora.models.module import DivergenceError
from bayesian_lora.runs import Manifest, RunFolder, load_samples, write_samples
from bayesian_lora.runs.checks import ManifestMismatchError
from tests.helpers import (
    AtStep,
    BeforeUpdate,
    compose_train,
    inject,
    smoke_overrides,
    steps_per_epoch_of,
)

pytestmark = pytest.mark.slow  # each test trains the tiny model (a few seconds)

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
KEPT = [7, 10, 13, 16, 19, 22]


def run(data_dir: Path, out: Path, *extra: str) -> None:
    """The chain of ``CHAIN``; ``extra`` adds overrides or replaces CHAIN's (``sampler=psgld``)."""
    replaced = {o.split("=")[0] for o in extra}
    chain = [o for o in CHAIN if o.split("=")[0] not in replaced]
    train_module.train(compose_train(smoke_overrides(data_dir, out, *chain, *extra)))


def resume(out: Path, *extra: str) -> None:
    train_module.train(compose_train([f"resume={out}", "paths.output_dir=unused", *extra]))


def assert_same_samples(a: Path, b: Path) -> None:
    (sa, ma), (sb, mb) = load_samples(a), load_samples(b)
    assert ma.steps == mb.steps, "a sample is duplicated or missing"
    for name, tensor in sb.items():
        assert torch.equal(sa[name], tensor), name


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
    assert load_samples(reference_chain)[1].steps == KEPT
    run(synthetic_data_dir, tmp_path / "other", "seed=1")
    c = load_samples(tmp_path / "other")[0]
    assert not all(torch.equal(a[n], c[n]) for n in a)


# 1: the first step; 4: a checkpoint step; 7: a kept step; 9: mid-epoch (6 steps/epoch);
# 13: kept and flushed; 22: the last kept step (the run is over: it ends normally).
@pytest.mark.parametrize(
    ("stop_at", "sig"),
    [
        (1, signal.SIGTERM),
        (4, signal.SIGUSR2),
        (7, signal.SIGTERM),
        (9, signal.SIGUSR1),
        (13, signal.SIGTERM),
    ],
)
def test_a_stop_signal_checkpoints_that_step_exits_143_and_resume_loses_nothing(
    stop_at: int,
    sig: int,
    reference_chain: Path,
    synthetic_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inject(monkeypatch, AtStep(stop_at, lambda m: os.kill(os.getpid(), sig)))
    with pytest.raises(SystemExit) as stopped:
        run(synthetic_data_dir, tmp_path)
    assert stopped.value.code == 143
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["chain"]["chain_step"] == stop_at  # a checkpoint at the step, not before
    kept = [s for s in KEPT if s < stop_at]
    assert ckpt["callbacks"]["SampleCollector"]["steps"] == kept
    if kept:
        partial, manifest = load_samples(tmp_path)
        assert manifest.status.startswith("interrupted") and manifest.steps == kept
    assert not (tmp_path / "run.lock").exists()  # released on the way out
    monkeypatch.undo()
    resume(tmp_path)
    assert_same_samples(tmp_path, reference_chain)
    assert load_samples(tmp_path)[1].status == "complete"


@pytest.fixture(scope="module")
def reference_of(
    reference_chain: Path, synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """The uninterrupted chain of ``run(..., *extra)`` (made once per ``extra``)."""
    chains = {(): reference_chain}

    def get(*extra: str) -> Path:
        if extra not in chains:
            chains[extra] = tmp_path_factory.mktemp("reference")
            run(synthetic_data_dir, chains[extra], *extra)
        return chains[extra]

    return get


# A stop exactly where an epoch ends: Lightning has already closed that epoch when the signal's
# checkpoint is written, and restores its epoch counter one epoch ahead of the chain. SGLD at
# the first and second boundary, samplers with state (pSGLD's preconditioner, SGHMC's
# momentum), and a boundary inside the AdamW warm start (dropout on).
@pytest.mark.parametrize(
    ("epochs", "extra"),
    [
        (1, ()),
        (2, ()),
        (1, ("sampler=psgld",)),
        (1, ("sampler=sghmc",)),
        (1, ("sampler.warmup.steps=9",)),
    ],
    ids=["sgld-1", "sgld-2", "psgld-1", "sghmc-1", "warmup-1"],
)
def test_a_stop_at_an_epoch_boundary_resumes_the_same_data_order(
    epochs: int,
    extra: tuple[str, ...],
    reference_of: Callable[..., Path],
    synthetic_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = reference_of(*extra)
    stop_at = epochs * steps_per_epoch_of(reference)
    assert stop_at < load_samples(reference)[1].steps[-1]  # the chain goes on after the stop
    inject(monkeypatch, AtStep(stop_at, lambda m: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit) as stopped:
        run(synthetic_data_dir, tmp_path, *extra)
    assert stopped.value.code == 143
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["chain"]["chain_step"] == stop_at
    monkeypatch.undo()
    resume(tmp_path)
    assert_same_samples(tmp_path, reference)


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


def _blow_up_update(module: Any) -> None:
    """The update of this step goes non-finite (as with far too large a step)."""
    for p in module.sampled_parameters().values():
        if p.grad is not None:
            p.grad.fill_(float("inf"))


def test_divergence_backoff_retries_the_step_and_keeps_exactly_the_plan(
    reference_chain: Path, synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Step 14 comes right after the kept step 13: a retry that counted as a step would keep 13
    # again (the old bug: saved steps ..., 13, 13, 13).
    inject(monkeypatch, BeforeUpdate(14, _blow_up_update, times=2))
    run(synthetic_data_dir, tmp_path, "divergence_backoff=0.5")
    samples, manifest = load_samples(tmp_path)
    assert manifest.status == "complete" and manifest.steps == KEPT  # distinct, as planned
    assert manifest.step_size_scales == [1.0, 1.0, 1.0, 0.25, 0.25, 0.25]
    reference, _ = load_samples(reference_chain)
    for name, t in samples.items():  # before the divergence: the same chain
        assert torch.equal(t[:3], reference[name][:3]), name


def test_divergence_backoff_runs_out_of_retries_clearly(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject(monkeypatch, BeforeUpdate(12, _blow_up_update, times=5))
    with pytest.raises(DivergenceError, match=r"step 12 .*no retries left"):
        run(synthetic_data_dir, tmp_path, "divergence_backoff=0.5", "divergence_retries=2")
    assert load_samples(tmp_path)[1].steps == [7, 10]


def test_a_stop_where_an_epoch_ends_after_divergence_retries_resumes_the_same_chain(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries use batches without taking a step: two at step 14 make chain step 16 the end of
    the third epoch's batches."""
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    inject(monkeypatch, BeforeUpdate(14, _blow_up_update, times=2))
    run(synthetic_data_dir, reference, "divergence_backoff=0.5")
    monkeypatch.undo()
    stop_at = 3 * steps_per_epoch_of(reference) - 2
    assert 14 < stop_at < KEPT[-1]
    stop = AtStep(stop_at, lambda m: os.kill(os.getpid(), signal.SIGTERM))
    inject(monkeypatch, BeforeUpdate(14, _blow_up_update, times=2), stop)
    with pytest.raises(SystemExit):
        run(synthetic_data_dir, stopped, "divergence_backoff=0.5")
    chain = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)["chain"]
    assert (chain["chain_step"], chain["retries_used"]) == (stop_at, 2)
    monkeypatch.undo()
    resume(stopped)
    assert_same_samples(stopped, reference)
    assert load_samples(stopped)[1].step_size_scales == load_samples(reference)[1].step_size_scales


def test_a_nan_target_stops_clearly_even_with_backoff(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NaN-label STS-B case: never a duplicate kept step, a message that names the data."""

    class NanLabel(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            if pl_module.chain_step == 11:
                batch["labels"][0] = float("nan")

    inject(monkeypatch, NanLabel())
    with pytest.raises(DivergenceError, match=r"step 11 .*NaN/inf targets"):
        run(
            synthetic_data_dir,
            tmp_path,
            "data=stsb",
            "divergence_backoff=0.5",
            "divergence_retries=10",
        )
    manifest = load_samples(tmp_path)[1]
    assert manifest.steps == [7, 10] and len(set(manifest.steps)) == len(manifest.steps)


def test_rerun_into_a_finished_run_folder_is_refused(
    reference_chain: Path, synthetic_data_dir: Path
) -> None:
    before = (reference_chain / "samples.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="resume="):
        run(synthetic_data_dir, reference_chain)
    assert (reference_chain / "samples.safetensors").read_bytes() == before


def _fake_run(folder: Path, seed: int, sampler: str) -> None:
    m = Manifest(seed=seed, sampler={"name": sampler}, steps=[0])
    write_samples(folder, {"w": torch.zeros(1, 2)}, m)


def test_from_run_picks_the_map_run_of_this_seed_in_a_sweep(tmp_path: Path) -> None:
    from bayesian_lora.runs import resolve_from_run

    for job, (seed, sampler) in enumerate([(0, "map"), (1, "map"), (1, "sgld")]):
        _fake_run(tmp_path / f"{job}_run", seed, sampler)
    assert resolve_from_run(tmp_path, 1) == RunFolder((tmp_path / "1_run").resolve())
    with pytest.raises(FileNotFoundError, match="0 MAP runs with seed 2"):
        resolve_from_run(tmp_path, 2)


@pytest.fixture(scope="module")
def map_run(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("map")
    overrides = ["data=mrpc", "trainer.max_epochs=1", "evaluate_on_fit_end=false"]
    train_module.train(compose_train(smoke_overrides(synthetic_data_dir, out, *overrides)))
    return out


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data=sst2", "task ('sst2' vs 'mrpc')"),
        ("data=ag_news", "num_labels (4 vs 2)"),
        ("model.lora.r=2", "lora.r (2 vs"),
        ("prior_std=0.1", "prior.lora_A (0.1 vs None)"),
        ("prior=isotropic", "prior.dW_fraction (None vs 100.0)"),
        ("data.max_train_samples=20", "data.max_train_samples (20 vs"),
    ],
)
def test_from_run_of_another_setup_is_refused_before_the_model_loads(
    override: str,
    named: str,
    map_run: Path,
    synthetic_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bayesian_lora.config as config_module

    def no_model(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded before the warm start was checked")

    import bayesian_lora.models.lora as lora_module  # config imports it inside build_module

    monkeypatch.setattr(lora_module, "build_lora_model", no_model)
    monkeypatch.setattr(config_module, "build_datamodule", no_model)
    extra = [f"sampler.warmup.from_run={map_run}", override]
    with pytest.raises(ManifestMismatchError, match=r"does not fit this config") as err:
        run(synthetic_data_dir, tmp_path, *extra)
    assert named in str(err.value)
    assert not (tmp_path / "config.yaml").exists()


def test_from_run_of_the_same_setup_starts_there(
    map_run: Path, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    run(synthetic_data_dir, tmp_path, f"sampler.warmup.from_run={map_run}")
    assert load_samples(tmp_path)[1].status == "complete"
