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
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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


def comparison_plot(
    table: Sequence[Mapping[str, Any]],
    path: str | Path,
    metrics: Sequence[str] = ("acc", "nll", "ece"),
    title: str = "Method comparison",
) -> Path:
    """Bars (mean +- std error bars) per method, one panel per metric.

    Each row has ``method`` and, per metric ``m``, ``m_mean`` (or plain ``m``) and optionally
    ``m_std`` (missing -> no error bar) and ``n`` (number of seeds, shown in the x labels).
    """
    methods = [str(r["method"]) + (f"\n(n={r['n']})" if "n" in r else "") for r in table]
    fig = _new_figure(max(3.2 * len(metrics), 2.0 + 0.9 * len(methods) * len(metrics)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colors = [f"C{i % 10}" for i in range(len(table))]
    x = np.arange(len(table))
    for ax, m in zip(axes, metrics, strict=True):
        s = _scale(m)
        mean = np.array([r.get(f"{m}_mean", r.get(m, np.nan)) for r in table], float) * s
        std = np.array([r.get(f"{m}_std", 0.0) for r in table], float) * s
        std = np.where(np.isfinite(std), std, 0.0)  # one seed: std is NaN, draw no error bar
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
        zoomed = _set_comparison_ylim(ax, mean, std)
        ax.set_xticks(x, methods, rotation=30 if len(table) > 4 else 0, ha="center", fontsize=8)
        ax.set(ylabel=_label(m), title=m + (" (y axis does not start at 0)" if zoomed else ""))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} (mean ± std over seeds)")
    return _save(fig, path)


def _set_comparison_ylim(ax: Axes, mean: np.ndarray, std: np.ndarray) -> bool:
    """Start at 0 unless all bars are tall compared with their spread; True if zoomed in."""
    finite = np.isfinite(mean)
    if not finite.any():
        return False
    ax.ticklabel_format(axis="y", useOffset=False)  # never "1e-13+4.375e1"
    lo, hi = np.min((mean - std)[finite]), np.max((mean + std)[finite])
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1.0):  # all bars equal: show them from 0
        ref = abs(hi) if abs(hi) > 1e-12 else 1.0
        ax.set_ylim(min(0.0, lo - 0.15 * ref), max(0.0, hi + 0.15 * ref))
        return False
    span = hi - lo
    zoom = lo > 2 * span
    ax.set_ylim(lo - 0.5 * span if zoom else min(0.0, lo - 0.1 * span), hi + 0.15 * span)
    return bool(zoom)
