"""Each plot writes a valid, readable PNG with something drawn on it."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from bayesian_lora.evaluation import metrics as M
from bayesian_lora.evaluation import plots as P
from bayesian_lora.evaluation.diagnostics import chain_diagnostics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    sample_probs = rng.dirichlet([0.7, 0.7], size=(4, 120))
    labels = rng.integers(0, 2, size=120)
    chains = rng.normal(size=(3, 200)).cumsum(axis=1) * 0.1 + rng.normal(size=(3, 200))
    return {
        "probs": sample_probs.mean(0),
        "sample_probs": sample_probs,
        "labels": labels,
        "summaries": {"test loglik": chains, "probe p": rng.normal(size=(3, 200))},
    }


def _check_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # Not a blank canvas: a few percent of the pixels are ink (axes, text, data).
    ink = (img[..., :3] < 0.9).any(axis=-1).mean()
    assert ink > 0.02, f"{path.name}: only {ink:.1%} of the pixels are drawn"


def test_reliability_and_confidence(tmp_path, data):
    p = P.reliability_diagram(data["probs"], data["labels"], tmp_path / "sub" / "rel.png")
    _check_png(p)
    _check_png(P.confidence_histogram(data["probs"], data["labels"], tmp_path / "conf.png"))


def test_metrics_vs_ensemble_size_plot(tmp_path, data):
    rows = M.metrics_vs_ensemble_size(data["sample_probs"], data["labels"], "f1_accuracy")
    out = P.metrics_vs_ensemble_size(rows, tmp_path / "ens.png", metrics=("acc", "nll", "f1"))
    _check_png(out)


def test_trace_and_autocorrelation(tmp_path, data):
    diag = chain_diagnostics(data["summaries"])
    _check_png(P.trace_plot(data["summaries"], tmp_path / "trace.png", diagnostics=diag))
    _check_png(P.autocorrelation_plot(data["summaries"], tmp_path / "acf.png", max_lag=30))
    ragged = {"s": [np.arange(50.0), np.arange(40.0)]}
    _check_png(P.trace_plot(ragged, tmp_path / "trace_ragged.png"))


def test_risk_coverage_and_ood(tmp_path, data):
    curves = {
        "ensemble": M.risk_coverage_curve(data["probs"], data["labels"]),
        "single": M.risk_coverage_curve(data["sample_probs"][0], data["labels"]),
    }
    _check_png(P.risk_coverage_plot(curves, tmp_path / "rc.png"))
    rng = np.random.default_rng(1)
    out = P.ood_histogram(rng.normal(size=200), rng.normal(1, 1, 150), tmp_path / "ood.png", "MI")
    _check_png(out)


def test_comparison_plot(tmp_path):
    table = [
        {"method": "MAP", "acc_mean": 0.85, "acc_std": 0.01, "nll_mean": 0.40, "n": 3},
        {"method": "SGLD", "acc_mean": 0.86, "acc_std": 0.004, "nll_mean": 0.33, "nll_std": 0.02},
        {"method": "cSGHMC", "acc": 0.87, "nll": 0.31},
    ]
    _check_png(P.comparison_plot(table, tmp_path / "cmp.png", metrics=("acc", "nll")))


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What each figure shows when it is saved: per panel x ticks, y offset text, y limits."""
    seen: list[dict] = []
    original = P._save

    def keep(fig, path):
        P._fit_titles(fig)
        fig.canvas.draw()
        panels = []
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            panels.append(
                {
                    "xticks": ticks,
                    "yoffset": ax.yaxis.get_offset_text().get_text(),
                    "ylim": ax.get_ylim(),
                    "title": ax.get_title(),
                }
            )
        seen.append({"name": Path(path).name, "panels": panels})
        return original(fig, path)

    monkeypatch.setattr(P, "_save", keep)
    return seen


def _no_ink_at_the_border(path: Path) -> None:
    """A title or label running off the figure leaves ink in the outermost pixel columns/rows."""
    img = mpimg.imread(path)[..., :3]
    border = np.concatenate(
        [img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3), img[:2].reshape(-1, 3)]
    )
    assert (border > 0.9).all(), f"{path.name}: something is cut off at the edge"


def test_equal_bars_get_no_axis_offset_and_a_sensible_range(tmp_path, drawn):
    table = [{"method": m, "acc_mean": 0.4375, "acc_std": 0.0, "n": 2} for m in ("a", "b", "c")]
    P.comparison_plot(table, tmp_path / "cmp.png", metrics=("acc",))
    (panel,) = drawn[0]["panels"]
    assert panel["yoffset"] == ""
    lo, hi = panel["ylim"]
    assert lo <= 0.0 and 43.75 < hi < 60


def test_draws_and_lags_get_whole_number_ticks(tmp_path, drawn):
    chains = {"s": np.random.default_rng(0).normal(size=(2, 3))}  # 3 draws: auto ticks 0.25 apart
    P.trace_plot(chains, tmp_path / "trace.png")
    P.autocorrelation_plot(chains, tmp_path / "acf.png", max_lag=5)
    for fig in drawn:
        ticks = fig["panels"][0]["xticks"]
        assert ticks and all(float(t).is_integer() for t in ticks), (fig["name"], ticks)


def test_long_subplot_titles_are_wrapped_inside_the_figure(tmp_path, data, drawn):
    name = "a summary with a name longer than its panel is wide, as probe names can get"
    long = {name: data["summaries"]["test loglik"]}
    diag = chain_diagnostics(long)
    out = P.trace_plot(long, tmp_path / "trace.png", diagnostics=diag)
    assert "\n" in drawn[0]["panels"][0]["title"]
    _no_ink_at_the_border(out)
    table = [
        {"method": f"method {i}", "acc_mean": 0.8 + i / 100, "acc_std": 0.01} for i in range(2)
    ]
    _no_ink_at_the_border(P.comparison_plot(table, tmp_path / "cmp.png", metrics=("acc", "nll")))


def test_comparison_plot_with_a_single_seed_method(tmp_path):
    """A method with one run has std NaN: the plot draws it without an error bar."""
    table = [
        {"method": "map", "n": 1, "acc_mean": 0.8, "acc_std": float("nan")},
        {"method": "sgld", "n": 3, "acc_mean": 0.82, "acc_std": 0.01},
    ]
    _check_png(P.comparison_plot(table, tmp_path / "cmp.png", metrics=("acc",)))
