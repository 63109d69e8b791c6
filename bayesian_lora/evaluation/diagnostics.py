"""MCMC convergence diagnostics across chains, delegated to ArviZ.

Inputs are scalar function-space summaries tracked per kept sample, e.g. the test mean
log-likelihood, the predicted probability of a probe example or the LoRA parameter norm, as
arrays ``[chains, draws]``.  R-hat is the rank-normalised split R-hat of Vehtari et al. (2021)
(``arviz.rhat(method="rank")``); ESS are ``arviz.ess`` bulk and tail estimates.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

MIN_DRAWS = 4  # ArviZ returns NaN for fewer draws per chain


@functools.cache
def _arviz() -> ModuleType:
    """Import ArviZ lazily (it is slow) and silence its refactor FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    logging.getLogger("arviz").setLevel(logging.ERROR)
    return arviz


def _as_chains(value: Any) -> tuple[np.ndarray, str | None]:
    """``[chains, draws]`` float64 array; ragged chains are truncated to the shortest."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray) and value.dtype != object:
        arr = np.asarray(value, dtype=np.float64)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise ValueError(f"expected [chains, draws], got shape {arr.shape}")
        return arr, None
    chains = [np.asarray(c, dtype=np.float64).ravel() for c in value]
    lengths = [len(c) for c in chains]
    shortest = min(lengths)
    note = None
    if len(set(lengths)) > 1:
        note = f"chains had unequal lengths {lengths}; truncated all to the first {shortest} draws"
    return np.stack([c[:shortest] for c in chains]), note


def _fmt(x: float, spec: str) -> str:
    return "NaN" if not math.isfinite(x) else format(x, spec)


def _verdict(d: dict[str, Any], ess_threshold: float, rhat_threshold: float) -> list[str]:
    chains, draws = d["n_chains"], d["n_draws"]
    if draws < MIN_DRAWS:
        return [f"only {draws} draws per chain (< {MIN_DRAWS}): diagnostics undefined, NOT mixed"]
    problems = []
    if chains < 2:
        problems.append("R-hat needs >= 2 chains: mixing across chains cannot be assessed")
    elif not math.isfinite(d["rhat"]):
        problems.append("R-hat undefined (constant summary?): mixing cannot be assessed")
    elif d["rhat"] > rhat_threshold:
        problems.append(f"R-hat {d['rhat']:.4f} > {rhat_threshold:g}: chains have NOT mixed")
    for kind in ("bulk", "tail"):
        ess = d[f"ess_{kind}"]
        if not ess >= ess_threshold:  # also catches NaN
            problems.append(
                f"{kind} ESS {_fmt(ess, '.0f')} < {ess_threshold:g}: too few effective draws"
            )
    return problems


def _diagnose_one(value: Any, ess_threshold: float, rhat_threshold: float) -> dict[str, Any]:
    az = _arviz()
    x, note = _as_chains(value)
    chains, draws = x.shape
    enough = draws >= MIN_DRAWS
    with warnings.catch_warnings():  # constant chains: 0/0 inside ArviZ -> NaN, reported below
        warnings.simplefilter("ignore", RuntimeWarning)
        d: dict[str, Any] = {
            "rhat": float(az.rhat(x, method="rank")) if enough and chains >= 2 else math.nan,
            "ess_bulk": float(az.ess(x, method="bulk")) if enough else math.nan,
            "ess_tail": float(az.ess(x, method="tail")) if enough else math.nan,
            "n_chains": chains,
            "n_draws": draws,
        }
    problems = _verdict(d, ess_threshold, rhat_threshold)
    d["mixed"] = not problems
    if problems:
        verdict = "FAIL: " + "; ".join(problems)
    else:
        verdict = (
            f"OK: R-hat {d['rhat']:.4f} <= {rhat_threshold:g}, bulk ESS {d['ess_bulk']:.0f} "
            f"and tail ESS {d['ess_tail']:.0f} >= {ess_threshold:g} ({chains} chains x {draws} draws)"
        )
    d["verdict"] = verdict if note is None else f"{verdict} [{note}]"
    d["note"] = note
    return d


def chain_diagnostics(
    summaries: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    ess_threshold: float = 100.0,
    rhat_threshold: float = 1.05,
) -> dict[str, dict[str, Any]]:
    """R-hat / ESS per summary, each ``[chains, draws]`` (a 1-D array is one chain).

    Ragged inputs (a list of 1-D chains of different lengths) are truncated to the shortest
    chain and the verdict says so.  Returns per summary: ``rhat`` (NaN with one chain),
    ``ess_bulk``, ``ess_tail``, ``n_chains``, ``n_draws``, ``mixed`` (True only if
    ``rhat <= rhat_threshold`` and both ESS ``>= ess_threshold``; anything undefined is
    ``False``), ``verdict`` (human-readable, starts with ``OK:`` or ``FAIL:``) and ``note``
    (truncation message or ``None``).
    """
    return {
        name: _diagnose_one(value, ess_threshold, rhat_threshold)
        for name, value in summaries.items()
    }


def format_diagnostics(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per summary: ``name: verdict`` (for logs and reports)."""
    return "\n".join(f"{name}: {d['verdict']}" for name, d in results.items())


def autocorrelation(x: Any) -> np.ndarray:
    """Autocorrelation of one chain ``[draws]`` at lags ``0..draws-1`` (``arviz.autocorr``)."""
    arr = np.asarray(
        x.detach().cpu().double().numpy() if hasattr(x, "detach") else x, dtype=np.float64
    )
    if arr.ndim != 1:
        raise ValueError(f"expected one chain [draws], got shape {arr.shape}")
    return np.asarray(_arviz().autocorr(arr), dtype=np.float64)
