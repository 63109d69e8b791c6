"""Aggregate a Hydra sweep: ``python -m bayesian_lora.report sweep_dir=multirun/<sweep>``.

Hydra overrides as for train and evaluate (``conf/report.yaml``): ``sweep_dirs=[<a>,<b>]`` for
several folders, ``out_dir=``, ``plots=false``, ``bootstrap.resamples=``,
``diagnostics.stationarity_z=`` ...

Finds every run folder (``manifest.json`` + ``metrics.json``) and every ``evaluate`` output
under the given folders, groups runs whose saved ``config.yaml`` agree on everything but the seed
(and paths), and writes ``report.md``, ``report.csv``, ``chains.csv``, ``cycles.csv`` (cyclical
chains), ``report.json`` plus comparison, forest (``delta_<model>_<task>.png``: each row's paired
difference to MAP with its CI) and trace plots. Per model and task:

* a results table (:mod:`bayesian_lora.reporting.rows`): each configuration over seeds (Laplace
  fits too: ``python -m bayesian_lora.laplace`` evaluates its draws at the end); the deep
  ensemble of the MAP seeds; the chains of each sampler config pooled at equal member counts;
  temperature-scaled twins, MC-dropout and GLM-predictive rows where evaluated; OOD AUROCs where
  an evaluation with ``ood=`` of exactly a row's runs and members exists; 95% bootstrap CIs over
  test examples, paired across rows (:mod:`~bayesian_lora.reporting.bootstrap`); compute
  columns;
* a per-chain table (:mod:`~bayesian_lora.reporting.chain_checks`): each chain's within-chain
  stationarity (Geweke z) and bulk ESS of its per-step trace, one verdict line per config
  (not applicable to cyclical chains, whose trace alternates phases);
* for cyclical chains (cSGLD, cSGHMC), one row per (chain, cycle)
  (:mod:`~bayesian_lora.reporting.cycles`): the cycle's kept samples, trace means and Geweke z
  over its sampling stage, its own ensemble's test metrics, and how far consecutive cycles'
  predictives and last samples are apart, with one verdict per chain;
* MCMC diagnostics with the seeds as chains (R-hat, ESS), as before.
* where ``evaluate ... shift=[...]`` was run: an "Under shift" table per model and trained-on task
  (:mod:`~bayesian_lora.reporting.shift`; ``shift.csv``): the rows scored on each shift task's
  test set, with CIs over its examples.

This module is the command and the orchestration; the parts live in ``bayesian_lora.reporting``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.config_validation import ConfigError
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation import plots as P
from bayesian_lora.evaluation.chains import NUM_PROBES, public
from bayesian_lora.evaluation.diagnostics import ESS_THRESHOLD, GEWEKE_Z, RHAT_THRESHOLD
from bayesian_lora.evaluation.write import (
    METRICS_FILE,
    write_diagnostic_plots,
    write_diagnostics_data,
    write_json,
)
from bayesian_lora.reporting.bootstrap import Bootstrap
from bayesian_lora.reporting.chain_checks import (
    TRACE_FROM,
    TRACE_SUMMARIES,
    chain_rows,
    config_verdict,
    group_diagnostics,
    is_cyclical,
)
from bayesian_lora.reporting.cycles import cycle_rows, cycle_verdicts
from bayesian_lora.reporting.discovery import (
    Group,
    SweepRun,
    find_eval_folders,
    find_run_folders,
    group_runs,
    load_run,
    unfinished_run_folders,
)
from bayesian_lora.reporting.rows import RowContext, reference_rows, table_rows
from bayesian_lora.reporting.shift import (
    shift_csv_frame,
    shift_markdown,
    shift_report,
    shift_tables,
)
from bayesian_lora.reporting.tables import (
    _cell,
    chains_csv_frame,
    chains_frame,
    csv_frame,
    cycles_csv_frame,
    cycles_frame,
    diagnostics_table,
    markdown,
    markdown_table,
    slug,
)
from bayesian_lora.runs import SampleFileError

__all__ = [
    "SweepRun",
    "_cell",
    "build_report",
    "find_run_folders",
    "group_runs",
    "load_run",
    "main",
    "run_report",
]

TRACE_PART = {
    "start": "every burn-in and sampling step",
    "first_kept": "from its first kept sample on",
}
HOW_TO_READ = (
    "Rows per task: each configuration over seeds (mean ± sd, ddof=1; `n` = seeds; a Laplace "
    "fit is labelled with its structure, e.g. `laplace (kron)`), the deep "
    "ensemble of the MAP seeds, each sampler config's chains pooled at k samples per chain "
    "(`1/chain` = the last kept sample of each chain; `all/chain` = every kept sample), "
    "`+ temperature` where `evaluate calibrate=temperature` was run on those runs, "
    "`+ MC dropout (K=..)` where `evaluate mc_dropout=K` was, and `GLM (mc)` / `GLM (probit)` "
    "where `evaluate predictive=glm` scored a Laplace run's linearised predictive. Cells: "
    "`mean ± sd [CI]`, the CI a {level:.0%} percentile bootstrap over test examples "
    "(B = {resamples}, seed {seed}, the same resamples for every row of a task; for rows over "
    "seeds the CI of the seed-mean). Accuracy, F1 and ECE in percent; NLL in nats per example. "
    "`members` = forward passes per test example (MC dropout: K x samples; GLM: one per run, "
    "its logit draws cost no pass), `backward passes` = the GLM predictive's Jacobian passes "
    "per test example; OOD AUROCs only where an evaluation with `ood=` of exactly the row's "
    "runs and members exists (the OOD task is named under each table); "
    "`train grad evals` / `train s` = gradient "
    "evaluations / wall seconds of training, summed over the row's runs including the MAP fits "
    "they started from (a MAP fit counted once per seed; single rows: per seed; Laplace: its "
    "curvature batches and fit time); `eval s` where "
    "an evaluation folder recorded it; `T` and `step size` of the sampler config; `scaling T` "
    "the fitted temperature; `Δ ... vs map`: the row minus the task's MAP row with the CI of the "
    "difference on the same resamples. Model selection used validation only; test is looked "
    "at here."
)


CYCLES_HOW_TO_READ = (
    "One row per (chain, cycle) of each cyclical chain; `cycle` is the schedule's 0-based cycle "
    "number. `kept`: kept samples of the cycle; `steps`: traced steps of its sampling stage "
    "(past burn-in, where the schedule collects); `mean ...`: each per-step trace summary "
    "averaged over those steps; `max abs z`: the largest Geweke |z| within the sampling stage "
    "(first 10% against last 50%; bold above {z:g}: still settling while kept; not checked below "
    "40 steps; the step size still falls within the stage, so the absence of a flag does not "
    "prove stationarity); `acc (%)`, `test nll`: the cycle's own ensemble (the mean predictive "
    "of its kept samples) on test; `... prev`: its predictive against the previous cycle's "
    "(`disagree`: % of test examples whose argmax differs, `TV`: total variation, `sym KL`: "
    "KL(p||q) + KL(q||p) in nats, means over test examples); `... halves`: the same between the "
    "first and second half of the cycle's kept samples, a within-cycle reference; `jump / walk`: "
    "the distance between the last samples of the previous cycle and this one over the summed "
    "distances between consecutive kept samples of this cycle (all sampled parameters)."
)


def _by_task(items: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for item in items:
        out.setdefault((str(item["model"]), str(item["task"])), []).append(item)
    return out


def run_notes(folders: Sequence[str | Path], rows: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Skipped (unfinished) run folders and the OOD tasks behind the AUROC columns."""
    notes = []
    unfinished = unfinished_run_folders(folders)
    if unfinished:
        notes.append(
            f"skipped {len(unfinished)} run folder(s) without {METRICS_FILE} (unfinished, "
            "trained with evaluate_on_fit_end=false, or a Laplace fit run with it false): "
            f"{', '.join(p.name for p in unfinished)}"
        )
    ood_tasks = sorted({str(r["ood_task"]) for r in rows if "ood_task" in r})
    if ood_tasks:
        notes.append(f"OOD AUROCs are against the test inputs of: {', '.join(ood_tasks)}")
    return notes


def ood_line(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Under a task's table: which OOD task's test inputs its AUROC columns detect, and, where
    rows of the table differ, which rows use which."""
    by_task: dict[str, list[str]] = {}
    for r in rows:
        if "ood_task" in r:
            by_task.setdefault(str(r["ood_task"]), []).append(str(r["method"]))
    if not by_task:
        return []
    if len(by_task) == 1:
        (task,) = by_task
        return [f"- OOD AUROC columns: this task's test inputs against those of **{task}**."]
    parts = [f"**{t}** ({', '.join(m)})" for t, m in sorted(by_task.items())]
    return [f"- OOD AUROC columns: this task's test inputs against those of {'; '.join(parts)}."]


def duplicate_seed_notes(groups: Sequence[Group]) -> list[str]:
    """Configurations holding two runs of one seed (the same run twice, e.g. a copy in another
    sweep folder): their ensembles and standard deviations count it twice."""
    notes = []
    for g in groups:
        seeds = [r.seed for r in g.runs]
        for seed in sorted({s for s in seeds if seeds.count(s) > 1}):
            paths = ", ".join(str(r.path) for r in g.runs if r.seed == seed)
            notes.append(
                f"**{g.label}** ({g.first.model}, {g.first.task}) has {seeds.count(seed)} runs "
                f"of seed {seed} with the same config: {paths}; its rows count them as separate "
                "seeds (report only the folders you mean, with sweep_dirs=[...])"
            )
    return notes


def build_report(
    folders: Sequence[str | Path],
    out_dir: Path | None = None,
    probes: int = NUM_PROBES,
    rhat_threshold: float = RHAT_THRESHOLD,
    ess_threshold: float = ESS_THRESHOLD,
    plots: bool = True,
    stationarity_z: float = GEWEKE_Z,
    bootstrap: Bootstrap | None = None,
    pooled_per_chain: Sequence[int | None] = (1, None),
    trace_summaries: Sequence[str] = TRACE_SUMMARIES,
    trace_from: str = "start",
) -> dict[str, Any]:
    """Find, aggregate and write; returns the report as a dict (also in ``report.json``)."""
    runs = [load_run(p) for p in find_run_folders(folders)]
    out_dir = Path(out_dir or folders[0])
    groups = group_runs(runs)
    boot = bootstrap or Bootstrap()
    ctx = RowContext(boot, find_eval_folders(folders, runs), tuple(pooled_per_chain))
    rows, notes = table_rows(groups, ctx)
    notes += run_notes(folders, rows) + duplicate_seed_notes(groups)
    thresholds = (rhat_threshold, ess_threshold, stationarity_z)
    diags = [d for g in groups if (d := group_diagnostics(g, probes, *thresholds))]
    chains, verdicts = per_chain(groups, trace_summaries, stationarity_z, trace_from)
    cycles, cycle_notes = per_cycle(groups, trace_summaries, stationarity_z)
    notes += cycle_notes + cyclical_trace_notes(diags, groups)
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in diags:  # each sampler group's chains as an ArviZ InferenceData (netCDF)
        d["inference_data"] = write_diagnostics_data(out_dir, d, _diag_prefix(d))
    figures = write_plots(out_dir, rows, diags, boot.level) if plots else []
    report = {
        "folders": [str(f) for f in folders],
        "num_runs": len(runs),
        "bootstrap": {"resamples": boot.resamples, "seed": boot.seed, "level": boot.level},
        "rows": rows,
        "shift": shift_report(rows, runs, ctx),  # the "Under shift" tables (reporting/shift.py)
        "chains": chains,
        "chain_verdicts": verdicts,
        "cycles": cycles,
        "cycle_verdicts": cycle_verdicts(cycles),
        "trace_summaries": list(trace_summaries),
        "trace_from": trace_from,
        "diagnostics": [public(d) for d in diags],
        "notes": notes,
        "plots": [p.name for p in figures],
    }
    write_report(out_dir, report, rows, diags)
    return report


def per_chain(
    groups: Sequence[Group], names: Sequence[str], stationarity_z: float, trace_from: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every chain's within-chain diagnostics, and one verdict per sampler config."""
    chains, verdicts = [], []
    for g in groups:
        rows = chain_rows(g, names, stationarity_z, trace_from)
        if rows:
            chains += rows
            verdicts.append(
                {
                    "model": g.first.model,
                    "task": g.first.task,
                    "method": g.label,
                    "verdict": config_verdict(rows),
                }
            )
    return chains, verdicts


def per_cycle(
    groups: Sequence[Group], names: Sequence[str], stationarity_z: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every cycle of every cyclical chain, and why a cyclical chain was skipped."""
    cycles: list[dict[str, Any]] = []
    notes: list[str] = []
    for g in groups:
        rows, why = cycle_rows(g, names, stationarity_z)
        cycles += rows
        notes += why
    return cycles, notes


def cyclical_trace_notes(diags: Sequence[Mapping[str, Any]], groups: Sequence[Group]) -> list[str]:
    """The seeds-as-chains per-step trace table of a cyclical config spans whole cycles."""
    cyclical = {g.label for g in groups if not g.is_map and is_cyclical(g.first.config)}
    return [
        f"**{d['method']}** is cyclical: its per-step traces (seeds as chains) run over whole "
        "cycles, exploration stages included, so their Geweke column compares phases of the "
        "cycles; read the per-cycle checks under Cycles of cyclical chains"
        for d in diags
        if d["method"] in cyclical and "trace" in d
    ]


def best_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which row has the lowest NLL and ECE (point estimates), and whether its paired difference
    to the MAP row excludes zero."""
    out = []
    for key, name in (("nll", "NLL"), ("ece", "ECE")):
        have = [r for r in rows if isinstance(r.get(f"{key}_mean"), float)]
        if not have:
            continue
        best = min(have, key=lambda r: r[f"{key}_mean"])
        m = best["members"]
        text = f"- Lowest {name}: **{best['method']}** ({m} member{'' if m == 1 else 's'})"
        lo, hi = best.get(f"{key}_delta_ci_low"), best.get(f"{key}_delta_ci_high")
        if lo is not None and hi is not None:
            sure = "excludes" if hi < -1e-9 or lo > 1e-9 else "includes"
            text += f"; its difference to {best['delta_vs']} [{lo:+.4f}, {hi:+.4f}] {sure} 0"
        out.append(text)
    return out


def forest_line(plots: Sequence[str], model: str, task: str, level: float) -> list[str]:
    """Under a task's table: the file name of its forest plot, where one was written."""
    name = forest_name(model, task)
    if name not in plots:
        return []
    if get_task(task).is_regression:
        what = "RMSE and NLL minus the MAP row's (point estimates: regression gets no CI)"
    else:
        what = f"the difference to the MAP row with its {level:.0%} paired CI (filled: excludes 0)"
    return [f"- Forest plot [{name}]({name}): per row {what}; the OOD AUROC (entropy) where known."]


def _diag_prefix(d: Mapping[str, Any]) -> str:
    return f"{slug(d['model'])}_{slug(d['task'])}_{slug(d['method'])}_"


def forest_name(model: str, task: str) -> str:
    """The file name of a task's forest plot of differences to its MAP row."""
    return f"delta_{slug(model)}_{slug(task)}.png"


def write_forest_plot(
    out_dir: Path, model: str, task: str, sub: Sequence[Mapping[str, Any]], level: float = 0.95
) -> Path | None:
    """``delta_<model>_<task>.png``: each row's paired difference to the task's MAP row with its
    bootstrap CI (NLL, ECE, accuracy; regression: RMSE and NLL as differences of the point
    estimates, which have no CI) and the OOD AUROC by entropy; None where there is nothing to
    draw (no MAP row, no difference and no AUROC)."""
    ref = reference_rows(sub).get((model, task))
    regression = get_task(task).is_regression
    if ref is None:
        return None
    if regression:
        metrics = tuple(m for m in ("rmse", "nll") if any(f"{m}_mean" in r for r in sub))
    else:
        metrics = tuple(
            m for m in ("nll", "ece", "acc") if any(f"{m}_delta_mean" in r for r in sub)
        )
    if not metrics and not any("ood_auroc_entropy_mean" in r for r in sub):
        return None
    title = f"{model} on {task}: each row minus {ref['method']}"
    return P.forest_plot(
        sub,
        out_dir / forest_name(model, task),
        metrics,
        title=title,
        reference=str(ref["method"]),
        point_differences=regression,
        level=level,
    )


def write_plots(
    out_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    diags: Sequence[Mapping[str, Any]],
    level: float = 0.95,
) -> list[Path]:
    """Per task the comparison plot (bars, mean ± sd over seeds) and the forest plot of
    differences to MAP (:func:`write_forest_plot`); the diagnostic plots of each sampler group."""
    paths = []
    for (model, task), sub in _by_task(rows).items():
        regression = get_task(task).is_regression
        candidates = ("nll", "rmse", "pearson") if regression else ("acc", "nll", "ece")
        metrics = tuple(m for m in candidates if all(f"{m}_mean" in r for r in sub))
        if metrics:
            path = out_dir / f"comparison_{slug(model)}_{slug(task)}.png"
            paths.append(P.comparison_plot(sub, path, metrics, title=f"{model} on {task}"))
        forest = write_forest_plot(out_dir, model, task, sub, level)
        paths += [forest] if forest else []
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
    if report["shift"]["rows"]:
        shift_csv_frame(report["shift"]["rows"]).to_csv(out_dir / "shift.csv", index=False)
    if report["chains"]:
        names = report["trace_summaries"]
        chains_csv_frame(report["chains"], names).to_csv(out_dir / "chains.csv", index=False)
    if report["cycles"]:
        cycles_csv_frame(report["cycles"]).to_csv(out_dir / "cycles.csv", index=False)
    write_json(out_dir / "report.json", report)


def markdown_report(
    report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], diags: Sequence[Mapping[str, Any]]
) -> str:
    boot = report["bootstrap"]
    parts = [
        "# Sweep report",
        f"{report['num_runs']} run folders under {', '.join(report['folders'])}.",
        HOW_TO_READ.format(**boot),
    ]
    chains = _by_task(report["chains"])
    verdicts = _by_task(report["chain_verdicts"])
    cycles = _by_task(report["cycles"])
    cycle_verdicts_by_task = _by_task(report["cycle_verdicts"])
    names = report["trace_summaries"]
    for (model, task), sub in _by_task(rows).items():
        parts += [f"## {model} on {task}", markdown_table(sub), *best_rows(sub), *ood_line(sub)]
        parts += forest_line(report["plots"], model, task, boot["level"])
        if (model, task) in chains:
            parts += [
                f"### Chains of {model} on {task}: within-chain diagnostics",
                f"Per-step trace of each chain ({TRACE_PART[report['trace_from']]}): Geweke z "
                "(mean of "
                "the first 10% against the last 50%, autocorrelation-aware standard errors; "
                f"|z| > {report['chains'][0]['stationarity_z']:g} flags drift) and the chain's "
                "own bulk ESS, per summary.",
                markdown(chains_frame(chains[(model, task)], names)),
            ]
            parts += [f"- **{v['method']}**: {v['verdict']}" for v in verdicts[(model, task)]]
        if (model, task) in cycles:
            parts += [
                f"### Cycles of cyclical chains ({model} on {task})",
                CYCLES_HOW_TO_READ.format(z=report["cycles"][0]["stationarity_z"]),
                markdown(cycles_frame(cycles[(model, task)])),
            ]
            parts += [
                f"- **{v['method']}** seed {v['seed']}: {v['verdict']}"
                for v in cycle_verdicts_by_task[(model, task)]
            ]
    parts += shift_markdown(report["shift"], boot, best_rows)
    if report["notes"]:
        parts += ["## Notes", *[f"- {n}" for n in report["notes"]]]
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


# ----------------------------------------------------------------------------- command line

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


def _per_chain(values: Any) -> tuple[int | None, ...]:
    """``pooled_per_chain`` entries: a count, or null / ``all`` for every kept sample."""
    out: list[int | None] = []
    for v in values or []:
        if v is None or str(v).lower() == "all":
            out.append(None)
        elif int(v) >= 1:
            out.append(int(v))
        else:
            raise ConfigError(f"pooled_per_chain entries must be >= 1 or all/null, got {v!r}")
    return tuple(out)


def _trace_from(value: Any) -> str:
    if str(value) not in TRACE_FROM:
        raise ConfigError(
            f"diagnostics.trace_from must be one of {list(TRACE_FROM)}, got {value!r}"
        )
    return str(value)


def run_report(cfg: DictConfig) -> int:
    """The report of ``cfg`` (conf/report.yaml) written and printed; 0, or 2 on an error."""
    try:
        folders = report_folders(cfg)
        diag = cfg.diagnostics
        boot = cfg.get("bootstrap") or {}
        try:
            bootstrap = Bootstrap(
                int(boot.get("resamples", 1000)),
                int(boot.get("seed", 0)),
                float(boot.get("level", 0.95)),
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err
        report = build_report(
            folders,
            Path(cfg.out_dir) if cfg.get("out_dir") else None,
            int(diag.probes),
            float(diag.rhat_threshold),
            float(diag.ess_threshold),
            plots=bool(cfg.plots),
            stationarity_z=float(diag.stationarity_z),
            bootstrap=bootstrap,
            pooled_per_chain=_per_chain(cfg.get("pooled_per_chain", [1, None])),
            trace_summaries=[str(s) for s in diag.get("trace_summaries", TRACE_SUMMARIES)],
            trace_from=_trace_from(diag.get("trace_from", "start")),
        )
    except (FileNotFoundError, SampleFileError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for (model, task), sub in _by_task(report["rows"]).items():
        print(f"{model} on {task}")
        print(markdown_table(sub))
    for title, table in shift_tables(report["shift"]):
        print(f"{title}, under shift\n{table}")
    for v in report["chain_verdicts"]:
        print(f"{v['method']} ({v['model']}, {v['task']}) chains: {v['verdict']}")
    for v in report["cycle_verdicts"]:
        print(f"{v['method']} ({v['model']}, {v['task']}) seed {v['seed']} cycles: {v['verdict']}")
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
