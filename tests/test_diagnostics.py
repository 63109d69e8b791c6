"""Chain diagnostics on chains whose mixing is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bayesian_lora.evaluation.diagnostics import (
    autocorrelation,
    chain_diagnostics,
    format_diagnostics,
)


def _ar1(rng: np.random.Generator, phi: float, n: int) -> np.ndarray:
    x = np.empty(n)
    x[0] = rng.normal() / math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + rng.normal()
    return x


def test_iid_chains_pass():
    rng = np.random.default_rng(0)
    d = chain_diagnostics({"loglik": rng.normal(size=(4, 500))})["loglik"]
    assert 0.99 <= d["rhat"] <= 1.02
    assert 0.7 * 2000 <= d["ess_bulk"] <= 1.3 * 2000
    assert 0.7 * 2000 <= d["ess_tail"] <= 1.3 * 2000
    assert d["mixed"] is True
    assert d["verdict"].startswith("OK")
    assert d["n_chains"] == 4 and d["n_draws"] == 500


def test_shifted_chains_fail():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 500))
    x[0] += 3.0  # one chain stuck in a different mode, 3 sd away
    d = chain_diagnostics({"probe_p": x})["probe_p"]
    assert d["rhat"] > 1.2
    assert d["mixed"] is False
    assert "NOT mixed" in d["verdict"]
    assert d["verdict"].startswith("FAIL")
    assert "OK" not in d["verdict"]


def test_ar1_has_low_ess():
    rng = np.random.default_rng(2)
    x = np.stack([_ar1(rng, 0.9, 500) for _ in range(4)])
    d = chain_diagnostics({"norm": x})["norm"]
    # theory: ESS ~ N (1 - phi) / (1 + phi) = 2000 * 0.1 / 1.9 ~ 105
    assert d["ess_bulk"] < 0.25 * 2000
    assert d["ess_bulk"] < d["n_chains"] * d["n_draws"] / 4


def test_low_ess_verdict_with_custom_threshold():
    rng = np.random.default_rng(3)
    x = np.stack([_ar1(rng, 0.95, 100) for _ in range(2)])
    d = chain_diagnostics({"s": x}, ess_threshold=1000)["s"]
    assert d["mixed"] is False
    assert "< 1000: too few effective draws" in d["verdict"]


def test_single_chain_rhat_is_nan():
    rng = np.random.default_rng(4)
    d = chain_diagnostics({"s": rng.normal(size=300)})["s"]
    assert math.isnan(d["rhat"])
    assert d["ess_bulk"] > 100
    assert d["mixed"] is False
    assert "R-hat needs >= 2 chains" in d["verdict"]


def test_unequal_chains_truncated():
    rng = np.random.default_rng(5)
    chains = [rng.normal(size=300), rng.normal(size=250), rng.normal(size=280)]
    d = chain_diagnostics({"s": chains})["s"]
    assert d["n_chains"] == 3 and d["n_draws"] == 250
    assert "truncated" in d["verdict"] and "250" in d["note"]


def test_too_few_draws_and_constant_never_pass():
    d = chain_diagnostics({"short": np.zeros((2, 3)), "const": np.ones((2, 200))})
    assert d["short"]["mixed"] is False and "NOT mixed" in d["short"]["verdict"]
    assert d["const"]["mixed"] is False and "R-hat undefined" in d["const"]["verdict"]
    text = format_diagnostics(d)
    assert text.splitlines()[0].startswith("short: FAIL")


def test_autocorrelation():
    rng = np.random.default_rng(6)
    acf = autocorrelation(_ar1(rng, 0.9, 2000))
    assert acf.shape == (2000,)
    assert acf[0] == pytest.approx(1.0)
    assert acf[1] == pytest.approx(0.9, abs=0.05)
    assert acf[5] == pytest.approx(0.9**5, abs=0.1)
    with pytest.raises(ValueError):
        autocorrelation(np.zeros((2, 10)))
