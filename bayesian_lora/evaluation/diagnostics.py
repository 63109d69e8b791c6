"""MCMC convergence diagnostics across chains, kept as an ArviZ ``InferenceData``.

Inputs are scalar function-space summaries tracked per kept sample, e.g. the test mean
log-likelihood, the predicted probability of a probe example or the LoRA parameter norm, as
arrays ``[chains, draws]``. They become the posterior group of an ``InferenceData`` (saved as
netCDF next to the evaluation); ``arviz.summary`` gives the rank-normalised split R-hat of
Vehtari et al. (2021), threshold 1.01, and the bulk and tail ESS, threshold 100, checked only
when ``chains x draws`` could reach it (else the verdict says "too few draws"). A Geweke z per
chain (first 10% against last 50% of the draws) flags a drifting chain.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

MIN_DRAWS = 4  # ArviZ returns NaN for fewer draws per chain
MIN_STATIONARITY_DRAWS = 40  # Geweke's first 10% must hold >= 4 draws
RHAT_THRESHOLD = 1.01  # Vehtari et al. (2021)
ESS_THRESHOLD = 100.0  # bulk and tail; checked only when chains x draws could reach it
GEWEKE_Z = 3.0  # |z| above this flags a drifting chain


@functools.cache
def _arviz() -> ModuleType:
    """Import ArviZ lazily (it is slow) and silence its refactor FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    logging.getLogger("arviz").setLevel(logging.ERROR)
    own = getattr(arviz, "_log", None)  # ArviZ logs through its own Logger("arviz") instance
    if isinstance(own, logging.Logger):  # (one chain: "Shape validation failed" for R-hat)
        own.setLevel(logging.ERROR)
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


def inference_data(summaries: Mapping[str, Any]) -> Any:
    """The summaries as an ArviZ ``InferenceData`` (posterior group, one variable each).

    Ragged chains are truncated to the shortest; save it with :func:`save_inference_data`.
    """
    az = _arviz()
    return az.from_dict(posterior={name: _as_chains(v)[0] for name, v in summaries.items()})


def save_inference_data(idata: Any, path: str | Path) -> Path:
    """``idata`` as netCDF (h5netcdf engine); read back with ``arviz.from_netcdf(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(str(path), engine="h5netcdf")
    return path


def summary_table(idata: Any) -> Any:
    """``arviz.summary(kind="diagnostics")``: rank-normalised split R-hat, bulk/tail ESS, MCSE."""
    az = _arviz()
    with warnings.catch_warnings():  # constant chains: 0/0 inside ArviZ -> NaN, reported later
        warnings.simplefilter("ignore", RuntimeWarning)
        return az.summary(idata, kind="diagnostics", round_to="none")


def geweke_z(chain: np.ndarray, first: float = 0.1, last: float = 0.5) -> float:
    """Geweke's stationarity z of one chain: mean of the first 10% minus mean of the last 50%,
    over the root sum of their squared Monte Carlo standard errors (ArviZ ``mcse``, which
    accounts for autocorrelation). NaN below ``MIN_STATIONARITY_DRAWS`` draws."""
    x = np.asarray(chain, dtype=np.float64)
    if len(x) < MIN_STATIONARITY_DRAWS:
        return math.nan
    a, b = x[: int(first * len(x))], x[len(x) - int(last * len(x)) :]
    az = _arviz()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = math.hypot(
            float(az.mcse(a[None], method="mean")), float(az.mcse(b[None], method="mean"))
        )
    if not se > 0:
        return 0.0 if a.mean() == b.mean() else math.inf
    return float((a.mean() - b.mean()) / se)


def _problems(
    d: dict[str, Any], ess_threshold: float, rhat_threshold: float, z: float
) -> tuple[list[str], list[str]]:
    """(failures, checks the draws cannot support) of one summary."""
    chains, draws = d["n_chains"], d["n_draws"]
    if draws < MIN_DRAWS:
        return [], [f"only {draws} draws per chain (< {MIN_DRAWS}): R-hat and ESS undefined"]
    fails, too_few = [], []
    if chains < 2:
        fails.append("R-hat needs >= 2 chains: mixing across chains cannot be assessed")
    elif not math.isfinite(d["rhat"]):
        fails.append("R-hat undefined (constant summary?): mixing cannot be assessed")
    elif d["rhat"] > rhat_threshold:
        fails.append(f"R-hat {d['rhat']:.4f} > {rhat_threshold:g}: chains have NOT mixed")
    total = chains * draws
    if total < ess_threshold:
        too_few.append(
            f"too few draws for the ESS check ({chains} x {draws} = {total} < {ess_threshold:g})"
        )
    else:
        for kind in ("bulk", "tail"):
            ess = d[f"ess_{kind}"]
            if not ess >= ess_threshold:  # also catches NaN
                fails.append(
                    f"{kind} ESS {_fmt(ess, '.0f')} < {ess_threshold:g}: too few effective draws"
                )
    drifting = [i for i, g in enumerate(d["geweke_z"]) if math.isfinite(g) and abs(g) > z]
    if drifting:
        worst = max(drifting, key=lambda i: abs(d["geweke_z"][i]))
        fails.append(
            f"drifting: Geweke z {d['geweke_z'][worst]:+.1f} in chain {worst} (|z| > {z:g}, "
            f"first 10% vs last 50%)"
        )
    return fails, too_few


def _diagnose_one(
    x: np.ndarray,
    row: Any,
    ess_threshold: float,
    rhat_threshold: float,
    z: float,
    note: str | None,
) -> dict[str, Any]:
    chains, draws = x.shape
    enough = draws >= MIN_DRAWS and row is not None
    d: dict[str, Any] = {
        "rhat": float(row["r_hat"]) if enough and chains >= 2 else math.nan,
        "ess_bulk": float(row["ess_bulk"]) if enough else math.nan,
        "ess_tail": float(row["ess_tail"]) if enough else math.nan,
        "mcse_mean": float(row["mcse_mean"]) if enough else math.nan,
        "n_chains": chains,
        "n_draws": draws,
        "geweke_z": [geweke_z(c) for c in x],
    }
    d["stationarity_checked"] = draws >= MIN_STATIONARITY_DRAWS
    fails, too_few = _problems(d, ess_threshold, rhat_threshold, z)
    d["mixed"] = not fails and not too_few
    d["status"] = "fail" if fails else "too few draws" if too_few else "ok"
    d["problems"], d["too_few_draws"] = fails, too_few
    if fails:
        verdict = "FAIL: " + "; ".join(fails + too_few)
    elif too_few:
        verdict = "TOO FEW DRAWS: " + "; ".join(too_few)
    else:
        verdict = (
            f"OK: R-hat {d['rhat']:.4f} <= {rhat_threshold:g}, bulk ESS {d['ess_bulk']:.0f} "
            f"and tail ESS {d['ess_tail']:.0f} >= {ess_threshold:g} ({chains} chains x {draws} draws)"
        )
    if not d["stationarity_checked"]:
        verdict += f" (stationarity not checked: < {MIN_STATIONARITY_DRAWS} draws per chain)"
    d["verdict"] = verdict if note is None else f"{verdict} [{note}]"
    d["note"] = note
    return d


def chain_diagnostics(
    summaries: Mapping[str, Any],
    ess_threshold: float = ESS_THRESHOLD,
    rhat_threshold: float = RHAT_THRESHOLD,
    stationarity_z: float = GEWEKE_Z,
) -> dict[str, dict[str, Any]]:
    """R-hat / ESS (``arviz.summary``) and a Geweke stationarity z per summary ``[chains, draws]``.

    Per summary: ``rhat`` (NaN with one chain), ``ess_bulk``, ``ess_tail``, ``mcse_mean``,
    ``n_chains``, ``n_draws``, ``geweke_z`` (one per chain; NaN when too short),
    ``status`` (``ok`` / ``fail`` / ``too few draws``: ESS is only checked when
    ``chains x draws >= ess_threshold`` could reach it), ``mixed`` (``status == "ok"``),
    ``problems`` (the failed checks), ``too_few_draws`` (the checks the draws cannot support),
    ``verdict`` (starts with ``OK:``, ``FAIL:`` or ``TOO FEW DRAWS:``) and
    ``note`` (the truncation of ragged chains, or ``None``). A chain drifts when its
    ``|geweke_z| > stationarity_z``.
    """
    arrays = {name: _as_chains(v) for name, v in summaries.items()}
    usable = {n: x for n, (x, _) in arrays.items() if x.shape[1] >= MIN_DRAWS}
    table = summary_table(inference_data(usable)) if usable else None
    return {
        name: _diagnose_one(
            x,
            table.loc[name] if table is not None and name in usable else None,
            ess_threshold,
            rhat_threshold,
            stationarity_z,
            note,
        )
        for name, (x, note) in arrays.items()
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
