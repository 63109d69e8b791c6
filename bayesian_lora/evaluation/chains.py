"""Chains in function space: scalar summaries per kept sample, diagnosed across chains.

Summaries: the test mean log-likelihood, the probability of the label of a few probe examples
(the predicted mean for regression) and the LoRA norm; ``diagnose_chains`` runs the ArviZ
diagnostics of ``evaluation.diagnostics`` on them and words the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.evaluation.diagnostics import (
    ESS_THRESHOLD,
    GEWEKE_Z,
    RHAT_THRESHOLD,
    chain_diagnostics,
    inference_data,
)
from bayesian_lora.evaluation.metrics import EPS
from bayesian_lora.evaluation.results import lora_norms

if TYPE_CHECKING:
    from bayesian_lora.evaluation.predict import Members

NUM_PROBES = 3
LOGLIK = "test mean log-lik"
LORA_NORM = "LoRA norm"


def probe_indices(n: int, count: int = NUM_PROBES) -> np.ndarray:
    """A fixed probe set: ``count`` test examples evenly spaced over ``0..n-1``."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def function_space_summaries(
    preds: np.ndarray, labels: np.ndarray, task: TaskSpec, obs_std: float, probes: np.ndarray
) -> dict[str, np.ndarray]:
    """Scalar summaries per member ``[M]``: test mean log-likelihood and, per probe example,
    the predicted probability of its label (the predicted mean for regression)."""
    if task.is_regression:
        z = (labels[None] - preds) / obs_std
        loglik = -0.5 * z**2 - math.log(obs_std) - 0.5 * math.log(2 * math.pi)
        probe = {f"mean of probe #{int(i)}": preds[:, i] for i in probes}
    else:
        p_true = preds[:, np.arange(len(labels)), labels.astype(np.int64)]
        loglik = np.log(np.clip(p_true, EPS, None))
        probe = {f"p(label) of probe #{int(i)}": p_true[:, i] for i in probes}
    return {LOGLIK: loglik.mean(axis=1).astype(np.float64), **probe}


def diagnose_chains(
    chains: Sequence[Mapping[str, np.ndarray]],
    rhat_threshold: float = RHAT_THRESHOLD,
    ess_threshold: float = ESS_THRESHOLD,
    stationarity_z: float = GEWEKE_Z,
) -> dict[str, Any]:
    """R-hat / ESS / stationarity across chains of each summary, plus plain flags.

    ``chains`` holds one mapping per chain, summary name -> draws ``[S]`` (ragged chains are
    truncated to the shortest, and the verdict says so). ``_chains`` (for the plots) and
    ``_idata`` (the ``InferenceData``, saved as netCDF) are dropped before writing JSON.
    """
    names = [n for n in chains[0] if all(n in c and len(c[n]) > 0 for c in chains)]
    summaries = {n: [np.asarray(c[n], dtype=np.float64) for c in chains] for n in names}
    results = chain_diagnostics(summaries, ess_threshold, rhat_threshold, stationarity_z)
    flags = [f"{name}: {d['verdict']}" for name, d in results.items() if not d["mixed"]]
    rhats = [d["rhat"] for d in results.values() if math.isfinite(d["rhat"])]
    ess = [d["ess_bulk"] for d in results.values() if math.isfinite(d["ess_bulk"])]
    return {
        "n_chains": len(chains),
        "rhat_threshold": rhat_threshold,
        "ess_threshold": ess_threshold,
        "stationarity_z": stationarity_z,
        "max_rhat": max(rhats) if rhats else math.nan,
        "min_ess_bulk": min(ess) if ess else math.nan,
        "all_mixed": not flags,
        "flags": flags,
        "summaries": results,
        "_chains": summaries,
        "_idata": inference_data(summaries) if summaries else None,
    }


def public(diag: Mapping[str, Any]) -> dict[str, Any]:
    """``diag`` without its in-memory parts (``_chains``, ``_idata``), for JSON."""
    return {k: v for k, v in diag.items() if not k.startswith("_")}


def diagnostics_verdict(diag: Mapping[str, Any]) -> str:
    """One plain sentence for the console and the reports, from the per-summary checks (so
    both say the same thing): OK, chains NOT mixed (with the reasons), or too few draws."""
    results = diag["summaries"]
    if diag["all_mixed"] and results:
        return (
            f"OK: {diag['n_chains']} chains mixed (max R-hat {diag['max_rhat']:.3f} <= "
            f"{diag['rhat_threshold']:g}, min bulk ESS {diag['min_ess_bulk']:.0f})"
        )
    fails = [d for d in results.values() if d["status"] == "fail"]
    reasons = []
    if any(d["rhat"] > diag["rhat_threshold"] for d in fails):
        reasons.append(f"R-hat {diag['max_rhat']:.3f} > {diag['rhat_threshold']:g}")
    if any("ESS" in p for d in fails for p in d["problems"]):
        reasons.append(f"low ESS (min bulk {diag['min_ess_bulk']:.0f} < {diag['ess_threshold']:g})")
    drifting = [
        n for n, d in results.items() if any(p.startswith("drifting") for p in d["problems"])
    ]
    if drifting:
        reasons.append(f"drifting chains in {', '.join(drifting)}")
    reasons += list(
        dict.fromkeys(
            p.split(":")[0]
            for d in fails
            for p in d["problems"]
            if p.startswith(("R-hat needs", "R-hat undefined"))
        )
    )
    too_few = list(dict.fromkeys(p for d in results.values() for p in d["too_few_draws"]))
    if fails:
        return "WARNING: chains NOT mixed: " + "; ".join(reasons + too_few)
    return "UNDETERMINED: " + ("; ".join(too_few) or "no summaries to diagnose")


def chain_summaries(
    m: Members,
    samples: Mapping[str, Tensor],
    n_runs: int,
    task: TaskSpec,
    obs_std: float,
    probes: int,
) -> list[dict[str, np.ndarray]]:
    """Per chain: function-space summaries per kept sample (MC passes averaged) + LoRA norm."""
    probe_idx = probe_indices(len(m.labels), probes)
    norms = lora_norms(samples)
    passes = int(m.dropout_pass.max()) + 1
    chains = []
    for r in range(n_runs):
        rows = np.flatnonzero(m.run == r)
        preds = m.preds[rows].reshape(-1, passes, *m.preds.shape[1:]).mean(axis=1)
        summary = function_space_summaries(preds, m.labels, task, obs_std, probe_idx)
        if norms.size:
            summary[LORA_NORM] = norms[rows[::passes] // passes]
        chains.append(summary)
    return chains


def step_trace(run_dir: str | Path, from_first_kept: bool = True) -> dict[str, np.ndarray] | None:
    """One run folder's per-step trace (``trace.safetensors``) from its first kept sample on
    (``from_first_kept=False``: every recorded step, burn-in included), as float64 arrays
    (``u``, ``nll``, ``probe_loglik``, ``norm.<group>``); None without a trace or a kept step."""
    from bayesian_lora.callbacks.trace import load_trace

    trace = load_trace(run_dir)
    if not trace or "kept" not in trace or not bool(trace["kept"].any()):
        return None
    start = int(trace["kept"].nonzero()[0, 0]) if from_first_kept else 0
    names = [n for n in trace if n not in ("step", "kept")]
    return {n: trace[n][start:].double().numpy() for n in names}


def step_traces(run_dirs: Sequence[str | Path]) -> list[dict[str, np.ndarray]]:
    """Per run folder, its per-step trace (``trace.safetensors``) from the first kept sample on:
    ``u``, ``nll``, ``probe_loglik`` and the ``norm.<group>`` summaries at every sampler step
    (``[]`` when a folder has no trace). One chain becomes its two halves, so that split R-hat
    still compares the start of the chain with its end."""
    chains = []
    for run_dir in run_dirs:
        chain = step_trace(run_dir)
        if chain is None:
            return []
        chains.append(chain)
    if len(chains) == 1:
        half = min(len(v) for v in chains[0].values()) // 2
        chains = [
            {n: v[:half] for n, v in chains[0].items()},
            {n: v[half : 2 * half] for n, v in chains[0].items()},
        ]
    return chains


def step_trace_diagnostics(
    run_dirs: Sequence[str | Path],
    rhat_threshold: float = RHAT_THRESHOLD,
    ess_threshold: float = ESS_THRESHOLD,
    stationarity_z: float = GEWEKE_Z,
) -> dict[str, Any] | None:
    """:func:`diagnose_chains` on the per-step traces (None without traces), with its verdict."""
    chains = step_traces(run_dirs)
    if not chains:
        return None
    diag = diagnose_chains(chains, rhat_threshold, ess_threshold, stationarity_z)
    diag["verdict"] = diagnostics_verdict(diag)
    diag["halves_of_one_chain"] = len(run_dirs) == 1
    return diag
