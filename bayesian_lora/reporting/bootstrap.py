"""Percentile bootstrap confidence intervals over test examples.

Every row of a task's table is resampled with the same ``B`` index sets (``bootstrap_indices``
of the test-set size and one seed), so the rows are paired: a difference between two rows is
judged on the same resampled test sets. Metrics are recomputed on each resample from the row's
predictive probabilities ``[N, C]`` (the mean over its members) with the definitions of
``evaluation.metrics``: accuracy, NLL (``-log p(y)``, p clamped at ``EPS``), top-label ECE
(15 equal-width right-closed bins, per resample), multi-class Brier and, where the task's metric
is F1, the F1 of class 1. A row over seeds (a single model, mean over seeds) gets the CI of its
mean: each resample averages the seeds' metrics on that resample.

The interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the ``B``
replicates (plain percentile bootstrap, Efron and Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bayesian_lora.evaluation.metrics import EPS

N_BINS = 15
#: The metrics a CI is computed for (fractions; ``f1`` only for the F1 tasks).
CI_METRICS = ("acc", "nll", "ece", "brier", "f1")


@dataclass(frozen=True)
class Bootstrap:
    """How the CIs are drawn (``conf/report.yaml`` ``bootstrap``)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"bootstrap.resamples must be >= 1, got {self.resamples}")
        if not 0 < self.level < 1:
            raise ValueError(f"bootstrap.level must be in (0, 1), got {self.level}")


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[B, n]`` test-example indices drawn with replacement; equal for equal ``(n, B, seed)``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(n)]))
    return rng.integers(0, n, size=(resamples, n))


def replicates(
    probs: np.ndarray, labels: np.ndarray, idx: np.ndarray, task_metric: str = "accuracy"
) -> dict[str, np.ndarray]:
    """Each metric on each resample: name -> ``[B]`` (``idx`` is ``[B, n]``).

    ``idx`` holding one row ``arange(n)`` gives the metrics of the whole test set, equal to
    ``evaluation.metrics.classification_metrics`` (checked in the tests).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    n = len(y)
    rows = np.arange(n)
    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    per_example = {
        "acc": correct,
        "nll": -np.log(np.clip(p[rows, y], EPS, None)),
        "brier": ((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1),
    }
    out = {k: v[idx].mean(axis=1) for k, v in per_example.items()}
    out["ece"] = _ece(p.max(axis=1), correct, idx)
    if task_metric == "f1_accuracy":
        out["f1"] = _f1(pred == 1, y == 1, idx)
    return out


def _ece(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ECE per resample: ``sum_b |sum_{i in b} (correct_i - conf_i)| / n`` (equal to the
    weighted ``|acc_b - conf_b|`` of ``expected_calibration_error``; the same binning)."""
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, N_BINS - 1)
    b, n = idx.shape
    flat = (bins[idx] + N_BINS * np.arange(b)[:, None]).ravel()
    gap = np.bincount(flat, weights=(correct - conf)[idx].ravel(), minlength=b * N_BINS)
    return np.abs(gap.reshape(b, N_BINS)).sum(axis=1) / n


def _f1(pred_pos: np.ndarray, true_pos: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """F1 of class 1 per resample (0 where there is no true or predicted positive)."""
    tp = (pred_pos & true_pos)[idx].sum(axis=1).astype(np.float64)
    fp = (pred_pos & ~true_pos)[idx].sum(axis=1)
    fn = (~pred_pos & true_pos)[idx].sum(axis=1)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def mean_replicates(
    per_model: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The seed-mean of several models' replicates (the CI of a mean-over-seeds row)."""
    keys = [k for k in per_model[0] if all(k in r for r in per_model)]
    return {k: np.mean([r[k] for r in per_model], axis=0) for k in keys}


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates."""
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def ci_columns(reps: Mapping[str, np.ndarray], level: float) -> dict[str, float]:
    """``<metric>_ci_low`` / ``<metric>_ci_high`` of every replicated metric."""
    out: dict[str, float] = {}
    for key in CI_METRICS:
        if key in reps:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = percentile_ci(reps[key], level)
    return out
