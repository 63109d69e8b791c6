"""Cells, frames, markdown and CSV of the report's tables.

Accuracy, F1 and ECE are printed in percent (columns say ``(%)``); NLL in nats per example. A
metric cell reads ``mean ± sd [low, high]``: the sd over seeds (single-model rows) and the 95%
bootstrap CI over test examples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import pandas as pd

# (column, metric key, scale): percentages are scaled by 100.
COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("acc (%)", "acc", 100.0),
    ("nll", "nll", 1.0),
    ("ece (%)", "ece", 100.0),
    ("brier", "brier", 1.0),
    ("f1 (%)", "f1", 100.0),
    ("mcc", "mcc", 1.0),
    ("rmse", "rmse", 1.0),
    ("pearson", "pearson", 1.0),
    ("spearman", "spearman", 1.0),
    ("ood auroc entropy", "ood_auroc_entropy", 1.0),
    ("ood auroc MI", "ood_auroc_mi", 1.0),
)
# (column, row key, format): the forward (members) and backward passes per test example, the
# sampler config.
CONFIG_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("members", "members", "g"),
    ("backward passes", "backward_passes", "g"),  # per test example: the GLM predictive's
    ("T", "sampler_temperature", "g"),
    ("step size", "step_size", "g"),
)
# (column, metric key, scale): paired differences against the task's MAP row.
DELTA_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("Δ nll vs map", "nll", 1.0),
    ("Δ ece (%) vs map", "ece", 100.0),
)
COMPUTE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("train grad evals", "train_grad_evals", ",.0f"),
    ("train s", "train_seconds", ",.1f"),
    ("eval s", "eval_seconds", ",.1f"),
    ("scaling T", "scaling_temperature", ".3f"),
)


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _cell(row: Mapping[str, Any], key: str, scale: float) -> str:
    """``mean ± sd [low, high]``; ``(n=..)`` when fewer runs than the row's seeds have it."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if not _finite(mean):
        return "–"
    spec = ".2f" if scale != 1 else ".4f"
    text = format(mean * scale, spec)
    if _finite(std):
        text += f" ± {format(std * scale, spec)}"
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if _finite(lo) and _finite(hi):
        text += f" [{format(lo * scale, spec)}, {format(hi * scale, spec)}]"
    n = row.get(f"{key}_n", row["n"])
    return text if n == row["n"] else f"{text} (n={n})"


def _delta(row: Mapping[str, Any], key: str, scale: float) -> str:
    """``+diff [low, high]`` of the row minus the task's MAP row, on the same resamples."""
    d = row.get(f"{key}_delta_mean")
    lo, hi = row.get(f"{key}_delta_ci_low"), row.get(f"{key}_delta_ci_high")
    if not (_finite(d) and _finite(lo) and _finite(hi)):
        return "–"
    spec = "+.2f" if scale != 1 else "+.4f"
    return f"{d * scale:{spec}} [{lo * scale:{spec}}, {hi * scale:{spec}}]"


def _plain(value: Any, spec: str) -> str:
    return format(value, spec) if _finite(value) else "–"


def used_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    return [c for c in COLUMNS if any(f"{c[1]}_mean" in r for r in rows)]


def _used(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]]) -> list:
    return [c for c in cols if any(_finite(r.get(c[1])) for r in rows)]


def _id_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": [r["model"] for r in rows],
            "task": [r["task"] for r in rows],
            "method": [r["method"] for r in rows],
            "n": [r["n"] for r in rows],
        }
    )


def results_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The report table: one row per method, cells in display units."""
    frame = _id_frame(rows)
    for name, key, spec in _used(rows, CONFIG_COLUMNS):
        frame[name] = [_plain(r.get(key), spec) for r in rows]
    for name, key, scale in used_columns(rows):
        frame[name] = [_cell(r, key, scale) for r in rows]
    for name, key, scale in DELTA_COLUMNS:
        if any(f"{key}_delta_mean" in r for r in rows):
            frame[name] = [_delta(r, key, scale) for r in rows]
    for name, key, spec in _used(rows, COMPUTE_COLUMNS):
        frame[name] = [_plain(r.get(key), spec) for r in rows]
    return frame


def markdown(frame: pd.DataFrame) -> str:
    return str(frame.to_markdown(index=False, tablefmt="pipe", disable_numparse=True))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return markdown(results_frame(rows))


def csv_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Numbers in explicit units: ``acc_pct_mean``, ``ece_pct_ci_low``, ``nll_mean`` ...

    A value a row lacks is an empty cell (NaN).
    """
    frame = _id_frame(rows)
    frame["kind"] = [r.get("kind", "") for r in rows]
    frame["seeds"] = [" ".join(map(str, r["seeds"])) for r in rows]
    for _, key, _ in (*CONFIG_COLUMNS, *COMPUTE_COLUMNS):
        frame[key] = _numbers([r.get(key) for r in rows])
    for _, key, scale in used_columns(rows):
        unit = "_pct" if scale != 1 else ""
        for stat in ("mean", "std", "ci_low", "ci_high"):
            frame[f"{key}{unit}_{stat}"] = _numbers([r.get(f"{key}_{stat}") for r in rows]) * scale
        if any(f"{key}_delta_mean" in r for r in rows):
            for stat in ("mean", "ci_low", "ci_high"):
                values = [r.get(f"{key}_delta_{stat}") for r in rows]
                frame[f"{key}{unit}_delta_{stat}"] = _numbers(values) * scale
    return frame


def _numbers(values: Sequence[Any]) -> pd.Series:
    return pd.Series([v if _finite(v) else math.nan for v in values], dtype=float)


# ----------------------------------------------------------------------------- diagnostics


def diagnostics_frame(diags: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (method, summary): chains, draws, R-hat, bulk and tail ESS (the numbers of
    ``arviz.summary``), the largest Geweke |z| of a chain and whether the checks passed."""
    records = [
        {
            "model": d["model"],
            "task": d["task"],
            "method": d["method"],
            "summary": name,
            "chains": s["n_chains"],
            "draws": s["n_draws"],
            "R-hat": _num(s["rhat"], ".3f"),
            "bulk ESS": _num(s["ess_bulk"], ".0f"),
            "tail ESS": _num(s["ess_tail"], ".0f"),
            "max |Geweke z|": _geweke(s),
            "ok": {"ok": "yes", "too few draws": "too few draws"}.get(s["status"], "**NO**"),
        }
        for d in diags
        for name, s in d["summaries"].items()
    ]
    return pd.DataFrame.from_records(records)


def _geweke(s: Mapping[str, Any]) -> str:
    """The largest stationarity |z| over the chains (bold above the threshold)."""
    z = [abs(v) for v in s["geweke_z"] if v is not None and math.isfinite(v)]
    if not s["stationarity_checked"] or not z:
        return "not checked"
    drifting = any(p.startswith("drifting") for p in s["problems"])
    return f"**{max(z):.1f}**" if drifting else f"{max(z):.1f}"


def diagnostics_table(diags: Sequence[Mapping[str, Any]]) -> str:
    return markdown(diagnostics_frame(diags))


def _num(x: Any, spec: str) -> str:
    return format(x, spec) if _finite(x) else "NaN"


def chains_frame(chains: Sequence[Mapping[str, Any]], names: Sequence[str]) -> pd.DataFrame:
    """One row per chain: seed, traced steps, per summary Geweke z (bold when drifting) and
    within-chain bulk ESS, and the chain's stationarity verdict."""
    records = []
    for c in chains:
        rec: dict[str, Any] = {
            "model": c["model"],
            "task": c["task"],
            "method": c["method"],
            "seed": c["seed"],
            "steps": c["n_draws"],
        }
        for name in names:
            s = c["summaries"].get(name)
            z = "–" if s is None else _num(s["geweke_z"], "+.2f")
            rec[f"z {name}"] = f"**{z}**" if s is not None and s["drifting"] else z
            rec[f"ESS {name}"] = "–" if s is None else _num(s["ess_bulk"], ".0f")
        if c.get("not_applicable"):
            rec["stationary"] = "n/a (cyclical: per cycle below)"
        else:
            stationary = c["stationary"]
            rec["stationary"] = {True: "yes", False: "**NO**", None: "not checked"}[stationary]
        records.append(rec)
    return pd.DataFrame.from_records(records)


def chains_csv_frame(chains: Sequence[Mapping[str, Any]], names: Sequence[str]) -> pd.DataFrame:
    records = []
    for c in chains:
        rec: dict[str, Any] = {
            k: c[k] for k in ("model", "task", "method", "seed", "run", "n_draws", "stationary")
        }
        rec["sampler_temperature"], rec["step_size"] = c["sampler_temperature"], c["step_size"]
        for name in names:
            s = c["summaries"].get(name, {})
            rec[f"{name}_geweke_z"] = s.get("geweke_z", math.nan)
            rec[f"{name}_ess_bulk"] = s.get("ess_bulk", math.nan)
        rec["not_applicable"] = c.get("not_applicable", "")
        records.append(rec)
    return pd.DataFrame.from_records(records)


# ----------------------------------------------------------------------------- cycles


def _means(cycles: Sequence[Mapping[str, Any]]) -> list[str]:
    """The trace summaries of the cycles: ``u``, ``nll``, ``probe_loglik``, then norms."""
    present = {n for c in cycles for n in c["trace_means"]}
    first = [n for n in ("u", "nll", "probe_loglik") if n in present]
    return first + sorted(present - set(first))


def _previous(c: Mapping[str, Any], key: str) -> Any:
    return (c["previous"] or {}).get(key)


def _within(c: Mapping[str, Any], key: str) -> Any:
    return (c["within"] or {}).get(key)


def _max_z(c: Mapping[str, Any]) -> str:
    zs = [abs(s["geweke_z"]) for s in c["summaries"].values() if _finite(s["geweke_z"])]
    if c["stationary"] is None or not zs:
        return "not checked"
    return f"**{max(zs):.1f}**" if c["drifting"] else f"{max(zs):.1f}"


def cycles_frame(cycles: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (chain, cycle): kept samples, traced sampling-stage steps, the mean of each
    trace summary over them, the largest Geweke |z| within the stage (bold when drifting), the
    cycle ensemble's test accuracy and NLL, and how far its predictive is from the previous
    cycle's (and the two halves of the cycle from each other), with the parameter jump over the
    walk within the cycle."""
    means = _means(cycles)
    records = []
    for c in cycles:
        m = c["metrics"]
        rec: dict[str, Any] = {
            "method": c["method"],
            "seed": c["seed"],
            "cycle": c["cycle"],
            "kept": c["kept"],
            "steps": "–" if c["n_steps"] is None else c["n_steps"],
        }
        for name in means:
            rec[f"mean {name}"] = _plain(c["trace_means"].get(name), ".4g")
        rec["max abs z"] = _max_z(c)
        rec["acc (%)"] = _plain(m.get("acc", math.nan) * 100, ".2f")
        rec["test nll"] = _plain(m.get("nll"), ".4f")
        dis = _previous(c, "disagreement")
        rec["disagree prev (%)"] = _plain(dis * 100 if _finite(dis) else None, ".1f")
        rec["TV prev"] = _plain(_previous(c, "tv"), ".3f")
        rec["sym KL prev"] = _plain(_previous(c, "sym_kl"), ".3f")
        half = _within(c, "disagreement")
        rec["disagree halves (%)"] = _plain(half * 100 if _finite(half) else None, ".1f")
        rec["TV halves"] = _plain(_within(c, "tv"), ".3f")
        rec["jump / walk"] = _plain(_previous(c, "jump_over_walk"), ".2f")
        records.append(rec)
    return pd.DataFrame.from_records(records)


def cycles_csv_frame(cycles: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``cycles.csv``: the same per (chain, cycle), numbers unscaled (fractions, nats)."""
    means = _means(cycles)
    records = []
    for c in cycles:
        rec: dict[str, Any] = {
            k: c[k]
            for k in ("model", "task", "method", "seed", "run", "cycle", "kept", "stationary")
        }
        rec["sampler_temperature"], rec["step_size"] = c["sampler_temperature"], c["step_size"]
        rec["kept_steps"] = " ".join(map(str, c["kept_steps"]))
        rec["n_steps"] = c["n_steps"]
        for name in means:
            rec[f"mean_{name}"] = c["trace_means"].get(name, math.nan)
        for name, s in c["summaries"].items():
            rec[f"{name}_geweke_z"] = s["geweke_z"]
        for key, value in c["metrics"].items():
            rec[f"test_{key}"] = value
        rec["previous_cycle"] = _previous(c, "cycle")
        for key in ("disagreement", "tv", "sym_kl", "jump", "walk", "jump_over_walk"):
            rec[f"prev_{key}"] = _previous(c, key)
        for key in ("disagreement", "tv", "sym_kl"):
            rec[f"halves_{key}"] = _within(c, key)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
