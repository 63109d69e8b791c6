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


# ----------------------------------------------------------------------------- forest plot


def _delta(row: dict, metric: str, d: float, lo: float, hi: float) -> None:
    row.update({f"{metric}_delta_mean": d, f"{metric}_delta_ci_low": lo})
    row[f"{metric}_delta_ci_high"] = hi


def _forest_rows(n: int) -> list[dict]:
    """A MAP reference row (no delta), then rows with paired differences: every third row's NLL
    CI excludes 0 (below it), the last row has no paired CI; even rows carry an OOD AUROC."""
    rows: list[dict] = [
        {
            "method": "map",
            "members": 1,
            "n": 3,
            "nll_mean": 0.5,
            "ood_auroc_entropy_mean": 0.6,
            "ood_auroc_entropy_std": 0.02,
        }
    ]
    for i in range(1, n):
        row: dict = {
            "method": f"sampler {i} pooled (all/chain)",
            "members": 3 * i,
            "n": 3,
            "delta_vs": "map",
            "nll_mean": 0.5 - 0.01 * i,
        }
        if i < n - 1:
            shift = -0.03 if i % 3 == 0 else 0.0
            _delta(row, "nll", -0.01 * i / n + shift, -0.02 + shift, 0.01 + shift)
            _delta(row, "ece", 0.002 * i, 0.001, 0.004 + 0.001 * i)  # CI above 0: worse
            _delta(row, "acc", 0.01, -0.02, 0.04)
        if i % 2 == 0:
            row["ood_auroc_entropy_mean"] = 0.6 + 0.005 * i
            row["ood_auroc_entropy_std"] = 0.01 if i % 4 == 0 else float("nan")
        rows.append(row)
    return rows


def test_forest_data_are_the_rows_deltas_and_cis_in_display_units():
    rows = _forest_rows(4)  # map, 1 (NLL CI includes 0), 2, 3 (no paired CI)
    _delta(rows[2], "nll", -0.05, -0.08, -0.02)
    data = P.forest_data(rows, ("nll", "ece", "acc"))
    assert data.reference == 0 and data.reference_method == "map"
    assert data.labels[0] == "map · 1 member"
    assert data.labels[2] == "sampler 2 pooled (all/chain) · 6 members"
    nll, ece, acc = data.panels
    assert [p.metric for p in data.panels] == ["nll", "ece", "acc"]
    np.testing.assert_allclose(nll.value[:3], [0.0, rows[1]["nll_delta_mean"], -0.05])
    np.testing.assert_allclose(nll.low[1:3], [-0.02, -0.08])
    np.testing.assert_allclose(nll.high[1:3], [0.01, -0.02])
    assert nll.excludes_zero.tolist() == [False, False, True, False]
    # percent metrics in percentage points, as the table shows them
    np.testing.assert_allclose(ece.value[1:3], [0.2, 0.4])
    np.testing.assert_allclose(ece.low[1:3], [0.1, 0.1])
    np.testing.assert_allclose(ece.high[1:3], [0.5, 0.6])
    assert ece.excludes_zero.tolist() == [False, True, True, False]
    np.testing.assert_allclose(acc.value[1:3], [1.0, 1.0])
    # the reference row sits at 0 without a CI; the row without a paired CI is not drawn
    for panel in data.panels:
        assert panel.value[0] == 0.0 and np.isnan(panel.low[0]) and np.isnan(panel.high[0])
        assert np.isnan(panel.value[3]) and np.isnan(panel.low[3]) and np.isnan(panel.high[3])
    np.testing.assert_allclose(data.ood, [0.6, np.nan, 0.61, np.nan])
    np.testing.assert_allclose(data.ood_std, [0.02, np.nan, np.nan, np.nan])


def test_forest_data_of_a_regression_task_are_point_differences_without_ci():
    rows = [
        {"method": "map", "rmse_mean": 0.8, "nll_mean": 1.2, "members": 1},
        {"method": "swag", "rmse_mean": 0.7, "nll_mean": 1.3, "members": 10},
        {"method": "sgld", "nll_mean": 1.1, "members": 10},  # no RMSE: not drawn there
    ]
    plain = P.forest_data(rows, ("rmse", "nll"), reference="map")
    assert np.isnan(plain.panels[0].value[1])  # without point_differences: nothing to draw
    data = P.forest_data(rows, ("rmse", "nll"), reference="map", point_differences=True)
    rmse, nll = data.panels
    np.testing.assert_allclose(rmse.value, [0.0, -0.1, np.nan])
    np.testing.assert_allclose(nll.value, [0.0, 0.1, -0.1])
    for panel in data.panels:
        assert np.isnan(panel.low).all() and np.isnan(panel.high).all()
        assert not panel.excludes_zero.any()


def test_an_outlier_row_is_drawn_off_scale_not_squashing_the_others():
    rows = _forest_rows(10)
    _delta(rows[4], "nll", 0.5, 0.4, 0.6)  # 20x the others' reach
    panel = P.forest_data(rows, ("nll",)).panels[0]
    lo, hi = P.forest_xlim(panel)
    assert hi < 0.4 and lo < -0.02 - 0.03  # every other row's CI fits, this one does not
    others = np.delete(np.vstack([panel.low, panel.high]), [0, 4, 9], axis=1)
    assert (others >= lo).all() and (others <= hi).all()


@pytest.mark.parametrize("n_rows", [3, 35])
def test_forest_plot_png_grows_with_the_rows_and_keeps_its_labels(tmp_path, n_rows):
    rows = _forest_rows(n_rows)
    rows[-2]["method"] += " + MC dropout (K=10) + temperature"  # a long label
    out = P.forest_plot(rows, tmp_path / "delta.png", title="tiny on mrpc: each row minus map")
    _check_png(out)
    _no_ink_at_the_border(out)
    height, width = mpimg.imread(out).shape[:2]
    assert 1000 < width < 2200  # wider with a longer label, never squeezing the panels
    # 0.2 inch (24 px) per row and ~1.8 inch of titles and legend
    assert 24 * n_rows < height < 24 * n_rows + 320


def _marks(ax) -> tuple[np.ndarray, np.ndarray]:
    """A panel's markers ``[k, 2]`` (x, y) and horizontal bars ``[k, 3]`` (y, x from, x to)."""
    from matplotlib.collections import LineCollection, PathCollection

    points = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    segments = [
        s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()
    ]
    bars = [(s[0][1], min(s[0][0], s[1][0]), max(s[0][0], s[1][0])) for s in segments]
    return np.concatenate(points or [np.empty((0, 2))]), np.array(bars).reshape(-1, 3)


def test_forest_plot_draws_the_data_and_no_bar_where_there_is_no_ci(tmp_path, monkeypatch):
    """The markers and CI bars on the figure are forest_data's numbers; the reference row and
    the row without a paired CI have no CI bar, the latter not even a marker."""
    rows = _forest_rows(6)  # row 0: the reference; row 5: no paired CI
    seen: list = []
    original = P._save

    def keep(fig, path):
        seen.extend(_marks(ax) for ax in fig.axes)
        return original(fig, path)

    monkeypatch.setattr(P, "_save", keep)
    P.forest_plot(rows, tmp_path / "delta.png", metrics=("nll", "ece"))
    data = P.forest_data(rows, ("nll", "ece"))
    assert len(seen) == 3  # nll, ece, OOD
    for (points, bars), panel in zip(seen, data.panels, strict=False):
        for i in range(len(rows)):
            x_at = points[np.isclose(points[:, 1], i), 0]
            bars_at = bars[np.isclose(bars[:, 0], i), 1:]
            if np.isnan(panel.value[i]):
                assert x_at.size == 0 and bars_at.size == 0, (panel.metric, i)
                continue
            assert np.isclose(x_at, panel.value[i]).any(), (panel.metric, i, x_at)
            if np.isfinite(panel.low[i]):
                np.testing.assert_allclose(bars_at, [[panel.low[i], panel.high[i]]])
            else:
                assert bars_at.size == 0, (panel.metric, i)
        assert not np.isclose(bars[:, 0], 0).any() and not np.isclose(bars[:, 0], 5).any()
    points, bars = seen[2]  # OOD: the point estimates, bars of ± sd where there is one
    has = np.isfinite(data.ood)
    np.testing.assert_allclose(sorted(points[:, 0]), sorted(data.ood[has]))
    sd = np.isfinite(data.ood_std)
    want = np.stack(
        [np.flatnonzero(sd), (data.ood - data.ood_std)[sd], (data.ood + data.ood_std)[sd]]
    )
    assert bars.size  # the reference's and row 4's sd
    np.testing.assert_allclose(bars[np.argsort(bars[:, 0])], want.T)


def test_comparison_plot_lies_down_above_twelve_rows(tmp_path, drawn):
    table = [
        {
            "method": f"method {i} pooled (all/chain)",
            "n": 3,
            "acc_mean": 0.8 + i / 1000,
            "acc_std": 0.01 if i % 2 else float("nan"),
            "nll_mean": 0.4,
        }
        for i in range(35)
    ]
    out = P.comparison_plot(table, tmp_path / "cmp.png", metrics=("acc", "nll"))
    _check_png(out)
    _no_ink_at_the_border(out)
    height, width = mpimg.imread(out).shape[:2]
    assert height > width and height > 24 * 35  # one line per method, not 35 bars side by side
    small = P.comparison_plot(table[:3], tmp_path / "cmp3.png", metrics=("acc", "nll"))
    assert mpimg.imread(small).shape[1] > mpimg.imread(small).shape[0]  # 3 rows: upright bars
