"""PNG figures for evaluation reports.

Figures are built with the object-oriented API on an Agg canvas (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``), so nothing touches pyplot's global state or the session backend and no
figure is left open.  Every function writes one PNG (120 dpi) and returns its ``Path``.
Accuracy-like quantities (``acc``, ``ece``, ``f1``, ``acc@k``) are DISPLAYED in percent; the
metric functions themselves return fractions.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bayesian_lora.evaluation import metrics as M

DPI = 120
PERCENT_METRICS = {"acc", "ece", "f1"}
METRIC_LABELS = {
    "acc": "accuracy (%)",
    "ece": "ECE (%)",
    "f1": "F1 (%)",
    "nll": "NLL (nats / example)",
    "brier": "Brier score",
    "entropy": "predictive entropy (nats)",
    "mutual_information": "mutual information (nats)",
    "expected_entropy": "expected entropy (nats)",
    "mcc": "Matthews corr. coef.",
    "pearson": "Pearson r",
    "spearman": "Spearman rho",
    "rmse": "RMSE",
    "aurc": "AURC (error rate)",
    "auroc": "AUROC",
    "aupr": "AUPR",
}


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS or metric.startswith("acc@") else 1.0


def _label(metric: str) -> str:
    if metric.startswith("acc@"):
        return f"accuracy at {metric[4:]}% coverage (%)"
    return METRIC_LABELS.get(metric, metric)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` wrapped to lines that fit ``width_inches`` (about 0.55 em per character)."""
    chars = max(12, int(width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _fit_titles(fig: Figure) -> None:
    """Wrap titles and x labels to their panel's width, y labels to its height and the
    suptitle to the figure's width, so that constrained layout makes room for them instead of
    letting them run off the edge."""
    for ax in fig.axes:
        box = ax.get_position()
        width, height = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
        for text in (ax.title, ax.xaxis.label):  # the centre title: the only one used here
            if text.get_text():
                text.set_text(_wrap(text.get_text(), width, float(text.get_fontsize())))
        label = ax.yaxis.label
        if label.get_text():
            label.set_text(_wrap(label.get_text(), height, float(label.get_fontsize())))
    sup = fig.get_suptitle()
    if sup:
        text = fig.suptitle(sup)  # the same text, to read its font size
        text.set_text(_wrap(sup, 0.95 * fig.get_figwidth(), float(text.get_fontsize())))


def _integer_ticks(ax: Axes) -> None:
    """Whole-number x ticks (draws, lags)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _fit_titles(fig)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def _chains(value: Any) -> list[np.ndarray]:
    arr = value.detach().cpu().double().numpy() if hasattr(value, "detach") else value
    if isinstance(arr, np.ndarray) and arr.dtype != object:
        arr = np.atleast_2d(np.asarray(arr, dtype=np.float64))
        return list(arr)
    return [np.asarray(c, dtype=np.float64).ravel() for c in arr]


# ----------------------------------------------------------------------------- calibration


def reliability_diagram(
    probs: Any,
    labels: Any,
    path: str | Path,
    n_bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Per-bin accuracy bars vs. the diagonal, gap to mean confidence shaded, counts below.

    Bins and ECE as in :func:`metrics.calibration_bins` / :func:`expected_calibration_error`;
    the title shows ECE in percent (``ECE = 3.2%``).
    """
    b = M.calibration_bins(probs, labels, n_bins)
    ece = M.expected_calibration_error(probs, labels, n_bins)
    acc = M.accuracy(probs, labels)
    edges, width = b["edges"], 1.0 / n_bins
    left = edges[:-1]
    filled = b["count"] > 0
    fig = _new_figure(5.5, 6.0)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(
        left[filled],
        b["acc"][filled],
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy in bin",
    )
    gap_lo = np.minimum(b["acc"], b["conf"])[filled]
    gap_hi = np.maximum(b["acc"], b["conf"])[filled]
    ax.bar(
        left[filled],
        gap_hi - gap_lo,
        bottom=gap_lo,
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.6,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy (fraction correct)")
    ax.set_title(
        f"{title}\nECE = {100 * ece:.1f}%, accuracy = {100 * acc:.1f}%, "
        f"N = {int(b['count'].sum())}, {n_bins} bins",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_n.bar(
        left, b["count"], width=width, align="edge", color="0.6", edgecolor="black", linewidth=0.6
    )
    ax_n.set(xlabel="confidence (max predicted probability)", ylabel="examples / bin")
    ax_n.grid(alpha=0.3)
    return _save(fig, path)


def confidence_histogram(
    probs: Any, labels: Any, path: str | Path, n_bins: int = 20, title: str = "Confidence"
) -> Path:
    """Histogram of max probability, split into correct / incorrect predictions."""
    p = M.as_numpy(probs)
    y = M.as_numpy(labels, np.int64)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    lo = math.floor(min(conf.min(), 1.0 / p.shape[1]) * 20) / 20
    bins = np.linspace(lo, 1.0, n_bins + 1).tolist()  # matplotlib's stubs take a Sequence
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    ax.hist(
        [conf[correct], conf[~correct]],
        bins=bins,
        stacked=True,
        color=["tab:green", "tab:red"],
        edgecolor="black",
        linewidth=0.5,
        label=[f"correct ({correct.sum()})", f"incorrect ({(~correct).sum()})"],
    )
    ax.axvline(
        conf.mean(), color="k", linestyle="--", label=f"mean confidence = {100 * conf.mean():.1f}%"
    )
    ax.axvline(
        correct.mean(),
        color="tab:blue",
        linestyle=":",
        linewidth=2,
        label=f"accuracy = {100 * correct.mean():.1f}%",
    )
    ax.set(xlabel="confidence (max predicted probability)", ylabel="examples", title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- ensembles


def metrics_vs_ensemble_size(
    rows: Sequence[Mapping[str, float]],
    path: str | Path,
    metrics: Sequence[str] = ("acc", "nll", "ece"),
    title: str = "Metrics vs. ensemble size",
) -> Path:
    """One panel per metric against ``ensemble_size`` (rows of the same-named metrics function)."""
    sizes = np.array([r["ensemble_size"] for r in rows], dtype=float)
    fig = _new_figure(3.6 * len(metrics), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, m in zip(axes, metrics, strict=True):
        vals = np.array([r[m] for r in rows], dtype=float) * _scale(m)
        ax.plot(sizes, vals, "o-", color="tab:blue")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.set(xlabel="ensemble size (posterior samples)", ylabel=_label(m), title=m)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- MCMC


def _status(d: Mapping[str, Any]) -> str:
    """Short panel-title form of a diagnostics verdict, e.g. ``chains have NOT mixed``."""
    if d["mixed"]:
        return "OK"
    if d.get("status") == "too few draws":
        return "too few draws"
    reasons = dict.fromkeys(p.split(": ")[-1].split(" (")[0] for p in d.get("problems", []))
    return "FAIL: " + ", ".join(reasons)


def _chain_legend(fig: Figure, axes: Iterable[Axes]) -> None:
    """One legend for the whole figure (chain colours are the same in every row)."""
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[0]))
    fig.legend(handles, labels, loc="outside lower center", ncols=min(8, len(labels)), fontsize=8)


def trace_plot(
    summaries: Mapping[str, Any],
    path: str | Path,
    diagnostics: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "Trace plots",
) -> Path:
    """One row per summary ``[chains, draws]`` (or ragged list of chains), one line per chain.

    If ``diagnostics`` (from :func:`diagnostics.chain_diagnostics`) is given, each panel's title
    shows R-hat, bulk ESS and the verdict (``OK`` or the reasons for ``FAIL``).
    """
    fig = _new_figure(8.0, 2.3 * len(summaries) + 0.8)
    axes = fig.subplots(len(summaries), 1, squeeze=False)[:, 0]
    for ax, (name, value) in zip(axes, summaries.items(), strict=True):
        for i, chain in enumerate(_chains(value)):
            ax.plot(np.arange(len(chain)), chain, linewidth=0.8, alpha=0.85, label=f"chain {i}")
        sub = name
        if diagnostics is not None and name in diagnostics:
            d = diagnostics[name]
            sub = f"{name}: R-hat {d['rhat']:.3f}, bulk ESS {d['ess_bulk']:.0f} -> {_status(d)}"
        ax.set(xlabel="kept sample index (draw)", ylabel=name)
        _integer_ticks(ax)
        ax.set_title(sub, fontsize=10)
        ax.grid(alpha=0.3)
    _chain_legend(fig, axes)
    fig.suptitle(title)
    return _save(fig, path)


def autocorrelation_plot(
    summaries: Mapping[str, Any],
    path: str | Path,
    max_lag: int = 50,
    title: str = "Autocorrelation",
) -> Path:
    """One row per summary, autocorrelation vs. lag (``0..max_lag``) for each chain."""
    from bayesian_lora.evaluation.diagnostics import autocorrelation

    fig = _new_figure(7.0, 2.2 * len(summaries) + 0.8)
    axes = fig.subplots(len(summaries), 1, squeeze=False)[:, 0]
    for ax, (name, value) in zip(axes, summaries.items(), strict=True):
        lowest = 0.0
        for i, chain in enumerate(_chains(value)):
            acf = autocorrelation(chain)[: max_lag + 1]
            lowest = min(lowest, float(np.nanmin(acf)))
            ax.plot(np.arange(len(acf)), acf, "o-", markersize=2.5, linewidth=1, label=f"chain {i}")
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set(
            xlabel="lag (draws)", ylabel="autocorrelation", ylim=(min(-0.3, lowest - 0.05), 1.05)
        )
        _integer_ticks(ax)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    _chain_legend(fig, axes)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- selective / OOD


def risk_coverage_plot(
    curves: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    title: str = "Risk-coverage",
) -> Path:
    """One line per method: error rate among the most confident vs. coverage; AURC in legend."""
    fig = _new_figure(6.0, 4.2)
    ax = fig.subplots()
    for name, (coverage, risk) in curves.items():
        cov, r = np.asarray(coverage, dtype=float), np.asarray(risk, dtype=float)
        ax.plot(cov, 100 * r, linewidth=1.5, label=f"{name} (AURC = {100 * r.mean():.2f}%)")
    ax.set(
        xlabel="coverage (fraction of examples kept, most confident first)",
        ylabel="risk (error rate among kept, %)",
        title=title,
        xlim=(0, 1),
    )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ood_histogram(
    scores_in: Any,
    scores_out: Any,
    path: str | Path,
    score_name: str = "score",
    title: str = "OOD detection",
) -> Path:
    """Density histograms of in- vs. out-of-distribution scores; AUROC/AUPR in the title."""
    s_in, s_out = M.as_numpy(scores_in).ravel(), M.as_numpy(scores_out).ravel()
    res = M.ood_detection(s_in, s_out)
    both = np.concatenate([s_in, s_out])
    bins: int | list[float] = (
        np.linspace(both.min(), both.max(), 31).tolist() if np.ptp(both) > 0 else 10
    )
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    ax.hist(
        s_in,
        bins=bins,
        density=True,
        alpha=0.55,
        color="tab:blue",
        label=f"in-distribution (n={len(s_in)})",
    )
    ax.hist(
        s_out,
        bins=bins,
        density=True,
        alpha=0.55,
        color="tab:orange",
        label=f"out-of-distribution (n={len(s_out)})",
    )
    ax.set(
        xlabel=f"{score_name} (higher = more OOD)",
        ylabel="density",
        title=f"{title}: AUROC = {res['auroc']:.3f}, AUPR = {res['aupr']:.3f}",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ----------------------------------------------------------------------------- sweep comparison


#: Above this many rows the comparison plot is drawn with horizontal bars (methods on the y axis).
HORIZONTAL_ABOVE = 12


def comparison_plot(
    table: Sequence[Mapping[str, Any]],
    path: str | Path,
    metrics: Sequence[str] = ("acc", "nll", "ece"),
    title: str = "Method comparison",
) -> Path:
    """Bars (mean +- std error bars) per method, one panel per metric.

    Each row has ``method`` and, per metric ``m``, ``m_mean`` (or plain ``m``) and optionally
    ``m_std`` (missing -> no error bar) and ``n`` (number of seeds, shown in the method labels).
    Up to :data:`HORIZONTAL_ABOVE` rows the bars stand side by side; with more, they lie
    horizontally, one line per method (the table's order, top to bottom), so that 35 rows stay
    legible.
    """
    if len(table) > HORIZONTAL_ABOVE:
        return _comparison_horizontal(table, path, metrics, title)
    methods = [str(r["method"]) + (f"\n(n={r['n']})" if "n" in r else "") for r in table]
    fig = _new_figure(max(3.2 * len(metrics), 2.0 + 0.9 * len(methods) * len(metrics)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colors = [f"C{i % 10}" for i in range(len(table))]
    x = np.arange(len(table))
    for ax, m in zip(axes, metrics, strict=True):
        mean, std = _mean_std(table, m)
        ax.bar(x, mean, yerr=std, capsize=4, color=colors, edgecolor="black", linewidth=0.6)
        for xi, (mu, sd) in enumerate(zip(mean, std, strict=True)):
            ax.annotate(
                f"{mu:.3g}",
                (xi, mu + sd),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        zoomed = _set_comparison_lim(ax, mean, std)
        ax.set_xticks(x, methods, rotation=30 if len(table) > 4 else 0, ha="center", fontsize=8)
        ax.set(ylabel=_label(m), title=m + (" (y axis does not start at 0)" if zoomed else ""))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} (mean ± std over seeds)")
    return _save(fig, path)


def _mean_std(table: Sequence[Mapping[str, Any]], m: str) -> tuple[np.ndarray, np.ndarray]:
    """Display-unit means (NaN where missing) and stds (0 where missing or NaN: no bar)."""
    s = _scale(m)
    mean = np.array([r.get(f"{m}_mean", r.get(m, np.nan)) for r in table], float) * s
    std = np.array([r.get(f"{m}_std", 0.0) for r in table], float) * s
    return mean, np.where(np.isfinite(std), std, 0.0)  # one seed: std is NaN, no error bar


def _label_width(labels: Sequence[str], fontsize: float = 7) -> float:
    """Inches taken by the longest of ``labels`` (about 0.55 em per character)."""
    return max((len(t) for t in labels), default=0) * 0.55 * fontsize / 72


def _row_height(n_rows: int) -> float:
    """Figure height (inches) for ``n_rows`` lines of 7-pt labels plus titles and a legend."""
    return 1.5 + 0.2 * n_rows


def _stripes(ax: Axes, n_rows: int) -> None:
    """Shade every other line (the eye follows a row across panels); row 0 at the top."""
    for i in range(0, n_rows, 2):
        ax.axhspan(i - 0.5, i + 0.5, color="0.93", zorder=0, linewidth=0)
    ax.set_ylim(n_rows - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)


def _sd_bars(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    sd: np.ndarray,
    color: str,
    width: float,
) -> None:
    """Horizontal ± sd bars at (x, y) on the rows with a spread (sd > 0); none where there is no
    sd (one seed, an ensemble). Layer: errorbar's default (zorder 2)."""
    spread = np.isfinite(x) & (sd > 0)
    ax.errorbar(
        x[spread],
        y[spread],
        xerr=sd[spread],
        fmt="none",
        ecolor=color,
        elinewidth=width,
        capsize=2,
    )


def _comparison_horizontal(
    table: Sequence[Mapping[str, Any]], path: str | Path, metrics: Sequence[str], title: str
) -> Path:
    """:func:`comparison_plot` for many rows: one horizontal bar per method and panel."""
    labels = [str(r["method"]) + (f" (n={r['n']})" if "n" in r else "") for r in table]
    y = np.arange(len(table))
    fig = _new_figure(0.5 + _label_width(labels) + 2.6 * len(metrics), _row_height(len(table)))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    for ax, m in zip(axes, metrics, strict=True):
        mean, std = _mean_std(table, m)
        _stripes(ax, len(table))
        ax.barh(y, mean, height=0.7, color="tab:blue", alpha=0.8, edgecolor="black", linewidth=0.4)
        _sd_bars(ax, mean, y, std, "black", 0.8)
        for yi, (mu, sd) in enumerate(zip(mean, std, strict=True)):
            if np.isfinite(mu):
                ax.annotate(
                    f"{mu:.3g}",
                    (mu + sd, yi),
                    textcoords="offset points",
                    xytext=(2, 0),
                    ha="left",
                    va="center",
                    fontsize=6,
                )
        zoomed = _set_comparison_lim(ax, mean, std, axis="x")
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + 0.12 * (hi - lo))  # room for the value printed after each bar
        ax.set_xlabel(_label(m), fontsize=8)
        ax.set_title(m + (" (x axis does not start at 0)" if zoomed else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    fig.suptitle(f"{title} (mean ± std over seeds)", fontsize=10)
    return _save(fig, path)


def _set_comparison_lim(
    ax: Axes, mean: np.ndarray, std: np.ndarray, axis: Literal["x", "y"] = "y"
) -> bool:
    """Start the value axis at 0 unless all bars are long compared with their spread; True if
    zoomed in. ``axis``: the value axis (``y`` for vertical bars, ``x`` for horizontal)."""
    finite = np.isfinite(mean)
    if not finite.any():
        return False
    set_lim = ax.set_ylim if axis == "y" else ax.set_xlim
    ax.ticklabel_format(axis=axis, useOffset=False)  # never "1e-13+4.375e1"
    lo, hi = np.min((mean - std)[finite]), np.max((mean + std)[finite])
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1.0):  # all bars equal: show them from 0
        ref = abs(hi) if abs(hi) > 1e-12 else 1.0
        set_lim(min(0.0, lo - 0.15 * ref), max(0.0, hi + 0.15 * ref))
        return False
    span = hi - lo
    zoom = lo > 2 * span
    set_lim(lo - 0.5 * span if zoom else min(0.0, lo - 0.1 * span), hi + 0.15 * span)
    return bool(zoom)


# ----------------------------------------------------------------------------- forest plot

#: Metrics where a larger value is better (the direction of "better" in the forest plot).
HIGHER_IS_BETTER = {"acc", "f1", "mcc", "pearson", "spearman", "auroc", "aupr"}
#: How far from 0 a CI bound must be to count as excluding it (display units).
_ZERO_TOL = 1e-9


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> float:
    return float(x) if _finite(x) else math.nan


@dataclass(frozen=True)
class ForestPanel:
    """One metric of a forest plot, per row in display units (percent for ``acc``/``ece``):
    ``value`` the difference to the reference row (NaN: not drawn; 0 on the reference row
    itself), ``low``/``high`` its CI (NaN: no error bar), ``excludes_zero`` whether that CI
    excludes 0 (False without a CI)."""

    metric: str
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    excludes_zero: np.ndarray


@dataclass(frozen=True)
class ForestData:
    """What :func:`forest_plot` draws: one line per row of the table, top to bottom.

    ``labels``: ``<method> · <members> member(s)``; ``reference``: the index of the reference
    row (None if it is not among the rows); ``panels``: the differences per metric;
    ``ood``/``ood_std``: the OOD AUROC point estimate and its sd over seeds (NaN where none).
    """

    labels: list[str]
    reference: int | None
    reference_method: str | None
    panels: list[ForestPanel]
    ood: np.ndarray
    ood_std: np.ndarray


def _members(row: Mapping[str, Any]) -> str:
    m = row.get("members")
    if not _finite(m):
        return str(row["method"])
    return f"{row['method']} · {m:g} member{'' if m == 1 else 's'}"


def forest_data(
    table: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = ("nll", "ece", "acc"),
    reference: str | None = None,
    point_differences: bool = False,
    ood_key: str = "ood_auroc_entropy",
) -> ForestData:
    """The numbers of :func:`forest_plot`, from report rows (``reporting.rows``), without drawing.

    Per row and metric ``m``: the paired difference to the reference row ``m_delta_mean`` with
    its CI ``m_delta_ci_low`` / ``m_delta_ci_high`` (scaled to display units). ``reference``
    is the reference row's method (default: the rows' ``delta_vs``); that row is drawn at 0
    without an error bar. A row without ``m_delta_mean`` (no paired CI: e.g. a test set unlike
    the reference's) gets NaN: no marker. With ``point_differences`` (regression tasks, which get
    no CI), such a row gets the difference of the point estimates ``m_mean`` to the reference's
    instead, still without a CI.
    """
    if reference is None:
        reference = next((str(r["delta_vs"]) for r in table if r.get("delta_vs")), None)
    ref_at = next((i for i, r in enumerate(table) if r["method"] == reference), None)
    ref_row = table[ref_at] if ref_at is not None else None
    panels = []
    for m in metrics:
        s = _scale(m)
        value, low, high = (np.full(len(table), np.nan) for _ in range(3))
        for i, r in enumerate(table):
            if i == ref_at:
                value[i] = 0.0
            elif _finite(r.get(f"{m}_delta_mean")):
                value[i] = float(r[f"{m}_delta_mean"]) * s
                low[i] = _num(r.get(f"{m}_delta_ci_low")) * s
                high[i] = _num(r.get(f"{m}_delta_ci_high")) * s
            elif point_differences and ref_row is not None:
                value[i] = (_num(r.get(f"{m}_mean")) - _num(ref_row.get(f"{m}_mean"))) * s
        with np.errstate(invalid="ignore"):
            excludes = (low > _ZERO_TOL) | (high < -_ZERO_TOL)
        panels.append(ForestPanel(m, value, low, high, excludes))
    return ForestData(
        labels=[_members(r) for r in table],
        reference=ref_at,
        reference_method=reference,
        panels=panels,
        ood=np.array([_num(r.get(f"{ood_key}_mean")) for r in table]),
        ood_std=np.array([_num(r.get(f"{ood_key}_std")) for r in table]),
    )


_BETTER, _WORSE, _UNSURE = "tab:blue", "tab:red", "0.3"


def _draw_differences(ax: Axes, panel: ForestPanel, reference: int | None) -> None:
    """Points with CI bars: filled (blue better, red worse) where the CI excludes 0, hollow
    where it includes 0 or there is none; the reference row a black diamond at 0."""
    y = np.arange(len(panel.value))
    drawn = np.isfinite(panel.value)
    ci = drawn & np.isfinite(panel.low) & np.isfinite(panel.high)
    ax.hlines(y[ci], panel.low[ci], panel.high[ci], color="0.35", linewidth=1.1, zorder=2)
    ax.scatter(panel.low[ci], y[ci], marker="|", s=18, color="0.35", linewidths=0.9, zorder=2)
    ax.scatter(panel.high[ci], y[ci], marker="|", s=18, color="0.35", linewidths=0.9, zorder=2)
    sign = -1.0 if panel.metric in HIGHER_IS_BETTER else 1.0
    better = panel.excludes_zero & (sign * panel.value < 0)
    worse = panel.excludes_zero & (sign * panel.value > 0)
    plain = drawn & ~panel.excludes_zero
    if reference is not None:
        plain[reference] = False
        ax.scatter([0.0], [reference], marker="D", s=26, color="black", zorder=4)
    for sel, color in ((better, _BETTER), (worse, _WORSE)):
        ax.scatter(panel.value[sel], y[sel], marker="o", s=26, color=color, zorder=3)
    ax.scatter(
        panel.value[plain],
        y[plain],
        marker="o",
        s=26,
        facecolors="white",
        edgecolors=_UNSURE,
        linewidths=1.0,
        zorder=3,
    )
    ax.axvline(0.0, color="black", linewidth=0.8, zorder=1)
    lo, hi = forest_xlim(panel)
    ax.set_xlim(lo, hi)
    ax.ticklabel_format(axis="x", useOffset=False)
    for i in np.flatnonzero(~drawn):
        ax.annotate(
            "no paired CI",
            (0.0, i),
            textcoords="offset points",
            xytext=(4, 0),
            va="center",
            fontsize=6,
            color="0.45",
            style="italic",
        )
    inside = drawn & (panel.value >= lo) & (panel.value <= hi)
    for beyond, edge, marker in (
        (ci & inside & (panel.high > hi), hi - 0.008 * (hi - lo), ">"),
        (ci & inside & (panel.low < lo), lo + 0.008 * (hi - lo), "<"),
    ):  # a CI running on past the edge ends in an arrowhead there
        ax.scatter(np.full(beyond.sum(), edge), y[beyond], marker=marker, s=14, color="0.35")
    colors = np.where(better, _BETTER, np.where(worse, _WORSE, _UNSURE))
    for i in np.flatnonzero(drawn & ((panel.value < lo) | (panel.value > hi))):
        right = bool(panel.value[i] > hi)
        edge = hi - 0.012 * (hi - lo) if right else lo + 0.012 * (hi - lo)
        ax.scatter([edge], [i], marker=">" if right else "<", s=30, color=str(colors[i]), zorder=4)
        ax.annotate(
            f"{panel.value[i]:+.3g}",
            (edge, i),
            textcoords="offset points",
            xytext=(-5, 0) if right else (5, 0),
            ha="right" if right else "left",
            va="center",
            fontsize=6,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
            zorder=5,
        )


def forest_xlim(panel: ForestPanel, clip: float = 5.0) -> tuple[float, float]:
    """The x range of a difference panel: 0 and every row's point and CI, padded, except rows
    reaching more than ``clip`` times as far from 0 as the 75th percentile of the rows' reach
    (with 4 or more rows): these are drawn off scale (an arrow at the edge with the value
    printed), so that one outlier does not squash every other row's interval to a dot."""
    ends = np.vstack([panel.value, panel.low, panel.high])
    finite = np.isfinite(ends)
    reach = np.where(finite, np.abs(ends), 0.0).max(axis=0)
    drawn = np.isfinite(panel.value) & (reach > 0)
    keep = np.isfinite(panel.value)
    if drawn.sum() >= 4:
        limit = clip * float(np.percentile(reach[drawn], 75))
        if limit > 0:
            keep &= reach <= limit
    shown = ends[:, keep][finite[:, keep]]
    lo, hi = min(0.0, float(shown.min(initial=0.0))), max(0.0, float(shown.max(initial=0.0)))
    pad = 0.06 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _pad_xlim(ax: Axes, values: np.ndarray) -> None:
    v = values[np.isfinite(values)]
    lo, hi = float(v.min()), float(v.max())
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi), 1e-3)
    ax.set_xlim(lo - pad, hi + pad)
    ax.ticklabel_format(axis="x", useOffset=False)


def _draw_ood(ax: Axes, data: ForestData) -> None:
    y = np.arange(len(data.ood))
    has = np.isfinite(data.ood)
    sd = np.where(np.isfinite(data.ood_std), data.ood_std, 0.0)
    _sd_bars(ax, data.ood, y, sd, "0.35", 1.1)
    mine = has.copy()
    if data.reference is not None and has[data.reference]:
        mine[data.reference] = False
        ax.scatter(
            [data.ood[data.reference]], [data.reference], marker="D", s=26, color="black", zorder=4
        )
        ax.axvline(data.ood[data.reference], color="black", linewidth=0.8, linestyle=":")
    ax.scatter(data.ood[mine], y[mine], marker="s", s=22, color="tab:purple", zorder=3)
    ax.axvline(0.5, color="0.5", linewidth=0.8, linestyle="--", zorder=1)
    _pad_xlim(ax, np.concatenate([[0.5], data.ood - sd, data.ood + sd]))


def _off_scale(panel: ForestPanel) -> bool:
    """Whether a point or a CI of the panel runs past its x range."""
    lo, hi = forest_xlim(panel)
    ends = np.vstack([panel.value, panel.low, panel.high])
    ends = ends[np.isfinite(ends)]
    return bool(((ends < lo) | (ends > hi)).any())


def _key(marker: str, color: str, hollow: bool = False, size: float = 5) -> Line2D:
    """A legend handle: one marker, no line."""
    face = "white" if hollow else color
    return Line2D(
        [], [], marker=marker, color=color, markerfacecolor=face, linestyle="none", markersize=size
    )


def _forest_legend(fig: Figure, data: ForestData, level: float) -> None:
    ref = data.reference_method or "reference"
    entries = [
        (_key("o", _BETTER), f"{level:.0%} CI excludes 0, better than {ref}"),
        (_key("o", _WORSE), f"{level:.0%} CI excludes 0, worse than {ref}"),
        (_key("o", _UNSURE, hollow=True), "CI includes 0 (or no CI)"),
    ]
    if data.reference is not None:
        entries.append((_key("D", "black", size=4), ref))
    if any(_off_scale(p) for p in data.panels):
        entries.append((_key(">", _UNSURE), "off scale (a point: its difference printed)"))
    if np.isfinite(data.ood).any():
        entries.append((_key("s", "tab:purple", size=4), "OOD AUROC (± sd over seeds)"))
    fig.legend(
        [h for h, _ in entries],
        [t for _, t in entries],
        loc="outside lower center",
        ncols=min(3, len(entries)),
        fontsize=7,
    )


def forest_plot(
    table: Sequence[Mapping[str, Any]],
    path: str | Path,
    metrics: Sequence[str] = ("nll", "ece", "acc"),
    title: str = "Difference to the reference",
    reference: str | None = None,
    point_differences: bool = False,
    level: float = 0.95,
    ood_key: str = "ood_auroc_entropy",
) -> Path:
    """One line per row, one panel per metric: each row's difference to the reference row with
    its paired bootstrap CI (the numbers of :func:`forest_data`), a vertical line at 0; a last
    panel with the OOD AUROC (``ood_key``, ± its sd over seeds) where any row has one.

    Filled markers: the CI excludes 0 (blue: better than the reference, red: worse); hollow:
    it includes 0, or the row has no CI (regression rows with ``point_differences``). The
    reference row is a black diamond at 0. A row without a difference has no marker in that
    panel. Accuracy and ECE differences are in percentage points. The figure grows with the rows
    (0.2 inch each), so 35 rows stay legible.
    """
    data = forest_data(table, metrics, reference, point_differences, ood_key)
    has_ood = bool(np.isfinite(data.ood).any())
    n_panels = len(data.panels) + int(has_ood)
    if n_panels == 0:
        raise ValueError("forest_plot: no metric and no OOD AUROC to draw")
    n = len(table)
    fig = _new_figure(0.5 + _label_width(data.labels) + 2.4 * n_panels, _row_height(n) + 0.3)
    axes = np.atleast_1d(fig.subplots(1, n_panels, sharey=True))
    ref = data.reference_method or "reference"
    for ax, panel in zip(axes, data.panels, strict=False):
        _stripes(ax, n)
        _draw_differences(ax, panel, data.reference)
        arrow = "better →" if panel.metric in HIGHER_IS_BETTER else "← better"
        unit = ", points" if _scale(panel.metric) != 1 else ""
        ax.set_title(f"Δ {panel.metric}{unit} ({arrow})", fontsize=9)
        ax.set_xlabel(f"{_label(panel.metric)}: row − {ref}", fontsize=8)
    if has_ood:
        ax = axes[-1]
        _stripes(ax, n)
        _draw_ood(ax, data)
        ax.set_title("OOD AUROC (better →)", fontsize=9)
        ax.set_xlabel(f"AUROC by entropy (dashed: chance; dotted: {ref})", fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))  # apart
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(n), data.labels)
    _forest_legend(fig, data, level)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
