"""The datamodule, the sampler's update rule and the callbacks are ``_target_`` configs built by
``bayesian_lora.instantiate``; run folders saved in the earlier form still evaluate and resume."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from bayesian_lora import config_validation
from bayesian_lora.config import (
    CONFIG_DIR,
    build_callbacks,
    build_chain_plan,
    build_datamodule,
    manifest_for,
    resolve_resume,
    sampler_algorithm,
    upgrade_saved_config,
)
from bayesian_lora.samplers import SAMPLERS, sampler_targets
from tests.helpers import CHAIN, compose_train, run_eval, train_run

LR_MONITOR = "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor"
#: chains with an update-rule class (blob is a method: its module step builds AdamW on its
#: objective, named by sampler.algorithm)
CHAIN_CONFIGS = sorted(
    p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml") if p.stem not in ("map", "blob")
)


def _names(callbacks: list[Any]) -> list[str]:
    return [type(c).__name__ for c in callbacks]


def _callbacks(tmp_path: Path, *overrides: str) -> list[Any]:
    cfg = compose_train(["model=tiny", "debug=smoke", f"paths.output_dir={tmp_path}", *overrides])
    config_validation.validate_config(cfg)
    return build_callbacks(cfg, tmp_path, build_chain_plan(cfg), manifest={})  # type: ignore[arg-type]


def test_map_runs_get_the_map_callbacks_and_a_users_one(tmp_path: Path) -> None:
    callbacks = _callbacks(tmp_path, LR_MONITOR)
    names = ["EarlyStopping", "ModelCheckpoint", "MAPCollector", "LearningRateMonitor"]
    assert _names(callbacks) == names  # MAP's collector writes its one sample (methods/map.py)
    best = callbacks[1]
    assert Path(best.dirpath) == tmp_path / "checkpoints" and best.filename == "best"
    assert best.monitor == callbacks[0].monitor == "val/nll"  # selection follows early stopping
    assert callbacks[2].run_dir == tmp_path and callbacks[2].plan.num_samples == 1
    # MAP never read callbacks.samples: null there still gives MAP its collector
    assert "MAPCollector" in _names(_callbacks(tmp_path, "callbacks.samples=null"))


def test_chains_get_the_chain_callbacks_completed_with_the_run(tmp_path: Path) -> None:
    callbacks = _callbacks(
        tmp_path, "sampler=sgld", LR_MONITOR, "callbacks.checkpoint.every_n_train_steps=7"
    )
    assert _names(callbacks) == [
        "SampleCollector",
        "ChainCheckpoint",
        "ChainProgress",
        "TraceRecorder",
        "LearningRateMonitor",
    ]
    samples, checkpoint, progress, trace, _ = callbacks
    assert checkpoint.path == tmp_path / "checkpoints" / "last.ckpt" and checkpoint.every_n == 7
    assert samples.run_dir == tmp_path and samples.plan.num_samples == 3
    assert progress.sampler == "sgld"
    # off with null, and the progress line with Lightning's bar
    off = _callbacks(tmp_path, "sampler=sgld", "callbacks.trace=null")
    assert "TraceRecorder" not in _names(off)
    quiet = _callbacks(tmp_path, "sampler=sgld", "trainer.enable_progress_bar=false")
    assert "ChainProgress" not in _names(quiet)


@pytest.mark.parametrize(
    ("sampler", "collector"), [("swag", "SWAGCollector"), ("blob", "BLoBCollector")]
)
def test_swag_and_blob_keep_their_own_with_a_seeded_draw(
    sampler: str, collector: str, tmp_path: Path
) -> None:
    callbacks = _callbacks(
        tmp_path, f"sampler={sampler}", "seed=3", f"sampler.{sampler}.draw_seed=2"
    )
    (kept,) = [c for c in callbacks if type(c).__name__ == collector]
    assert kept.draw_seed == 5 and kept.flush_every == 5
    assert kept.num_draws == compose_train([f"sampler={sampler}"]).sampler[sampler].num_draws
    saved = OmegaConf.to_container(compose_train([f"sampler={sampler}", "seed=3"]).callbacks)
    assert "draw_seed" not in str(saved)  # config.yaml holds no per-seed value


def test_blob_is_named_by_its_algorithm(tmp_path: Path) -> None:
    cfg = compose_train(["model=tiny", "sampler=blob", f"paths.output_dir={tmp_path}"])
    config_validation.validate_config(cfg)
    assert "optimizer" not in cfg.sampler and sampler_algorithm(cfg) == "blob"
    assert upgrade_saved_config(cfg) == cfg


def test_every_own_callback_is_shipped_with_its_class_and_keys() -> None:
    shipped = OmegaConf.load(CONFIG_DIR / "callbacks" / "default.yaml")
    assert set(shipped) == set(config_validation.CALLBACKS)
    run_arguments = {"run", "run_dir", "plan", "manifest", "dirpath", "sampler", "self"}
    for name, cb in config_validation.CALLBACKS.items():
        node = shipped[name]
        assert node._target_ == cb.target, name
        assert set(node) - {"_target_", "_partial_"} <= set(cb.keys), name
        accepted = set(inspect.signature(get_class(cb.target).__init__).parameters)
        if cb.target.startswith("lightning."):  # every argument but the run folder's
            assert set(cb.keys) == accepted - run_arguments, name
        else:
            assert set(cb.keys) <= accepted, name
        needs_run = bool(accepted & (run_arguments - {"self"}))
        assert bool(node.get("_partial_")) == needs_run, name


@pytest.mark.parametrize("sampler", CHAIN_CONFIGS)
def test_each_chain_names_a_registered_update_rule(sampler: str, tmp_path: Path) -> None:
    cfg = compose_train(["model=tiny", f"sampler={sampler}", f"paths.output_dir={tmp_path}"])
    target = cfg.sampler.optimizer._target_
    algorithm = sampler_targets()[target]
    assert get_class(target) is SAMPLERS[algorithm] and cfg.sampler.optimizer._partial_
    assert sampler_algorithm(cfg) == algorithm
    manifest = manifest_for(cfg, SimpleNamespace(num_train_examples=8), build_chain_plan(cfg))  # type: ignore[arg-type]
    assert manifest["sampler"]["algorithm"] == algorithm  # a registry name, not an import path
    assert "optimizer" not in manifest["sampler"] and "_target_" not in str(manifest.to_dict())


def test_the_datamodule_is_its_data_config(tmp_path: Path) -> None:
    cfg = compose_train(["model=tiny", "data=stsb", "data.obs_std=0.25", "seed=4"])
    assert cfg.data._target_ == "bayesian_lora.data.datamodule.TextClassificationDataModule"
    dm = build_datamodule(cfg)
    assert dm.task.name == "stsb" and dm.obs_std == 0.25 and dm.shuffle_seed == 4
    assert dm.max_length == cfg.model.max_length


# ---------------------------------------------------------------- run folders of the earlier form
def _legacy(cfg: DictConfig) -> DictConfig:
    """``cfg`` as config.yaml was written before the _target_ configs (main before this change)."""
    old = cfg.copy()
    with open_dict(old):
        old.data.pop("_target_")
        if "optimizer" in old.sampler:
            target = old.sampler.pop("optimizer")._target_
            if sampler_targets()[target] != old.sampler.name:
                old.sampler.algorithm = sampler_targets()[target]
        cb = old.callbacks
        old.callbacks = {
            "early_stopping": {k: cb.early_stopping[k] for k in ("monitor", "patience", "mode")},
            "checkpoint": {"every_n_train_steps": cb.checkpoint.every_n_train_steps},
            "samples": {"flush_every": cb.samples.flush_every},
            "trace": {"enabled": True, "probe_size": 8, "flush_every_steps": 100},
            "progress": {"every_n_steps": 20},
        }
    return old


def test_a_legacy_config_is_upgraded_to_todays_form(tmp_path: Path) -> None:
    cfg = compose_train(["model=tiny", "sampler=csgld", f"paths.output_dir={tmp_path}"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    old = _legacy(cfg)
    assert old.sampler.algorithm == "sgld" and "_target_" not in old.data
    new = upgrade_saved_config(old)
    config_validation.validate_config(new)
    assert new.sampler.optimizer._target_ == "bayesian_lora.samplers.SGLD"
    assert "algorithm" not in new.sampler and new.data._target_ == cfg.data._target_
    assert new.callbacks.trace.probe_size == 8  # the saved settings, in the shipped objects
    assert new.callbacks.trace._target_ == cfg.callbacks.trace._target_
    assert upgrade_saved_config(new) == new  # today's form comes back unchanged
    with open_dict(old):
        old.callbacks.trace.enabled = False
    assert upgrade_saved_config(old).callbacks.trace is None


def test_a_legacy_run_folder_evaluates_and_resumes(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    run = train_run(synthetic_data_dir, tmp_path / "chain", "sampler=sgld", *CHAIN)
    saved = OmegaConf.load(run / "config.yaml")
    assert isinstance(saved, DictConfig)
    OmegaConf.save(_legacy(saved), run / "config.yaml")
    result = run_eval(f"run_dir={run}", "plots=false", f"out_dir={tmp_path / 'eval'}")
    assert result["ensemble"]["n_samples"] == 3
    overrides = [f"resume={run}"]
    resumed, ckpt = resolve_resume(compose_train(["model=tiny", *overrides]), overrides)
    config_validation.validate_config(resumed)
    assert ckpt is not None and resumed.sampler.optimizer._target_.endswith(".SGLD")
