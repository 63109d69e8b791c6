"""The report's "Under shift" tables: the rows of a task's table scored on other tasks' test sets.

``python -m bayesian_lora.evaluate run_dir=<run> shift=[arc_e,arc_c]`` (or ``run_dirs=[...]`` for
a deep ensemble or pooled chains) scores the same members on each shift task's test split and
saves a ``shift`` block in ``metrics.json`` (``trained_on``, per-task metrics) and the member
probabilities per shift task (``shift_<task>_predictions`` / ``shift_<task>_labels`` in
``predictions.safetensors``). Here every row of a task's results table gets, per shift task,
the metrics of the evaluation(s) of exactly its runs and members:

- a row over seeds (``kind == "single"``): each seed's own evaluation of all its kept samples,
  mean ± sd over the seeds that have one (``(n=..)`` when fewer than the row's seeds);
- an ensemble row (deep ensemble, pooled chains): one evaluation of all of its runs together
  with the row's member count; where there is none for a shift task, the row's members combined
  from each of its runs' own evaluation (``evaluate run_dir=<run> shift=[...]``, all its kept
  samples: ``shift_<task>_predictions`` ``[M, N, C]``), the members chosen as the in-domain row
  chose them (its ``member_samples``: every sample of every seed for the deep ensemble, k evenly
  spaced per chain for pooled k/chain), where every run has one of that task on the same
  examples (equal labels); otherwise a note and no number;
- a row read from evaluation folders (``from``: MC dropout, GLM predictive): the shift block of
  those folders;
- a temperature-scaled row: none (``shift=`` scores the uncalibrated predictive).

The numbers are recomputed from the saved shift predictions (``ensemble_metrics``, the function
``evaluate`` wrote them with; a note names any folder whose ``metrics.json`` disagrees), with a
percentile bootstrap CI over the shift task's examples (:mod:`.bootstrap`: the same resamples
for every row of one shift task, so rows are paired) and the paired difference to the task's
MAP row (:func:`.rows.paired_deltas`). A row without a shift evaluation gets a note, not a
number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.metrics import ensemble_metrics
from bayesian_lora.reporting.bootstrap import ci_columns, mean_replicates, replicates
from bayesian_lora.reporting.discovery import EvalFolder, SweepRun, eval_folders_of
from bayesian_lora.reporting.rows import RowContext, mean_std, paired_deltas
from bayesian_lora.reporting.tables import COLUMNS, _cell, _plain, csv_frame, markdown

#: The metrics of a shift row (fractions), as ``evaluate``'s shift table has them.
SHIFT_METRICS = ("acc", "nll", "ece", "brier")
#: The markdown table's columns per shift task (the in-domain table's labels and scales).
SHIFT_COLUMNS = tuple(c for c in COLUMNS if c[1] in ("acc", "nll", "ece"))
#: What a shift row copies from its in-domain row (what it is and what it cost).
CARRIED = (
    "method",
    "kind",
    "model",
    "task",
    "n",
    "sampler",
    "sampler_temperature",
    "step_size",
    "members",
    "train_grad_evals",
    "train_seconds",
)
#: |recomputed - metrics.json| above this (absolute, on fractions and nats) is noted.
TOLERANCE = 1e-5

HOW_TO_READ = (
    "The rows of each task's table scored on other tasks' test sets (`python -m "
    "bayesian_lora.evaluate run_dir=<run> shift=[<task>,...]` for each seed of a row over "
    "seeds, `'run_dirs=[...]'` of exactly an ensemble row's runs and members for that row; "
    "without the latter, an ensemble row combines its members' saved shift predictions from "
    "each of its runs' own evaluation, as named below its table). "
    "Per shift task: accuracy and ECE in percent, NLL in nats per example, `mean ± sd [CI]` "
    "with the sd over seeds and a {level:.0%} percentile bootstrap CI over that task's examples "
    "(B = {resamples}, seed {seed}, the same resamples for every row of one shift task), and "
    "`n` = its examples (`ood_max_samples` subsets them). Recomputed from the saved shift "
    "predictions; a row without a shift evaluation is named below its table."
)


def shift_tasks_of(e: EvalFolder) -> list[str]:
    """The shift tasks an evaluation folder scored (its ``metrics.json`` ``shift`` block)."""
    block = e.result.get("shift")
    if not isinstance(block, Mapping) or not isinstance(block.get("tasks"), Mapping):
        return []
    return [str(t) for t in block["tasks"] if t != block.get("trained_on")]


def shift_report(
    rows: Sequence[Mapping[str, Any]], runs: Sequence[SweepRun], ctx: RowContext
) -> dict[str, Any]:
    """``{"sections": [...], "rows": [...]}``: per (model, task) with a shift evaluation, its
    shift tasks, the rows without one (``missing``) and notes; one row per (row, shift task)."""
    by_path = {r.path.resolve(): r for r in runs}
    shifted = [e for e in ctx.evals if shift_tasks_of(e)]
    out: dict[str, Any] = {"sections": [], "rows": []}
    if not shifted:
        return out
    before = len(ctx.notes)
    by_task: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_task.setdefault((str(row["model"]), str(row["task"])), []).append(row)
    for (model, task), sub in by_task.items():
        mine = [e for e in shifted if _model_task(e, by_path) == (model, task)]
        if mine:
            section, section_rows = _section(model, task, sub, mine, by_path, ctx)
            out["sections"].append(section)
            out["rows"] += section_rows
    if len(ctx.notes) > before:  # unreadable predictions files met here
        out["notes"] = list(dict.fromkeys(ctx.notes[before:]))
        del ctx.notes[before:]
    return out


def _model_task(e: EvalFolder, by_path: Mapping[Path, SweepRun]) -> tuple[str, str] | None:
    run = by_path.get(next(iter(e.runs)))
    return None if run is None else (run.model, run.task)


def _section(
    model: str,
    task: str,
    rows: Sequence[Mapping[str, Any]],
    shifted: Sequence[EvalFolder],
    by_path: Mapping[Path, SweepRun],
    ctx: RowContext,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tasks = list(dict.fromkeys(t for e in shifted for t in shift_tasks_of(e)))
    metric = get_task(task).metric
    labels: dict[str, np.ndarray] = {}  # the first row's labels per shift task: rows are paired
    deltas = {t: RowContext(ctx.boot) for t in tasks}  # replicates per shift task, for the Δ
    out: list[dict[str, Any]] = []
    missing: list[dict[str, str]] = []
    notes: list[str] = []
    used: set[Path] = set()
    for row in rows:
        units, why = _units(row, ctx, by_path)
        per_run = _per_run(row, ctx, by_path)
        found = [u for u in units if u]
        if not found and not (per_run and all(per_run)):
            missing.append({"method": str(row["method"]), "reason": why or _no_eval(row, per_run)})
            continue
        combined: dict[str, list[str]] = {}  # shift task -> the runs' evaluations combined
        for t in tasks:
            picks = [(i, _pick(u, t)) for i, u in enumerate(units)]
            picks_ = [(i, e) for i, e in picks if e is not None]
            if picks_:  # an evaluation of exactly the row's runs and members comes first
                used |= {e.path for _, e in picks_}
                shift_row = _task_row(
                    row, t, picks_, len(units), metric, ctx, labels, deltas, notes
                )
            elif per_run and all(per_run):
                shift_row = _combined_row(row, t, per_run, metric, ctx, labels, deltas, notes)
                if shift_row is not None:
                    combined[t] = shift_row["from"]
            else:
                shift_row = None
            if shift_row is not None:
                out.append(shift_row)
        if combined:
            names = ", ".join(dict.fromkeys(_name(Path(p)) for ps in combined.values() for p in ps))
            notes.append(
                f"{row['method']} on {', '.join(combined)}: combined from its runs' own shift "
                f"evaluations (their saved shift predictions of the row's {row.get('members')} "
                f"members: {names}), no evaluation of the ensemble itself"
            )
    for t in tasks:
        paired_deltas([r for r in out if r["shift_task"] == t], deltas[t])
    notes += [
        f"{e.path.name}: its shift evaluation is not of exactly one row's runs and members "
        f"(runs: {', '.join(sorted(p.name for p in e.runs))}; {e.num_members} members)"
        for e in shifted
        if e.path not in used
    ]
    section = {
        "model": model,
        "task": task,
        "shift_tasks": tasks,
        "missing": missing,
        "notes": list(dict.fromkeys(notes)),
    }
    return section, out


def _units(
    row: Mapping[str, Any], ctx: RowContext, by_path: Mapping[Path, SweepRun]
) -> tuple[list[list[EvalFolder]], str | None]:
    """The row's evaluations with a ``shift`` block: one list of candidates per seed for a row
    over seeds, one list for an ensemble row; or the reason the row can have none."""
    if row.get("kind") == "temperature" or "scaling_temperature" in row:
        return [], (
            "temperature-scaled: `shift=[...]` scores the uncalibrated predictive (the row "
            "it scales has the numbers)"
        )
    if row.get("from"):  # a row read from evaluation folders: theirs
        evals = {e.path: e for e in ctx.evals}
        folders = [evals.get(Path(p).resolve()) for p in row["from"]]
        return [[e] if e is not None and shift_tasks_of(e) else [] for e in folders], (
            "its evaluation folder(s) have no shift block"
        )
    known = _known_runs(row, by_path)
    if known is None:
        return [], "its run folders are not known"
    if row.get("kind") == "single":
        return [_shifted(ctx, [r], _num_samples(ctx, r)) for r in known], None
    return [_shifted(ctx, known, row.get("members"), row.get("member_samples"))], None


def _known_runs(row: Mapping[str, Any], by_path: Mapping[Path, SweepRun]) -> list[SweepRun] | None:
    runs = [by_path.get(Path(p).resolve()) for p in row.get("runs") or []]
    known = [r for r in runs if r is not None]
    return known if runs and len(known) == len(runs) else None


def _per_run(
    row: Mapping[str, Any], ctx: RowContext, by_path: Mapping[Path, SweepRun]
) -> list[list[EvalFolder]] | None:
    """An ensemble row's runs' own evaluations with a ``shift`` block (all of each run's kept
    samples), one list of candidates per run; None for a row that is no ensemble of saved
    members (``member_samples``, :func:`.rows._ensemble_row`)."""
    samples = row.get("member_samples")
    known = _known_runs(row, by_path)
    if not samples or known is None or len(samples) != len(known) or row.get("from"):
        return None
    return [_shifted(ctx, [r], _num_samples(ctx, r)) for r in known]


def _num_samples(ctx: RowContext, run: SweepRun) -> int | None:
    a = ctx.predictions(run.path)
    return None if a is None else int(a["predictions"].shape[0])


def _shifted(
    ctx: RowContext,
    runs: Sequence[SweepRun],
    members: Any,
    samples: Sequence[Sequence[int]] | None = None,
) -> list[EvalFolder]:
    """The plain test evaluations of exactly these runs and members (and, with ``samples``,
    each run's kept samples, wherever an evaluation recorded them) that scored shift tasks."""
    m = int(members) if isinstance(members, (int, float)) and float(members).is_integer() else None
    if m is None:
        return []
    return [e for e in eval_folders_of(ctx.evals, runs, m, samples) if shift_tasks_of(e)]


def _pick(candidates: Sequence[EvalFolder], task: str, n: int | None = None) -> EvalFolder | None:
    """Of several evaluations that scored ``task`` (on ``n`` examples, if given and any did), the
    one with the most of its examples."""
    have = [e for e in candidates if task in shift_tasks_of(e)]
    have = [e for e in have if _n_examples(e, task) == n] or have
    if not have:
        return None
    return min(have, key=lambda e: (-_n_examples(e, task), e.path.name))


def _n_examples(e: EvalFolder, task: str) -> int:
    return int(e.result["shift"]["tasks"][task].get("n", 0))


def _saved_shift(ctx: RowContext, e: EvalFolder, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """An evaluation's saved ``shift_<task>_predictions`` ([members, n, classes]) and
    ``shift_<task>_labels``; None where its predictions file lacks them."""
    a = ctx.predictions(e.path)
    key = f"shift_{task}_predictions"
    if a is None or key not in a or f"shift_{task}_labels" not in a:
        return None
    return a[key], a[f"shift_{task}_labels"]


def _name(path: Path) -> str:
    """An evaluation folder as ``<run>/<folder>`` (a run's own evaluation is ``evaluation``)."""
    return f"{path.parent.name}/{path.name}"


def _no_eval(row: Mapping[str, Any], per_run: Sequence[Sequence[EvalFolder]] | None) -> str:
    per_seed = "`python -m bayesian_lora.evaluate run_dir=<run> shift=[...]` per seed"
    if row.get("kind") == "single":
        return (
            f"no evaluation with `shift=[...]` of each seed's run and all its samples ({per_seed})"
        )
    names = ",".join(Path(p).name for p in row.get("runs") or [])
    why = (
        f"no evaluation with `shift=[...]` of exactly its {row.get('n')} runs and "
        f"{row.get('members')} members (`python -m bayesian_lora.evaluate "
        f"'run_dirs=[{names}]' k={row.get('members')} shift=[...]`)"
    )
    if per_run is None:
        return why
    lacking = [Path(p).name for p, c in zip(row["runs"], per_run, strict=True) if not c]
    return (
        f"{why}, nor one of each of its runs with all its samples to combine ({per_seed}; "
        f"none for {', '.join(lacking)})"
    )


def _task_row(
    row: Mapping[str, Any],
    task: str,
    picks: Sequence[tuple[int, EvalFolder]],
    num_units: int,
    metric: str,
    ctx: RowContext,
    labels: dict[str, np.ndarray],
    deltas: Mapping[str, RowContext],
    notes: list[str],
) -> dict[str, Any] | None:
    """The row on one shift task: each evaluation's metrics recomputed from its saved shift
    predictions, their mean (± sd over seeds) and the bootstrap CI of that mean."""
    probs, ys, metrics, seeds, paths = [], [], [], [], []
    for i, e in picks:
        saved_shift = _saved_shift(ctx, e, task)
        if saved_shift is None:
            notes.append(
                f"{e.path.name}: no saved shift_{task}_predictions (metrics.json alone gives no CI)"
            )
            continue
        preds, y = saved_shift
        m = ensemble_metrics(preds, y, metric)
        saved = e.result["shift"]["tasks"][task]
        off = [k for k in SHIFT_METRICS if k in saved and abs(m[k] - float(saved[k])) > TOLERANCE]
        if off or int(saved.get("n", len(y))) != len(y):
            notes.append(
                f"{e.path.name}: {task} recomputed from its predictions differs from its "
                f"metrics.json in {', '.join(off) or 'n'} (the recomputed numbers are shown)"
            )
        probs.append(preds.astype(np.float64).mean(axis=0))
        ys.append(y)
        metrics.append(m)
        seeds.append(row["seeds"][i] if num_units == len(row.get("seeds", [])) else None)
        paths.append(str(e.path))
    if not metrics:
        return None
    over_seeds = row.get("kind") == "single" or num_units > 1
    kept = [s for s in seeds if s is not None] if None not in seeds else row["seeds"]
    out = _shift_row(row, task, kept, paths, metrics, over_seeds, len(ys[0]))
    return _with_ci(out, row, task, probs, ys, metric, ctx, labels, deltas, notes)


def _combined_row(
    row: Mapping[str, Any],
    task: str,
    per_run: Sequence[Sequence[EvalFolder]],
    metric: str,
    ctx: RowContext,
    labels: dict[str, np.ndarray],
    deltas: Mapping[str, RowContext],
    notes: list[str],
) -> dict[str, Any] | None:
    """An ensemble row on one shift task from its runs' own shift evaluations: the rows
    ``member_samples`` of each run's saved ``shift_<task>_predictions`` together, as the in-domain
    row averages them; None (with a note) unless every run has them on the same examples."""
    what = f"{row['method']} on {task}: not combined from its runs' own shift evaluations"
    scored = [{_n_examples(e, task) for e in c if task in shift_tasks_of(e)} for c in per_run]
    common = set.intersection(*scored)  # the largest number of examples every run scored
    picks = [_pick(c, task, max(common, default=None)) for c in per_run]
    lacking = [Path(p).name for p, e in zip(row["runs"], picks, strict=True) if e is None]
    if lacking:
        notes.append(
            f"{what}: {', '.join(lacking)} scored no {task} (its runs' evaluations cover "
            "different shift tasks)"
        )
        return None
    chosen = [e for e in picks if e is not None]
    key = f"shift_{task}_predictions"
    saved: list[tuple[np.ndarray, np.ndarray]] = []
    for e in chosen:
        saved_shift = _saved_shift(ctx, e, task)
        if saved_shift is None:
            notes.append(f"{what}: {_name(e.path)} has no saved {key}")
            return None
        if saved_shift[0].shape[0] != e.num_members:
            notes.append(
                f"{what}: {_name(e.path)} saved {saved_shift[0].shape[0]} members' {key}, not "
                f"its {e.num_members}"
            )
            return None
        saved.append(saved_shift)
    ys = [y for _, y in saved]
    if not all(np.array_equal(y, ys[0]) for y in ys):  # array_equal compares shapes too
        sizes = "/".join(str(len(y)) for y in ys)
        notes.append(f"{what}: they scored different examples ({sizes}; another ood_max_samples?)")
        return None
    preds = np.concatenate(
        [
            p[np.asarray(s, dtype=np.int64)]
            for (p, _), s in zip(saved, row["member_samples"], strict=True)
        ]
    )
    paths = [str(e.path) for e in chosen]
    metrics = [ensemble_metrics(preds, ys[0], metric)]
    out = _shift_row(row, task, row["seeds"], paths, metrics, False, len(ys[0]))
    out["combined_from_runs"] = True
    probs = [preds.astype(np.float64).mean(axis=0)]
    return _with_ci(out, row, task, probs, ys[:1], metric, ctx, labels, deltas, notes)


def _shift_row(
    row: Mapping[str, Any],
    task: str,
    seeds: Sequence[Any],
    paths: Sequence[str],
    metrics: Sequence[Mapping[str, float]],
    over_seeds: bool,
    n_examples: int,
) -> dict[str, Any]:
    """What the shift row copies from its in-domain row, and its metrics: the mean ± sd of
    ``metrics`` over seeds, or the one ensemble's."""
    out: dict[str, Any] = {k: row[k] for k in CARRIED if k in row}
    out["seeds"] = list(seeds)
    out.update(shift_task=task, n_examples=n_examples, evaluations=len(paths))
    out["from"] = list(paths)
    for k in SHIFT_METRICS:
        values = [float(m[k]) for m in metrics]
        if over_seeds:
            out[f"{k}_mean"], out[f"{k}_std"] = mean_std(values)
            out[f"{k}_n"] = len(values)
        else:
            out[f"{k}_mean"] = values[0]
    return out


def _with_ci(
    out: dict[str, Any],
    row: Mapping[str, Any],
    task: str,
    probs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    metric: str,
    ctx: RowContext,
    labels: dict[str, np.ndarray],
    deltas: Mapping[str, RowContext],
    notes: list[str],
) -> dict[str, Any]:
    """The row's bootstrap CI of the mean over ``probs`` (one predictive per seed, or the
    ensemble's) on the shift task's resamples, paired with the other rows where the examples
    are theirs (the replicates kept for the paired difference to the MAP row)."""
    if not all(np.array_equal(y, ys[0]) for y in ys):  # array_equal compares shapes too
        notes.append(f"{row['method']} on {task}: its seeds' test sets differ: no CI")
        return out
    ref = labels.setdefault(task, ys[0])
    paired = bool(np.array_equal(ref, ys[0]))
    if not paired:
        notes.append(
            f"{row['method']} on {task}: its examples differ from the other rows' "
            f"({len(ys[0])} against {len(ref)}; another ood_max_samples?): its CI is not "
            "paired with theirs"
        )
    idx = ctx.indices(len(ys[0]))
    reps = mean_replicates([replicates(p, ys[0], idx, metric) for p in probs])
    out.update(ci_columns({k: v for k, v in reps.items() if k in SHIFT_METRICS}, ctx.boot.level))
    out["paired"] = paired
    if paired:
        deltas[task].replicates[(out["model"], out["task"], out["method"])] = (len(ys[0]), reps)
    return out


# ----------------------------------------------------------------------------- tables


def shift_frame(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> pd.DataFrame:
    """One line per method; per shift task acc, NLL and ECE cells (``mean ± sd [CI]``) and its
    number of examples."""
    by = {(r["method"], r["shift_task"]): r for r in rows}
    records = []
    for method in dict.fromkeys(r["method"] for r in rows):
        first = next(r for r in rows if r["method"] == method)
        rec: dict[str, Any] = {
            "method": method,
            "n": first["n"],
            "members": _plain(first.get("members"), "g"),
        }
        for t in tasks:
            r = by.get((method, t))
            for name, key, scale in SHIFT_COLUMNS:
                rec[f"{t} {name}"] = "–" if r is None else _cell(r, key, scale)
            rec[f"{t} n"] = "–" if r is None else str(r["n_examples"])
        records.append(rec)
    return pd.DataFrame.from_records(records)


def shift_csv_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``shift.csv``: the report's CSV columns (:func:`.tables.csv_frame`) per (row, shift task),
    with ``shift_task`` and ``n_examples`` after the method."""
    frame = csv_frame(rows)
    at = list(frame.columns).index("method") + 1
    frame.insert(at, "shift_task", [r["shift_task"] for r in rows])
    frame.insert(at + 1, "n_examples", [r["n_examples"] for r in rows])
    return frame


def _sections(
    shift: Mapping[str, Any],
) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    return [
        (s, [r for r in shift["rows"] if (r["model"], r["task"]) == (s["model"], s["task"])])
        for s in shift.get("sections", [])
    ]


def shift_tables(shift: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(<model> trained on <task>, markdown table)`` of every section with rows."""
    return [
        (f"{s['model']} trained on {s['task']}", markdown(shift_frame(rows, s["shift_tasks"])))
        for s, rows in _sections(shift)
        if rows
    ]


def shift_markdown(
    shift: Mapping[str, Any],
    bootstrap: Mapping[str, Any],
    best: Callable[[Sequence[Mapping[str, Any]]], list[str]],
) -> list[str]:
    """The "Under shift" section of ``report.md`` (nothing without a shift evaluation);
    ``best`` gives the lowest-NLL / ECE lines of a set of rows (``report.best_rows``)."""
    if not shift.get("sections"):
        return []
    parts = ["## Under shift", HOW_TO_READ.format(**bootstrap)]
    for s, rows in _sections(shift):
        parts.append(f"### {s['model']} trained on {s['task']}")
        if rows:
            parts.append(markdown(shift_frame(rows, s["shift_tasks"])))
        for t in s["shift_tasks"]:
            sub = [r for r in rows if r["shift_task"] == t]
            parts += [f"- On {t}, lowest{line.removeprefix('- Lowest')}" for line in best(sub)]
        parts += [
            f"- No shift evaluation for **{m['method']}**: {m['reason']}" for m in s["missing"]
        ]
        parts += [f"- {n}" for n in s["notes"]]
    parts += [f"- {n}" for n in shift.get("notes", [])]
    return parts
