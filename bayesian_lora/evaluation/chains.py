"""Chains in function space: scalar summaries per kept sample, diagnosed across chains.

Summaries: the test mean log-likelihood, the probability of the label of a few probe examples
(the predicted mean for regression) and the LoRA norm; ``diagnose_chains`` runs the ArviZ
diagnostics of ``evaluation.diagnostics`` on them and words the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.evaluation.diagnostics import chain_diagnostics
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
    rhat_threshold: float = 1.05,
    ess_threshold: float = 100.0,
) -> dict[str, Any]:
    """R-hat / ESS across chains of each summary, plus plain flags for anything not mixed.

    ``chains`` holds one mapping per chain, summary name -> draws ``[S]`` (ragged chains are
    truncated to the shortest, and the verdict says so).
    """
    names = [n for n in chains[0] if all(n in c and len(c[n]) > 0 for c in chains)]
    summaries = {n: [np.asarray(c[n], dtype=np.float64) for c in chains] for n in names}
    results = chain_diagnostics(summaries, ess_threshold, rhat_threshold)
    flags = [f"{name}: {d['verdict']}" for name, d in results.items() if not d["mixed"]]
    rhats = [d["rhat"] for d in results.values() if math.isfinite(d["rhat"])]
    ess = [d["ess_bulk"] for d in results.values() if math.isfinite(d["ess_bulk"])]
    return {
        "n_chains": len(chains),
        "rhat_threshold": rhat_threshold,
        "ess_threshold": ess_threshold,
        "max_rhat": max(rhats) if rhats else math.nan,
        "min_ess_bulk": min(ess) if ess else math.nan,
        "all_mixed": not flags,
        "flags": flags,
        "summaries": results,
        "_chains": summaries,  # for the plots; dropped before writing JSON
    }


def diagnostics_verdict(diag: Mapping[str, Any]) -> str:
    """One plain sentence for reports."""
    if diag["all_mixed"]:
        return (
            f"OK: {diag['n_chains']} chains mixed (max R-hat {diag['max_rhat']:.3f} <= "
            f"{diag['rhat_threshold']:g}, min bulk ESS {diag['min_ess_bulk']:.0f})"
        )
    bad_rhat = diag["max_rhat"] > diag["rhat_threshold"]
    low_ess = not diag["min_ess_bulk"] >= diag["ess_threshold"]
    reasons = [
        f"R-hat {diag['max_rhat']:.3f} > {diag['rhat_threshold']:g}" if bad_rhat else "",
        f"low ESS (min bulk {diag['min_ess_bulk']:.0f} < {diag['ess_threshold']:g})"
        if low_ess
        else "",
    ]
    reasons = [r for r in reasons if r] or ["diagnostics undefined (too few draws?)"]
    return f"WARNING: chains NOT mixed: {'; '.join(reasons)}"


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
