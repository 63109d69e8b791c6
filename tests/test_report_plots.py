"""The report's plots on a hand-made sweep (no training): the forest plot of each task's paired
differences to MAP is written, listed in ``report.json`` and named under the task's table."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from bayesian_lora.evaluation import plots as P
from bayesian_lora.report import build_report, write_forest_plot
from bayesian_lora.reporting.bootstrap import Bootstrap
from tests.helpers import fake_run_folder

N = 120
LABELS = (np.arange(N) % 3 != 0).astype(np.int64)


def _probs(rng: np.random.Generator, m: int) -> np.ndarray:
    base = np.where(LABELS == 1, 0.7, 0.3)
    p1 = np.clip(base[None] + 0.25 * rng.standard_normal((m, N)), 0.02, 0.98)
    return np.stack([1 - p1, p1], axis=-1)


def test_report_writes_lists_and_names_the_forest_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for s in range(2):
        fake_run_folder(tmp_path / "map" / f"{s}_map", _probs(rng, 1), LABELS, seed=s)
        fake_run_folder(
            tmp_path / "sgld" / f"{s}_sgld", _probs(rng, 4), LABELS, sampler="sgld", seed=s
        )
    out = tmp_path / "out"
    report = build_report([tmp_path], out_dir=out, bootstrap=Bootstrap(200, 0))
    name = "delta_tiny_mrpc.png"
    assert name in report["plots"] and "comparison_tiny_mrpc.png" in report["plots"]
    assert json.loads((out / "report.json").read_text())["plots"] == report["plots"]
    img = mpimg.imread(out / name)
    assert img.shape[0] > 150 and img.shape[1] > 800
    # the line under the task's table, before the next section
    md = (out / "report.md").read_text()
    section = md.split("## tiny on mrpc", 1)[1].split("\n## ", 1)[0]
    assert f"- Forest plot [{name}]({name}): per row the difference to the MAP row" in section
    assert "95% paired CI" in section
    # the rows drawn are the report's rows with their paired differences
    methods = [r["method"] for r in report["rows"]]
    assert methods[0] == "map" and "deep_ensemble" in methods
    data = P.forest_data(report["rows"])
    de = methods.index("deep_ensemble")
    assert data.reference == 0
    assert data.panels[0].value[de] == report["rows"][de]["nll_delta_mean"]
    assert data.panels[1].high[de] == 100 * report["rows"][de]["ece_delta_ci_high"]


def test_no_plots_no_forest_line(tmp_path: Path) -> None:
    fake_run_folder(tmp_path / "map" / "0_map", _probs(np.random.default_rng(1), 1), LABELS)
    build_report([tmp_path], out_dir=tmp_path / "out", plots=False)
    assert "Forest plot" not in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "delta_tiny_mrpc.png").exists()


def test_regression_forest_plot_shows_rmse_and_nll_point_differences(
    tmp_path: Path, monkeypatch
) -> None:
    """A regression task's rows have no CI: the plot shows RMSE and NLL minus MAP's."""
    base = {"model": "tiny", "task": "stsb", "n": 2}
    rows = [
        {
            **base,
            "method": "map",
            "kind": "single",
            "sampler": "map",
            "members": 1,
            "rmse_mean": 0.9,
            "nll_mean": 1.4,
        },
        {
            **base,
            "method": "swag",
            "kind": "single",
            "sampler": "swag",
            "members": 10,
            "rmse_mean": 0.8,
            "nll_mean": 1.1,
        },
    ]
    seen: dict = {}
    original = P.forest_plot

    def spy(table, path, metrics, **kw):
        seen.update(metrics=metrics, **kw)
        return original(table, path, metrics, **kw)

    monkeypatch.setattr(P, "forest_plot", spy)
    path = write_forest_plot(tmp_path, "tiny", "stsb", rows)
    assert path is not None and path.name == "delta_tiny_stsb.png" and path.is_file()
    assert seen["metrics"] == ("rmse", "nll") and seen["point_differences"]
    assert seen["reference"] == "map"
    data = P.forest_data(rows, seen["metrics"], "map", point_differences=True)
    np.testing.assert_allclose([p.value[1] for p in data.panels], [-0.1, -0.3])
    # without a MAP row there is nothing to take differences against: no plot
    assert write_forest_plot(tmp_path / "none", "tiny", "stsb", rows[1:]) is None
