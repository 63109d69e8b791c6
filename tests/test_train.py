"""The real Hydra config, composed and run for a few steps on CPU with the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.data.tasks import TASKS
from bayesian_lora.runs import load_samples
from bayesian_lora.train import train
from tests.helpers import CHAIN, compose_train, smoke_overrides
from tests.wandb_offline import config_keys, history_keys, read_offline_run

SAMPLER_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("[!_]*.yaml"))


def test_sampler_group_lists_every_documented_sampler() -> None:
    assert (
        sorted(
            [
                "map",
                "sgld",
                "psgld",
                "asgld",
                "sam_sgld",
                "sam_sgld_r1",
                "sghmc",
                "csgld",
                "csghmc",
                "swag",
                "blob",
            ]
        )
        == SAMPLER_CONFIGS
    )


@pytest.mark.parametrize("task", sorted(n for n, t in TASKS.items() if not t.is_mcqa))
def test_map_run_writes_one_sample_and_test_metrics(
    task: str, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        smoke_overrides(
            synthetic_data_dir, tmp_path, f"data={task}", "trainer.max_epochs=2", "sampler.lr=5e-3"
        )
    )
    metrics = train(cfg)
    samples, manifest = load_samples(tmp_path)
    assert manifest["num_samples"] == 1 and manifest["sampler"]["name"] == "map"
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert manifest["steps"] == [best["chain"]["chain_step"]]  # the best step, not the last
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "metrics.json").is_file()
    expected = {"nll", "rmse", "pearson"} if TASKS[task].is_regression else {"acc", "ece", "brier"}
    assert set(metrics["ensemble"]) >= expected
    head = [n for n in samples if "classifier" in n]
    assert head, "the classification head must be among the sampled parameters"


@pytest.mark.parametrize("sampler", [s for s in SAMPLER_CONFIGS if s != "map"])
def test_every_sampler_keeps_its_samples(
    sampler: str, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    extra = [f"sampler={sampler}", "data=mrpc", *CHAIN]
    if sampler in ("csgld", "csghmc"):
        extra += ["sampler.schedule.cycle_length=8", "sampler.burn_in=0"]
    if sampler == "swag":  # SWAG's sample stack is its end-of-run draws
        extra += ["sampler.swag.num_draws=3", "sampler.swag.rank=2"]
    if sampler == "blob":  # BLoB's: draws of A from q; B and the head are point estimates
        extra += ["sampler.blob.num_draws=3"]
    cfg = compose_train(smoke_overrides(synthetic_data_dir, tmp_path, *extra))
    metrics = train(cfg)
    samples, manifest = load_samples(tmp_path)
    assert manifest["num_samples"] == 3
    assert manifest["steps"] == manifest["kept_steps_planned"]
    assert manifest["status"] == "complete"
    head = next(t for n, t in samples.items() if "classifier" in n and n.endswith("weight"))
    if sampler == "blob":
        assert torch.equal(head[0], head[-1]), "BLoB's head is one point estimate"
        a = next(t for n, t in samples.items() if "lora_A" in n)
        assert not torch.equal(a[0], a[-1]), "BLoB's draws of A must differ"
    else:
        assert not torch.equal(head[0], head[-1]), "the head must move along the chain"
    assert metrics["ensemble"]["n_samples"] == 3


def test_stsb_regression_runs(synthetic_data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        smoke_overrides(synthetic_data_dir, tmp_path, "data=stsb", "sampler=sgld", *CHAIN)
    )
    metrics = train(cfg)
    assert set(metrics["ensemble"]) >= {"nll", "rmse", "pearson", "spearman"}


def test_unknown_choice_lists_the_available_ones() -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_train(["sampler=langevin"])
    assert "sgld" in str(err.value) and "sam_sgld" in str(err.value)


@pytest.mark.slow
def test_command_line_entry_point(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """``python -m bayesian_lora.train`` composes, runs and writes its run folder."""
    cmd = [
        sys.executable,
        "-m",
        "bayesian_lora.train",
        "model=tiny",
        "data=rte",
        "debug=smoke",
        f"paths.data_dir={synthetic_data_dir}",
        f"hydra.run.dir={tmp_path}",
        "seed=0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainable ratio" in proc.stdout
    assert (tmp_path / "samples.safetensors").is_file()
    assert (tmp_path / ".hydra" / "config.yaml").is_file()


def test_wandb_logger_works_offline(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = smoke_overrides(synthetic_data_dir, tmp_path / "run", "data=sst2")
    cfg = compose_train([o for o in overrides if o != "logger=csv"] + ["logger=wandb"])
    from bayesian_lora.config import sweep_group

    assert sweep_group(cfg) == "tiny-sst2-map"  # outside a -m sweep: one group per config
    train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "run").iterdir())
    # Read the run back through W&B's record format once its writer has finished (a loaded
    # machine lets the test look before wandb-core wrote the last records).
    records = read_offline_run(runs[0])
    assert {"test/acc", "train/u"} <= history_keys(records)
    assert {"params/lora", "prior_std"} <= config_keys(records)


def test_warm_start_in_epochs_becomes_steps(synthetic_data_dir: Path, tmp_path: Path) -> None:
    from bayesian_lora.config import build_chain_plan

    cfg = compose_train(
        smoke_overrides(synthetic_data_dir, tmp_path, "sampler=sgld", "sampler.warmup.epochs=2")
    )
    assert build_chain_plan(cfg, steps_per_epoch=6).warmup_steps == 12
    assert build_chain_plan(cfg, steps_per_epoch=None).warmup_steps == 0


def test_warm_start_epochs_count_the_global_batch_under_ddp(tmp_path: Path) -> None:
    """R ranks share an epoch: 64 examples at 8 per rank are 4 steps on 2 ranks, not 8."""
    from bayesian_lora.config import build_chain_plan, steps_per_epoch, world_size

    extra = ["sampler=sgld", "sampler.warmup.epochs=1", "data.batch_size=8"]
    one = compose_train(smoke_overrides(tmp_path, tmp_path, *extra))
    two = compose_train(smoke_overrides(tmp_path, tmp_path, *extra, "trainer=ddp_cpu"))
    assert (world_size(one), world_size(two)) == (1, 2)
    assert steps_per_epoch(one, 64) == 8 and steps_per_epoch(two, 64) == 4
    assert steps_per_epoch(two, 65) == 5  # ceil(65 / 2) = 33 per rank: 5 batches of 8
    assert build_chain_plan(two, steps_per_epoch(two, 64)).warmup_steps == 4


class _RecordingLogger:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    def finalize(self, status: str) -> None:
        self.statuses.append(status)


def test_close_loggers_passes_the_status_on() -> None:
    from bayesian_lora.train import close_loggers

    loggers = [_RecordingLogger(), _RecordingLogger()]
    close_loggers(loggers, "failed")  # type: ignore[arg-type]
    close_loggers(loggers)  # type: ignore[arg-type]
    assert [lg.statuses for lg in loggers] == [["failed", "success"]] * 2


@pytest.mark.parametrize("fails", [False, True])
def test_loggers_are_finalized_failed_when_the_run_raises(
    fails: bool, synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train's ``finally`` closes the loggers with "failed" when the run raised, else "success"."""
    import bayesian_lora.train as train_module
    from tests.helpers import AtStep, inject

    closed: list[str] = []
    original = train_module.close_loggers

    def spy(loggers: list[object], status: str = "success") -> None:
        closed.append(status)
        original(loggers, status)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "close_loggers", spy)

    def crash(module: object) -> None:
        raise RuntimeError("a crash inside the run")

    if fails:
        inject(monkeypatch, AtStep(2, crash))
    cfg = compose_train(smoke_overrides(synthetic_data_dir, tmp_path, "sampler=sgld", *CHAIN))
    if fails:
        with pytest.raises(RuntimeError, match="a crash inside the run"):
            train(cfg)
    else:
        train(cfg)
    assert closed == ["failed" if fails else "success"]


def test_a_map_manifest_leaves_out_the_chain_keys(tmp_path: Path) -> None:
    """debug=smoke gives every sampler chain sizes; a MAP run's manifest does not carry them."""
    from types import SimpleNamespace

    from bayesian_lora.config import build_chain_plan, manifest_for

    data = SimpleNamespace(num_train_examples=48)
    smoke = ["model=tiny", "debug=smoke", f"paths.output_dir={tmp_path}"]
    cfg = compose_train(smoke)
    assert cfg.sampler.burn_in == 4  # the shared file did give MAP a burn-in
    manifest = manifest_for(cfg, data, None)  # type: ignore[arg-type]
    assert manifest["sampler"] == {
        "name": "map",
        "algorithm": "map",  # registry names stay
        "lr": cfg.sampler.lr,
        "weight_decay": cfg.sampler.weight_decay,
        "warmup_ratio": cfg.sampler.warmup_ratio,
    }
    assert manifest["kept_steps_planned"] is None
    chain_cfg = compose_train([*smoke, "sampler=sgld"])
    chain = manifest_for(chain_cfg, data, build_chain_plan(chain_cfg))  # type: ignore[arg-type]
    assert chain["sampler"]["algorithm"] == "sgld" and chain["sampler"]["burn_in"] == 4
    assert {"temperature", "thin", "num_samples", "warmup", "schedule"} <= set(chain["sampler"])


def test_map_and_a_chain_go_through_one_trainer_and_collector_path(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAP is one method among the others: ``train`` builds its trainer with the same function
    and its sample collector writes its one sample (the best checkpoint's step, no step-size
    scales, the compute block); only the collector's trainer settings differ (a chain stops
    itself after its last sample, MAP by epochs and early stopping)."""
    import bayesian_lora.train as train_module
    from bayesian_lora.callbacks.sample_collector import SampleCollector

    built: list[tuple[object, SampleCollector]] = []
    original = train_module.build_trainer

    def recording(*args: object, **kwargs: object) -> object:
        trainer, collector = original(*args, **kwargs)  # type: ignore[arg-type]
        built.append((trainer, collector))
        return trainer, collector

    monkeypatch.setattr(train_module, "build_trainer", recording)
    out_map, out_chain = tmp_path / "map", tmp_path / "chain"
    base = ["data=mrpc", "evaluate_on_fit_end=false"]
    train(
        compose_train(smoke_overrides(synthetic_data_dir, out_map, *base, "trainer.max_epochs=2"))
    )
    train(
        compose_train(smoke_overrides(synthetic_data_dir, out_chain, *base, "sampler=sgld", *CHAIN))
    )
    assert len(built) == 2
    (map_trainer, map_collector), (chain_trainer, chain_collector) = built
    assert type(map_collector).__module__ == "bayesian_lora.methods.map"
    assert isinstance(map_collector, SampleCollector) and type(chain_collector) is SampleCollector
    assert (
        map_collector.num_kept == 1 and chain_collector.num_kept == chain_collector.plan.num_samples
    )
    assert map_collector.trainer_overrides(0) == {}
    assert chain_trainer.max_steps == chain_collector.plan.total_steps()  # type: ignore[attr-defined]
    assert map_trainer.max_epochs == 2  # type: ignore[attr-defined]
    _, manifest = load_samples(out_map)
    best = torch.load(out_map / "checkpoints" / "best.ckpt", weights_only=True)
    assert manifest.steps == [best["chain"]["chain_step"]] and manifest.status == "complete"
    assert manifest.step_size_scales == [] and manifest.compute["total_steps"] > 0
    assert manifest["sampler"]["name"] == "map" and manifest["sampler"]["algorithm"] == "map"


def test_training_a_run_asks_no_map_question() -> None:
    """How a run is trained and written goes through its collector: the trainer-building and
    the training functions never ask whether the run is MAP (the method's own file does)."""
    import inspect

    import bayesian_lora.config as config_module
    import bayesian_lora.train as train_module

    for fn in (train_module._train, config_module.build_trainer, train_module.print_next_steps):
        source = inspect.getsource(fn)
        for special in ("is_map", "plan is None", "plan is not None", '"map"'):
            assert special not in source, f"{fn.__name__} special-cases MAP: {special}"
    assert not hasattr(train_module, "_write_map_sample")
