"""The validation Metrics equal evaluation/metrics.py's functions, batched and under DDP merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesian_lora.evaluation.epoch_metrics import ClassificationMetrics, RegressionMetrics
from bayesian_lora.evaluation.metrics import classification_metrics, regression_metrics


def _probs(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(c, 0.6), size=n)
    p[:3] = np.eye(c)[rng.integers(0, c, 3)]  # saturated: confidence exactly 1 (last bin)
    if c == 2:  # confidences exactly on bin edges (right-closed bins)
        edge = np.linspace(0.0, 1.0, 16)[9]
        p[3:5] = [[edge, 1 - edge], [1 - edge, edge]]
    y = rng.integers(0, c, n)
    return torch.from_numpy(p), torch.from_numpy(y)  # float64: the edges stay exact


#: torchmetrics' functional F1 and MCC (behind metrics.py) return float32; the rest is float64.
TOL = {"f1": 1e-6, "mcc": 1e-6}


def _batched(metric: ClassificationMetrics | RegressionMetrics, x: torch.Tensor, y: torch.Tensor):
    for xb, yb in zip(x.split(7), y.split(7), strict=True):
        metric.update(xb, yb)
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.parametrize(
    ("classes", "task_metric"), [(2, "accuracy"), (2, "f1_accuracy"), (3, "mcc"), (4, "accuracy")]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_classification_metric_equals_the_numpy_functions(
    classes: int, task_metric: str, seed: int
) -> None:
    p, y = _probs(61, classes, seed)
    got = _batched(ClassificationMetrics(classes, task_metric), p, y)
    want = classification_metrics(p, y, task_metric)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=TOL.get(key, 1e-12), abs=1e-12), key
    assert 0.0 <= got["ece"] <= 1.0  # a fraction, not percent


def test_ddp_merge_of_rank_shards_equals_the_whole_set() -> None:
    """What DDP's sync does (each state reduced by its dist_reduce_fx) for two ranks' shards."""
    p, y = _probs(80, 2, 3)
    rank0, rank1 = ClassificationMetrics(2, "f1_accuracy"), ClassificationMetrics(2, "f1_accuracy")
    rank0.update(p[::2], y[::2])
    rank1.update(p[1::2], y[1::2])
    assert set(rank0._reductions) >= {"n", "bin_count", "bin_conf", "confusion"}
    rank0.merge_state(rank1)
    merged = {k: float(v) for k, v in rank0.compute().items()}
    want = classification_metrics(p, y, "f1_accuracy")
    for key, value in want.items():
        assert merged[key] == pytest.approx(value, rel=TOL.get(key, 1e-12), abs=1e-12), key
    # one rank alone is not the whole set (the merge matters)
    alone = ClassificationMetrics(2, "f1_accuracy")
    alone.update(p[::2], y[::2])
    assert float(alone.compute()["nll"]) != pytest.approx(want["nll"], rel=1e-9)


def test_regression_metric_equals_the_numpy_function_and_merges() -> None:
    rng = np.random.default_rng(0)
    mu, y = torch.from_numpy(rng.normal(size=50)), torch.from_numpy(rng.normal(size=50))
    want = regression_metrics(mu.numpy(), y.numpy(), obs_std=0.5)
    got = _batched(RegressionMetrics(0.5), mu, y)
    assert got == pytest.approx(want, rel=1e-12)
    a, b = RegressionMetrics(0.5), RegressionMetrics(0.5)
    a.update(mu[:20], y[:20])
    b.update(mu[20:], y[20:])
    a.merge_state(b)
    assert {k: float(v) for k, v in a.compute().items()} == pytest.approx(want, rel=1e-12)


def test_reset_starts_a_new_epoch() -> None:
    p, y = _probs(30, 2, 5)
    metric = ClassificationMetrics(2)
    metric.update(p, y)
    metric.compute()
    metric.reset()
    metric.update(p[:10], y[:10])
    assert float(metric.compute()["acc"]) == pytest.approx(
        classification_metrics(p[:10], y[:10])["acc"]
    )
