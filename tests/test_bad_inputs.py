"""Bad input, table by table: each refused before anything is written, naming what is wrong.

Every case asserts the message names the key (or the file), the value and what is allowed, and,
where the input allows it, that no run folder was created. Configs are refused in-process by
``train(cfg, overrides)`` (composing + validating, no model or data loads); data by
``load_task_dataset`` on a synthetic copy with one defect (before ``datasets`` converts it); a
few go through the real command line (marked slow) to check the exit status, the one-line
message and that Hydra's job folder is not left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from bayesian_lora import config_validation
from bayesian_lora.config import resolve_resume
from bayesian_lora.config_validation import ConfigError
from bayesian_lora.data.checks import DataError
from bayesian_lora.data.datamodule import load_task_dataset
from bayesian_lora.data.synthetic import write_synthetic_task
from bayesian_lora.data.tasks import TASKS, TaskSpec
from bayesian_lora.errors import InputError
from bayesian_lora.train import train
from tests.helpers import compose_eval, compose_train

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/bayesian_lora_input"
EXISTING = str(REPO / "bayesian_lora" / "conf")  # any existing folder

# (overrides, key, the value as the message shows it, a fragment of what is allowed)
CONFIG: list[tuple[str, str, str, str]] = [
    # keys nothing reads: the nearest valid key is named
    ("sampler=sgld +sampler.burnin=10", "sampler.burnin", "10", "did you mean sampler.burn_in"),
    (
        "sampler=sgld +sampler.friction=0.1",
        "sampler.friction",
        "0.1",
        "did you mean sampler.hparams.friction (a hyperparameter of sampler sghmc)",
    ),
    ("+temperature=0.5", "temperature", "0.5", "did you mean sampler.temperature"),
    ("+model.dropout=0.1", "model.dropout", "0.1", "did you mean model.lora.dropout"),
    ("+data.batchsize=8", "data.batchsize", "8", "did you mean data.batch_size"),
    ("+data.val_frac=0.2", "data.val_frac", "0.2", "did you mean data.val_fraction"),
    ("+data.obs_sd=0.2", "data.obs_sd", "0.2", "did you mean data.obs_std"),
    ("+seeds=3", "seeds", "3", "did you mean seed"),
    ("+prior_sd=2", "prior_sd", "2", "did you mean prior_std"),
    ("+grad_clipping=1.0", "grad_clipping", "1.0", "did you mean grad_clip"),
    ("+resume_from=x", "resume_from", "'x'", "did you mean resume? top-level keys:"),
    ("+trainer.max_epoch=3", "trainer.max_epoch", "3", "did you mean trainer.max_epochs"),
    ("+trainer.device=1", "trainer.device", "1", "did you mean trainer.devices"),
    ("+trainer.precission=32", "trainer.precission", "32", "did you mean trainer.precision"),
    ("+model.lora.alpah=4", "model.lora.alpah", "4", "did you mean model.lora.alpha"),
    ("+model.maxlength=64", "model.maxlength", "64", "did you mean model.max_length"),
    ("+model.lora.rank=4", "model.lora.rank", "4", "did you mean model.lora.r"),
    ("+model.lora.targets=[query]", "model.lora.targets", "['query']", "keys of model.lora:"),
    (
        "+callbacks.checkpoint.every_n_steps=5",
        "callbacks.checkpoint.every_n_steps",
        "5",
        "did you mean callbacks.checkpoint.every_n_train_steps",
    ),
    (
        "+callbacks.samples.flush=2",
        "callbacks.samples.flush",
        "2",
        "did you mean callbacks.samples.flush_every",
    ),
    (
        "+callbacks.early_stopping.patince=2",
        "callbacks.early_stopping.patince",
        "2",
        "did you mean callbacks.early_stopping.patience",
    ),
    ("+paths.datadir=/tmp", "paths.datadir", "'/tmp'", "did you mean paths.data_dir"),
    ("+paths.cache=/tmp", "paths.cache", "'/tmp'", "did you mean paths.cache_dir"),
    ("sampler=sgld +sampler.warmup.step=5", "sampler.warmup.step", "5", "did you mean"),
    ("sampler=sgld +sampler.num_sample=5", "sampler.num_sample", "5", "sampler.num_samples"),
    ("sampler=sgld +sampler.thinning=5", "sampler.thinning", "5", "did you mean sampler.thin"),
    ("sampler=sgld +sampler.burn=5", "sampler.burn", "5", "did you mean sampler.burn_in"),
    ("sampler=sgld +sampler.temp=0.5", "sampler.temp", "0.5", "sampler.temperature"),
    ("sampler=sgld +sampler.weight_decay=0.1", "sampler.weight_decay", "0.1", "keys of sampler"),
    ("sampler=sgld +sampler.warmup_ratio=0.1", "sampler.warmup_ratio", "0.1", "keys of sampler"),
    ("+sampler.warmupratio=0.1", "sampler.warmupratio", "0.1", "did you mean sampler.warmup_ratio"),
    ("+sampler.weightdecay=0.1", "sampler.weightdecay", "0.1", "did you mean sampler.weight_decay"),
    (
        "sampler=sghmc +sampler.hparams.frction=0.1",
        "sampler.hparams.frction",
        "0.1",
        "keys of sampler sghmc's hparams: friction",
    ),
    (
        "sampler=asgld +sampler.hparams.beta=0.9",
        "sampler.hparams.beta",
        "0.9",
        "keys of sampler asgld's hparams: beta1, beta2, drift, eps",
    ),
    (
        "sampler=sgld +sampler.schedule.gamma=0.5",
        "sampler.schedule.gamma",
        "0.5",
        "keys of the constant schedule: name",
    ),
    ("sampler=swag +sampler.swag.ranks=3", "sampler.swag.ranks", "3", "keys of sampler.swag"),
    # keys set elsewhere
    (
        "+trainer.gradient_clip_val=1.0",
        "trainer.gradient_clip_val",
        "1.0",
        "use grad_clip",
    ),
    (
        "+trainer.accumulate_grad_batches=2",
        "trainer.accumulate_grad_batches",
        "2",
        "raise data.batch_size",
    ),
    ("+trainer.logger=false", "trainer.logger", "False", "logger=csv|tensorboard"),
    ("+trainer.callbacks=[]", "trainer.callbacks", "[]", "+callbacks.<name>._target_=<class>"),
    # callbacks: the run's own are checked key by key, a user's needs a _target_
    (
        "+callbacks.lr_monitor.logging_interval=step",
        "callbacks.lr_monitor.logging_interval",
        "'step'",
        "a callback of your own needs its class: +callbacks.lr_monitor._target_=<class>",
    ),
    (
        "+callbacks.early_stoping.patience=2",
        "callbacks.early_stoping.patience",
        "2",
        "did you mean callbacks.early_stopping.patience",
    ),
    (
        "+callbacks.early_stopping.min_dleta=0.1",
        "callbacks.early_stopping.min_dleta",
        "0.1",
        "did you mean callbacks.early_stopping.min_delta",
    ),
    (
        "sampler=sgld +callbacks.trace.enabled=false",
        "callbacks.trace.enabled",
        "False",
        "callbacks.trace=null",
    ),
    (
        "+callbacks.best_checkpoint.dirpath=/x",
        "callbacks.best_checkpoint.dirpath",
        "'/x'",
        "run folder",
    ),
    (
        "sampler=sgld callbacks.checkpoint._partial_=false",
        "callbacks.checkpoint._partial_",
        "False",
        "true (train completes it",
    ),
    ("callbacks.trace.probe_size=4", "callbacks.trace.probe_size", "4", "sampler=map"),
    (
        "sampler=sgld callbacks.best_checkpoint.save_top_k=2",
        "callbacks.best_checkpoint.save_top_k",
        "2",
        "for sampler=map",
    ),
    (
        "+sampler.optimizer._target_=bayesian_lora.samplers.SGLD",
        "sampler.optimizer._target_",
        "'bayesian_lora.samplers.SGLD'",
        "chain keys need a chain sampler",
    ),
    # keys that do nothing in this run (set on the command line)
    ("data.obs_std=0.3", "data.obs_std", "0.3", "data.task=mrpc is a classification task"),
    ("data=sst2 data.obs_std=0.3", "data.obs_std", "0.3", "regression task (stsb)"),
    ("data=imdb data.obs_std=0.3", "data.obs_std", "0.3", "classification task"),
    ("data=ag_news data.obs_std=1", "data.obs_std", "1", "classification task"),
    ("data=cola data.obs_std=1", "data.obs_std", "1", "classification task"),
    ("+sampler.num_samples=5", "sampler.num_samples", "5", "sampler=map trains with AdamW"),
    ("+sampler.burn_in=5", "sampler.burn_in", "5", "keeps one sample"),
    ("+sampler.thin=2", "sampler.thin", "2", "chain keys need a chain sampler"),
    ("+sampler.temperature=0.5", "sampler.temperature", "0.5", "sampler=map"),
    ("+sampler.max_steps=10", "sampler.max_steps", "10", "sampler=map"),
    ("debug=smoke sampler.num_samples=5", "sampler.num_samples", "5", "sampler=map"),
    ("debug=smoke sampler.warmup.steps=5", "sampler.warmup.steps", "5", "sampler=map"),
    (
        "callbacks.checkpoint.every_n_train_steps=5",
        "callbacks.checkpoint.every_n_train_steps",
        "5",
        "sampler=map",
    ),
    ("callbacks.samples.flush_every=2", "callbacks.samples.flush_every", "2", "sampler=map"),
    ("sampler=sgld trainer.max_epochs=3", "trainer.max_epochs", "3", "stops by itself"),
    ("sampler=sgld trainer.min_epochs=2", "trainer.min_epochs", "2", "sampler.max_steps"),
    ("sampler=sgld +trainer.max_steps=100", "trainer.max_steps", "100", "sampler.max_steps"),
    ("sampler=psgld +trainer.max_steps=100", "trainer.max_steps", "100", "stops by itself"),
    (
        "sampler=sgld callbacks.early_stopping.patience=5",
        "callbacks.early_stopping.patience",
        "5",
        "early stopping and its monitor are for sampler=map",
    ),
    (
        "sampler=sgld callbacks.early_stopping.monitor=val/acc",
        "callbacks.early_stopping.monitor",
        "'val/acc'",
        "for sampler=map",
    ),
    (
        "sampler=sgld sampler.warmup.epochs=2 sampler.warmup.steps=10",
        "sampler.warmup.steps",
        "10",
        "sampler.warmup.epochs is set and replaces it",
    ),
    (
        f"sampler=sgld sampler.warmup.from_run={EXISTING} sampler.warmup.steps=10",
        "sampler.warmup.steps",
        "10",
        "sampler.warmup.from_run is set",
    ),
    (
        f"sampler=sgld sampler.warmup.from_run={EXISTING} sampler.warmup.lr=1e-3",
        "sampler.warmup.lr",
        "0.001",
        "without an AdamW warm start",
    ),
    (
        f"sampler=sgld sampler.warmup.from_run={EXISTING} sampler.warmup.epochs=1",
        "sampler.warmup.epochs",
        "1",
        "sampler.warmup.from_run is set",
    ),
    # values
    (
        "trainer.check_val_every_n_epoch=0",
        "trainer.check_val_every_n_epoch",
        "0",
        "null or an integer >= 1",
    ),
    ("trainer.check_val_every_n_epoch=-1", "trainer.check_val_every_n_epoch", "-1", ">= 1"),
    ("trainer.check_val_every_n_epoch=1.5", "trainer.check_val_every_n_epoch", "1.5", ">= 1"),
    ("trainer=gpu", "trainer.accelerator", "'gpu'", "no CUDA device"),
    ("trainer.accelerator=cuda", "trainer.accelerator", "'cuda'", "use trainer=cpu"),
    ("trainer.accelerator=tpu", "trainer.accelerator", "'tpu'", "one of auto, cpu, gpu"),
    ("trainer.precision=bf16-true", "trainer.precision", "'bf16-true'", "one of 32-true"),
    ("trainer.devices=[]", "trainer.devices", "[]", "a non-empty list"),
    ("trainer.devices=-2", "trainer.devices", "-2", "an integer >= 1, -1 (all)"),
    ("trainer.max_epochs=-2", "trainer.max_epochs", "-2", "or -1 (no limit)"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", "0", "an integer >= 1"),
    ("trainer._target_=torch.nn.Linear", "trainer._target_", "'torch.nn.Linear'", "one of"),
    (f"paths.data_dir={MISSING}", "paths.data_dir", repr(MISSING), "an existing folder"),
    ("paths.cache_dir=5", "paths.cache_dir", "5", "null or a folder path"),
    (
        f"model.name_or_path={MISSING}",
        "model.name_or_path",
        repr(MISSING),
        "a local model folder holding config.json",
    ),
    (
        f"model.name_or_path={EXISTING}",
        "model.name_or_path",
        repr(EXISTING),
        "holding config.json",
    ),
    ("model.name_or_path=a/b/c", "model.name_or_path", "'a/b/c'", "a Hub model id (org/name)"),
    ("model.name_or_path=''", "model.name_or_path", "''", "a Hub model id"),
    ("model.name=''", "model.name", "''", "a non-empty string"),
    ("model=tiny model.lora.r=33", "model.lora.r", "33", "an integer in [1, 32]"),
    (
        "model=tiny model.tiny.hidden_size=16 model.lora.r=17",
        "model.lora.r",
        "17",
        "the width of tiny-bert's layers is 16",
    ),
    ("model=tiny model.lora.r=0", "model.lora.r", "0", "an integer >= 1"),
    ("model=tiny model.max_length=4", "model.max_length", "4", "an integer in [8, 512]"),
    ("model.lora.target_modules=[query,query_proj]", "model.lora.target_modules", "", "BERT"),
    ("tags=5", "tags", "5", "a list of strings"),
    ("tags=[1,2]", "tags", "[1, 2]", "a list of strings"),
    ("task_name=''", "task_name", "''", "a non-empty string"),
    ("callbacks.early_stopping.monitor=''", "callbacks.early_stopping.monitor", "''", "string"),
    ("callbacks.early_stopping.mode=best", "callbacks.early_stopping.mode", "'best'", "min, max"),
    ("data.num_workers=-1", "data.num_workers", "-1", "an integer >= 0"),
    ("data.split_seed=-1", "data.split_seed", "-1", "an integer >= 0"),
    ("data.max_eval_samples=0", "data.max_eval_samples", "0", "null or an integer >= 1"),
    ("data.val_fraction=1", "data.val_fraction", "1", "a number in (0, 1)"),
    ("data.batch_size=0", "data.batch_size", "0", "an integer >= 1"),
    ("data.task=mnli", "data.task", "'mnli'", "one of ag_news, arc_c, arc_e"),
    ("evaluate_on_fit_end=yes", "evaluate_on_fit_end", "'yes'", "true or false"),
    ("seed=1.5", "seed", "1.5", "an integer in [0, 4294967295]"),
    ("seed=abc", "seed", "'abc'", "an integer in"),
    ("prior_std=inf", "prior_std", "inf", "a number > 0"),
    ("sampler.lr=nan", "sampler.lr", "nan", "a number > 0"),
    ("sampler=sgld sampler.lr=-0.1", "sampler.lr", "-0.1", "step size eta"),
    ("sampler=sgld sampler.seed_offset=-1", "sampler.seed_offset", "-1", "an integer >= 0"),
    ("sampler=sgld sampler.warmup.epochs=-1", "sampler.warmup.epochs", "-1", "null or an integer"),
    ("sampler=swag sampler.swag.rank=0", "sampler.swag.rank", "0", "an integer >= 1"),
    ("sampler=swag sampler.swag.num_draws=0", "sampler.swag.num_draws", "0", "an integer >= 1"),
]


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_validation, "cuda_devices", lambda: 0)


def _refused(args: list[str], run: Path) -> str:
    """``train(cfg, args)`` must raise InputError without creating the run folder ``run``."""
    with_model = args if any(a.startswith("model=") for a in args) else ["model=tiny", *args]
    cfg = compose_train([*with_model, f"paths.output_dir={run}"])
    with pytest.raises(InputError) as info:
        train(cfg, with_model)
    assert not run.exists(), f"{run} was created before the refusal"
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key", "shown", "allowed"), CONFIG, ids=[c[0] for c in CONFIG]
)
def test_bad_config(overrides: str, key: str, shown: str, allowed: str, tmp_path: Path) -> None:
    message = _refused(overrides.split(), tmp_path / "run")
    assert f"{key}={shown}" in message and " is not allowed: " in message, message
    assert allowed in message, message


def test_a_key_of_a_sweep_job_that_does_nothing_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One ``-m`` override serves every job of a sweep: MAP's job logs it instead of failing."""
    cfg = compose_train(["+sampler.num_samples=5"])
    config_validation.validate_config(cfg, ["+sampler.num_samples=5"], sweep=True)
    assert "sampler.num_samples=5 is not allowed" in caplog.text


def test_the_same_keys_in_shared_config_files_pass() -> None:
    """debug=smoke gives every sampler chain sizes; MAP does not refuse what a file sets."""
    cfg = compose_train(["debug=smoke", "model=tiny"])
    config_validation.validate_config(cfg, ["debug=smoke", "model=tiny"])


def test_trainer_keys_are_the_trainers_arguments() -> None:
    import inspect

    from lightning.pytorch import Trainer

    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    schema = set(config_validation.TRAINER_KEYS) | {
        k.split(".", 1)[1] for k in config_validation.NOT_HERE if k.startswith("trainer.")
    }
    assert schema == accepted


# ---------------------------------------------------------------- resume=
@pytest.fixture
def resumable(tmp_path: Path) -> Path:
    """A run folder resume= accepts: its saved config and a last checkpoint (never read here)."""
    run = tmp_path / "chain"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = compose_train(["model=tiny", "sampler=sgld", f"paths.output_dir={run}"])
    OmegaConf.save(cfg, run / "config.yaml")
    return run


RESUME_REFUSED = [
    "sampler.lr=0.5",
    "seed=3",
    "sampler.weight_decay=0.1",
    "+sampler.burnin=3",
    "data.batch_size=4",
    "model.lora.r=2",
    "trainer.max_epochs=2",
    "sampler=psgld",
    "~tags",
]


@pytest.mark.parametrize("override", RESUME_REFUSED)
def test_resume_refuses_other_overrides(override: str, resumable: Path) -> None:
    overrides = [f"resume={resumable}", override]
    cfg = compose_train(["model=tiny", *overrides])
    with pytest.raises(InputError) as info:
        resolve_resume(cfg, overrides)
    message = str(info.value)
    assert f"{override} is not allowed with resume={str(resumable)!r}" in message
    assert "allowed with resume=: paths.data_dir" in message


def test_resume_applies_the_safe_overrides(resumable: Path, tmp_path: Path) -> None:
    overrides = [f"resume={resumable}", f"paths.data_dir={tmp_path}", "data.num_workers=2"]
    cfg, ckpt = resolve_resume(compose_train(["model=tiny", *overrides]), overrides)
    assert cfg.paths.data_dir == str(tmp_path) and cfg.data.num_workers == 2
    assert cfg.sampler.name == "sgld" and ckpt == str(resumable / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("target", ["missing", "no_checkpoint", "a_file"])
def test_resume_of_a_folder_that_is_not_a_chain(target: str, resumable: Path) -> None:
    path = {
        "missing": resumable.parent / "nope",
        "no_checkpoint": resumable / "checkpoints",
        "a_file": resumable / "config.yaml",
    }[target]
    overrides = [f"resume={path}"]
    with pytest.raises(InputError) as info:
        resolve_resume(compose_train(["model=tiny", *overrides]), overrides)
    assert f"resume={str(path)!r} is not allowed" in str(info.value)
    assert "checkpoints/last.ckpt" in str(info.value)


# ---------------------------------------------------------------- evaluate
EVALUATE: list[tuple[str, str, str, str]] = [
    ("k=0", "k", "0", "an integer >= 1"),
    ("k=-3", "k", "-3", "an integer >= 1"),
    ("k=1.5", "k", "1.5", "an integer >= 1"),
    ("mc_dropout=-1", "mc_dropout", "-1", "an integer >= 0"),
    ("split=train", "split", "'train'", "one of test, validation"),
    ("+kk=3", "kk", "3", "did you mean k"),
    ("+mcdropout=3", "mcdropout", "3", "did you mean mc_dropout"),
    ("+run_folder=x", "run_folder", "'x'", "evaluate's keys:"),
    ("device=gpu0", "device", "'gpu0'", "auto, cpu, mps, cuda or cuda:<index>"),
    ("seed=-1", "seed", "-1", "an integer in [0, 4294967295]"),
    ("eval_batch_size=0", "eval_batch_size", "0", "null or an integer >= 1"),
    ("ood_max_samples=0", "ood_max_samples", "0", "null or an integer >= 1"),
    ("plots=maybe", "plots", "'maybe'", "true or false"),
    ("diagnostics.rhat_threshold=1", "diagnostics.rhat_threshold", "1", "a number > 1"),
    ("diagnostics.ess_threshold=0", "diagnostics.ess_threshold", "0", "a number > 0"),
    ("diagnostics.probes=-1", "diagnostics.probes", "-1", "an integer >= 0"),
    (f"paths.data_dir={MISSING}", "paths.data_dir", repr(MISSING), "an existing folder"),
    ("wandb.mode=cloud", "wandb.mode", "'cloud'", "online, offline, disabled"),
    ("wandb.enabled=1", "wandb.enabled", "1", "true or false"),
    ("calibrate=platt", "calibrate", "'platt'", "one of temperature"),
    ("ood=mnli", "task", "'mnli'", "available: ag_news"),
]


@pytest.mark.parametrize(
    ("overrides", "key", "shown", "allowed"), EVALUATE, ids=[c[0] for c in EVALUATE]
)
def test_bad_evaluate_option(overrides: str, key: str, shown: str, allowed: str) -> None:
    from bayesian_lora.evaluate import evaluate

    with pytest.raises(InputError) as info:  # refused before any run folder is opened
        evaluate(compose_eval([f"run_dir={MISSING}", *overrides.split()]))
    message = str(info.value)
    assert f"{key}={shown}" in message or f"{key} {shown}" in message, message
    assert allowed in message, message


# ---------------------------------------------------------------- data
Mutation = Callable[[pa.Table, TaskSpec], pa.Table]


def _drop(column: str) -> Mutation:
    return lambda t, task: t.drop([column])


def _rows(n: int) -> Mutation:
    return lambda t, task: t.slice(0, n)


def _label(value: object, type_: pa.DataType) -> Mutation:
    def mutate(t: pa.Table, task: TaskSpec) -> pa.Table:
        labels = t.column(task.label_field).to_pylist()
        labels[2] = value
        if type_ == pa.string():
            labels = [str(v) for v in labels]
        index = t.schema.get_field_index(task.label_field)
        return t.set_column(index, task.label_field, pa.array(labels, type_))

    return mutate


def _data_cases() -> list[tuple[str, str, Mutation, str, str]]:
    """(task, split, mutation, the value as named, a fragment of what is allowed)."""
    cases: list[tuple[str, str, Mutation, str, str]] = []
    for name, task in TASKS.items():
        if task.is_mcqa:
            continue  # MCQA files hold questions and choices: checked once converted to prompts
        first = task.text_fields[0]
        cases += [
            (name, task.train_split, _drop(first), f"column(s) {first} missing", "needs"),
            (name, task.test_split, _drop(first), f"column(s) {first} missing", "needs"),
            (name, task.train_split, _drop(task.label_field), "missing (columns found", "needs"),
            (name, task.train_split, _rows(0), "has 0 rows", "at least one row"),
            (name, task.test_split, _rows(0), "has 0 rows", "at least one row"),
            (name, task.train_split, _rows(1), "has 1 row", "at least 2 rows"),
        ]
        if task.is_regression:
            cases += [
                (name, task.train_split, _label(float("nan"), pa.float32()), "=nan", "finite"),
                (name, task.train_split, _label(float("inf"), pa.float32()), "=inf", "finite"),
                (name, task.test_split, _label(None, pa.float32()), "=None", "finite"),
                (name, task.train_split, _label("x", pa.string()), "type string", "real-valued"),
            ]
        else:
            k = task.num_labels
            ids = f"class ids 0..{k - 1}"
            cases += [
                (name, task.train_split, _label(k, pa.int64()), f"label={k} in", ids),
                (name, task.train_split, _label(-2, pa.int64()), "label=-2 in", ids),
                (name, task.test_split, _label(k + 3, pa.int64()), f"label={k + 3} in", ids),
                (name, task.train_split, _label(None, pa.int64()), "label=None", ids),
                (name, task.train_split, _label(0, pa.string()), "type string", ids),
                (name, task.train_split, _label(0.5, pa.float64()), "type double", ids),
            ]
    return cases


DATA = _data_cases()


def _shard(repo: Path, split: str) -> Path:
    (path,) = [p for p in repo.rglob(f"{split}-*.parquet")]
    return path


def _broken_copy(root: Path, task: str, split: str, mutate: Mutation) -> Path:
    repo = write_synthetic_task(root, task, n_train=8, n_validation=4, n_test=4)
    shard = _shard(repo, split)
    pq.write_table(mutate(pq.read_table(shard), TASKS[task]), shard)
    return shard


@pytest.mark.parametrize(
    ("task", "split", "mutate", "value", "allowed"),
    DATA,
    ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in DATA],
)
def test_bad_data(
    task: str, split: str, mutate: Mutation, value: str, allowed: str, tmp_path: Path
) -> None:
    shard = _broken_copy(tmp_path, task, split, mutate)
    with pytest.raises(DataError) as info:
        load_task_dataset(TASKS[task], tmp_path, str(tmp_path / "cache"))
    message = str(info.value)
    assert str(shard) in message and value in message and allowed in message, message
    assert not (tmp_path / "cache").exists(), "datasets converted the file before the check"


def test_an_unreadable_parquet_file_is_named(tmp_path: Path) -> None:
    repo = write_synthetic_task(tmp_path, "sst2", n_train=8, n_validation=4, n_test=4)
    shard = _shard(repo, "train")
    shard.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file") as info:
        load_task_dataset(TASKS["sst2"], tmp_path, str(tmp_path / "cache"))
    assert str(shard) in str(info.value)


BAD_DATA_RUNS = [
    ("mrpc", "train", _drop("sentence2"), "column(s) sentence2 missing"),
    ("sst2", "train", _label(5, pa.int64()), "label=5 in"),
    ("stsb", "train", _label(float("nan"), pa.float32()), "label=nan"),
    ("rte", "train", _rows(1), "has 1 row"),
]


@pytest.mark.parametrize(
    ("task", "split", "mutate", "value"), BAD_DATA_RUNS, ids=[c[0] for c in BAD_DATA_RUNS]
)
def test_bad_data_leaves_no_run_folder(
    task: str, split: str, mutate: Mutation, value: str, tmp_path: Path
) -> None:
    shard = _broken_copy(tmp_path / "data", task, split, mutate)
    run = tmp_path / "run"
    args = ["model=tiny", "debug=smoke", "logger=none", f"data={task}"]
    cfg = compose_train([*args, f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={run}"])
    with pytest.raises(DataError) as info:
        train(cfg, args)
    assert str(shard) in str(info.value) and value in str(info.value)
    assert not run.exists()


# ---------------------------------------------------------------- the command line
def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", f"bayesian_lora.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


CLI = [
    ("train", ["model=tiny", "sampler=sgld", "+sampler.burnin=10"], "sampler.burnin=10"),
    ("train", ["model=tiny", "trainer.check_val_every_n_epoch=0"], "check_val_every_n_epoch=0"),
    ("train", ["model=tiny", f"resume={MISSING}"], f"resume={MISSING!r}"),
    ("train", ["model=tiny", f"paths.data_dir={MISSING}"], "paths.data_dir="),
    ("evaluate", ["run_dir=/nonexistent/run", "k=0"], "k=0"),
    ("evaluate", ["run_dir=/nonexistent/run"], "/nonexistent/run does not exist"),
    ("laplace", ["run_dir=/nonexistent/run", "structure=full"], "structure='full'"),
    ("laplace", ["run_dir=/nonexistent/run"], "/nonexistent/run does not exist"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "args", "named"), CLI, ids=[" ".join(c[1]) for c in CLI])
def test_command_line_refusal(module: str, args: list[str], named: str, tmp_path: Path) -> None:
    """Exit 2, one ``error:`` line naming the input, no traceback, and nothing left behind."""
    proc = _cli(module, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [], "the refused command left files behind"


@pytest.mark.slow
def test_command_line_resume_with_an_override_creates_nothing(
    resumable: Path, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = sorted(p.name for p in resumable.iterdir())
    proc = _cli("train", f"resume={resumable}", "sampler.lr=0.5", cwd=cwd)
    assert proc.returncode == 2 and "sampler.lr=0.5 is not allowed with resume=" in proc.stderr
    assert list(cwd.iterdir()) == []  # no misnamed outputs/train/<time>_... folder
    assert sorted(p.name for p in resumable.iterdir() if p.name != "train.log") == before


@pytest.mark.slow
def test_command_line_bad_data_leaves_no_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shard = _broken_copy(data, "sst2", "train", _label(7, pa.int64()))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _cli(
        "train", "model=tiny", "debug=smoke", "data=sst2", f"paths.data_dir={data}", cwd=cwd
    )
    assert proc.returncode == 2, proc.stderr
    assert f"error: {shard} (row 2): label=7 in" in proc.stderr
    assert list(cwd.iterdir()) == []


def test_message_of_a_config_error_lists_every_bad_key() -> None:
    cfg = compose_train(["model=tiny", "+sampler.burnin=3", "seed=-1"])
    with pytest.raises(ConfigError, match="2 config errors") as info:
        config_validation.validate_config(cfg)
    assert "sampler.burnin=3" in str(info.value) and "seed=-1" in str(info.value)


def test_the_prior_groups_the_validation_knows_are_the_priors() -> None:
    from bayesian_lora.models.prior import GROUPS

    assert config_validation.PRIOR_GROUPS == GROUPS


def test_the_map_learning_rate_on_the_command_line_passes() -> None:
    """sampler.lr is MAP's AdamW learning rate, not only a chain's step size."""
    overrides = ["model=tiny", "sampler.lr=1e-3"]
    config_validation.validate_config(compose_train(overrides), overrides, sweep=False)
