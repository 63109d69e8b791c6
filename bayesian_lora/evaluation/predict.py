"""Member predictions: the model and the tokenised data built once, each kept sample swapped in.

``predict`` is evaluate's path (test or validation split, OOD inputs, the validation predictive
for ``calibrate=``); ``evaluate_module_on_test`` is the train-time path at the end of a run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor

from bayesian_lora.config import build_datamodule
from bayesian_lora.data.datamodule import TextClassificationDataModule
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.ensemble import cache_batches, labels_of, predict_samples
from bayesian_lora.evaluation.results import evaluate_predictions, lora_parameter_stats
from bayesian_lora.evaluation.write import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    format_metrics,
    save_predictions,
    write_json,
)
from bayesian_lora.models.lora import ModelSettings, build_lora_model
from bayesian_lora.models.module import BayesianLoRAModule
from bayesian_lora.runs import load_samples

if TYPE_CHECKING:
    from bayesian_lora.runs import RunFolder


@dataclass
class Members:
    """Member predictions and where each member came from."""

    preds: np.ndarray  # [M, N, C] or [M, N]
    labels: np.ndarray  # [N]
    ood_preds: np.ndarray | None  # [M, N_ood, C]
    run: np.ndarray  # [M] index into the run folders
    sample: np.ndarray  # [M] kept-sample index within its run
    dropout_pass: np.ndarray  # [M] MC-dropout pass (0 without MC dropout)
    seconds: float
    val_preds: np.ndarray | None = None  # [M, N_val, C], for calibrate=
    val_labels: np.ndarray | None = None
    shift: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # preds, labels
    # metrics.json ``predictive``: the stored draws (default) or ``bayesian_lora.laplace.predict_glm``
    predictive: dict[str, Any] = field(default_factory=lambda: {"kind": "samples"})


def eval_run_config(cfg: DictConfig, run: RunFolder) -> DictConfig:
    """The run's saved config with evaluate's overrides (model, data dir, eval batch size)."""
    c = copy.deepcopy(run.config)
    with open_dict(c):
        if cfg.get("model") is not None:
            c.model = cfg.model
        for key in ("data_dir", "cache_dir"):
            if cfg.paths.get(key):
                c.paths[key] = cfg.paths[key]
        if cfg.get("eval_batch_size"):
            c.data.eval_batch_size = int(cfg.eval_batch_size)
    return c


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_eval_module(run_cfg: DictConfig, run: RunFolder, device: torch.device) -> Any:
    """Base model + LoRA (once), with the task's head; parameters checked against the manifest."""
    task = get_task(run_cfg.data.task)
    model = build_lora_model(ModelSettings.from_config(run_cfg.model), task.num_labels)
    module = BayesianLoRAModule(
        model,
        task=task,
        num_data=int(run.manifest.get("num_data") or 1),
        obs_std=float(run_cfg.data.obs_std),
    )
    from bayesian_lora.evaluate import check_parameters  # the manifest checks live there

    check_parameters(module, run)
    return module.to(device).eval()


def build_eval_batches(
    run_cfg: DictConfig, device: torch.device, split: str = "test"
) -> tuple[TextClassificationDataModule, list[dict[str, Tensor]]]:
    """Tokenised batches of the test split, or of the validation split carved from train."""
    datamodule = build_datamodule(run_cfg)
    datamodule.setup()
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    return datamodule, cache_batches(loader, device)


def ood_batches(
    cfg: DictConfig,
    run_cfg: DictConfig,
    dm: TextClassificationDataModule,
    device: torch.device,
    task: str | None = None,
) -> list[dict[str, Tensor]]:
    """The test split of the OOD task (or of ``task``, a shift task), tokenised like the
    in-domain data (same tokenizer/length); only that split is loaded."""
    d = run_cfg.data
    max_samples = cfg.ood_max_samples if cfg.ood_max_samples is not None else d.max_eval_samples
    ood_dm = TextClassificationDataModule(
        task=task or str(cfg.ood),
        tokenizer=dm.tokenizer,
        max_length=dm.max_length,
        eval_batch_size=dm.eval_batch_size,
        data_dir=run_cfg.paths.data_dir,
        val_fraction=float(d.val_fraction),
        split_seed=int(d.split_seed),
        max_eval_samples=max_samples,
        cache_dir=run_cfg.paths.cache_dir,
    )
    ood_dm.setup("test")
    return cache_batches(ood_dm.test_dataloader(), device)


def predict_members(
    module: Any,
    samples: Mapping[str, Tensor],
    members: Sequence[tuple[int, int]],
    batches: list[dict[str, Tensor]],
    extra_batches: list[dict[str, Tensor]] | None,
    mc_dropout: int,
) -> Members:
    """One swap per sample, one pass over the in-domain (+ OOD) cached batches."""
    n_in = sum(int(b["labels"].shape[0]) for b in batches)
    device = next(iter(module.parameters())).device
    on_device = {n: t.to(device) for n, t in samples.items()}
    start = time.perf_counter()
    predicted = predict_samples(
        module, on_device, batches + (extra_batches or []), None, mc_dropout
    )
    out = predicted.cpu().numpy()
    seconds = time.perf_counter() - start
    passes = max(mc_dropout, 1)
    run = np.repeat([r for r, _ in members], passes)
    sample = np.repeat([i for _, i in members], passes)
    return Members(
        preds=out[:, :n_in],
        labels=labels_of(batches).numpy(),
        ood_preds=out[:, n_in:] if extra_batches else None,
        run=run.astype(np.int64),
        sample=sample.astype(np.int64),
        dropout_pass=np.tile(np.arange(passes), len(members)).astype(np.int64),
        seconds=seconds,
    )


def predict(
    cfg: DictConfig,
    run_cfg: DictConfig,
    run: RunFolder,
    samples: Mapping[str, Tensor],
    members: Sequence[tuple[int, int]],
) -> Members:
    """Model and (OOD) test batches built once, then every member predicted."""
    device = resolve_device(str(cfg.get("device", "auto")))
    module = build_eval_module(run_cfg, run, device)
    dm, batches = build_eval_batches(run_cfg, device, str(cfg.get("split", "test")))
    extra = ood_batches(cfg, run_cfg, dm, device) if cfg.get("ood") is not None else None
    torch.manual_seed(int(cfg.get("seed", 0)))
    K = int(cfg.mc_dropout or 0)
    m = predict_members(module, samples, members, batches, extra, K)
    if cfg.get("calibrate") is not None:  # the validation predictive the calibrator is fitted on
        val = cache_batches(dm.val_dataloader(), device)
        on_device = {n: t.to(device) for n, t in samples.items()}
        m.val_preds = predict_samples(module, on_device, val, None, K).cpu().numpy()
        m.val_labels = labels_of(val).numpy()
    for name in shift_tasks(cfg):  # one more pass of every member per shift task
        shifted = ood_batches(cfg, run_cfg, dm, device, task=name)
        out = predict_members(module, samples, members, shifted, None, K)
        m.shift[name] = (out.preds, out.labels)
    return m


def shift_tasks(cfg: DictConfig) -> list[str]:
    """``shift=[arc_e, arc_c, mmlu]``: tasks whose test splits are scored by the same members."""
    value = cfg.get("shift") or []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def evaluate_module_on_test(module: Any, datamodule: Any, run_dir: Path) -> dict[str, Any]:
    """Test metrics of a finished run's kept samples; saves predictions and ``metrics.json``."""
    samples, manifest = load_samples(run_dir, device=module.device)
    batches = cache_batches(datamodule.test_dataloader(), module.device)
    preds = predict_samples(module, samples, batches).cpu().numpy()
    labels = labels_of(batches).numpy()
    result = evaluate_predictions(preds, labels, module.task, module.obs_std)
    result["parameters"] = lora_parameter_stats(samples)
    result["num_samples"] = int(manifest["num_samples"])
    save_predictions(Path(run_dir) / PREDICTIONS_FILE, preds, labels)
    write_json(Path(run_dir) / METRICS_FILE, result)
    print(
        format_metrics(result["ensemble"], title=f"test metrics ({result['num_samples']} samples)")
    )
    return result
