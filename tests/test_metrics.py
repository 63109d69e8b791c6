"""Metrics checked against values computed by hand (see the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torchmetrics.functional.classification import multiclass_calibration_error

from bayesian_lora.evaluation import metrics as M

# Five binary examples with top-class confidences away from the 15-bin edges (k/15).
#   conf  correct  bin (right-closed, width 1/15)
#   0.90  yes      (13/15, 14/15]
#   0.90  no       (13/15, 14/15]
#   0.70  yes      (10/15, 11/15]
#   0.70  yes      (10/15, 11/15]
#   0.55  no       ( 8/15,  9/15]
PROBS = np.array([[0.9, 0.1], [0.1, 0.9], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45]])
LABELS = np.array([0, 0, 0, 1, 1])


def test_accuracy_nll_brier_by_hand():
    assert M.accuracy(PROBS, LABELS) == pytest.approx(3 / 5)
    # p(y) = 0.9, 0.1, 0.7, 0.7, 0.45
    expected_nll = -(math.log(0.9) + math.log(0.1) + 2 * math.log(0.7) + math.log(0.45)) / 5
    assert M.nll(PROBS, LABELS) == pytest.approx(expected_nll)
    # sum_c (p_c - onehot_c)^2: 0.01+0.01, 0.81+0.81, 0.09+0.09, 0.09+0.09, 0.3025+0.3025
    assert M.brier_score(PROBS, LABELS) == pytest.approx(2.605 / 5)


def test_nll_clamps_zero_probability():
    assert M.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(M.EPS))


def test_ece_by_hand():
    # bin 13: n=2 acc 0.5 conf 0.9 -> 2/5*0.4 = 0.16; bin 10: n=2 acc 1 conf 0.7 -> 2/5*0.3 = 0.12
    # bin 8:  n=1 acc 0   conf 0.55 -> 1/5*0.55 = 0.11;  total 0.39 (a fraction, not %)
    assert M.expected_calibration_error(PROBS, LABELS) == pytest.approx(0.39)


def test_ece_three_classes_three_bins_by_hand():
    probs = np.array(
        [[0.25, 0.20, 0.55], [0.55, 0.05, 0.40], [0.10, 0.30, 0.60], [0.9, 0.05, 0.05]]
    )
    labels = np.array([0, 1, 2, 0])
    # bin (1/3, 2/3]: confs .55 .55 .60 (mean .5667), correct 0,0,1 -> 3/4*|1/3-.5667| = 0.175
    # bin (2/3, 1]:   conf .9 correct -> 1/4*0.1 = 0.025;  total 0.2
    assert M.expected_calibration_error(probs, labels, n_bins=3) == pytest.approx(0.2)


def test_ece_agrees_with_torchmetrics_off_bin_edges():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=400)
    labels = rng.integers(0, 3, size=400)
    ours = M.expected_calibration_error(probs, labels)
    ref = multiclass_calibration_error(
        torch.from_numpy(probs), torch.from_numpy(labels), num_classes=3, n_bins=15, norm="l1"
    )
    assert ours == pytest.approx(float(ref), abs=1e-5)


def test_perfectly_calibrated_and_confident_is_zero_ece():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.expected_calibration_error(probs, np.array([0, 1])) == 0.0
    assert M.expected_calibration_error(probs, np.array([1, 0])) == pytest.approx(1.0)


def test_entropy_and_mutual_information():
    h = M.predictive_entropy(np.array([[0.5, 0.5], [1.0, 0.0]]))
    np.testing.assert_allclose(h, [math.log(2), 0.0])
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # S=2, N=1: two confident, opposite votes
    np.testing.assert_allclose(M.mutual_information(disagree), [math.log(2)])
    np.testing.assert_allclose(M.expected_entropy(disagree), [0.0])
    agree = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])  # all aleatoric, no epistemic part
    np.testing.assert_allclose(M.mutual_information(agree), [0.0], atol=1e-15)
    np.testing.assert_allclose(M.expected_entropy(agree), [math.log(2)])


def test_task_metrics_small_cases():
    preds = np.array([1, 0, 1, 1])
    labels = np.array([1, 0, 0, 1])
    probs = np.eye(2)[preds] * 0.8 + 0.1
    # TP=2 TN=1 FP=1 FN=0: F1 = 2TP/(2TP+FP+FN) = 4/5; MCC = (2*1 - 0)/sqrt(3*2*2*1)
    out = M.classification_metrics(probs, labels, "f1_accuracy")
    assert out["f1"] == pytest.approx(0.8)
    assert out["acc"] == pytest.approx(0.75)
    out = M.classification_metrics(probs, labels, "mcc")
    assert out["mcc"] == pytest.approx(2 / math.sqrt(12), abs=1e-6)
    assert set(out) == {"acc", "nll", "ece", "brier", "entropy", "mcc"}
    assert set(M.classification_metrics(probs, labels, "accuracy")) == {
        "acc",
        "nll",
        "ece",
        "brier",
        "entropy",
    }


def test_classification_metrics_accepts_tensors():
    out = M.classification_metrics(torch.tensor(PROBS), torch.tensor(LABELS), "accuracy")
    assert out["ece"] == pytest.approx(0.39)
    assert out["entropy"] == pytest.approx(float(M.predictive_entropy(PROBS).mean()))
    bf16 = M.classification_metrics(torch.tensor(PROBS, dtype=torch.bfloat16), LABELS)
    assert bf16["acc"] == pytest.approx(0.6)


def test_unknown_task_metric_lists_allowed():
    with pytest.raises(ValueError, match="f1_accuracy"):
        M.classification_metrics(PROBS, LABELS, "auc")
    with pytest.raises(ValueError, match="regression"):
        M.classification_metrics(PROBS, LABELS, "pearson_spearman")


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        M.accuracy(PROBS, LABELS[:3])
    with pytest.raises(ValueError):
        M.accuracy(PROBS, np.array([0, 0, 0, 1, 2]))


def test_regression_single_sample_matches_scipy():
    rng = np.random.default_rng(1)
    mu, y = rng.normal(size=20), rng.normal(size=20)
    out = M.regression_metrics(mu, y, obs_std=0.7)
    assert out["nll"] == pytest.approx(-norm.logpdf(y, loc=mu, scale=0.7).mean())
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((mu - y) ** 2)))


def test_regression_mixture_by_hand():
    # means 0 and 2, y = 1, sigma = 1: both components have density N(1; 0, 1), so the mixture
    # NLL is 0.5 + 0.5 log(2 pi); the ensemble mean is exactly 1 -> rmse 0.
    out = M.regression_metrics(np.array([[0.0], [2.0]]), np.array([1.0]), obs_std=1.0)
    assert out["nll"] == pytest.approx(0.5 + 0.5 * math.log(2 * math.pi))
    assert out["rmse"] == pytest.approx(0.0)
    # a wrong mixture formula (mean of per-sample NLLs) would give the same here; break symmetry:
    # means 0 and 3, y = 0: -log(0.5 (phi(0) + phi(3)))
    out = M.regression_metrics(np.array([[0.0], [3.0]]), np.array([0.0]), obs_std=1.0)
    expected = -math.log(0.5 * (norm.pdf(0.0) + norm.pdf(3.0)))
    assert out["nll"] == pytest.approx(expected)


def test_regression_correlations_by_hand():
    # x = 1,2,3,4; y = 1,3,2,5: Sxy = 5.5, Sxx = 5, Syy = 8.75 -> r = 5.5/sqrt(43.75)
    # ranks of y = 1,3,2,4 -> d^2 sum = 2 -> rho = 1 - 6*2/(4*15) = 0.8
    out = M.regression_metrics(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 5]), obs_std=1.0)
    assert out["pearson"] == pytest.approx(5.5 / math.sqrt(43.75))
    assert out["spearman"] == pytest.approx(0.8, abs=1e-6)


def test_ensemble_metrics_uses_log_of_mean_probability():
    sp = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.3, 0.7], [0.8, 0.2]]])  # S=2, N=2
    labels = np.array([0, 0])
    out = M.ensemble_metrics(sp, labels, "accuracy")
    # mean probs [[0.6, 0.4], [0.7, 0.3]] -> nll = -(log .6 + log .7)/2
    assert out["nll"] == pytest.approx(-(math.log(0.6) + math.log(0.7)) / 2)
    assert out["acc"] == 1.0
    assert out["n_samples"] == 2
    assert out["mutual_information"] == pytest.approx(M.mutual_information(sp).mean())
    assert out["mutual_information"] > 0


def test_ensemble_metrics_regression():
    out = M.ensemble_metrics(np.array([[0.0], [2.0]]), np.array([1.0]), "pearson_spearman", 1.0)
    assert out["rmse"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="obs_std"):
        M.ensemble_metrics(np.array([[0.0], [2.0]]), np.array([1.0]), "pearson_spearman")


def test_metrics_vs_ensemble_size():
    assert M.default_ensemble_sizes(1) == [1]
    assert M.default_ensemble_sizes(8) == [1, 2, 4, 8]
    assert M.default_ensemble_sizes(5) == [1, 2, 4, 5]
    rng = np.random.default_rng(2)
    sp = rng.dirichlet([1.0, 1.0], size=(5, 30))
    labels = rng.integers(0, 2, size=30)
    rows = M.metrics_vs_ensemble_size(sp, labels, "mcc")
    assert [r["ensemble_size"] for r in rows] == [1, 2, 4, 5]
    assert rows[0]["nll"] == pytest.approx(M.nll(sp[0], labels))
    assert rows[2]["acc"] == pytest.approx(M.accuracy(sp[:4].mean(0), labels))
    assert "mcc" in rows[-1]
    with pytest.raises(ValueError):
        M.metrics_vs_ensemble_size(sp, labels, sizes=[6])


# Selective prediction, four examples given out of confidence order:
#   conf 0.8 wrong | conf 0.9 right | conf 0.6 wrong | conf 0.7 right
# sorted by confidence: right, wrong, right, wrong ->
#   risk_k = 0/1, 1/2, 1/3, 2/4;  AURC = (0 + 1/2 + 1/3 + 1/2)/4 = 1/3
SEL_PROBS = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
SEL_LABELS = np.array([0, 0, 1, 1])


def test_risk_coverage_curve_by_hand():
    cov, risk = M.risk_coverage_curve(SEL_PROBS, SEL_LABELS)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])


def test_selective_prediction_by_hand():
    out = M.selective_prediction(SEL_PROBS, SEL_LABELS, coverages=(0.25, 0.5, 0.75, 0.9, 1.0))
    assert out["aurc"] == pytest.approx(1 / 3)
    assert out["acc@25"] == 1.0
    assert out["acc@50"] == 0.5
    assert out["acc@75"] == pytest.approx(2 / 3)
    assert out["acc@90"] == 0.5  # ceil(0.9 * 4) = 4 examples kept
    assert out["acc@100"] == 0.5
    default = M.selective_prediction(SEL_PROBS, SEL_LABELS)
    assert set(default) == {"acc@50", "acc@80", "acc@90", "acc@100", "aurc"}


def test_selective_prediction_ties_are_averaged_not_broken_by_input_order():
    # equal confidence, one wrong and one right: each position counts half an error
    probs = np.array([[0.7, 0.3], [0.7, 0.3]])
    for labels in ([1, 0], [0, 1]):
        _, risk = M.risk_coverage_curve(probs, np.array(labels))
        np.testing.assert_allclose(risk, [0.5, 0.5])
    # A label-sorted split (like IMDB's test) whose confident half is one tie: 60 of its 100
    # examples are right whatever their order, so acc@50 = 0.6 sorted, reversed or shuffled.
    conf = np.r_[np.full(100, 0.9), np.linspace(0.55, 0.65, 100)]
    pred = np.r_[np.zeros(100, int), np.ones(100, int)]
    labels = np.r_[np.zeros(60, int), np.ones(40, int), np.ones(100, int)]
    probs = np.where(pred[:, None] == np.arange(2), conf[:, None], 1 - conf[:, None])
    order = np.argsort(labels, kind="stable")  # sorted by label
    rng = np.random.default_rng(0)
    for perm in (order, order[::-1], rng.permutation(200)):
        out = M.selective_prediction(probs[perm], labels[perm])
        assert out["acc@50"] == pytest.approx(0.6)
        assert out["aurc"] == pytest.approx(
            M.selective_prediction(probs[order], labels[order])["aurc"]
        )


def test_ood_detection_by_hand():
    perfect = M.ood_detection([0.1, 0.2], [0.8, 0.9])
    assert perfect == {"auroc": 1.0, "aupr": 1.0}
    # out > in for 3 of the 4 (out, in) pairs -> AUROC 0.75.
    # ranking 0.8(out) 0.4(in) 0.35(out) 0.1(in): AP = 0.5*1 + 0.5*(2/3) = 5/6
    out = M.ood_detection(np.array([0.1, 0.4]), torch.tensor([0.35, 0.8]))
    assert out["auroc"] == pytest.approx(0.75)
    assert out["aupr"] == pytest.approx(5 / 6)
    reversed_ = M.ood_detection([0.8, 0.9], [0.1, 0.2])
    assert reversed_["auroc"] == 0.0
