"""MCMC diagnostics of a report: seeds as chains, and every chain on its own.

- **Across chains** (:func:`group_diagnostics`, the seeds of a sampler config as chains): R-hat
  and ESS of function-space summaries per kept sample, and of the per-step traces
  (``evaluation.chains``).
- **Within each chain** (:func:`chain_rows`): the chain's per-step trace (``trace.safetensors``:
  every burn-in and sampling step by default, ``trace_from=first_kept`` for the part the kept
  samples come from) of ``u``, ``nll`` and ``probe_loglik``: Geweke's z of the first 10% against the last 50% (``|z| > stationarity_z``
  flags a drifting chain; not checked below 40 steps) and the bulk ESS of the one chain (ArviZ,
  split into halves), with :func:`config_verdict` one plain line per sampler config.

A cyclical chain (``sampler.schedule.name=cyclical``: cSGLD, cSGHMC) changes its step size and
switches its noise off and on within every cycle, so the first 10% and the last 50% of its trace
are different phases of the cycles and a whole-trace Geweke z says nothing about stationarity:
its row is marked not applicable (``not_applicable`` gives the reason), and the Geweke check runs
on each cycle's sampling stage instead (:mod:`bayesian_lora.reporting.cycles`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.chains import (
    LORA_NORM,
    diagnose_chains,
    diagnostics_verdict,
    function_space_summaries,
    probe_indices,
    public,
    step_trace,
    step_trace_diagnostics,
)
from bayesian_lora.evaluation.diagnostics import (
    GEWEKE_Z,
    MIN_STATIONARITY_DRAWS,
    chain_diagnostics,
)
from bayesian_lora.evaluation.results import lora_norms
from bayesian_lora.evaluation.write import PREDICTIONS_FILE, load_predictions
from bayesian_lora.reporting.discovery import Group, SweepRun
from bayesian_lora.runs import SampleFileError, load_samples

#: The per-step trace summaries diagnosed within each chain (``conf/report.yaml``).
TRACE_SUMMARIES = ("u", "nll", "probe_loglik")
#: Which part of the trace: every recorded step (burn-in and sampling), or from the first kept
#: sample on.
TRACE_FROM = ("start", "first_kept")


# ----------------------------------------------------------------------------- seeds as chains


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
    """R-hat / ESS across the seeds of a sampler group (None for MAP, a single seed, or runs
    of independent draws from a fitted distribution: SWAG, Laplace, BLoB are not chains, as in
    ``evaluate``'s :func:`~bayesian_lora.evaluation.members.are_chains`)."""
    if group.is_map or len(group.runs) < 2 or any(r.independent_draws for r in group.runs):
        return None
    chains = [run_chain_summaries(r, probes) for r in group.runs]
    diag = diagnose_chains(chains, rhat, ess, stationarity_z)
    diag["verdict"] = diagnostics_verdict(diag)
    diag["method"], diag["model"], diag["task"] = group.label, group.first.model, group.first.task
    trace = step_trace_diagnostics([r.path for r in group.runs], rhat, ess, stationarity_z)
    if trace is not None:  # the per-step traces of the seeds (hundreds of draws per chain)
        diag["trace"] = public(trace)
    return diag


# ----------------------------------------------------------------------------- within one chain

#: Why a cyclical chain gets no whole-trace Geweke verdict.
CYCLICAL_NOT_APPLICABLE = (
    "cyclical schedule: the step size and the noise change within every cycle, so the first "
    "10% and the last 50% of the trace are different phases of the cycles; Geweke runs on each "
    "cycle's sampling stage instead (cycles table)"
)


def is_cyclical(config: Mapping[str, Any]) -> bool:
    """A run of a cyclical schedule (``sampler.schedule.name=cyclical``: cSGLD, cSGHMC)."""
    schedule = (config.get("sampler") or {}).get("schedule") or {}
    return str(schedule.get("name", "")) == "cyclical"


def within_chain(
    trace: Mapping[str, np.ndarray],
    names: Sequence[str] = TRACE_SUMMARIES,
    stationarity_z: float = GEWEKE_Z,
) -> dict[str, Any]:
    """Stationarity and ESS of one chain's trace summaries (``name -> [draws]``).

    Per summary: ``n_draws``, ``geweke_z`` (first 10% against last 50%, NaN below
    ``MIN_STATIONARITY_DRAWS``), ``ess_bulk`` and ``drifting`` (``|z| > stationarity_z``).
    The chain is ``stationary`` when no summary drifts and at least one could be checked;
    ``None`` (not checked) when none could.
    """
    present = {n: np.asarray(trace[n], dtype=np.float64) for n in names if n in trace}
    results = chain_diagnostics(present, stationarity_z=stationarity_z) if present else {}
    summaries = {}
    for name, d in results.items():
        z = float(d["geweke_z"][0])
        summaries[name] = {
            "n_draws": int(d["n_draws"]),
            "geweke_z": z,
            "ess_bulk": float(d["ess_bulk"]),
            "drifting": math.isfinite(z) and abs(z) > stationarity_z,
        }
    checked = [s for s in summaries.values() if math.isfinite(s["geweke_z"])]
    drifting = [n for n, s in summaries.items() if s["drifting"]]
    ess = [s["ess_bulk"] for s in summaries.values() if math.isfinite(s["ess_bulk"])]
    return {
        "summaries": summaries,
        "stationary": None if not checked else not drifting,
        "drifting": drifting,
        "min_ess_bulk": min(ess) if ess else math.nan,
        "n_draws": max((s["n_draws"] for s in summaries.values()), default=0),
        "stationarity_z": stationarity_z,
    }


def chain_rows(
    group: Group,
    names: Sequence[str] = TRACE_SUMMARIES,
    stationarity_z: float = GEWEKE_Z,
    trace_from: str = "start",
) -> list[dict[str, Any]]:
    """One record per chain (run) of a sampler group that has a per-step trace."""
    if trace_from not in TRACE_FROM:
        raise ValueError(f"trace_from must be one of {TRACE_FROM}, got {trace_from!r}")
    if group.is_map:
        return []
    out = []
    for run in group.runs:
        trace = step_trace(run.path, from_first_kept=trace_from == "first_kept")
        if trace is None:
            continue
        d: dict[str, Any]
        if is_cyclical(run.config):
            d = {
                "summaries": {},
                "stationary": None,
                "drifting": [],
                "min_ess_bulk": math.nan,
                "n_draws": max((len(v) for v in trace.values()), default=0),
                "stationarity_z": stationarity_z,
                "not_applicable": CYCLICAL_NOT_APPLICABLE,
            }
        else:
            d = within_chain(trace, names, stationarity_z)
        d.update(
            model=group.first.model,
            task=group.first.task,
            method=group.label,
            seed=run.seed,
            run=run.path.name,
            sampler_temperature=run.temperature,
            step_size=run.step_size,
            trace_from=trace_from,
        )
        out.append(d)
    return out


def config_verdict(chains: Sequence[Mapping[str, Any]]) -> str:
    """One line per sampler config, e.g. ``3/3 chains stationary at T=1.0 (max |Geweke z| 1.4,
    min within-chain bulk ESS 12)``, naming the drifting chains."""
    if not chains:
        return "no per-step traces"
    first = chains[0]
    at = (
        f" at T={first['sampler_temperature']:g}"
        if first["sampler_temperature"] is not None
        else ""
    )
    if any(c.get("not_applicable") for c in chains):  # one config: all cyclical or none
        return (
            f"Geweke over the whole trace not applicable to {len(chains)} cyclical "
            f"chain{'' if len(chains) == 1 else 's'}{at} (the step size and noise change within "
            "every cycle); see each cycle's sampling stage under Cycles of cyclical chains"
        )
    checked = [c for c in chains if c["stationary"] is not None]
    good = [c for c in checked if c["stationary"]]
    zs = [
        abs(s["geweke_z"])
        for c in checked
        for s in c["summaries"].values()
        if math.isfinite(s["geweke_z"])
    ]
    ess = [c["min_ess_bulk"] for c in chains if math.isfinite(c["min_ess_bulk"])]
    stats = []
    if zs:
        stats.append(f"max |Geweke z| {max(zs):.1f} vs {first['stationarity_z']:g}")
    if ess:
        stats.append(f"min within-chain bulk ESS {min(ess):.0f}")
    unchecked = len(chains) - len(checked)
    if not checked:  # "0/3 chains stationary" would read as three failures
        text = (
            f"stationarity not checked{at}: {len(chains)} chain"
            f"{'' if len(chains) == 1 else 's'} with fewer than {MIN_STATIONARITY_DRAWS} traced "
            "steps"
        )
        return text + (f" (min within-chain bulk ESS {min(ess):.0f})" if ess else "")
    text = f"{len(good)}/{len(checked)} {'checked ' if unchecked else ''}chains stationary{at}"
    if stats:
        text += f" ({', '.join(stats)})"
    drifting = [
        f"seed {c['seed']} ({', '.join(c['drifting'])})" for c in checked if not c["stationary"]
    ]
    if drifting:
        text += "; drifting: " + "; ".join(drifting)
    if unchecked:
        text += f"; {unchecked} not checked (fewer than {MIN_STATIONARITY_DRAWS} traced steps)"
    return text
