"""The rows of a task's table, from saved member predictions (no model is loaded).

Per configuration (a :class:`~bayesian_lora.reporting.discovery.Group` of seeds):

- **single** (every group): mean ± sd over seeds of each run's training-end test metrics (the
  ensemble of its kept samples; one sample for MAP);
- **deep_ensemble** (MAP groups of >= 2 seeds): the seeds' member probabilities averaged;
- **pooled** (sampler groups of >= 2 seeds), one row per entry of ``pooled_per_chain``: k kept
  samples of every chain (evenly spaced, ending at the last kept sample, as ``evaluate k=``;
  k = 1 is the last kept sample of each chain, ``null`` all of them) averaged into one ensemble;
- **temperature**: where ``evaluate ... calibrate=temperature`` was run on a row's runs, the same
  row after temperature scaling (fitted on validation), from that evaluation folder;
- **variants** (:attr:`EvalFolder.variant <bayesian_lora.reporting.discovery.EvalFolder.variant>`):
  where each seed's run was evaluated with ``mc_dropout=K`` (``<label> + MC dropout (K=10)``) or,
  for Laplace runs, with ``predictive=glm`` (``<label> GLM (mc)`` / ``GLM (probit)``), mean ± sd
  over the seeds that have it, from those evaluation folders; an evaluation of all of a group's
  runs together gives the pooled twin (``deep_ensemble + MC dropout (K=10)``, ``<label> pooled
  GLM (mc)``).

OOD AUROC columns come from a test evaluation with ``ood=`` of exactly the row's runs and members
(a row over seeds: each seed's own), against one OOD task per row (``ood_task``).

Every row carries a 95% bootstrap CI over test examples per metric (:mod:`.bootstrap`, paired
across the rows of a task) and compute columns: ``members`` (forward passes per test example;
``backward_passes`` where the evaluation also took gradients: the GLM predictive's Jacobian),
``train_grad_evals`` and ``train_seconds`` (summed over the row's runs with their warm starts,
a shared warm start counted once: :func:`bayesian_lora.compute.ensemble_cost`; a mean over seeds
for single rows) and ``eval_seconds`` where an evaluation folder recorded it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
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
    evals_of,
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
        "runs": [str(r.path) for r in runs],  # the run folders behind the row (the shift table)
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


def _seed_metrics(row: dict[str, Any], per_seed: Sequence[Mapping[str, Any]]) -> None:
    """Mean ± sd (ddof=1) over seeds of every metric, and how many seeds have it (``_n``)."""
    for key in METRIC_KEYS:
        values = [v for m in per_seed if (v := m.get(key)) is not None]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_n"] = len(values)


OOD_KEYS = ("ood_auroc_entropy", "ood_auroc_mi")


def _one_ood_task(
    ctx: RowContext, what: str, per_seed: Sequence[Sequence[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """Per seed, the OOD columns of its first candidate (``ood_columns``) against the one OOD
    task that most seeds were evaluated against (ties: by name), so that a row never averages
    AUROCs of different OOD tasks; a note names any task left out."""
    tasks = [
        {str(c["ood_task"]): c for c in reversed(cands) if "ood_task" in c} for cands in per_seed
    ]
    counts = Counter(t for per in tasks for t in per)
    if not counts:
        return [{} for _ in per_seed]
    task = min(counts, key=lambda t: (-counts[t], t))
    others = sorted(set(counts) - {task})
    if others:
        ctx.notes.append(
            f"{what}: OOD AUROCs from the evaluation(s) against {task} ({counts[task]} of "
            f"{len(per_seed)}); those against {', '.join(others)} are left out (one OOD task "
            "per row)"
        )
    return [
        {k: v for k, v in per[task].items() if k in (*OOD_KEYS, "ood_task")} if task in per else {}
        for per in tasks
    ]


def _ood_task(row: dict[str, Any], per_seed: Sequence[Mapping[str, Any]]) -> None:
    task = next((str(c["ood_task"]) for c in per_seed if c.get("ood_task")), None)
    if task is not None:
        row["ood_task"] = task


def _mean_probs(a: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The mean predictive ``[N, C]`` of a predictions file's members."""
    return None if a is None else a["predictions"].astype(np.float64).mean(axis=0)


def _seed_ci(
    ctx: RowContext,
    group: Group,
    row: dict[str, Any],
    probs: Sequence[np.ndarray | None],
    arrays: Sequence[Mapping[str, np.ndarray] | None],
) -> None:
    """The CI of a row over seeds from each seed's predictive, where every seed has one and
    their test labels agree."""
    if not probs or any(p is None for p in probs) or arrays[0] is None:
        return
    y = arrays[0]["labels"]
    if all(a is not None and np.array_equal(a["labels"], y) for a in arrays):
        row.update(_ci(ctx, group, [p for p in probs if p is not None], y, row["method"]))


# ----------------------------------------------------------------------------- single models


def group_row(group: Group, ctx: RowContext | None = None) -> dict[str, Any]:
    """Mean and sd over seeds of every metric, the CI of the seed-mean, per-seed compute; the
    OOD AUROCs of each seed's plain evaluation of all its samples with ``ood=``."""
    ctx = ctx or RowContext()
    row = _base(group, group.label, "single", group.runs)
    arrays = [ctx.predictions(r.path) for r in group.runs]
    counts = [None if a is None else int(a["predictions"].shape[0]) for a in arrays]
    members = [m for m in counts if m is not None]
    ood = _one_ood_task(
        ctx,
        group.label,
        [
            [e.ood for e in eval_folders_of(ctx.evals, [r], m)]
            for r, m in zip(group.runs, counts, strict=True)
        ],
    )
    _seed_metrics(row, [{**r.metrics, **o} for r, o in zip(group.runs, ood, strict=True)])
    _ood_task(row, ood)
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
    _seed_ci(ctx, group, row, [_mean_probs(a) for a in arrays], arrays)
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
    """One ensemble of the chosen member rows of each run's saved predictions; its OOD AUROCs
    and eval seconds from a plain evaluation of exactly these runs and samples."""
    labels = arrays[0]["labels"]
    preds = np.concatenate(
        [a["predictions"][rows] for a, rows in zip(arrays, member_rows, strict=True)]
    )
    row = _base(group, method, kind, group.runs)
    _metrics(row, ensemble_metrics(preds, labels, _task_metric(group), _obs_std(group)))
    row["members"] = int(preds.shape[0])
    # per run (``runs``' order), the rows of its saved predictions averaged here: the shift
    # table combines the same members of each run's own shift evaluation (reporting/shift.py)
    row["member_samples"] = [[int(i) for i in r] for r in member_rows]
    row.update(ensemble_cost([r.compute for r in group.runs]))
    plain = eval_folders_of(ctx.evals, group.runs, row["members"], member_rows)
    row["eval_seconds"] = _eval_seconds(plain[:1])
    (ood,) = _one_ood_task(ctx, method, [[e.ood for e in plain]])
    _metrics(row, ood)
    _ood_task(row, [ood])
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
    if not all(np.array_equal(a["labels"], labels) for a in arrays):  # shapes compared too
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
    rows = [np.arange(a["predictions"].shape[0]) for a in arrays]
    return _ensemble_row(ctx, group, ensemble_label(group), "deep_ensemble", rows, arrays), None


def ensemble_label(group: Group) -> str:
    """The label of a group's runs as one ensemble: ``deep_ensemble`` for MAP seeds, else
    ``<label> pooled``."""
    return (
        "deep_ensemble" + group.label.removeprefix(MAP) if group.is_map else f"{group.label} pooled"
    )


def pooled_label(group: Group, per_chain: int | None) -> str:
    return f"{ensemble_label(group)} ({'all' if per_chain is None else per_chain}/chain)"


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


# ----------------------------------------------------------------------------- evaluation-folder rows
# Rows read from ``evaluate`` output folders (temperature scaling, MC dropout, the GLM predictive):
# ``columns`` gives the metric and OOD columns of one folder, ``probs`` its predictive [N, C].
Columns = Callable[[EvalFolder], dict[str, Any]]
Probs = Callable[[RowContext, EvalFolder], np.ndarray | None]


def _seeds_row(
    group: Group,
    ctx: RowContext,
    method: str,
    kind: str,
    found: Sequence[tuple[SweepRun, EvalFolder]],
    columns: Columns,
    probs: Probs,
) -> dict[str, Any]:
    """A row over the seeds in ``found``, each from its own evaluation folder: mean ± sd of the
    columns, the CI of the seed-mean, per-seed training cost, mean eval seconds."""
    runs = [r for r, _ in found]
    row = _base(group, method, kind, runs)
    cols = [columns(e) for _, e in found]
    ood = _one_ood_task(ctx, method, [[c] for c in cols])
    plain = [{k: v for k, v in c.items() if k not in OOD_KEYS} for c in cols]
    _seed_metrics(row, [{**c, **o} for c, o in zip(plain, ood, strict=True)])
    _ood_task(row, ood)
    row["members"] = _count([e.forward_passes for _, e in found])
    _backward_passes(row, [e for _, e in found])
    row.update(per_seed_cost(runs))
    row["eval_seconds"] = _eval_seconds([e for _, e in found])
    row["from"] = [str(e.path) for _, e in found]
    _seed_ci(
        ctx,
        group,
        row,
        [probs(ctx, e) for _, e in found],
        [ctx.predictions(e.path) for _, e in found],
    )
    return row


def _pooled_row(
    group: Group,
    ctx: RowContext,
    method: str,
    kind: str,
    e: EvalFolder,
    columns: Columns,
    probs: Probs,
) -> dict[str, Any]:
    """A row from one evaluation folder of all of the group's runs together."""
    row = _base(group, method, kind, group.runs)
    cols = columns(e)
    _metrics(row, cols)
    _ood_task(row, [cols])
    row["members"] = e.forward_passes
    _backward_passes(row, [e])
    row.update(ensemble_cost([r.compute for r in group.runs]))
    row["eval_seconds"] = e.eval_seconds
    row["from"] = [str(e.path)]
    p, a = probs(ctx, e), ctx.predictions(e.path)
    if p is not None and a is not None:
        row.update(_ci(ctx, group, [p], a["labels"], method))
    return row


def _backward_passes(row: dict[str, Any], evals: Sequence[EvalFolder]) -> None:
    passes = [e.backward_passes for e in evals]
    if any(p is not None for p in passes):
        row["backward_passes"] = _count([int(p or 0) for p in passes])


# ----------------------------------------------------------------------------- temperature scaling


def _calibrated(ctx: RowContext, e: EvalFolder) -> np.ndarray | None:
    a = ctx.predictions(e.path)
    if a is None or "calibrated_predictions" not in a:
        return None
    return a["calibrated_predictions"].astype(np.float64)


def _calibrated_evals(ctx: RowContext, runs: Sequence[SweepRun]) -> list[EvalFolder]:
    found = [e for e in evals_of(ctx.evals, runs) if e.plain and e.calibration is not None]
    return sorted(found, key=lambda e: (-e.num_members, e.path.name))


def _cal_columns(e: EvalFolder) -> dict[str, Any]:
    """The calibrated predictive's metrics, and its OOD AUROC by entropy (the tempered mean
    predictive has no mutual information)."""
    cal = e.calibration or {}
    out: dict[str, Any] = {k: float(v) for k, v in cal["ensemble"].items() if k in METRIC_KEYS}
    if isinstance(cal.get("ood_entropy"), Mapping):
        out["ood_auroc_entropy"] = float(cal["ood_entropy"]["auroc"])
        if "ood_task" in e.ood:
            out["ood_task"] = e.ood["ood_task"]
    return out


def temperature_single_row(group: Group, ctx: RowContext) -> dict[str, Any] | None:
    """``<group> + temperature``: each seed's own temperature-scaled evaluation, mean ± sd."""
    found = [(r, ev[0]) for r in group.runs if (ev := _calibrated_evals(ctx, [r]))]
    if not found:
        return None
    method = f"{group.label} + temperature"
    row = _seeds_row(group, ctx, method, "temperature", found, _cal_columns, _calibrated)
    row["scaling_temperature"] = _mean(
        [float((e.calibration or {})["temperature"]) for _, e in found]
    )
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
        at = next((i for i, r in enumerate(base_rows) if r.get("members") == e.num_members), None)
        base = (
            base_rows[at]["method"]
            if at is not None
            else f"{group.label} pooled ({e.num_members} members)"
        )
        row = _pooled_row(
            group, ctx, f"{base} + temperature", "temperature", e, _cal_columns, _calibrated
        )
        row["scaling_temperature"] = float((e.calibration or {})["temperature"])
        out.append((at, row))
    return out


# ----------------------------------------------------------------------------- MC dropout, GLM


def _variant_columns(e: EvalFolder) -> dict[str, Any]:
    """The evaluation's (uncalibrated) ensemble metrics and OOD AUROCs; for the GLM predictive
    of a regression task its closed-form NLL and RMSE (``predictive.closed_form``)."""
    out: dict[str, Any] = {
        k: float(v) for k, v in e.result.get("ensemble", {}).items() if k in METRIC_KEYS
    }
    out.update(
        {k: float(v) for k, v in (e.result.get("predictive") or {}).get("closed_form", {}).items()}
    )
    return {**out, **e.ood}


def _variant_probs(ctx: RowContext, e: EvalFolder) -> np.ndarray | None:
    return _mean_probs(ctx.predictions(e.path))


def _variants(evals: Sequence[EvalFolder]) -> list[str]:
    """The variants among ``evals``: MC dropout by K, then the GLM predictive by link."""
    by_name = {e.variant: (e.glm_link is not None, e.mc_dropout, e.glm_link or "") for e in evals}
    return sorted((v for v in by_name if v is not None), key=lambda v: by_name[v])


def _best(evals: Sequence[EvalFolder]) -> EvalFolder:
    """Of several evaluations of one kind: one with OOD inputs, then the most members."""
    return sorted(evals, key=lambda e: (not e.ood, -e.num_members, e.path.name))[0]


def variant_single_rows(group: Group, ctx: RowContext) -> list[dict[str, Any]]:
    """``<label> + MC dropout (K=..)`` and ``<label> GLM (<link>)``: per variant, each seed's
    own evaluation of that kind (all its samples), mean ± sd over the seeds that have one."""
    per_run = {r.path: evals_of(ctx.evals, [r]) for r in group.runs}
    rows = []
    for variant in _variants([e for evals in per_run.values() for e in evals]):
        found = [
            (r, _best(mine))
            for r in group.runs
            if (mine := [e for e in per_run[r.path] if e.variant == variant])
        ]
        method = f"{group.label}{variant}"
        rows.append(
            _seeds_row(group, ctx, method, "variant", found, _variant_columns, _variant_probs)
        )
    return rows


def variant_pooled_rows(group: Group, ctx: RowContext) -> list[dict[str, Any]]:
    """``deep_ensemble + MC dropout (K=..)``, ``<label> pooled GLM (<link>)``: an evaluation of
    that kind of all of the group's runs together."""
    if len(group.runs) < 2:
        return []
    evals = evals_of(ctx.evals, group.runs)
    rows = []
    for variant in _variants(evals):
        e = _best([e for e in evals if e.variant == variant])
        method = f"{ensemble_label(group)}{variant}"
        rows.append(_pooled_row(group, ctx, method, "variant", e, _variant_columns, _variant_probs))
    return rows


# ----------------------------------------------------------------------------- all rows


def table_rows(
    groups: Sequence[Group], ctx: RowContext | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per group: its single row (and + temperature, + MC dropout, GLM), then its deep-ensemble
    or pooled rows, each followed by its temperature-scaled twin where one was evaluated, then
    the pooled MC dropout and GLM rows."""
    ctx = ctx or RowContext()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for g in groups:
        rows.append(group_row(g, ctx))
        single_t = temperature_single_row(g, ctx)
        rows += [single_t] if single_t else []
        rows += variant_single_rows(g, ctx)
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
        rows += variant_pooled_rows(g, ctx)
    paired_deltas(rows, ctx)
    notes += list(dict.fromkeys(ctx.notes))
    return rows, notes


def reference_rows(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Per (model, task), the row the differences are taken against: its first MAP row over
    seeds (``kind`` single, sampler MAP)."""
    refs: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        if row.get("kind") == "single" and row.get("sampler") == MAP:
            refs.setdefault((str(row["model"]), str(row["task"])), row)
    return refs


def paired_deltas(rows: Sequence[dict[str, Any]], ctx: RowContext) -> None:
    """Each row minus its task's first MAP row (the single model over seeds), per metric, with
    the CI of the difference on the same resamples (``<metric>_delta_mean`` / ``_ci_low`` /
    ``_ci_high``; ``delta_vs`` names the reference)."""
    refs = reference_rows(rows)
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
