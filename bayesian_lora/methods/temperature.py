r"""Temperature scaling (Guo et al., 2017) on top of any method's predictive.

Given a predictive ``p(y | x)`` (one member's softmax, or the mean of an ensemble's member
probabilities), the calibrated predictive divides its log-probabilities by one scalar T > 0:

    p_T(y | x) = softmax(log p(y | x) / T)

For one member, ``log p = z - logsumexp(z)`` with logits ``z``, so this is exactly
``softmax(z / T)``; for an ensemble it rescales the log of the averaged probabilities. T is
fitted on the validation split (the part of train held out for model selection) by minimising
the validation NLL

    L(T) = -(1/N) sum_i log p_T(y_i | x_i).

Writing beta = 1/T and l_i = log p(. | x_i), ``L = (1/N) sum_i [logsumexp(beta l_i) - beta l_iy]``
is convex in beta (a log-sum-exp of functions linear in beta minus a linear term), so it has one
minimum; it is found by a bounded Brent search on log T in ``[log t_min, log t_max]`` (a
monotone reparametrisation keeps the objective unimodal). T > 1 softens an over-confident
predictive, T < 1 sharpens an under-confident one, T = 1 leaves it unchanged. Argmax and hence
accuracy never change.

Only classification: a regression predictive has no softmax to temper (``evaluate`` refuses
``calibrate=temperature`` on regression tasks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

EPS = 1e-12  # floor of the label's probability in the fitted NLL (a float32 underflow)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` in float64 with ``log 0 = -inf``: a class of probability exactly 0 (an MCQA
    letter the row does not show) keeps probability exactly 0 under any T, as ``0^(1/T) = 0``
    says; clipping it to a floor first gave it ``EPS^(1/T)`` (7e-4 on the tiny causal LM's
    MAP run)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log probs / T)`` row-wise (``probs`` ``[N, C]``, rows summing to 1); zeros stay
    zeros."""
    return np.exp(log_softmax(log_probs(probs) / float(temperature), axis=-1))


def tempered_nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL (nats) of ``softmax(log probs / T)`` at the integer ``labels`` (the label's
    probability floored at ``EPS``, so an underflowed one does not make every T infinite)."""
    logp = log_probs(probs)
    rows, labels = np.arange(len(labels)), np.asarray(labels, dtype=np.int64)
    t = float(temperature)
    label_logp = np.maximum(logp[rows, labels], math.log(EPS)) / t
    return float(-(label_logp - logsumexp(logp / t, axis=-1)).mean())


@dataclass
class TemperatureScaling:
    """Fit T on validation probabilities, then apply it to any predictive of the same model.

    Args:
        t_min, t_max: search bounds of T (a fit on the bound is reported in ``state()``).
        tol: absolute tolerance of the search on log T.
    """

    t_min: float = 1e-2
    t_max: float = 1e2
    tol: float = 1e-7
    temperature: float = 1.0
    nll_before: float = math.nan
    nll_after: float = math.nan
    num_fit: int = 0

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        """Minimise the NLL of ``probs`` ``[N, C]`` (the predictive on validation) over T."""
        probs, labels = np.asarray(probs), np.asarray(labels)
        if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
            raise ValueError(
                f"temperature scaling needs probabilities [N, C] and N labels, got "
                f"{probs.shape} and {labels.shape}"
            )
        res = minimize_scalar(
            lambda log_t: tempered_nll(probs, labels, math.exp(log_t)),
            bounds=(math.log(self.t_min), math.log(self.t_max)),
            method="bounded",
            options={"xatol": self.tol},
        )
        self.temperature = float(math.exp(res.x))
        self.nll_before = tempered_nll(probs, labels, 1.0)
        self.nll_after = tempered_nll(probs, labels, self.temperature)
        self.num_fit = int(len(labels))
        return self

    def transform(self, probs: np.ndarray) -> np.ndarray:
        """The calibrated predictive ``softmax(log probs / T)``, float32 like stored predictions."""
        return tempered(probs, self.temperature).astype(np.float32)

    def state(self) -> dict[str, float | int | bool]:
        """What was fitted (stored in metrics.json and ``temperature.json``)."""
        on_bound = min(
            abs(math.log(self.temperature / self.t_min)),
            abs(math.log(self.temperature / self.t_max)),
        )
        return {
            "temperature": self.temperature,
            "validation_nll_before": self.nll_before,
            "validation_nll_after": self.nll_after,
            "num_validation": self.num_fit,
            "at_search_bound": bool(on_bound < 1e-3),
        }


def calibrate_predictive(
    val_members: np.ndarray,
    val_labels: np.ndarray,
    members: np.ndarray,
    ood_members: np.ndarray | None = None,
) -> tuple[dict[str, float | int | bool], np.ndarray, np.ndarray | None]:
    """Fit T on the validation ensemble predictive, apply it to the test (and OOD) one.

    ``*_members`` are member probabilities ``[M, N, C]``; the predictive is their mean over M.
    Returns (fitted state, calibrated test predictive ``[N, C]``, calibrated OOD predictive).
    """
    scaler = TemperatureScaling().fit(val_members.mean(axis=0), val_labels)
    ood = None if ood_members is None else scaler.transform(ood_members.mean(axis=0))
    return scaler.state(), scaler.transform(members.mean(axis=0)), ood
