"""Temperature scaling: recovers a known temperature; wired into evaluate (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from bayesian_lora.config_validation import ConfigError
from bayesian_lora.methods import get_calibrator
from bayesian_lora.methods.temperature import TemperatureScaling, tempered, tempered_nll
from tests.helpers import run_eval, train_run


def tempered_model(t_true: float, n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z / t_true); the uncalibrated predictive is softmax(z)."""
    rng = np.random.default_rng(seed)
    z = 3.0 * rng.standard_normal((n, c))
    p_true = softmax(z / t_true, axis=1)
    labels = (rng.random(n)[:, None] > p_true.cumsum(axis=1)).sum(axis=1)
    return softmax(z, axis=1), labels


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_recovers_a_known_temperature(t_true: float) -> None:
    # 20k examples, 4 classes: the MLE of T has a relative std of about 1-2% here; 5% is the bar.
    probs, labels = tempered_model(t_true, 20000, 4, seed=int(10 * t_true))
    scaler = TemperatureScaling().fit(probs, labels)
    assert abs(scaler.temperature / t_true - 1) < 0.05, scaler.state()
    assert scaler.nll_after <= scaler.nll_before
    assert not scaler.state()["at_search_bound"]


def test_fit_is_the_nll_minimiser_and_keeps_the_argmax() -> None:
    probs, labels = tempered_model(2.0, 2000, 3, seed=0)
    scaler = TemperatureScaling().fit(probs, labels)
    t = scaler.temperature
    grid = [tempered_nll(probs, labels, t * f) for f in (0.98, 1.0, 1.02)]
    assert grid[1] <= min(grid[0], grid[2])
    out = scaler.transform(probs)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out.argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(tempered(probs, 1.0), probs, rtol=1e-9)


def test_a_class_of_probability_zero_stays_at_zero() -> None:
    """An MCQA letter a row does not show has probability exactly 0, and 0^(1/T) = 0: tempering
    keeps it at 0 (a floor would lift it to EPS^(1/T)) and changes neither the other classes nor
    the fitted T."""
    expected = np.sqrt([0.6, 0.4, 0.0])  # softmax(log p / 2) = sqrt(p) / sum sqrt(p)
    got = tempered(np.array([[0.6, 0.4, 0.0]]), 2.0)[0]
    np.testing.assert_allclose(got, expected / expected.sum(), rtol=1e-12, atol=0)
    probs, labels = tempered_model(2.0, 2000, 3, seed=0)
    masked = np.concatenate([probs, np.zeros((len(probs), 2))], axis=1)  # letters D, E not shown
    scaler = TemperatureScaling().fit(masked, labels)
    assert scaler.temperature == pytest.approx(TemperatureScaling().fit(probs, labels).temperature)
    out = scaler.transform(masked)
    assert np.all(out[:, 3:] == 0)
    np.testing.assert_allclose(out[:, :3], scaler.transform(probs), rtol=1e-6)


def test_unknown_calibrator_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="calibrate='platt'.*temperature"):
        get_calibrator("platt")


@pytest.mark.slow
def test_evaluate_with_calibrate_temperature(synthetic_data_dir: Path, tmp_path: Path) -> None:
    run = train_run(synthetic_data_dir, tmp_path / "map", "trainer.max_epochs=1")
    result = run_eval(f"run_dir={run}", "calibrate=temperature", "ood=sst2", "plots=false")
    out = Path(result["out_dir"])
    assert out.name == "evaluation_temperature"
    cal = result["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0
    assert cal["validation_nll_after"] <= cal["validation_nll_before"] + 1e-9
    assert cal["ensemble"]["acc"] == pytest.approx(result["ensemble"]["acc"])
    saved = json.loads((out / "metrics.json").read_text())["calibration"]
    assert saved["temperature"] == pytest.approx(cal["temperature"])
    assert json.loads((out / "temperature.json").read_text())["temperature"] == pytest.approx(
        cal["temperature"]
    )
    with pytest.raises(ConfigError, match="split='validation'"):
        run_eval(f"run_dir={run}", "calibrate=temperature", "split=validation")
    with pytest.raises(ConfigError, match="calibrate='vector'"):
        run_eval(f"run_dir={run}", "calibrate=vector")


@pytest.mark.slow
def test_calibrate_is_refused_on_regression(synthetic_data_dir: Path, tmp_path: Path) -> None:
    run = train_run(synthetic_data_dir, tmp_path / "stsb", "data=stsb", "trainer.max_epochs=1")
    with pytest.raises(ConfigError, match="stsb is a regression task"):
        run_eval(f"run_dir={run}", "calibrate=temperature")
