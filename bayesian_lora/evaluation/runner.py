"""One code path from member predictions to saved predictions, metrics, diagnostics and plots.

MAP (one sample), chains (S samples), pooled chains, deep ensembles (the samples of several MAP
runs) and MC dropout (K stochastic passes per sample) all end in ``evaluate_predictions``; the
train-time evaluation (``evaluate_module_on_test``), ``python -m bayesian_lora.evaluate`` and
``python -m bayesian_lora.report`` share the functions here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from torch import Tensor

from bayesian_lora.callbacks.sample_store import SampleFileError, load_samples
from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.evaluation import plots as P
from bayesian_lora.evaluation.diagnostics import chain_diagnostics
from bayesian_lora.evaluation.ensemble import cache_batches, labels_of, predict_samples
from bayesian_lora.evaluation.metrics import (
    EPS,
    ensemble_metrics,
    metrics_vs_ensemble_size,
    mutual_information,
    ood_detection,
    predictive_entropy,
    risk_coverage_curve,
    selective_prediction,
)

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.safetensors"
METRICS_FILE = "metrics.json"
EVALUATION_DIR = "evaluation"  # evaluate's default output folder in a run (the report reads it)
NUM_PROBES = 3
LOGLIK = "test mean log-lik"
LORA_NORM = "LoRA norm"


# ----------------------------------------------------------------------------- metrics


def evaluate_predictions(
    sample_preds: np.ndarray, labels: np.ndarray, task: TaskSpec, obs_std: float
) -> dict[str, Any]:
    """Ensemble, per-member and versus-ensemble-size metrics of stacked member predictions.

    ``sample_preds`` is ``[M, N, C]`` probabilities (``[M, N]`` means for regression); the
    ensemble averages probabilities, so its ``nll`` is ``-log mean_m p_m(y)``.
    """
    obs = obs_std if task.is_regression else None
    per_member = [
        ensemble_metrics(sample_preds[i : i + 1], labels, task.metric, obs)
        for i in range(sample_preds.shape[0])
    ]
    out: dict[str, Any] = {
        "ensemble": ensemble_metrics(sample_preds, labels, task.metric, obs),
        "per_sample": per_member,
        "per_sample_summary": summarise_rows(per_member),
        "vs_ensemble_size": metrics_vs_ensemble_size(sample_preds, labels, task.metric, None, obs),
    }
    if not task.is_regression:
        out["selective"] = selective_prediction(sample_preds.mean(axis=0), labels)
    return out


def summarise_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std (ddof=0), min and max over rows of every numeric key."""
    keys = [k for k in rows[0] if k != "n_samples"] if rows else []
    out = {}
    for key in keys:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {
            "mean": float(vals.mean()),
            "std": float(vals.std()),
            "min": float(vals.min()),
            "max": float(vals.max()),
        }
    return out


def lora_norms(samples: Mapping[str, Tensor]) -> np.ndarray:
    """L2 norm of all LoRA A/B parameters together, per sample -> ``[S]`` (empty if no LoRA)."""
    lora = [t.flatten(1).float() for n, t in samples.items() if "lora_" in n]
    if not lora:
        return np.zeros(0)
    return torch.cat(lora, dim=1).norm(dim=1).double().cpu().numpy()


def lora_parameter_stats(samples: Mapping[str, Tensor]) -> dict[str, float]:
    """Norm of the LoRA parameters of each sample: mean, std and coefficient of variation."""
    norms = lora_norms(samples)
    if norms.size == 0:
        return {}
    mean, std = float(norms.mean()), float(norms.std(ddof=1)) if len(norms) > 1 else 0.0
    return {
        "lora_norm_mean": mean,
        "lora_norm_std": std,
        "lora_norm_cv": std / mean if mean > 0 else float("nan"),
    }


def ood_scores(sample_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example OOD scores (higher = more OOD): predictive entropy and mutual information."""
    return {
        "entropy": predictive_entropy(sample_probs.mean(axis=0)),
        "mutual_information": mutual_information(sample_probs),
    }


def ood_metrics(preds_in: np.ndarray, preds_out: np.ndarray, ood_task: str) -> dict[str, Any]:
    """AUROC / AUPR (OOD = positive class) of in- vs. out-of-distribution scores."""
    s_in, s_out = ood_scores(preds_in), ood_scores(preds_out)
    out: dict[str, Any] = {
        "task": ood_task,
        "n_in": int(preds_in.shape[1]),
        "n_out": int(preds_out.shape[1]),
        **{name: ood_detection(s_in[name], s_out[name]) for name in s_in},
    }
    if preds_in.shape[0] == 1:
        out["note"] = (
            "one ensemble member: mutual information is 0 everywhere, so its AUROC is 0.5 by "
            "construction (use a chain, a deep ensemble or mc_dropout=K)"
        )
    return out


# ----------------------------------------------------------------------------- files


def save_predictions(
    path: Path,
    sample_preds: np.ndarray,
    labels: np.ndarray,
    extra: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """``predictions`` (float32 ``[M, N, C]``), ``labels`` and any ``extra`` arrays, no pickle."""
    tensors = {
        "predictions": np.ascontiguousarray(sample_preds, dtype=np.float32),
        "labels": np.ascontiguousarray(labels),
    }
    tensors.update({k: np.ascontiguousarray(v) for k, v in (extra or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=dict(metadata or {}) or None)


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays written by :func:`save_predictions` (raises ``SampleFileError`` if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise SampleFileError(f"no predictions file {path}")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SampleFileError(f"{path} is truncated or corrupt: {err}") from err
    if "predictions" not in arrays or "labels" not in arrays:
        raise SampleFileError(f"{path} lacks 'predictions' or 'labels' ({sorted(arrays)})")
    return arrays


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2))


def json_load(path: Path) -> Any:
    """Read a JSON file (``SampleFileError`` naming the file if it is not valid JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise SampleFileError(f"{path} is not valid JSON ({err})") from err


def _jsonable(obj: Any) -> Any:
    """Plain JSON: numpy scalars/arrays converted, NaN/inf written as null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------- train-time path


def evaluate_module_on_test(module: Any, datamodule: Any, run_dir: Path) -> dict[str, Any]:
    """Test metrics of a finished run's kept samples; saves predictions and ``metrics.json``."""
    samples, manifest = load_samples(run_dir, device=module.device)
    batches = cache_batches(datamodule.test_dataloader(), module.device)
    preds = predict_samples(module, samples, batches).cpu().numpy()
    labels = labels_of(batches).numpy()
    result = evaluate_predictions(preds, labels, module.task, module.obs_std)
    result["parameters"] = lora_parameter_stats(samples)
    result["num_samples"] = int(manifest["num_samples"])
    save_predictions(Path(run_dir) / PREDICTIONS_FILE, preds, labels)
    write_json(Path(run_dir) / METRICS_FILE, result)
    print(
        format_metrics(result["ensemble"], title=f"test metrics ({result['num_samples']} samples)")
    )
    return result


def format_metrics(metrics: Mapping[str, float], title: str = "metrics") -> str:
    """A small aligned table; ECE is a fraction in [0, 1] (printed with that label)."""
    lines = [title]
    for key, value in metrics.items():
        label = "ece (fraction)" if key == "ece" else key
        lines.append(f"  {label:<22} {value:.4f}")
    return "\n".join(lines)


def format_per_sample(rows: Sequence[Mapping[str, float]], keys: Sequence[str]) -> str:
    """One line per member: ``member  acc  nll ...`` (ECE as a fraction)."""
    keys = [k for k in keys if rows and k in rows[0]]
    head = "  member " + "".join(f"{('ece (frac)' if k == 'ece' else k):>12}" for k in keys)
    lines = ["per-sample metrics", head]
    for i, row in enumerate(rows):
        lines.append(f"  {i:>6} " + "".join(f"{row[k]:>12.4f}" for k in keys))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- MCMC diagnostics


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


def write_diagnostic_plots(out_dir: Path, diag: Mapping[str, Any], prefix: str = "") -> list[Path]:
    chains = diag["_chains"]
    if not chains:
        return []
    results = diag["summaries"]
    paths = [P.trace_plot(chains, out_dir / f"{prefix}trace.png", results, title="Trace plots")]
    if min(len(c) for cs in chains.values() for c in cs) >= 2:
        paths.append(P.autocorrelation_plot(chains, out_dir / f"{prefix}autocorrelation.png"))
    return paths


# ----------------------------------------------------------------------------- plots


def write_evaluation_plots(
    out_dir: Path,
    result: Mapping[str, Any],
    preds: np.ndarray,
    labels: np.ndarray,
    task: TaskSpec,
    ood_preds: np.ndarray | None = None,
    ood_task: str = "OOD",
) -> list[Path]:
    """Reliability, confidence, vs-ensemble-size, risk-coverage and OOD score PNGs."""
    m = preds.shape[0]
    if task.is_regression:
        rows = result["vs_ensemble_size"]
        return [P.metrics_vs_ensemble_size(rows, out_dir / "vs_size.png", ("nll", "rmse"))]
    mean = preds.mean(axis=0)
    name = f"ensemble@{m}"
    paths = [
        P.reliability_diagram(mean, labels, out_dir / "reliability.png", title=name),
        P.confidence_histogram(mean, labels, out_dir / "confidence.png", title=name),
        P.metrics_vs_ensemble_size(result["vs_ensemble_size"], out_dir / "vs_size.png"),
    ]
    curves = {name: risk_coverage_curve(mean, labels)}
    if m > 1:
        curves["member 0"] = risk_coverage_curve(preds[0], labels)
    paths.append(P.risk_coverage_plot(curves, out_dir / "risk_coverage.png"))
    if ood_preds is not None:
        s_in, s_out = ood_scores(preds), ood_scores(ood_preds)
        for score in s_in:
            paths.append(
                P.ood_histogram(
                    s_in[score],
                    s_out[score],
                    out_dir / f"ood_{score}.png",
                    score_name=score,
                    title=f"{task.name} vs {ood_task} (OOD)",
                )
            )
    return paths
