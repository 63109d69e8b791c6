"""Validation metrics as torchmetrics ``Metric``s: updated per batch, synced across DDP ranks.

They keep the definitions of :mod:`bayesian_lora.evaluation.metrics` (tested equal there):

* classification: ``acc``, ``nll`` (``-log p(y)``, p clamped at ``EPS``), ``ece`` (a FRACTION
  in [0, 1]: 15 equal-width right-closed bins of the max probability, a confidence of exactly 0
  in the first bin), ``brier`` (sum over classes, not divided by C), ``entropy`` (nats), plus
  ``f1`` of class 1 (``f1_accuracy``) or Matthews ``mcc`` (``mcc``) from a confusion matrix;
* regression: the Gaussian ``nll`` with ``obs_std``, ``rmse``, ``pearson``, ``spearman``.

Classification states are sums (float64 counts and totals, the confusion matrix), so memory is
constant and DDP reduces them with ``dist_reduce_fx="sum"``; regression keeps the predictions
(``"cat"``), as rank correlations need them all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from bayesian_lora.evaluation.metrics import CLASSIFICATION_TASK_METRICS, EPS, regression_metrics

F64 = torch.float64


def _mcc(confusion: Tensor) -> Tensor:
    """Multiclass Matthews correlation (Gorodkin 2004) of a ``[C, C]`` (target, pred) matrix."""
    c = confusion.to(F64)
    s, correct = c.sum(), torch.trace(c)
    t, p = c.sum(dim=1), c.sum(dim=0)
    denom = torch.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    return (correct * s - t @ p) / denom if denom > 0 else torch.zeros((), dtype=F64)


def _f1_of_class_one(confusion: Tensor) -> Tensor:
    c = confusion.to(F64)
    tp, fp, fn = c[1, 1], c[0, 1], c[1, 0]
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom > 0 else torch.zeros((), dtype=F64)


class ClassificationMetrics(Metric):
    """``acc, nll, ece, brier, entropy`` (+ ``f1`` or ``mcc``) of predicted probabilities."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    n: Tensor
    correct: Tensor
    nll_sum: Tensor
    brier_sum: Tensor
    entropy_sum: Tensor
    bin_count: Tensor
    bin_correct: Tensor
    bin_conf: Tensor
    confusion: Tensor
    edges: Tensor

    def __init__(
        self, num_classes: int, task_metric: str = "accuracy", n_bins: int = 15, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if task_metric not in CLASSIFICATION_TASK_METRICS:
            raise ValueError(
                f"task_metric={task_metric!r}: one of {', '.join(CLASSIFICATION_TASK_METRICS)}"
            )
        if task_metric == "f1_accuracy" and num_classes != 2:
            raise ValueError("f1_accuracy needs binary probabilities (F1 of class 1)")
        self.num_classes, self.task_metric, self.n_bins = num_classes, task_metric, n_bins
        for name in ("n", "correct", "nll_sum", "brier_sum", "entropy_sum"):
            self.add_state(name, torch.zeros((), dtype=F64), dist_reduce_fx="sum")
        for name in ("bin_count", "bin_correct", "bin_conf"):
            self.add_state(name, torch.zeros(n_bins, dtype=F64), dist_reduce_fx="sum")
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("confusion", confusion, dist_reduce_fx="sum")
        edges = torch.from_numpy(np.linspace(0.0, 1.0, n_bins + 1))  # the numpy path's edges
        self.register_buffer("edges", edges, persistent=False)

    def update(self, probs: Tensor, labels: Tensor) -> None:
        p, y = probs.detach().to(F64), labels.detach().long()
        conf, pred = p.max(dim=-1)
        hit = (pred == y).to(F64)
        self.n += y.numel()
        self.correct += hit.sum()
        self.nll_sum += -p.gather(1, y[:, None]).clamp_min(EPS).log().sum()
        onehot = torch.nn.functional.one_hot(y, self.num_classes).to(F64)
        self.brier_sum += ((p - onehot) ** 2).sum()
        self.entropy_sum += torch.special.entr(p).sum()
        idx = (torch.searchsorted(self.edges.to(p.device), conf, right=False) - 1).clamp(
            0, self.n_bins - 1
        )
        self.bin_count += torch.bincount(idx, minlength=self.n_bins).to(F64)
        self.bin_correct += torch.bincount(idx, weights=hit, minlength=self.n_bins)
        self.bin_conf += torch.bincount(idx, weights=conf, minlength=self.n_bins)
        flat = y * self.num_classes + pred
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def compute(self) -> dict[str, Tensor]:
        n = self.n
        filled = self.bin_count > 0
        gap = (self.bin_correct[filled] - self.bin_conf[filled]).abs()  # n_b |acc_b - conf_b|
        out = {
            "acc": self.correct / n,
            "nll": self.nll_sum / n,
            "ece": gap.sum() / n,
            "brier": self.brier_sum / n,
            "entropy": self.entropy_sum / n,
        }
        if self.task_metric == "f1_accuracy":
            out["f1"] = _f1_of_class_one(self.confusion)
        elif self.task_metric == "mcc":
            out["mcc"] = _mcc(self.confusion)
        return out


class RegressionMetrics(Metric):
    """``nll, rmse, pearson, spearman`` of predicted means under Gaussian noise ``obs_std``."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    preds: list[Tensor]
    target: list[Tensor]

    def __init__(self, obs_std: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.obs_std = float(obs_std)
        self.add_state("preds", [], dist_reduce_fx="cat")
        self.add_state("target", [], dist_reduce_fx="cat")

    def update(self, means: Tensor, labels: Tensor) -> None:
        self.preds.append(means.detach().to(F64).reshape(-1))
        self.target.append(labels.detach().to(F64).reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        def joined(state: Any) -> Tensor:
            return torch.cat(state) if isinstance(state, list) else state

        mu, y = joined(self.preds).cpu(), joined(self.target).cpu()
        values = regression_metrics(mu.numpy(), y.numpy(), self.obs_std)
        return {k: torch.tensor(v, dtype=F64) for k, v in values.items()}
