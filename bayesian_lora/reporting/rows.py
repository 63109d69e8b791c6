"""The rows of a task's table, from saved member predictions (no model is loaded).

Per configuration (a :class:`~bayesian_lora.reporting.discovery.Group` of seeds):

- **single** (every group): mean ± sd over seeds of each run's training-end test metrics (the
  ensemble of its kept samples; one sample for MAP);
- **deep_ensemble** (MAP groups of >= 2 seeds): the seeds' member probabilities averaged;
- **pooled** (sampler groups of >= 2 seeds), one row per entry of ``pooled_per_chain``: k kept
  samples of every chain (evenly spaced, ending at the last kept sample, as ``evaluate k=``;
  k = 1 is the last kept sample of each chain, ``null`` all of them) averaged into one ensemble;
- **temperature**: where ``evaluate ... calibrate=temperature`` was run on a row's runs, the same
  row after temperature scaling (fitted on validation), from that evaluation folder.

Every row carries a 95% bootstrap CI over test examples per metric (:mod:`.bootstrap`, paired
across the rows of a task) and compute columns: ``members`` (forward passes per test example),
``train_grad_evals`` and ``train_seconds`` (summed over the row's runs with their warm starts,
a shared warm start counted once: :func:`bayesian_lora.compute.ensemble_cost`; a mean over seeds
for single rows) and ``eval_seconds`` where an evaluation folder recorded it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayesian_lora.compute import ensemble_cost, total_grad_evals, total_train_seconds
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.members import spaced_indices
from bayesian_lora.evaluation.metrics import ensemble_metrics
from bayesian_lora.evaluation.write import PREDICTIONS_FILE, load_predictions
from bayesian_lora.reporting.bootstrap import (
    CI_METRICS,
    Bootstrap,
    bootstrap_indices,
    ci_columns,
    mean_replicates,
    percentile_ci,
    replicates,
)
from bayesian_lora.reporting.discovery import (
    EvalFolder,
    Group,
    SweepRun,
    eval_folders_of,
    ood_columns,
)
from bayesian_lora.runs import MAP, SampleFileError

#: The metric keys of the table (fractions; formatting scales them).
METRIC_KEYS = (
    "acc",
    "nll",
    "ece",
    "brier",
    "f1",
    "mcc",
    "rmse",
    "pearson",
    "spearman",
    "ood_auroc_entropy",
    "ood_auroc_mi",
)


@dataclass
class RowContext:
    """What every row of one report shares: the bootstrap, the evaluation folders, the member
    counts of the pooled rows, a cache of loaded predictions, the reference labels per task."""

    boot: Bootstrap = field(default_factory=Bootstrap)
    evals: Sequence[EvalFolder] = ()
    pooled_per_chain: Sequence[int | None] = (1, None)
    notes: list[str] = field(default_factory=list)
    _preds: dict[Path, dict[str, np.ndarray] | None] = field(default_factory=dict)
    _labels: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _idx: dict[int, np.ndarray] = field(default_factory=dict)
    #: (model, task, method) -> (test-set size, metric -> bootstrap replicates [B])
    replicates: dict[tuple[str, str, str], tuple[int, dict[str, np.ndarray]]] = field(
        default_factory=dict
    )

    def predictions(self, path: Path) -> dict[str, np.ndarray] | None:
        """``predictions.safetensors`` of a folder (None, with a note, when unreadable)."""
        if path not in self._preds:
            try:
                self._preds[path] = load_predictions(path / PREDICTIONS_FILE)
            except SampleFileError as err:
                self.notes.append(f"no CI from {path.name}: {err}")
                self._preds[path] = None
        return self._preds[path]

    def indices(self, n: int) -> np.ndarray:
        if n not in self._idx:
            self._idx[n] = bootstrap_indices(n, self.boot.resamples, self.boot.seed)
        return self._idx[n]

    def paired(self, model: str, task: str, labels: np.ndarray, what: str) -> bool:
        """Whether ``labels`` are the task's test labels seen first (rows are then paired)."""
        ref = self._labels.setdefault((model, task), labels)
        if ref.shape == labels.shape and np.array_equal(ref, labels):
            return True
        self.notes.append(
            f"{what}: its test set differs from the other rows of {model}/{task} "
            f"({len(labels)} against {len(ref)} examples): its CI is not paired with theirs"
        )
        return False


# ----------------------------------------------------------------------------- helpers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def per_seed_cost(runs: Sequence[Any]) -> dict[str, float | None]:
    """A single-run row's training cost: the mean over its seeds of each run's own cost plus its
    warm start's (:mod:`bayesian_lora.compute`)."""
    return {
        "train_grad_evals": _mean([_f(total_grad_evals(r.compute)) for r in runs]),
        "train_seconds": _mean([total_train_seconds(r.compute) for r in runs]),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def _base(group: Group, method: str, kind: str, runs: Sequence[SweepRun]) -> dict[str, Any]:
    return {
        "method": method,
        "kind": kind,
        "model": group.first.model,
        "task": group.first.task,
        "n": len(runs),
        "seeds": [r.seed for r in runs],
        "sampler": group.first.sampler,
        "sampler_temperature": group.first.temperature,
        "step_size": group.first.step_size,
    }


def _task_metric(group: Group) -> str:
    return get_task(group.first.task).metric


def _obs_std(group: Group) -> float | None:
    task = get_task(group.first.task)
    return float(group.first.config["data"].get("obs_std", 0.5)) if task.is_regression else None


def _ci(
    ctx: RowContext, group: Group, probs: Sequence[np.ndarray], labels: np.ndarray, what: str
) -> dict[str, float]:
    """CIs of the mean over ``probs`` (one predictive ``[N, C]`` per model) on paired resamples."""
    if _obs_std(group) is not None:
        return {}  # regression: no CI (the tables here are classification)
    # a test set unlike the task's gets a CI on its own resamples, not paired (a note says so)
    ctx.paired(group.first.model, group.first.task, labels, what)
    idx = ctx.indices(len(labels))
    reps = mean_replicates([replicates(p, labels, idx, _task_metric(group)) for p in probs])
    ctx.replicates[(group.first.model, group.first.task, what)] = (len(labels), reps)
    return ci_columns(reps, ctx.boot.level)


def _metrics(row: dict[str, Any], metrics: Mapping[str, float]) -> None:
    row.update({f"{k}_mean": float(metrics[k]) for k in METRIC_KEYS if k in metrics})


def _eval_seconds(evals: Sequence[EvalFolder]) -> float | None:
    secs = [e.eval_seconds for e in evals]
    return _mean(secs) if secs else None


# ----------------------------------------------------------------------------- single models


def group_row(group: Group, ctx: RowContext | None = None) -> dict[str, Any]:
    """Mean and sd over seeds of every metric, the CI of the seed-mean, per-seed compute."""
    ctx = ctx or RowContext()
    row = _base(group, group.label, "single", group.runs)
    for key in METRIC_KEYS:
        values = [v for r in group.runs if (v := r.metrics.get(key)) is not None]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_n"] = len(values)
    arrays = [ctx.predictions(r.path) for r in group.runs]
    members = [int(a["predictions"].shape[0]) for a in arrays if a is not None]
    row["members"] = _count(members) if len(members) == len(arrays) else None
    row.update(per_seed_cost(group.runs))
    per_run = [
        eval_folders_of(ctx.evals, [r], m) for r, m in zip(group.runs, members, strict=False)
    ]
    row["eval_seconds"] = (
        _eval_seconds([e[0] for e in per_run])
        if len(per_run) == len(group.runs) and all(per_run)
        else None
    )
    if all(a is not None for a in arrays):
        ok = [a for a in arrays if a is not None]
        labels = ok[0]["labels"]
        if all(np.array_equal(a["labels"], labels) for a in ok):
            probs = [a["predictions"].astype(np.float64).mean(axis=0) for a in ok]
            row.update(_ci(ctx, group, probs, labels, group.label))
    return row


def _count(values: Sequence[int]) -> int | float | None:
    """The members of every seed (an int), or their mean where the seeds differ."""
    if not values:
        return None
    return values[0] if len(set(values)) == 1 else float(np.mean(values))


def _f(x: int | None) -> float | None:
    return None if x is None else float(x)


# ----------------------------------------------------------------------------- ensembles


def _ensemble_row(
    ctx: RowContext,
    group: Group,
    method: str,
    kind: str,
    member_rows: Sequence[np.ndarray],
    arrays: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, Any]:
    """One ensemble of the chosen member rows of each run's saved predictions."""
    labels = arrays[0]["labels"]
    preds = np.concatenate(
        [a["predictions"][rows] for a, rows in zip(arrays, member_rows, strict=True)]
    )
    row = _base(group, method, kind, group.runs)
    _metrics(row, ensemble_metrics(preds, labels, _task_metric(group), _obs_std(group)))
    row["members"] = int(preds.shape[0])
    row.update(ensemble_cost([r.compute for r in group.runs]))
    plain = eval_folders_of(ctx.evals, group.runs, row["members"])
    row["eval_seconds"] = _eval_seconds(plain[:1])
    for e in plain:
        if e.result.get("ood"):
            ood = ood_columns(e.result["ood"])
            _metrics(row, ood)
            row["ood_task"] = ood["ood_task"]
            break
    row.update(_ci(ctx, group, [preds.astype(np.float64).mean(axis=0)], labels, method))
    return row


def _arrays(
    ctx: RowContext, group: Group, what: str
) -> tuple[list[dict[str, np.ndarray]] | None, str | None]:
    arrays = []
    for run in group.runs:
        a = ctx.predictions(run.path)
        if a is None:
            return None, f"{what} of {group.label} skipped: no predictions in {run.path.name}"
        arrays.append(a)
    labels = arrays[0]["labels"]
    if any(
        a["labels"].shape != labels.shape or not np.array_equal(a["labels"], labels) for a in arrays
    ):
        return None, f"{what} of {group.label} skipped: the runs' test sets differ"
    return arrays, None


def deep_ensemble_row(
    group: Group, ctx: RowContext | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """Average the saved probabilities of >= 2 MAP runs (row, or None and the reason)."""
    ctx = ctx or RowContext()
    arrays, why = _arrays(ctx, group, "deep ensemble")
    if arrays is None:
        return None, why
    method = "deep_ensemble" + group.label.removeprefix("map")
    rows = [np.arange(a["predictions"].shape[0]) for a in arrays]
    return _ensemble_row(ctx, group, method, "deep_ensemble", rows, arrays), None


def pooled_label(group: Group, per_chain: int | None) -> str:
    return f"{group.label} pooled ({'all' if per_chain is None else per_chain}/chain)"


def pooled_rows(group: Group, ctx: RowContext) -> tuple[list[dict[str, Any]], list[str]]:
    """The chains of a sampler group pooled at each ``ctx.pooled_per_chain`` (k per chain)."""
    arrays, why = _arrays(ctx, group, "pooled chains")
    if arrays is None:
        return [], [why] if why else []
    out, seen = [], set()
    for k in ctx.pooled_per_chain:
        counts = [int(a["predictions"].shape[0]) for a in arrays]
        takes = [c if k is None else min(int(k), c) for c in counts]
        if sum(takes) in seen:
            continue  # the same ensemble as an earlier k (chains shorter than k)
        seen.add(sum(takes))
        rows = [np.array(spaced_indices(c, t)) for c, t in zip(counts, takes, strict=True)]
        row = _ensemble_row(ctx, group, pooled_label(group, k), "pooled", rows, arrays)
        row["per_chain"] = k
        out.append(row)
    return out, []


# ----------------------------------------------------------------------------- temperature scaling


def _calibrated(e: EvalFolder, ctx: RowContext) -> np.ndarray | None:
    a = ctx.predictions(e.path)
    if a is None or "calibrated_predictions" not in a:
        return None
    return a["calibrated_predictions"].astype(np.float64)


def _calibrated_evals(ctx: RowContext, runs: Sequence[SweepRun]) -> list[EvalFolder]:
    want = frozenset(r.path.resolve() for r in runs)
    found = [
        e
        for e in ctx.evals
        if e.runs == want
        and e.calibration is not None
        and e.result.get("split", "test") == "test"
        and not e.result.get("mc_dropout")
    ]
    return sorted(found, key=lambda e: (-e.num_members, e.path.name))


def _cal_columns(cal: Mapping[str, Any]) -> dict[str, float]:
    out = {k: float(v) for k, v in cal["ensemble"].items() if k in METRIC_KEYS}
    if isinstance(cal.get("ood_entropy"), Mapping):
        out["ood_auroc_entropy"] = float(cal["ood_entropy"]["auroc"])
    return out


def temperature_single_row(group: Group, ctx: RowContext) -> dict[str, Any] | None:
    """``<group> + temperature``: each seed's own temperature-scaled evaluation, mean ± sd."""
    found = [(r, ev[0]) for r in group.runs if (ev := _calibrated_evals(ctx, [r]))]
    if not found:
        return None
    runs = [r for r, _ in found]
    row = _base(group, f"{group.label} + temperature", "temperature", runs)
    cols = [_cal_columns(e.calibration or {}) for _, e in found]
    for key in METRIC_KEYS:
        values = [c[key] for c in cols if key in c]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_n"] = len(values)
    row["scaling_temperature"] = _mean(
        [float((e.calibration or {})["temperature"]) for _, e in found]
    )
    row["members"] = _count([e.num_members for _, e in found])
    row.update(per_seed_cost(runs))
    row["eval_seconds"] = _eval_seconds([e for _, e in found])
    row["from"] = [str(e.path) for _, e in found]
    probs = [p for _, e in found if (p := _calibrated(e, ctx)) is not None]
    labels = [ctx.predictions(e.path) for _, e in found]
    if len(probs) == len(found) and labels[0] is not None:
        y = labels[0]["labels"]
        if all(a is not None and np.array_equal(a["labels"], y) for a in labels):
            row.update(_ci(ctx, group, probs, y, row["method"]))
    return row


def temperature_pooled_rows(
    group: Group, ctx: RowContext, base_rows: Sequence[Mapping[str, Any]]
) -> list[tuple[int | None, dict[str, Any]]]:
    """``<ensemble row> + temperature`` for every temperature-scaled evaluation of all of the
    group's runs together; paired with the index of the base row of the same member count."""
    if len(group.runs) < 2:
        return []
    out: list[tuple[int | None, dict[str, Any]]] = []
    for e in _calibrated_evals(ctx, group.runs):
        cal = e.calibration or {}
        at = next((i for i, r in enumerate(base_rows) if r.get("members") == e.num_members), None)
        base = (
            base_rows[at]["method"]
            if at is not None
            else f"{group.label} pooled ({e.num_members} members)"
        )
        row = _base(group, f"{base} + temperature", "temperature", group.runs)
        _metrics(row, _cal_columns(cal))
        row["scaling_temperature"] = float(cal["temperature"])
        row["members"] = e.num_members
        row.update(ensemble_cost([r.compute for r in group.runs]))
        row["eval_seconds"] = e.eval_seconds
        row["from"] = [str(e.path)]
        probs = _calibrated(e, ctx)
        a = ctx.predictions(e.path)
        if probs is not None and a is not None:
            row.update(_ci(ctx, group, [probs], a["labels"], row["method"]))
        out.append((at, row))
    return out


# ----------------------------------------------------------------------------- all rows


def table_rows(
    groups: Sequence[Group], ctx: RowContext | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per group: its single row (and + temperature), then its deep-ensemble or pooled rows,
    each followed by its temperature-scaled twin where one was evaluated."""
    ctx = ctx or RowContext()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for g in groups:
        rows.append(group_row(g, ctx))
        single_t = temperature_single_row(g, ctx)
        rows += [single_t] if single_t else []
        ensembles: list[dict[str, Any]] = []
        if g.is_map and len(g.runs) >= 2:
            row, note = deep_ensemble_row(g, ctx)
            ensembles += [row] if row else []
            notes += [note] if note else []
        elif not g.is_map and len(g.runs) >= 2:
            pooled, why = pooled_rows(g, ctx)
            ensembles += pooled
            notes += why
        scaled = temperature_pooled_rows(g, ctx, ensembles)
        for i, base in enumerate(ensembles):
            rows.append(base)
            rows += [r for at, r in scaled if at == i]
        rows += [r for at, r in scaled if at is None]
    paired_deltas(rows, ctx)
    notes += list(dict.fromkeys(ctx.notes))
    return rows, notes


def paired_deltas(rows: Sequence[dict[str, Any]], ctx: RowContext) -> None:
    """Each row minus its task's first MAP row (the single model over seeds), per metric, with
    the CI of the difference on the same resamples (``<metric>_delta_mean`` / ``_ci_low`` /
    ``_ci_high``; ``delta_vs`` names the reference)."""
    refs: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        if row.get("kind") == "single" and row.get("sampler") == MAP:
            refs.setdefault((row["model"], row["task"]), row)
    for row in rows:
        ref = refs.get((row["model"], row["task"]))
        if ref is None or ref is row:
            continue
        mine = ctx.replicates.get((row["model"], row["task"], row["method"]))
        theirs = ctx.replicates.get((ref["model"], ref["task"], ref["method"]))
        if mine is None or theirs is None or mine[0] != theirs[0]:
            continue  # no CI, or not the same test set: no paired difference
        row["delta_vs"] = ref["method"]
        for key in CI_METRICS:
            if key in mine[1] and key in theirs[1] and f"{key}_mean" in row:
                row[f"{key}_delta_mean"] = row[f"{key}_mean"] - ref[f"{key}_mean"]
                lo, hi = percentile_ci(mine[1][key] - theirs[1][key], ctx.boot.level)
                row[f"{key}_delta_ci_low"], row[f"{key}_delta_ci_high"] = lo, hi
