"""Predictive metrics for classification and regression ensembles.

Pure functions on numpy arrays (torch tensors are accepted and converted); all arithmetic is
float64.  Shape conventions used throughout:

* ``probs``         ``[N, C]``    predictive probabilities (rows sum to 1)
* ``sample_probs``  ``[S, N, C]`` per-posterior-sample probabilities
* ``labels``        ``[N]``       integer class labels (float targets for regression)
* ``sample_means``  ``[S, N]``    per-sample predicted means (regression, e.g. STS-B)

Entropies and NLLs are in nats.  ECE and accuracies are fractions in ``[0, 1]`` (never %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import entr, logsumexp
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.functional import matthews_corrcoef, pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import binary_f1_score

EPS = 1e-12
CLASSIFICATION_TASK_METRICS = ("accuracy", "f1_accuracy", "mcc")
REGRESSION_TASK_METRICS = ("pearson_spearman",)
TASK_METRICS = CLASSIFICATION_TASK_METRICS + REGRESSION_TASK_METRICS


# ----------------------------------------------------------------------------- input handling


def as_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """numpy copy/view of an array-like or torch tensor (detached, on CPU) as ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()  # bf16 has no numpy dtype
    return np.asarray(x, dtype=dtype)


def _check_probs(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = as_numpy(probs), as_numpy(labels, np.int64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs [N, C] and labels [N], got {p.shape} and {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("empty input: N must be >= 1")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}]")
    return p, y


def _check_sample_probs(sample_probs: Any) -> np.ndarray:
    sp = as_numpy(sample_probs)
    if sp.ndim != 3:
        raise ValueError(f"expected sample_probs [S, N, C], got shape {sp.shape}")
    return sp


# ----------------------------------------------------------------------------- basic scores


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose argmax class equals the label."""
    p, y = _check_probs(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def nll(probs: Any, labels: Any, eps: float = EPS) -> float:
    """Mean negative log-likelihood ``-log p(y)`` in nats (p clamped below at ``eps``)."""
    p, y = _check_probs(probs, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, None))))


def calibration_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width binning of the top-class confidence on [0, 1].

    Bin ``b`` is ``(b/n_bins, (b+1)/n_bins]`` (right-closed, as in Guo et al. 2017; a
    confidence of exactly 0 falls in the first bin).  Returns ``edges [n_bins+1]`` and per-bin
    ``count``, ``acc`` and ``conf`` (mean accuracy / confidence; NaN in empty bins).
    """
    p, y = _check_probs(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"edges": edges, "count": count, "acc": acc, "conf": mean_conf}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE as a FRACTION in [0, 1]: ``sum_b (n_b / N) |acc_b - conf_b|``.

    Uses ``n_bins`` equal-width right-closed bins of the max probability (see
    :func:`calibration_bins`).  Computed in float64 numpy rather than with torchmetrics'
    ``multiclass_calibration_error`` because the latter casts confidences to float32 and puts
    confidences of exactly 1.0 (common with saturated softmax) in an extra bin of their own;
    away from bin edges the two agree (checked in the tests).
    """
    b = calibration_bins(probs, labels, n_bins)
    filled = b["count"] > 0
    weights = b["count"][filled] / b["count"].sum()
    return float(np.sum(weights * np.abs(b["acc"][filled] - b["conf"][filled])))


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over examples of ``sum_c (p_c - onehot_c)^2``, in [0, 2].

    (This is the original Brier 1950 definition; it is NOT divided by the number of classes.)
    """
    p, y = _check_probs(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def predictive_entropy(probs: Any) -> np.ndarray:
    """Entropy ``H[p] = -sum_c p_c log p_c`` per example, in nats (``0 log 0 = 0``) -> ``[N]``."""
    return entr(as_numpy(probs)).sum(axis=-1)


def expected_entropy(sample_probs: Any) -> np.ndarray:
    """Aleatoric part ``mean_s H[p_s]`` per example, in nats -> ``[N]``."""
    return predictive_entropy(_check_sample_probs(sample_probs)).mean(axis=0)


def mutual_information(sample_probs: Any) -> np.ndarray:
    """Epistemic part ``H[mean_s p_s] - mean_s H[p_s]`` per example (nats, clipped at 0) -> ``[N]``."""
    sp = _check_sample_probs(sample_probs)
    mi = predictive_entropy(sp.mean(axis=0)) - expected_entropy(sp)
    return np.clip(mi, 0.0, None)


# ----------------------------------------------------------------------------- two predictives


def compare_predictives(p: Any, q: Any, eps: float = EPS) -> dict[str, float]:
    """How far apart two predictives ``[N, C]`` of the same examples are, each a mean over
    examples: ``disagreement`` (fraction whose argmax differs), ``tv`` (total variation
    ``1/2 sum_c |p_c - q_c|``, in [0, 1]) and ``sym_kl`` (Jeffreys' symmetric KL
    ``KL(p||q) + KL(q||p) = sum_c (p_c - q_c)(log p_c - log q_c)``, nats; p, q clamped below at
    ``eps``)."""
    a, b = as_numpy(p), as_numpy(q)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"expected two predictives [N, C] of one shape, got {a.shape}, {b.shape}")
    log_ratio = np.log(np.clip(a, eps, None)) - np.log(np.clip(b, eps, None))
    return {
        "disagreement": float(np.mean(a.argmax(axis=1) != b.argmax(axis=1))),
        "tv": float(np.mean(0.5 * np.abs(a - b).sum(axis=1))),
        "sym_kl": float(np.mean(((a - b) * log_ratio).sum(axis=1))),
    }


# ----------------------------------------------------------------------------- task metrics


def _task_metric_values(probs: np.ndarray, labels: np.ndarray, task_metric: str) -> dict:
    if task_metric not in CLASSIFICATION_TASK_METRICS:
        hint = " ('pearson_spearman' is a regression metric: use regression_metrics)"
        raise ValueError(
            f"unknown classification task_metric {task_metric!r}; allowed: "
            f"{list(CLASSIFICATION_TASK_METRICS)}"
            + (hint if task_metric == "pearson_spearman" else "")
        )
    preds = torch.from_numpy(probs.argmax(axis=1))
    target = torch.from_numpy(labels)
    if task_metric == "f1_accuracy":
        if probs.shape[1] != 2:
            raise ValueError("f1_accuracy needs binary probabilities [N, 2] (F1 of class 1)")
        return {"f1": float(binary_f1_score(preds, target))}
    if task_metric == "mcc":
        mcc = matthews_corrcoef(preds, target, task="multiclass", num_classes=probs.shape[1])
        return {"mcc": float(mcc)}
    return {}


def classification_metrics(
    probs: Any, labels: Any, task_metric: str = "accuracy", n_bins: int = 15
) -> dict[str, float]:
    """Keys ``acc, nll, ece (fraction), brier, entropy`` (mean, nats) + task keys.

    ``task_metric``: ``"accuracy"`` (no extra key), ``"f1_accuracy"`` (adds ``f1`` of the
    positive class 1, MRPC), ``"mcc"`` (adds Matthews ``mcc``, CoLA).
    """
    p, y = _check_probs(probs, labels)
    out = {
        "acc": accuracy(p, y),
        "nll": nll(p, y),
        "ece": expected_calibration_error(p, y, n_bins),
        "brier": brier_score(p, y),
        "entropy": float(predictive_entropy(p).mean()),
    }
    out.update(_task_metric_values(p, y, task_metric))
    return out


def regression_metrics(sample_means: Any, labels: Any, obs_std: float) -> dict[str, float]:
    """Metrics of the equal-weight Gaussian mixture ``(1/S) sum_s N(mean_s, obs_std^2)``.

    ``sample_means`` is ``[S, N]`` (or ``[N]`` for one sample).  Keys: ``nll`` (mean
    ``-log`` mixture density, nats, via logsumexp), ``rmse`` of the ensemble mean, ``pearson``
    and ``spearman`` correlations of the ensemble mean with the labels (NaN if N < 2).
    """
    mu = as_numpy(sample_means)
    mu = mu[None] if mu.ndim == 1 else mu
    y = as_numpy(labels)
    if mu.ndim != 2 or y.ndim != 1 or mu.shape[1] != y.shape[0]:
        raise ValueError(f"expected sample_means [S, N] and labels [N], got {mu.shape}, {y.shape}")
    if not obs_std > 0:
        raise ValueError(f"obs_std must be > 0, got {obs_std}")
    log_dens = -0.5 * ((y - mu) / obs_std) ** 2 - math.log(obs_std) - 0.5 * math.log(2 * math.pi)
    log_mix = logsumexp(log_dens, axis=0) - math.log(mu.shape[0])
    mean = mu.mean(axis=0)
    t_mean, t_y = torch.from_numpy(mean), torch.from_numpy(y)
    enough = len(y) >= 2  # correlations are undefined (NaN) for a single example
    return {
        "nll": float(-np.mean(log_mix)),
        "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
        "pearson": float(pearson_corrcoef(t_mean, t_y)) if enough else math.nan,
        "spearman": float(spearman_corrcoef(t_mean, t_y)) if enough else math.nan,
    }


# ----------------------------------------------------------------------------- ensembles


def ensemble_metrics(
    sample_probs: Any, labels: Any, task_metric: str = "accuracy", obs_std: float | None = None
) -> dict[str, float]:
    """Metrics of the posterior-averaged predictive ``mean_s p_s``.

    Classification: :func:`classification_metrics` of the mean probabilities (so ``nll`` is
    ``-log mean_s p_s(y)``) plus the means over examples of ``mutual_information`` and
    ``expected_entropy``.  For ``task_metric="pearson_spearman"`` the input is ``sample_means
    [S, N]`` and this is :func:`regression_metrics` (``obs_std`` required).  Adds ``n_samples``.
    """
    if task_metric in REGRESSION_TASK_METRICS:
        if obs_std is None:
            raise ValueError("regression ensembles need obs_std")
        mu = as_numpy(sample_probs)  # interpreted as sample means [S, N]
        out = regression_metrics(mu, labels, obs_std)
        out["n_samples"] = float(1 if mu.ndim == 1 else mu.shape[0])
        return out
    sp = _check_sample_probs(sample_probs)
    out = classification_metrics(sp.mean(axis=0), labels, task_metric)
    out["mutual_information"] = float(mutual_information(sp).mean())
    out["expected_entropy"] = float(expected_entropy(sp).mean())
    out["n_samples"] = float(sp.shape[0])
    return out


def default_ensemble_sizes(n_samples: int) -> list[int]:
    """``1, 2, 4, ...`` (powers of two below ``n_samples``) followed by ``n_samples``."""
    sizes = [2**i for i in range(max(n_samples, 1).bit_length()) if 2**i < n_samples]
    return sizes + [n_samples]


def metrics_vs_ensemble_size(
    sample_probs: Any,
    labels: Any,
    task_metric: str = "accuracy",
    sizes: Sequence[int] | None = None,
    obs_std: float | None = None,
) -> list[dict[str, float]]:
    """:func:`ensemble_metrics` of the FIRST ``k`` samples for each ``k`` in ``sizes``.

    Each row also has ``ensemble_size`` = k.  Default sizes: :func:`default_ensemble_sizes`.
    """
    arr = as_numpy(sample_probs)
    n = arr.shape[0]
    sizes = default_ensemble_sizes(n) if sizes is None else list(sizes)
    bad = [k for k in sizes if not 1 <= k <= n]
    if bad:
        raise ValueError(f"ensemble sizes {bad} outside [1, {n}]")
    rows = []
    for k in sizes:
        row = {"ensemble_size": float(k)}
        row.update(ensemble_metrics(arr[:k], labels, task_metric, obs_std))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- selective prediction


def _ranked_errors(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Errors (0/1) in decreasing order of max probability, ties averaged.

    Each example of a group of equal confidences gets the group's mean error, which is the
    expected error at those positions under a uniformly random order of the tie: the curve does
    not depend on the input order (a label-sorted split with tied confidences is not favoured).
    """
    conf = p.max(axis=1)
    errors = (p.argmax(axis=1) != y).astype(np.float64)
    _, group, counts = np.unique(-conf, return_inverse=True, return_counts=True)
    group_error = np.bincount(group, weights=errors) / counts
    return group_error[np.sort(group)]


def risk_coverage_curve(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``coverage[k-1] = k/N`` and ``risk[k-1]`` = error rate among the k most confident.

    Confidence is the max probability; tied confidences count with their group's mean error
    (the expectation over the tie's orders), so the curve does not depend on the input order.
    """
    p, y = _check_probs(probs, labels)
    errors = _ranked_errors(p, y)
    k = np.arange(1, len(y) + 1, dtype=np.float64)
    return k / len(y), np.cumsum(errors) / k


def _coverage_key(coverage: float) -> str:
    return f"acc@{round(coverage * 100, 6):g}"


def selective_prediction(
    probs: Any, labels: Any, coverages: Sequence[float] = (0.5, 0.8, 0.9, 1.0)
) -> dict[str, float]:
    """Accuracy on the most confident fraction + area under the risk-coverage curve.

    ``acc@{100c}``: accuracy on the ``k = max(1, ceil(c * N))`` examples with the highest max
    probability (ties averaged, see :func:`risk_coverage_curve`).  ``aurc = (1/N) sum_{k=1..N} risk_k`` with ``risk_k`` the error
    rate among the k most confident examples (a plain mean over k, no interpolation; lower is
    better).
    """
    p, y = _check_probs(probs, labels)
    _, risk = risk_coverage_curve(p, y)
    out = {}
    for c in coverages:
        if not 0 < c <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {c}")
        k = max(1, math.ceil(c * len(y) - 1e-9))
        out[_coverage_key(c)] = float(1.0 - risk[k - 1])
    out["aurc"] = float(risk.mean())
    return out


# ----------------------------------------------------------------------------- OOD detection


def ood_detection(scores_in: Any, scores_out: Any) -> dict[str, float]:
    """AUROC and AUPR with OOD as the POSITIVE class; higher score = more OOD.

    ``aupr`` is sklearn's average precision (step-wise, no interpolation).
    """
    s_in, s_out = as_numpy(scores_in).ravel(), as_numpy(scores_out).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError("need at least one in- and one out-of-distribution score")
    scores = np.concatenate([s_in, s_out])
    is_ood = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    return {
        "auroc": float(roc_auc_score(is_ood, scores)),
        "aupr": float(average_precision_score(is_ood, scores)),
    }
