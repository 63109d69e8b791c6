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
    d = chain_diagnostics({"s": x}, ess_threshold=150)["s"]  # 200 draws could reach 150
    assert d["mixed"] is False
    assert "< 150: too few effective draws" in d["verdict"]


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
    assert d["short"]["mixed"] is False and d["short"]["status"] == "too few draws"
    assert d["short"]["verdict"].startswith("TOO FEW DRAWS: only 3 draws per chain")
    assert d["const"]["mixed"] is False and "R-hat undefined" in d["const"]["verdict"]
    text = format_diagnostics(d)
    assert text.splitlines()[0].startswith("short: TOO FEW DRAWS")


def test_ess_is_checked_only_when_the_draws_could_reach_the_threshold():
    rng = np.random.default_rng(7)
    few = chain_diagnostics({"s": rng.normal(size=(3, 10))})["s"]  # 30 draws < 100
    assert few["status"] == "too few draws" and not few["mixed"]
    assert "too few draws for the ESS check (3 x 10 = 30 < 100)" in few["verdict"]
    assert "nan" not in few["verdict"].lower()
    enough = chain_diagnostics({"s": rng.normal(size=(4, 100))})["s"]  # 400 draws >= 100
    assert enough["status"] == "ok", enough["verdict"]


def test_console_and_json_say_the_same_about_too_few_draws():
    """The aggregated verdict (console, report.json) is built from the per-summary checks."""
    from bayesian_lora.evaluation.chains import diagnose_chains, diagnostics_verdict, public

    rng = np.random.default_rng(8)
    chains = [{"a": rng.normal(size=3), "b": rng.normal(size=3)} for _ in range(2)]
    diag = diagnose_chains(chains)
    verdict = diagnostics_verdict(diag)
    assert verdict.startswith("UNDETERMINED: only 3 draws per chain"), verdict
    assert "nan" not in verdict.lower()
    saved = public(diag)
    assert "_idata" not in saved and "_chains" not in saved
    assert all(verdict.split(": ", 1)[1] in d["verdict"] for d in saved["summaries"].values())


def test_rhat_threshold_is_1_01():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 1000))
    x[0] += 0.4  # R-hat between the new threshold 1.01 and the old 1.05
    d = chain_diagnostics({"s": x})["s"]
    assert 1.01 < d["rhat"] < 1.05
    assert d["status"] == "fail" and "> 1.01" in d["verdict"]


def test_geweke_z_is_standard_normal_for_iid_chains_and_flags_a_drift():
    from bayesian_lora.evaluation.diagnostics import geweke_z

    rng = np.random.default_rng(10)
    z = np.array([geweke_z(rng.normal(size=400)) for _ in range(200)])
    assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.25  # N(0, 1) under stationarity
    x = rng.normal(size=(3, 400))
    x[1] += np.linspace(0.0, 3.0, 400)  # one chain still drifting
    d = chain_diagnostics({"s": x})["s"]
    assert abs(d["geweke_z"][1]) > 3 and max(abs(d["geweke_z"][i]) for i in (0, 2)) < 3
    assert (
        d["status"] == "fail" and "drifting: Geweke z" in d["verdict"] and "chain 1" in d["verdict"]
    )
    short = chain_diagnostics({"s": rng.normal(size=(2, 20))})["s"]
    assert "stationarity not checked" in short["verdict"]


def test_inference_data_round_trips_through_netcdf(tmp_path):
    import arviz as az

    from bayesian_lora.evaluation.diagnostics import (
        inference_data,
        save_inference_data,
        summary_table,
    )

    rng = np.random.default_rng(11)
    summaries = {
        "test mean log-lik": rng.normal(size=(2, 50)),
        "p(label) of probe #3": rng.random((2, 50)),
    }
    path = save_inference_data(inference_data(summaries), tmp_path / "diagnostics.nc")
    back = az.from_netcdf(path)
    for name, x in summaries.items():
        np.testing.assert_array_equal(back.posterior[name].values, x)
    table = summary_table(back)
    d = chain_diagnostics(summaries)
    for name in summaries:
        assert d[name]["rhat"] == pytest.approx(float(table.loc[name, "r_hat"]), rel=1e-12)
        assert d[name]["ess_bulk"] == pytest.approx(float(table.loc[name, "ess_bulk"]), rel=1e-12)


def test_autocorrelation():
    rng = np.random.default_rng(6)
    acf = autocorrelation(_ar1(rng, 0.9, 2000))
    assert acf.shape == (2000,)
    assert acf[0] == pytest.approx(1.0)
    assert acf[1] == pytest.approx(0.9, abs=0.05)
    assert acf[5] == pytest.approx(0.9**5, abs=0.1)
    with pytest.raises(ValueError):
        autocorrelation(np.zeros((2, 10)))
