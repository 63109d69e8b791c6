"""Cycles of cyclical chains (cSGLD, cSGHMC): one record per (chain, cycle) for the report.

A cyclical schedule (``sampler.schedule.name=cyclical``) explores without noise in the first
part of every cosine cycle and keeps samples only in its sampling stage, so that one chain can
visit one mode per cycle. For every cyclical chain (run folder) and every cycle c that holds kept
samples (c = the schedule's own 0-based cycle number of the sampler step,
:meth:`~bayesian_lora.samplers.chain.ChainPlan.cycle` of the plan that ``config.build_chain_plan``
rebuilds from the run's saved config and that must reproduce the manifest's kept steps):

- ``kept``, ``kept_steps``: the kept samples of the cycle (their global steps);
- ``n_steps``, ``trace_means``: the traced steps of the cycle's sampling stage (past burn-in,
  where the schedule collects: ``ChainPlan.is_eligible``) and the mean of each per-step trace
  summary over them (``u``, ``nll``, ``probe_loglik``, ``norm.<group>``);
- ``summaries``, ``stationary``, ``drifting``: Geweke z of the first 10% against the last 50% of
  the cycle's sampling stage (:func:`~bayesian_lora.reporting.chain_checks.within_chain`; not
  checked below 40 steps). Within that stage the step size still falls from its value at the
  start of the stage towards 0, so a drift flag means the chain was still settling while it was
  kept, and the absence of a flag does not prove stationarity;
- ``metrics``: test metrics of the cycle's own ensemble (the mean predictive of its kept
  samples, rows of the run's ``predictions.safetensors``, which are ordered as the kept steps);
- ``previous``: against the previous cycle with kept samples, the :func:`compare_predictives`
  of the two cycle ensembles (``disagreement``, ``tv``, ``sym_kl``), and in parameter space the
  ``jump`` ||theta_last(c) - theta_last(prev)|| (all sampled tensors), the ``walk`` of cycle c
  (the summed distances between its consecutive kept samples) and ``jump_over_walk``;
- ``within``: the same predictive comparison between the first and second half of the cycle's
  kept samples (a reference for how far apart two ensembles of one cycle are; needs 2 kept).

:func:`chain_verdict` words this per chain without claiming more than it shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from bayesian_lora.callbacks.trace import load_trace
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.diagnostics import GEWEKE_Z, MIN_STATIONARITY_DRAWS
from bayesian_lora.evaluation.metrics import compare_predictives, ensemble_metrics
from bayesian_lora.evaluation.write import PER_SAMPLE_KEYS, PREDICTIONS_FILE, load_predictions
from bayesian_lora.reporting.chain_checks import TRACE_SUMMARIES, is_cyclical, within_chain
from bayesian_lora.reporting.discovery import Group, SweepRun
from bayesian_lora.runs import RunFolder, SampleFileError
from bayesian_lora.samplers.chain import ChainPlan


def chain_plan(run: SweepRun) -> ChainPlan:
    """The run's chain plan as training built it: ``config.build_chain_plan`` of its saved
    config (a warm start in epochs counted with the manifest's ``num_data``)."""
    from bayesian_lora.config import build_chain_plan, steps_per_epoch

    cfg = OmegaConf.create(run.config)
    assert isinstance(cfg, DictConfig)
    warmup = cfg.sampler.get("warmup") or {}
    per_epoch = None
    if warmup.get("epochs") is not None and not warmup.get("from_run"):
        per_epoch = steps_per_epoch(cfg, int(RunFolder(run.path).manifest.num_data or 0))
    plan = build_chain_plan(cfg, per_epoch)
    assert plan is not None  # a cyclical run is a chain
    return plan


def _trace_arrays(run: SweepRun) -> dict[str, np.ndarray]:
    """The run's per-step trace as numpy (``step`` int64, the summaries float64); ``{}``."""
    trace = load_trace(run.path)
    return {k: v.numpy() if k in ("step", "kept") else v.double().numpy() for k, v in trace.items()}


def _cycle_index(cycle: int | None) -> int:
    """A cycle number for an int array (-1: no cycle)."""
    return -1 if cycle is None else cycle


def _distance(samples: Mapping[str, Tensor], i: int, j: int) -> float:
    """||theta_i - theta_j||_2 over every sampled tensor (one tensor at a time, float64)."""
    total = sum(float((t[i].double() - t[j].double()).pow(2).sum()) for t in samples.values())
    return math.sqrt(total)


def _mean_predictive(preds: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    return preds[list(rows)].mean(axis=0)


def chain_cycles(
    run: SweepRun,
    names: Sequence[str] = TRACE_SUMMARIES,
    stationarity_z: float = GEWEKE_Z,
) -> tuple[list[dict[str, Any]], str | None]:
    """The per-cycle records of one cyclical run folder, or ``[]`` and why it was skipped."""
    try:
        plan = chain_plan(run)
    except (ValueError, KeyError, AttributeError) as err:
        return [], f"cycles of {run.path.name} skipped: its config gives no chain plan ({err})"
    try:
        steps = [int(t) for t in RunFolder(run.path).manifest.steps]
        arrays = load_predictions(run.path / PREDICTIONS_FILE)
    except SampleFileError as err:
        return [], f"cycles of {run.path.name} skipped: {err}"
    planned = plan.kept_steps()[: len(steps)]
    if not steps or steps != planned:
        return [], (
            f"cycles of {run.path.name} skipped: its manifest's kept steps {steps[:4]}... are not "
            f"those of the plan its config gives {planned[:4]}..."
        )
    preds, labels = arrays["predictions"].astype(np.float64), arrays["labels"]
    if preds.shape[0] != len(steps):
        return [], (
            f"cycles of {run.path.name} skipped: {preds.shape[0]} member predictions for "
            f"{len(steps)} kept steps"
        )
    cycle_of = [plan.cycle(t) for t in steps]
    cycles = sorted({c for c in cycle_of if c is not None})
    rows = {c: [i for i, k in enumerate(cycle_of) if k == c] for c in cycles}

    trace = _trace_arrays(run)
    traced = trace.get("step", np.zeros(0, dtype=np.int64))
    stage = np.array([plan.is_eligible(int(t)) for t in traced], dtype=bool)
    trace_cycle = np.array(
        [_cycle_index(plan.cycle(int(t))) if s else -1 for t, s in zip(traced, stage, strict=True)],
        dtype=np.int64,
    )
    series = [n for n in trace if n not in ("step", "kept")]

    task = get_task(run.task)
    obs = float(run.config["data"].get("obs_std", 0.5)) if task.is_regression else None
    classify = not task.is_regression
    samples = _samples(run) if len(cycles) > 1 else None

    out: list[dict[str, Any]] = []
    for k, c in enumerate(cycles):
        mine = rows[c]
        at = trace_cycle == c
        part = {n: trace[n][at] for n in series}
        check = within_chain(part, names, stationarity_z)
        metrics = ensemble_metrics(preds[mine], labels, task.metric, obs)
        rec: dict[str, Any] = {
            "model": run.model,
            "task": run.task,
            "method": "",  # the group's label, set by cycle_rows
            "seed": run.seed,
            "run": run.path.name,
            "sampler_temperature": run.temperature,
            "step_size": run.step_size,
            "cycle": c,
            "kept": len(mine),
            "kept_steps": [steps[i] for i in mine],
            "n_steps": int(at.sum()) if len(traced) else None,
            "trace_means": {n: float(v.mean()) for n, v in part.items() if v.size},
            "summaries": check["summaries"],
            "stationary": check["stationary"],
            "drifting": check["drifting"],
            "stationarity_z": stationarity_z,
            "metrics": {m: float(metrics[m]) for m in PER_SAMPLE_KEYS if m in metrics},
            "previous": None,
            "within": None,
        }
        if classify and len(mine) >= 2:
            half = len(mine) // 2
            first, second = mine[:half], mine[half:]
            rec["within"] = compare_predictives(
                _mean_predictive(preds, first), _mean_predictive(preds, second)
            )
        if k > 0:
            prev = rows[cycles[k - 1]]
            before: dict[str, Any] = {"cycle": cycles[k - 1]}
            if classify:
                before.update(
                    compare_predictives(
                        _mean_predictive(preds, prev), _mean_predictive(preds, mine)
                    )
                )
            if samples:
                jump = _distance(samples, prev[-1], mine[-1])
                walk = sum(_distance(samples, i, j) for i, j in pairwise(mine))
                before.update(
                    jump=jump,
                    walk=walk if len(mine) > 1 else math.nan,
                    jump_over_walk=jump / walk if walk > 0 else math.nan,
                )
            rec["previous"] = before
        out.append(rec)
    return out, None


def _samples(run: SweepRun) -> dict[str, Tensor] | None:
    """The run's kept samples (verified), loaded only for chains with two or more cycles."""
    try:
        return RunFolder(run.path).load_samples()[0]
    except SampleFileError:
        return None  # the function-space columns still stand


def cycle_rows(
    group: Group, names: Sequence[str] = TRACE_SUMMARIES, stationarity_z: float = GEWEKE_Z
) -> tuple[list[dict[str, Any]], list[str]]:
    """The per-cycle records of every cyclical chain of a sampler group, and skip notes."""
    if group.is_map or not is_cyclical(group.first.config):
        return [], []
    out, notes = [], []
    for run in group.runs:
        records, why = chain_cycles(run, names, stationarity_z)
        for r in records:
            r["method"] = group.label
        out += records
        if why:
            notes.append(why)
    return out, notes


# ----------------------------------------------------------------------------- verdict


def _span(values: Sequence[float], scale: float = 1.0, spec: str = ".3g") -> str:
    """``lo-hi`` of ``values`` (one number when they print alike)."""
    lo, hi = (format(f(values) * scale, spec) for f in (min, max))
    return lo if lo == hi else f"{lo}-{hi}"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def chain_verdict(cycles: Sequence[Mapping[str, Any]]) -> str:
    """One plain sentence about one chain's cycles: how far consecutive cycles' ensembles are
    apart against the two halves of one cycle, the parameter jumps against the walk within a
    cycle, and the per-cycle Geweke checks. It says what is consistent with different modes,
    never that the cycles are different modes."""
    n = len(cycles)
    kept = [int(c["kept"]) for c in cycles]
    parts = [f"{n} cycle{'' if n == 1 else 's'} with kept samples ({_span(kept, spec='.0f')} each)"]
    pairs = [c["previous"] for c in cycles if c["previous"] is not None]
    if not pairs:
        parts.append("no two cycles to compare")
    tv = _finite([p.get("tv") for p in pairs])
    if tv:
        dis = _finite([p["disagreement"] for p in pairs])
        text = (
            f"consecutive cycles' ensembles disagree on {_span(dis, 100, '.1f')}% of test "
            f"examples (TV {_span(tv)})"
        )
        within = [c["within"] for c in cycles if c["within"] is not None]
        if within:
            w_tv = [w["tv"] for w in within]
            text += (
                f", the two halves of one cycle on {_span([w['disagreement'] for w in within], 100, '.1f')}% "
                f"(TV {_span(w_tv)})"
            )
            if min(tv) > max(w_tv):
                text += (
                    ": cycles differ more from each other than within a cycle, as cycles in "
                    "different modes would (this alone does not show they are different modes)"
                )
            else:
                text += (
                    ": consecutive cycles differ no more than the halves of one cycle, no sign "
                    "of different modes"
                )
        else:
            text += "; with 1 kept sample per cycle there is no within-cycle reference"
        parts.append(text)
    ratios = _finite([p.get("jump_over_walk") for p in pairs])
    if ratios:
        parts.append(
            f"consecutive cycles' last samples are {_span(ratios, spec='.2g')}x as far apart as "
            "the path walked within a cycle (parameter space, where rescaled copies of one "
            "function count as far apart)"
        )
    checked = [c for c in cycles if c["stationary"] is not None]
    if checked:
        good = [c for c in checked if c["stationary"]]
        zs = _finite([s["geweke_z"] for c in checked for s in c["summaries"].values()])
        text = (
            f"Geweke within the sampling stage: {len(good)}/{len(checked)} cycles show no drift "
            f"(max |z| {max(abs(z) for z in zs):.1f} vs {checked[0]['stationarity_z']:g})"
        )
        drifting = [
            f"cycle {c['cycle']} ({', '.join(c['drifting'])})"
            for c in checked
            if not c["stationary"]
        ]
        if drifting:
            text += "; still settling: " + ", ".join(drifting)
        parts.append(text)
    if len(checked) < n:
        parts.append(
            f"{n - len(checked)} cycle(s) not checked (fewer than {MIN_STATIONARITY_DRAWS} traced "
            "sampling-stage steps)"
        )
    return "; ".join(parts)


def cycle_verdicts(cycles: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per chain (run folder) of ``cycles``, in order."""
    runs: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for c in cycles:
        runs.setdefault((c["model"], c["task"], c["method"], c["run"]), []).append(c)
    return [
        {
            "model": model,
            "task": task,
            "method": method,
            "seed": sub[0]["seed"],
            "run": run,
            "verdict": chain_verdict(sub),
        }
        for (model, task, method, run), sub in runs.items()
    ]
