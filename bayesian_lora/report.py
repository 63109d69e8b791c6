"""Aggregate a Hydra sweep: ``python -m bayesian_lora.report sweep_dir=multirun/<sweep>``.

Hydra overrides as for train and evaluate (``conf/report.yaml``): ``sweep_dirs=[<a>,<b>]`` for
several folders, ``out_dir=``, ``plots=false``, ``diagnostics.rhat_threshold=`` ...

Finds every run folder (``manifest.json`` + ``metrics.json``) under the given folders, groups runs
whose saved ``config.yaml`` agree on everything but the seed (and paths), and writes
``report.md``, ``report.csv`` and ``report.json`` plus comparison and trace plots:

* one row per group: mean ± std (sample std, ddof=1) over seeds of the test metrics saved by
  training (the ensemble of each run's kept samples), and of the OOD AUROCs where the run was
  evaluated with ``python -m bayesian_lora.evaluate run_dir=<run> ood=<task>`` (read from
  ``<run>/evaluation/metrics.json``);
* a ``deep_ensemble`` row for every group of >= 2 MAP runs: their saved member probabilities
  (``predictions.safetensors``) averaged, no model needed;
* MCMC diagnostics for every sampler group of >= 2 seeds, seeds taken as chains: R-hat and ESS of
  the test mean log-likelihood, the probability of the label of 3 probe test examples and the LoRA
  norm per kept sample, with a plain verdict.

Accuracy, F1 and ECE are printed in percent (columns say ``(%)``); NLL in nats per example.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.config_validation import ConfigError
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation import plots as P
from bayesian_lora.evaluation.chains import (
    LORA_NORM,
    NUM_PROBES,
    diagnose_chains,
    diagnostics_verdict,
    function_space_summaries,
    probe_indices,
    public,
    step_trace_diagnostics,
)
from bayesian_lora.evaluation.diagnostics import ESS_THRESHOLD, GEWEKE_Z, RHAT_THRESHOLD
from bayesian_lora.evaluation.metrics import ensemble_metrics
from bayesian_lora.evaluation.results import lora_norms
from bayesian_lora.evaluation.write import (
    EVALUATION_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    json_load,
    load_predictions,
    write_diagnostic_plots,
    write_diagnostics_data,
    write_json,
)
from bayesian_lora.runs import RunFolder, SampleFileError, load_samples
from bayesian_lora.runs import find_run_folders as _find_runs

# Config keys that differ between seeds of one configuration, or only say where things are.
IGNORED = (
    "seed",
    "paths",
    "resume",
    "tags",
    "logger",
    "task_name",
    "hydra",
    "trainer.default_root_dir",
    "sampler.warmup.from_run",
)
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


@dataclass
class SweepRun:
    """One run folder of a sweep."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, float]

    @property
    def model(self) -> str:
        return str(self.config["model"]["name"])

    @property
    def task(self) -> str:
        return str(self.config["data"]["task"])

    @property
    def sampler(self) -> str:
        return str(self.config["sampler"]["name"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass
class Group:
    """Runs of one configuration (seeds); ``label`` names the method in tables."""

    key: tuple[tuple[str, str], ...]
    runs: list[SweepRun] = field(default_factory=list)
    label: str = ""

    @property
    def first(self) -> SweepRun:
        return self.runs[0]


# ----------------------------------------------------------------------------- discovery


def is_run_folder(path: Path) -> bool:
    """A finished run folder: samples and test metrics."""
    run = RunFolder(path)
    return run.is_run_folder and run.metrics_file.is_file()


def find_run_folders(folders: Sequence[str | Path]) -> list[Path]:
    """Finished run folders given directly or found anywhere below the given folders."""
    return [r.path for r in _find_runs(folders, with_metrics=True)]


def unfinished_run_folders(folders: Sequence[str | Path]) -> list[Path]:
    """Folders below ``folders`` with samples but no test metrics."""
    runs = _find_runs(folders, required=False)
    return [r.path for r in runs if not r.metrics_file.is_file()]


def load_run(path: Path) -> SweepRun:
    """Config, test metrics and (if evaluated) OOD AUROCs of a run folder."""
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing (not a run folder of bayesian_lora.train)"
        )
    # .hydra/config.yaml is a mapping: its container is a dict
    config = cast(
        dict[str, Any], OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    )
    metrics = dict(json_load(path / METRICS_FILE).get("ensemble", {}))
    evaluation = path / EVALUATION_DIR / METRICS_FILE
    if evaluation.is_file():
        ood = json_load(evaluation).get("ood")
        if ood:
            metrics["ood_auroc_entropy"] = ood["entropy"]["auroc"]
            metrics["ood_auroc_mi"] = ood["mutual_information"]["auroc"]
            metrics["ood_task"] = ood["task"]
    return SweepRun(path, config, metrics)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_key(run: SweepRun) -> tuple[tuple[str, str], ...]:
    """The run's config without seed and location keys: equal keys = seeds of one config."""
    flat = _flatten(run.config)
    keep = {
        k: repr(v)
        for k, v in flat.items()
        if not any(k == i or k.startswith(f"{i}.") for i in IGNORED)
    }
    return tuple(sorted(keep.items()))


def group_runs(runs: Sequence[SweepRun]) -> list[Group]:
    """Groups of seeds, labelled ``sampler`` plus the keys that tell same-sampler groups apart."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        groups.setdefault(config_key(run), Group(config_key(run))).runs.append(run)
    out = sorted(
        groups.values(), key=lambda g: (g.first.model, g.first.task, _order(g.first.sampler))
    )
    for g in out:
        g.runs.sort(key=lambda r: r.seed)
        twins = [
            h
            for h in out
            if (h.first.model, h.first.task, h.first.sampler)
            == (g.first.model, g.first.task, g.first.sampler)
        ]
        g.label = g.first.sampler + _distinguishing(g, twins)
    return out


def _order(sampler: str) -> tuple[int, str]:
    return (0 if sampler == "map" else 1, sampler)


def _distinguishing(group: Group, twins: Sequence[Group]) -> str:
    if len(twins) < 2:
        return ""
    mine = dict(group.key)
    varying = [k for k in mine if any(dict(t.key).get(k) != mine[k] for t in twins)]
    return " (" + ", ".join(f"{k}={mine[k]}" for k in varying[:3]) + ")"


# ----------------------------------------------------------------------------- rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def group_row(group: Group) -> dict[str, Any]:
    """Mean and std over seeds of every metric column."""
    row: dict[str, Any] = {
        "method": group.label,
        "model": group.first.model,
        "task": group.first.task,
        "n": len(group.runs),
        "seeds": [r.seed for r in group.runs],
    }
    for _, key, _ in COLUMNS:
        values = [v for r in group.runs if (v := r.metrics.get(key)) is not None]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_n"] = len(values)
    return row


def deep_ensemble_row(group: Group) -> tuple[dict[str, Any] | None, str | None]:
    """Average the saved probabilities of >= 2 MAP runs (row, or None and the reason)."""
    arrays = []
    for run in group.runs:
        try:
            arrays.append(load_predictions(run.path / PREDICTIONS_FILE))
        except SampleFileError as err:
            return None, f"deep ensemble of {group.label} skipped: {err}"
    labels = arrays[0]["labels"]
    if any(
        a["labels"].shape != labels.shape or not np.array_equal(a["labels"], labels) for a in arrays
    ):
        return None, f"deep ensemble of {group.label} skipped: the runs' test sets differ"
    task = get_task(group.first.task)
    obs = float(group.first.config["data"].get("obs_std", 0.5)) if task.is_regression else None
    preds = np.concatenate([a["predictions"] for a in arrays])
    metrics = ensemble_metrics(preds, labels, task.metric, obs)
    row = {
        "method": "deep_ensemble" + group.label.removeprefix("map"),
        "model": group.first.model,
        "task": group.first.task,
        "n": len(group.runs),
        "seeds": [r.seed for r in group.runs],
    }
    row.update({f"{key}_mean": metrics[key] for _, key, _ in COLUMNS if key in metrics})
    return row, None


# ----------------------------------------------------------------------------- diagnostics


def run_chain_summaries(run: SweepRun, probes: int) -> dict[str, np.ndarray]:
    """Function-space summaries per kept sample, from the run's saved predictions."""
    arrays = load_predictions(run.path / PREDICTIONS_FILE)
    preds, labels = arrays["predictions"].astype(np.float64), arrays["labels"]
    task = get_task(run.task)
    obs = float(run.config["data"].get("obs_std", 0.5))
    summary = function_space_summaries(preds, labels, task, obs, probe_indices(len(labels), probes))
    try:
        samples, _ = load_samples(run.path)
        norms = lora_norms(samples)
        if norms.size:
            summary[LORA_NORM] = norms
    except SampleFileError:
        pass  # the function-space summaries still stand
    return summary


def group_diagnostics(
    group: Group, probes: int, rhat: float, ess: float, stationarity_z: float = GEWEKE_Z
) -> dict[str, Any] | None:
    """R-hat / ESS across the seeds of a sampler group (None for MAP or a single seed)."""
    if group.first.sampler == "map" or len(group.runs) < 2:
        return None
    chains = [run_chain_summaries(r, probes) for r in group.runs]
    diag = diagnose_chains(chains, rhat, ess, stationarity_z)
    diag["verdict"] = diagnostics_verdict(diag)
    diag["method"], diag["model"], diag["task"] = group.label, group.first.model, group.first.task
    trace = step_trace_diagnostics([r.path for r in group.runs], rhat, ess, stationarity_z)
    if trace is not None:  # the per-step traces of the seeds (hundreds of draws per chain)
        diag["trace"] = public(trace)
    return diag


# ----------------------------------------------------------------------------- formatting


def _cell(row: Mapping[str, Any], key: str, scale: float) -> str:
    """``mean ± std``; ``(n=..)`` when fewer runs than the row's seeds have the metric."""
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or not math.isfinite(mean):
        return "–"
    spec = ".2f" if scale != 1 else ".4f"
    text = format(mean * scale, spec)
    if std is not None and math.isfinite(std):
        text += f" ± {format(std * scale, spec)}"
    n = row.get(f"{key}_n", row["n"])
    return text if n == row["n"] else f"{text} (n={n})"


def used_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    return [c for c in COLUMNS if any(f"{c[1]}_mean" in r for r in rows)]


def results_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The report table: one row per method, ``mean ± std`` cells in display units."""
    cols = used_columns(rows)
    frame = pd.DataFrame(
        {
            "model": [r["model"] for r in rows],
            "task": [r["task"] for r in rows],
            "method": [r["method"] for r in rows],
            "n": [r["n"] for r in rows],
        }
    )
    for name, key, scale in cols:
        frame[name] = [_cell(r, key, scale) for r in rows]
    return frame


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return str(results_frame(rows).to_markdown(index=False, tablefmt="pipe", disable_numparse=True))


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
    z = [abs(v) for v in s["geweke_z"] if math.isfinite(v)]
    if not s["stationarity_checked"] or not z:
        return "not checked"
    drifting = any(p.startswith("drifting") for p in s["problems"])
    return f"**{max(z):.1f}**" if drifting else f"{max(z):.1f}"


def diagnostics_table(diags: Sequence[Mapping[str, Any]]) -> str:
    frame = diagnostics_frame(diags)
    return str(frame.to_markdown(index=False, tablefmt="pipe", disable_numparse=True))


def _num(x: float, spec: str) -> str:
    return format(x, spec) if x is not None and math.isfinite(x) else "NaN"


def csv_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Numbers in explicit units: ``acc_pct_mean``, ``ece_pct_std``, ``nll_mean`` ...

    A metric a row lacks is an empty cell (NaN).
    """
    frame = pd.DataFrame(
        {
            "model": [r["model"] for r in rows],
            "task": [r["task"] for r in rows],
            "method": [r["method"] for r in rows],
            "n": [r["n"] for r in rows],
            "seeds": [" ".join(map(str, r["seeds"])) for r in rows],
        }
    )
    for _, key, scale in used_columns(rows):
        unit = "_pct" if scale != 1 else ""
        for stat in ("mean", "std"):
            values = [r.get(f"{key}_{stat}") for r in rows]
            frame[f"{key}{unit}_{stat}"] = pd.to_numeric(
                pd.Series([math.nan if v is None else v for v in values], dtype=float) * scale
            )
    return frame


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


# ----------------------------------------------------------------------------- report


def table_rows(groups: Sequence[Group]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per group, plus a deep-ensemble row after each group of >= 2 MAP runs."""
    rows, notes = [], []
    for g in groups:
        rows.append(group_row(g))
        if g.first.sampler == "map" and len(g.runs) >= 2:
            row, note = deep_ensemble_row(g)
            rows += [row] if row else []
            notes += [note] if note else []
    return rows, notes


def run_notes(folders: Sequence[str | Path], runs: Sequence[SweepRun]) -> list[str]:
    """Skipped (unfinished) run folders and the OOD tasks behind the AUROC columns."""
    notes = []
    unfinished = unfinished_run_folders(folders)
    if unfinished:
        notes.append(
            f"skipped {len(unfinished)} run folder(s) without {METRICS_FILE} (unfinished, or "
            f"trained with evaluate_on_fit_end=false): {', '.join(p.name for p in unfinished)}"
        )
    ood_tasks = sorted({str(r.metrics["ood_task"]) for r in runs if "ood_task" in r.metrics})
    if ood_tasks:
        notes.append(f"OOD AUROCs are against the test inputs of: {', '.join(ood_tasks)}")
    return notes


def build_report(
    folders: Sequence[str | Path],
    out_dir: Path | None = None,
    probes: int = NUM_PROBES,
    rhat_threshold: float = RHAT_THRESHOLD,
    ess_threshold: float = ESS_THRESHOLD,
    plots: bool = True,
    stationarity_z: float = GEWEKE_Z,
) -> dict[str, Any]:
    """Find, aggregate and write; returns the report as a dict (also in ``report.json``)."""
    runs = [load_run(p) for p in find_run_folders(folders)]
    out_dir = Path(out_dir or folders[0])
    groups = group_runs(runs)
    rows, notes = table_rows(groups)
    notes += run_notes(folders, runs)
    thresholds = (rhat_threshold, ess_threshold, stationarity_z)
    diags = [d for g in groups if (d := group_diagnostics(g, probes, *thresholds))]
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in diags:  # each sampler group's chains as an ArviZ InferenceData (netCDF)
        d["inference_data"] = write_diagnostics_data(out_dir, d, _diag_prefix(d))
    figures = write_plots(out_dir, rows, diags) if plots else []
    report = {
        "folders": [str(f) for f in folders],
        "num_runs": len(runs),
        "rows": rows,
        "diagnostics": [public(d) for d in diags],
        "notes": notes,
        "plots": [p.name for p in figures],
    }
    write_report(out_dir, report, rows, diags)
    return report


def _diag_prefix(d: Mapping[str, Any]) -> str:
    return f"{slug(d['model'])}_{slug(d['task'])}_{slug(d['method'])}_"


def write_plots(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], diags: Sequence[Mapping[str, Any]]
) -> list[Path]:
    paths = []
    for model, task in dict.fromkeys((r["model"], r["task"]) for r in rows):
        sub = [r for r in rows if (r["model"], r["task"]) == (model, task)]
        regression = get_task(task).is_regression
        candidates = ("nll", "rmse", "pearson") if regression else ("acc", "nll", "ece")
        metrics = tuple(m for m in candidates if all(f"{m}_mean" in r for r in sub))
        if metrics:
            path = out_dir / f"comparison_{slug(model)}_{slug(task)}.png"
            paths.append(P.comparison_plot(sub, path, metrics, title=f"{model} on {task}"))
    for d in diags:
        paths += write_diagnostic_plots(out_dir, d, _diag_prefix(d))
    return paths


def write_report(
    out_dir: Path,
    report: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    diags: Sequence[Mapping[str, Any]],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown_report(report, rows, diags))
    csv_frame(rows).to_csv(out_dir / "report.csv", index=False)
    write_json(out_dir / "report.json", report)


def markdown_report(
    report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], diags: Sequence[Mapping[str, Any]]
) -> str:
    parts = [
        "# Sweep report",
        f"{report['num_runs']} run folders under {', '.join(report['folders'])}.",
        "Test metrics of each run's ensemble of kept samples: mean ± std (ddof=1) over seeds, "
        "`n` = seeds (or members, for `deep_ensemble`). Accuracy, F1 and ECE in percent; NLL in "
        "nats per example; OOD AUROCs where `evaluate ... ood=<task>` was run.",
        markdown_table(rows),
    ]
    parts += [f"- {n}" for n in report["notes"]]
    if diags:
        parts += ["## MCMC diagnostics (seeds as chains)", diagnostics_table(diags)]
        parts += [f"- **{d['method']}** ({d['model']}, {d['task']}): {d['verdict']}" for d in diags]
        traced = [d for d in diags if "trace" in d]
        if traced:
            parts += [
                "Per-step traces (`trace.safetensors`: every sampler step from the first kept "
                "sample on, seeds as chains):",
                diagnostics_table([{**d, **d["trace"]} for d in traced]),
            ]
            parts += [
                f"- **{d['method']}** per-step traces: {d['trace']['verdict']}" for d in traced
            ]
    if report["plots"]:
        parts += ["## Plots", *[f"![{p}]({p})" for p in report["plots"]]]
    return "\n\n".join(parts) + "\n"


#: The argparse flags of the old command line, and the overrides that replace them.
LEGACY_FLAGS = {
    "--out": "out_dir",
    "--probes": "diagnostics.probes",
    "--rhat-threshold": "diagnostics.rhat_threshold",
    "--ess-threshold": "diagnostics.ess_threshold",
}


def legacy_usage(argv: Sequence[str]) -> str | None:
    """The command in override syntax if ``argv`` uses the old positional/flag form, else None."""
    folders, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        flag, _, value = arg.partition("=")
        if flag in LEGACY_FLAGS:
            if not value and i + 1 < len(argv):
                i, value = i + 1, argv[i + 1]
            overrides.append(f"{LEGACY_FLAGS[flag]}={value or '<value>'}")
        elif arg == "--no-plots":
            overrides.append("plots=false")
        elif not arg.startswith("-") and "=" not in arg:
            folders.append(arg)
        i += 1
    if not folders and not overrides:
        return None
    if len(folders) == 1:
        given = [f"sweep_dir={folders[0]}"]
    else:
        given = [f"'sweep_dirs=[{','.join(folders)}]'"] if folders else []
    return (
        "error: report takes Hydra overrides, as train and evaluate do (see conf/report.yaml):\n"
        f"  python -m bayesian_lora.report {' '.join(given + overrides)}"
    )


def report_folders(cfg: DictConfig) -> list[str]:
    """``sweep_dir`` (if given) then ``sweep_dirs``; refused when both are empty."""
    folders = ([str(cfg.sweep_dir)] if cfg.get("sweep_dir") else []) + [
        str(f) for f in cfg.get("sweep_dirs") or []
    ]
    if not folders:
        raise ConfigError(
            "sweep_dir is not set: give sweep_dir=multirun/<sweep> or 'sweep_dirs=[<a>,<b>]'"
        )
    return folders


def run_report(cfg: DictConfig) -> int:
    """The report of ``cfg`` (conf/report.yaml) written and printed; 0, or 2 on an error."""
    try:
        folders = report_folders(cfg)
        diag = cfg.diagnostics
        report = build_report(
            folders,
            Path(cfg.out_dir) if cfg.get("out_dir") else None,
            int(diag.probes),
            float(diag.rhat_threshold),
            float(diag.ess_threshold),
            plots=bool(cfg.plots),
            stationarity_z=float(diag.stationarity_z),
        )
    except (FileNotFoundError, SampleFileError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(report["rows"]))
    for d in report["diagnostics"]:
        print(f"{d['method']} ({d['model']}, {d['task']}): {d['verdict']}")
    print(f"report written to {Path(cfg.out_dir or folders[0]) / 'report.md'}")
    return 0


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    code = run_report(cfg)
    if code:
        raise SystemExit(code)


def main() -> None:
    """``python -m bayesian_lora.report``: the old positional form is refused with a pointer."""
    message = legacy_usage(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
