"""What evaluation writes and prints: predictions (safetensors), JSON, PNGs, console tables.

File names are fixed here (``predictions.safetensors``, ``metrics.json``, the ``evaluation``
folder) because the report reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.evaluation import plots as P
from bayesian_lora.evaluation.diagnostics import save_inference_data
from bayesian_lora.evaluation.members import ensemble_kind
from bayesian_lora.evaluation.metrics import risk_coverage_curve
from bayesian_lora.evaluation.results import ood_scores
from bayesian_lora.runs import SampleFileError

if TYPE_CHECKING:
    from bayesian_lora.evaluation.predict import Members
    from bayesian_lora.runs import RunFolder

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.safetensors"
METRICS_FILE = "metrics.json"
EVALUATION_DIR = "evaluation"  # evaluate's default output folder in a run (the report reads it)
DIAGNOSTICS_FILE = "diagnostics.nc"  # the chains' ArviZ InferenceData (arviz.from_netcdf)
PER_SAMPLE_KEYS = ("acc", "nll", "ece", "brier", "f1", "mcc", "rmse", "pearson", "spearman")


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


def default_out_dir(
    runs: Sequence[RunFolder],
    k: int | None,
    mc_dropout: int,
    split: str = "test",
    calibrate: str | None = None,
) -> Path:
    total = sum(r.num_samples for r in runs)
    suffix = (
        (f"_k{k}" if k is not None and k < total else "")
        + (f"_mcdropout{mc_dropout}" if mc_dropout else "")
        + ("" if split == "test" else f"_{split}")
        + (f"_{calibrate}" if calibrate else "")
    )
    if len(runs) == 1:
        return runs[0].path / f"{EVALUATION_DIR}{suffix}"
    digest = hashlib.sha1("\n".join(sorted(str(r.path) for r in runs)).encode()).hexdigest()[:8]
    kind = ensemble_kind(runs, 0)
    return runs[0].path.parent / f"{EVALUATION_DIR}_{kind}_{len(runs)}runs_{digest}{suffix}"


def write_outputs(
    cfg: DictConfig,
    out_dir: Path,
    result: dict[str, Any],
    m: Members,
    task: TaskSpec,
    diag: Mapping[str, Any] | None,
    runs: Sequence[RunFolder],
    calibrated: np.ndarray | None = None,
) -> None:
    """predictions.safetensors, metrics.json, evaluate.yaml, diagnostics.nc (chains), PNGs
    (and W&B if enabled)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"member_run": m.run, "member_sample": m.sample, "member_pass": m.dropout_pass}
    if calibrated is not None:  # the calibrated predictive [N, C] and what was fitted
        extra["calibrated_predictions"] = np.ascontiguousarray(calibrated, dtype=np.float32)
        cal = {k: v for k, v in result["calibration"].items() if not isinstance(v, dict)}
        write_json(out_dir / f"{result['calibration']['method']}.json", cal)
    if m.ood_preds is not None:
        extra["ood_predictions"] = np.ascontiguousarray(m.ood_preds, dtype=np.float32)
    for name, (preds, labels) in m.shift.items():
        extra[f"shift_{name}_predictions"] = np.ascontiguousarray(preds, dtype=np.float32)
        extra[f"shift_{name}_labels"] = labels
    meta = {"task": task.name, "runs": "\n".join(str(r.path) for r in runs)}
    save_predictions(out_dir / PREDICTIONS_FILE, m.preds, m.labels, extra, meta)
    if diag is not None and "diagnostics" in result:
        result["diagnostics"]["inference_data"] = write_diagnostics_data(out_dir, diag)
    plots: list[Path] = []
    if cfg.get("plots", True):
        ood = str(cfg.get("ood"))
        plots = write_evaluation_plots(out_dir, result, m.preds, m.labels, task, m.ood_preds, ood)
        if diag is not None:
            plots += write_diagnostic_plots(out_dir, diag)
    result["out_dir"] = str(out_dir)
    result["plots"] = [p.name for p in plots]
    OmegaConf.save(cfg, out_dir / "evaluate.yaml", resolve=True)
    if OmegaConf.select(cfg, "wandb.enabled", default=False):
        from bayesian_lora.evaluation.wandb_logging import log_evaluation

        result["wandb"] = log_evaluation(result, out_dir, plots, cfg.wandb, runs[0].manifest)
    write_json(out_dir / METRICS_FILE, result)


def write_diagnostics_data(out_dir: Path, diag: Mapping[str, Any], prefix: str = "") -> str | None:
    """The chains' ``InferenceData`` as ``<prefix>diagnostics.nc`` (netCDF); its file name."""
    if diag.get("_idata") is None:
        return None
    return save_inference_data(diag["_idata"], out_dir / f"{prefix}{DIAGNOSTICS_FILE}").name


def write_step_trace_diagnostics(
    out_dir: Path,
    result: dict[str, Any],
    run_dirs: Sequence[Path],
    thresholds: tuple[float, float, float],
) -> None:
    """Diagnostics of the runs' per-step traces (``trace.safetensors``, hundreds of draws per
    chain) as ``result["trace_diagnostics"]`` and ``trace_diagnostics.nc``; nothing without
    traces."""
    from bayesian_lora.evaluation.chains import public, step_trace_diagnostics

    diag = step_trace_diagnostics(run_dirs, *thresholds)
    if diag is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    result["trace_diagnostics"] = public(diag)
    result["trace_diagnostics"]["inference_data"] = write_diagnostics_data(out_dir, diag, "trace_")


def write_diagnostic_plots(out_dir: Path, diag: Mapping[str, Any], prefix: str = "") -> list[Path]:
    chains = diag["_chains"]
    if not chains:
        return []
    results = diag["summaries"]
    paths = [P.trace_plot(chains, out_dir / f"{prefix}trace.png", results, title="Trace plots")]
    if min(len(c) for cs in chains.values() for c in cs) >= 2:
        paths.append(P.autocorrelation_plot(chains, out_dir / f"{prefix}autocorrelation.png"))
    return paths


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


SHIFT_KEYS = ("acc", "nll", "ece", "brier")


def format_shift_table(shift: Mapping[str, Any], keys: Sequence[str] = SHIFT_KEYS) -> str:
    """Markdown rows: test set, n, accuracy, NLL, ECE (a fraction), Brier; in-domain first."""
    header = " | ".join("ece (fraction)" if k == "ece" else k for k in keys)
    lines = [
        f"distribution shift (trained on {shift['trained_on']})",
        f"| test set | n | {header} |",
        "|---" * (len(keys) + 2) + "|",
    ]
    for name, row in shift["tasks"].items():
        label = f"{name} (in-domain)" if name == shift["trained_on"] else name
        values = " | ".join(f"{row[k]:.4f}" for k in keys)
        lines.append(f"| {label} | {row['n']} | {values} |")
    return "\n".join(lines)


def format_result(result: Mapping[str, Any], show_single: bool = False) -> str:
    """The console summary: ensemble metrics, selective, OOD, parameters, diagnostics."""
    n = result["num_members"]
    parts = [
        format_metrics(
            result["ensemble"],
            f"ensemble@{n} ({result['kind']}) {result['split']} metrics",
        )
    ]
    if show_single:
        parts.append(format_per_sample(result["per_sample"], PER_SAMPLE_KEYS))
    for key in ("selective", "parameters"):
        if result.get(key):
            parts.append(format_metrics(result[key], key))
    if "ood" in result:
        ood = result["ood"]
        flat = {f"{s} {m}": ood[s][m] for s in ("entropy", "mutual_information") for m in ood[s]}
        parts.append(format_metrics(flat, f"OOD detection vs {ood['task']}"))
        if "note" in ood:
            parts.append(f"  note: {ood['note']}")
    if "shift" in result:
        parts.append(format_shift_table(result["shift"]))
    if "calibration" in result:
        cal = result["calibration"]
        title = (
            f"after {cal['method']} scaling (T = {cal['temperature']:.4f}, fitted on "
            f"{cal['num_validation']} validation examples: NLL {cal['validation_nll_before']:.4f}"
            f" -> {cal['validation_nll_after']:.4f})"
        )
        parts.append(format_metrics(cal["ensemble"], title))
    diag = result.get("diagnostics", {})
    if "verdict" in diag:
        parts.append("MCMC diagnostics across chains: " + diag["verdict"])
        parts += [f"  {flag}" for flag in diag["flags"]]
    trace = result.get("trace_diagnostics")
    if trace:
        draws = next(iter(trace["summaries"].values()))["n_draws"] if trace["summaries"] else 0
        how = "two halves of the chain" if trace["halves_of_one_chain"] else "chains"
        parts.append(f"per-step trace diagnostics ({how}, {draws} draws each): {trace['verdict']}")
        parts += [f"  {flag}" for flag in trace["flags"]]
    parts.append(f"outputs in {result['out_dir']}")
    return "\n".join(parts)
