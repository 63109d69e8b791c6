"""Metrics of member predictions: ensemble, per member, versus ensemble size, selective, OOD.

MAP (one sample), chains (S samples), pooled chains, deep ensembles and MC dropout all end in
``evaluate_predictions``; the numbers are fractions (ECE in [0, 1]), formatting is elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bayesian_lora.compute import ensemble_cost
from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.evaluation.members import ensemble_kind
from bayesian_lora.evaluation.metrics import (
    ensemble_metrics,
    metrics_vs_ensemble_size,
    mutual_information,
    ood_detection,
    predictive_entropy,
    selective_prediction,
)

if TYPE_CHECKING:
    from bayesian_lora.evaluation.predict import Members
    from bayesian_lora.runs import RunFolder


def evaluate_predictions(
    sample_preds: np.ndarray, labels: np.ndarray, task: TaskSpec, obs_std: float
) -> dict[str, Any]:
    """Ensemble, per-member and versus-ensemble-size metrics of stacked member predictions.

    ``sample_preds`` is ``[M, N, C]`` probabilities (``[M, N]`` means for regression); the
    ensemble averages probabilities, so its ``nll`` is ``-log mean_m p_m(y)``.
    """
    obs = obs_std if task.is_regression else None
    per_member = [
        ensemble_metrics(sample_preds[i : i + 1], labels, task.metric, obs)
        for i in range(sample_preds.shape[0])
    ]
    out: dict[str, Any] = {
        "ensemble": ensemble_metrics(sample_preds, labels, task.metric, obs),
        "per_sample": per_member,
        "per_sample_summary": summarise_rows(per_member),
        "vs_ensemble_size": metrics_vs_ensemble_size(sample_preds, labels, task.metric, None, obs),
    }
    if not task.is_regression:
        out["selective"] = selective_prediction(sample_preds.mean(axis=0), labels)
    return out


def summarise_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std (ddof=0), min and max over rows of every numeric key."""
    keys = [k for k in rows[0] if k != "n_samples"] if rows else []
    out = {}
    for key in keys:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {
            "mean": float(vals.mean()),
            "std": float(vals.std()),
            "min": float(vals.min()),
            "max": float(vals.max()),
        }
    return out


def lora_norms(samples: Mapping[str, Tensor]) -> np.ndarray:
    """L2 norm of all LoRA A/B parameters together, per sample -> ``[S]`` (empty if no LoRA)."""
    lora = [t.flatten(1).float() for n, t in samples.items() if "lora_" in n]
    if not lora:
        return np.zeros(0)
    return torch.cat(lora, dim=1).norm(dim=1).double().cpu().numpy()


def lora_parameter_stats(samples: Mapping[str, Tensor]) -> dict[str, float]:
    """Norm of the LoRA parameters of each sample: mean, std and coefficient of variation."""
    norms = lora_norms(samples)
    if norms.size == 0:
        return {}
    mean, std = float(norms.mean()), float(norms.std(ddof=1)) if len(norms) > 1 else 0.0
    return {
        "lora_norm_mean": mean,
        "lora_norm_std": std,
        "lora_norm_cv": std / mean if mean > 0 else float("nan"),
    }


def ood_scores(sample_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example OOD scores (higher = more OOD): predictive entropy and mutual information."""
    return {
        "entropy": predictive_entropy(sample_probs.mean(axis=0)),
        "mutual_information": mutual_information(sample_probs),
    }


def ood_metrics(preds_in: np.ndarray, preds_out: np.ndarray, ood_task: str) -> dict[str, Any]:
    """AUROC / AUPR (OOD = positive class) of in- vs. out-of-distribution scores."""
    s_in, s_out = ood_scores(preds_in), ood_scores(preds_out)
    out: dict[str, Any] = {
        "task": ood_task,
        "n_in": int(preds_in.shape[1]),
        "n_out": int(preds_out.shape[1]),
        **{name: ood_detection(s_in[name], s_out[name]) for name in s_in},
    }
    if preds_in.shape[0] == 1:
        out["note"] = (
            "one ensemble member: mutual information is 0 everywhere, so its AUROC is 0.5 by "
            "construction (use a chain, a deep ensemble or mc_dropout=K)"
        )
    return out


def shift_metrics(
    task: TaskSpec,
    in_domain: Mapping[str, float],
    shifted: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_in_domain: int,
) -> dict[str, Any]:
    """Cross-task table: ensemble metrics on the in-domain test set and on each shift task's."""
    rows = {task.name: {"n": n_in_domain, **in_domain}}
    for name, (preds, labels) in shifted.items():
        rows[name] = {"n": int(len(labels)), **ensemble_metrics(preds, labels, task.metric)}
    return {"trained_on": task.name, "tasks": rows}


def calibrated_result(
    name: str,
    state: Mapping[str, Any],
    calibrated: np.ndarray,
    ood_calibrated: np.ndarray | None,
    m: Members,
    task: TaskSpec,
) -> dict[str, Any]:
    """Metrics of the calibrated test predictive (the uncalibrated ones stay in ``ensemble``)."""
    out: dict[str, Any] = {
        "method": name,
        **state,
        "ensemble": ensemble_metrics(calibrated[None], m.labels, task.metric),
        "selective": selective_prediction(calibrated, m.labels),
    }
    if ood_calibrated is not None:
        out["ood_entropy"] = ood_detection(
            predictive_entropy(calibrated), predictive_entropy(ood_calibrated)
        )
    return out


def describe(
    runs: Sequence[RunFolder],
    members: Sequence[tuple[int, int]],
    m: Members,
    k: int | None,
    mc_dropout: int,
    task: TaskSpec,
    split: str,
) -> dict[str, Any]:
    """What was evaluated: runs, chosen samples, split, sizes and timing."""
    return {
        "kind": ensemble_kind(runs, mc_dropout),
        "task": task.name,
        "split": split,
        "model": runs[0].manifest["model"].get("name_or_path"),
        "k": k,
        "mc_dropout": mc_dropout,
        "num_members": int(m.preds.shape[0]),
        "num_test": int(len(m.labels)),
        "runs": [
            {
                "run_dir": str(run.path),
                "sampler": run.sampler,
                "seed": run.manifest.get("seed"),
                "status": run.manifest.get("status"),
                "num_samples": run.num_samples,
                "samples_used": [i for r, i in members if r == ri],
                "compute": run.manifest.get("compute") or {},
            }
            for ri, run in enumerate(runs)
        ],
        "timing": {
            "predict_seconds": m.seconds,
            "forward_passes": int(m.preds.shape[0]),
        },
        "compute": ensemble_compute(runs, m),
    }


def ensemble_compute(runs: Sequence[RunFolder], m: Members) -> dict[str, Any]:
    """What the ensemble cost (``bayesian_lora.compute.ensemble_cost``): training summed over
    its runs, a warm start shared by several runs counted once; and this evaluation. None where
    a run did not record it."""
    cost = ensemble_cost([r.manifest.get("compute") for r in runs])
    return {
        "train_grad_evals": cost["train_grad_evals"],
        "train_seconds": cost["train_seconds"],
        "forward_passes_per_example": int(m.preds.shape[0]),
        "eval_seconds": round(float(m.seconds), 3),
        "members": int(m.preds.shape[0]),
    }
