"""Optional Weights & Biases logging of an evaluation: summary metrics and the PNG plots.

Runs are grouped like the training runs, by the one rule of ``config.wandb_group``: the
evaluation of runs trained in a ``-m`` sweep joins the sweep's group (the sweep folder's name),
so it sits beside the chains it evaluated; otherwise ``<model>-<task>-<sampler>`` (the kind,
e.g. ``pooled_chains``, in place of the sampler for several folders). ``wandb.group=`` sets it
by hand. The W&B run is finished in a ``finally``, also when logging fails. Works offline
(``mode: offline`` or ``WANDB_MODE=offline``; then ``wandb sync <out_dir>/wandb/offline-run-*``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUMMARY_SECTIONS = ("ensemble", "selective", "parameters", "ood", "per_sample_summary")


def flatten_metrics(result: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Finite scalar metrics of an evaluation result as ``eval/<section>/<name>`` keys."""
    flat: dict[str, float] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(f"{key}/{k}", v)
        elif _finite_number(value):
            flat[key] = float(value)

    for section in SUMMARY_SECTIONS:
        if section in result:
            visit(f"{prefix}/{section}", result[section])
    diag = result.get("diagnostics", {})
    for key in ("max_rhat", "min_ess_bulk"):
        if _finite_number(diag.get(key)):
            flat[f"{prefix}/diagnostics/{key}"] = float(diag[key])
    flat[f"{prefix}/num_members"] = float(result["num_members"])
    return flat


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_sweep(run_dir: str | Path) -> Path | None:
    """The sweep folder a run folder was trained in under ``-m`` (None for a single run)."""
    from omegaconf import OmegaConf

    hydra_yaml = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    saved = OmegaConf.load(hydra_yaml)
    mode = OmegaConf.select(saved, "hydra.mode", default=None)
    return Path(run_dir).resolve().parent if str(mode) == "MULTIRUN" else None


def run_group(result: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """The evaluated runs' sweep group if they come from one sweep, else
    ``<model>-<task>-<sampler>`` (the kind instead of the sampler for several runs)."""
    from bayesian_lora.config import wandb_group

    runs = result["runs"]
    sweeps = {training_sweep(r["run_dir"]) for r in runs}
    sweep = sweeps.pop() if len(sweeps) == 1 else None
    samplers = {r["sampler"] for r in runs}
    sampler = samplers.pop() if len(samplers) == 1 and len(runs) == 1 else result["kind"]
    return wandb_group(manifest["model"].get("name", "model"), result["task"], sampler, sweep)


def log_evaluation(
    result: Mapping[str, Any],
    out_dir: Path,
    plots: Sequence[Path],
    settings: Mapping[str, Any],
    manifest: Mapping[str, Any],
) -> dict[str, str]:
    """Log one evaluation as a W&B run (job type ``evaluate``); returns its id, name and mode."""
    import wandb

    group = settings.get("group") or run_group(result, manifest)
    run = wandb.init(
        project=settings.get("project") or "bayesian-lora",
        entity=settings.get("entity"),
        group=group,
        job_type="evaluate",
        name=f"{group}-{Path(out_dir).name}",
        dir=str(out_dir),
        mode=settings.get("mode") or None,
        tags=list(settings.get("tags") or []),
        config={
            "kind": result["kind"],
            "k": result["k"],
            "mc_dropout": result["mc_dropout"],
            "runs": [r["run_dir"] for r in result["runs"]],
        },
        reinit="finish_previous",
    )
    try:
        run.summary.update(flatten_metrics(result))
        images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}
        if images:
            run.log(images)
        info = {
            "id": str(run.id),
            "name": str(run.name),
            "group": group,
            "mode": str(run.settings.mode),
        }
    finally:
        run.finish()
    return info
