"""Does a run folder fit what it is used for? Each mismatch is named (config vs manifest).

Used by evaluate (the model it builds, the other run folders it pools) and by
``sampler.warmup.from_run`` (task, label count, model and LoRA config, prior, data split), before
any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bayesian_lora.runs.folder import RunFolder
from bayesian_lora.runs.manifest import SampleFileError


class ManifestMismatchError(SampleFileError):
    """Samples that do not fit the model/LoRA config, the task, or the other run folders."""


def model_identity(model: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the function and the parameter layout: model id, lengths and LoRA config."""
    from bayesian_lora.models.lora import ModelSettings

    s = ModelSettings.from_config(model)
    return {
        "model.name_or_path": s.name_or_path,
        "model.max_length": int(s.max_length),
        "model.tiny": dict(s.tiny) if s.name_or_path in ("tiny-bert", "tiny-causal") else {},
        "lora.r": int(s.lora.r),
        "lora.alpha": float(s.lora.alpha),
        "lora.dropout": float(s.lora.dropout),
        "lora.target_modules": sorted(s.lora.target_modules),
        "lora.modules_to_save": sorted(s.lora.modules_to_save),
    }


SPLIT_KEYS = ("max_train_samples", "val_fraction", "split_seed")
# What fixes the prior density (``sampled``, the groups a sampler moves, is left out: a chain
# that samples the head only may start from a MAP run that trained everything).
PRIOR_KEYS = ("dW_fraction", "lora_A", "lora_B", "head", "modules")


def prior_identity(prior_cfg: Any, prior_std: Any) -> dict[str, Any]:
    """The prior settings a config asks for (``prior`` group, ``prior_std`` override)."""
    from dataclasses import asdict

    from bayesian_lora.models.prior import PriorSettings

    std = None if prior_std is None else float(prior_std)
    settings = json.loads(json.dumps(asdict(PriorSettings.from_config(prior_cfg, std))))
    return {f"prior.{k}": settings.get(k) for k in PRIOR_KEYS}


def run_identity(model: Mapping[str, Any], task: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Model identity + task, label count and the train/validation split."""
    from bayesian_lora.data.tasks import get_task

    return {
        **model_identity(model),
        "task": task,
        "num_labels": get_task(task).num_labels,
        **{f"data.{k}": data.get(k) for k in SPLIT_KEYS},
    }


def manifest_identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    prior = manifest.get("prior") or {}
    recorded = {f"prior.{k}": prior.get(k) for k in PRIOR_KEYS}
    return {
        **run_identity(manifest["model"], str(manifest["task"]), manifest.get("data") or {}),
        **recorded,
    }


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys if a.get(k) != b.get(k)]


def check_data(data_cfg: Mapping[str, Any], run: RunFolder, source: str) -> None:
    """The task and train/validation split a config asks for must be those of the samples."""
    recorded = run.manifest.get("data") or {}
    asked = {"task": data_cfg.get("task"), **{f"data.{k}": data_cfg.get(k) for k in SPLIT_KEYS}}
    have = {"task": run.manifest.get("task"), **{f"data.{k}": recorded.get(k) for k in SPLIT_KEYS}}
    diffs = differences(asked, have)
    if diffs:
        raise ManifestMismatchError(
            f"the data config of {source} does not match the samples' manifest in {run.path} "
            f"(config vs manifest): {'; '.join(diffs)}"
        )


def check_from_run(cfg: Any, run: RunFolder) -> None:
    """``sampler.warmup.from_run``: the run must be of this task, model, LoRA, prior and split."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    asked = {
        **run_identity(c["model"], c["data"]["task"], c["data"]),
        **prior_identity(c.get("prior"), c.get("prior_std")),
    }
    diffs = differences(asked, manifest_identity(run.manifest))
    if diffs:
        raise ManifestMismatchError(
            f"sampler.warmup.from_run: the run in {run.path} does not fit this config "
            f"(config vs that run's manifest): {'; '.join(diffs)}"
        )
