"""Laplace-LoRA around a MAP run: ``python -m bayesian_lora.laplace run_dir=<MAP run>``.

MAP run folder -> (options checked) -> model + LoRA at theta* and the training batches ->
curvature (diagonal or KFAC GGN, one pass) -> prior precision (marginal likelihood, validation
NLL, or given) -> ``num_samples`` draws written as a new run folder's sample stack (plus
``laplace.safetensors`` and ``laplace.json``) -> with ``evaluate_on_fit_end`` (default) the test
metrics of the draws, as ``train`` writes them at the end of a run (``predictions.safetensors``,
``metrics.json``: a finished run folder, which the report reads). ``evaluate`` then scores it like
any run. The math is in :mod:`bayesian_lora.methods.laplace`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from safetensors.torch import load_file, save_file
from torch import Tensor

from bayesian_lora.config import CONFIG_DIR, build_datamodule
from bayesian_lora.config_validation import ConfigError, validate_laplace_config
from bayesian_lora.entry import run_or_refuse
from bayesian_lora.errors import MissingInputError
from bayesian_lora.evaluation.ensemble import cache_batches, labels_of, predict_samples, swap_in
from bayesian_lora.evaluation.metrics import ensemble_metrics
from bayesian_lora.evaluation.predict import (
    Members,
    build_eval_batches,
    build_eval_module,
    eval_run_config,
    evaluate_module_on_test,
    ood_batches,
    resolve_device,
    shift_tasks,
)
from bayesian_lora.evaluation.write import write_json
from bayesian_lora.methods.laplace import (
    LAPLACE_FILE,
    STRUCTURES,
    Curvature,
    LaplacePosterior,
    fit_curvature,
    glm_logit_covariance,
    glm_logit_draws,
    load_posterior,
    probit_probs,
)
from bayesian_lora.runs import LAPLACE, RunFolder, load_samples, open_run, write_samples
from bayesian_lora.runs.layout import SAMPLES_FILE

log = logging.getLogger("bayesian_lora.laplace")

PRIOR_MODES = ("marglik", "val_nll")


def check_options(cfg: DictConfig) -> None:
    """Every option, before anything loads: ``conf/laplace.yaml``'s keys
    (:func:`~bayesian_lora.config_validation.validate_laplace_config`), then the ones that
    depend on each other or on the method's module."""
    validate_laplace_config(cfg)
    if not cfg.get("run_dir"):
        raise ConfigError("give run_dir=<MAP run folder>")
    if cfg.structure not in STRUCTURES:
        raise ConfigError(
            f"structure={cfg.structure!r} is not allowed: one of {', '.join(STRUCTURES)}"
        )
    prior = cfg.prior_precision
    number = isinstance(prior, (int, float)) and not isinstance(prior, bool)
    if not (prior in PRIOR_MODES or (number and math.isfinite(prior) and prior > 0)):
        raise ConfigError(
            f"prior_precision={prior!r} is not allowed: {' or '.join(PRIOR_MODES)}, or a number > 0"
        )
    grid = list(cfg.val_nll_grid or [])
    if prior == "val_nll" and not (grid and all(float(d) > 0 for d in grid)):
        raise ConfigError(f"val_nll_grid={grid!r} is not allowed: a non-empty list of numbers > 0")


def open_map_run(path: str) -> RunFolder:
    run = open_run(Path(path).expanduser().resolve())
    if not run.is_map:
        raise ConfigError(
            f"run_dir={path!r} is a {run.sampler!r} run; Laplace is fitted around a MAP run "
            "(sampler=map), whose one sample is the mode"
        )
    return run


def fit_laplace(cfg: DictConfig) -> dict[str, Any]:
    """Fit, choose the prior precision, draw, write the run folder; returns laplace.json."""
    check_options(cfg)
    run = open_map_run(str(cfg.run_dir))
    out_dir = (
        Path(cfg.out_dir)
        if cfg.get("out_dir")
        else run.path.parent / f"{run.path.name}_laplace_{cfg.structure}"
    )
    if (out_dir / SAMPLES_FILE).exists():
        raise FileExistsError(f"{out_dir} already holds samples; choose another out_dir")
    run_cfg = eval_run_config(cfg, run)
    device = resolve_device(str(cfg.device))
    module = build_eval_module(run_cfg, run, device)
    params = module.sampled_parameters()
    samples, _ = load_samples(run.path, device=device)
    swap_in(params, samples, 0)
    dm = build_datamodule(run_cfg)
    dm.setup()

    fit_start = time.perf_counter()
    curvature = fit_curvature(
        module,
        module.model,
        params,
        _train_batches(dm.train_dataloader(), device, cfg.get("max_batches")),
        module.per_example_nll,
        "regression" if module.task.is_regression else "classification",
        str(cfg.structure),  # type: ignore[arg-type]
        obs_std=module.obs_std,
    )
    # The run's prior is isotropic only with prior_std set; Laplace's delta here is one scalar.
    prior_std = run_cfg.get("prior_std")
    run_delta = None if prior_std is None else 1.0 / float(prior_std) ** 2
    post = LaplacePosterior(curvature, run_delta or 1.0)
    start = time.perf_counter()
    grid_results, search = choose_prior_precision(cfg, post, module, dm, device)
    select_seconds = time.perf_counter() - start
    gen = torch.Generator().manual_seed(int(cfg.seed))
    draws = {n: t.to(params[n].dtype) for n, t in post.sample(int(cfg.num_samples), gen).items()}
    fit_seconds = time.perf_counter() - fit_start
    info = {
        "method": LAPLACE,
        "structure": cfg.structure,
        "prior_precision_mode": str(cfg.prior_precision),
        "prior_precision": post.prior_precision,
        "prior_std": post.prior_precision**-0.5,
        "run_prior_precision": run_delta,
        "log_marglik": post.log_marglik(),
        "log_marglik_at_run_prior": None if run_delta is None else post.log_marglik(run_delta),
        "val_nll_grid": grid_results,
        "num_data": curvature.num_data,
        "num_params": curvature.num_params,
        "log_likelihood": curvature.log_likelihood,
        "from_run": str(run.path),
        "file": LAPLACE_FILE,
        "compute": laplace_compute(
            curvature, search, select_seconds, fit_seconds, run.manifest.get("compute")
        ),
    }
    write_run(out_dir, run, draws, curvature, info, laplace_options(cfg))
    if cfg.evaluate_on_fit_end:  # train's end-of-run test evaluation of the kept samples
        evaluate_module_on_test(module, dm, out_dir)
    print(summary(info, out_dir))
    return info


def _train_batches(
    loader: Any, device: torch.device, max_batches: int | None
) -> Iterator[dict[str, Tensor]]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= int(max_batches):
            return
        yield {k: v.to(device) for k, v in batch.items()}


def choose_prior_precision(
    cfg: DictConfig, post: LaplacePosterior, module: Any, dm: Any, device: torch.device
) -> tuple[list[dict[str, float]], dict[str, int]]:
    """Set ``post.prior_precision`` as asked. Returns the validation grid's NLLs (``val_nll``)
    and what the search cost: ``evaluations`` (log-evidence evaluations for ``marglik``, grid
    points for ``val_nll``) and ``forward_passes`` (validation batches x draws x grid points)."""
    mode = cfg.prior_precision
    if mode == "marglik":
        post.optimize_prior_precision()
        return [], {"evaluations": post.search_evaluations, "forward_passes": 0}
    if mode != "val_nll":
        post.prior_precision = float(mode)
        return [], {"evaluations": 0, "forward_passes": 0}
    batches = cache_batches(dm.val_dataloader(), device)
    labels = labels_of(batches).numpy()
    params = module.sampled_parameters()
    theta = {n: p.detach().clone() for n, p in params.items()}
    results = []
    try:
        for delta in [float(d) for d in cfg.val_nll_grid]:
            post.prior_precision = delta
            gen = torch.Generator().manual_seed(int(cfg.seed))
            draws = post.sample(int(cfg.val_nll_draws), gen)
            on_device = {n: draws[n].to(device, params[n].dtype) for n in params}
            preds = predict_samples(module, on_device, batches).cpu().numpy()
            obs = module.obs_std if module.task.is_regression else None
            nll = ensemble_metrics(preds, labels, module.task.metric, obs)["nll"]
            results.append({"prior_precision": delta, "val_nll": float(nll)})
    finally:
        swap_in(params, {n: t[None] for n, t in theta.items()}, 0)
    post.prior_precision = min(results, key=lambda r: r["val_nll"])["prior_precision"]
    passes = len(results) * int(cfg.val_nll_draws) * len(batches)
    return results, {"evaluations": len(results), "forward_passes": passes}


def laplace_compute(
    curvature: Curvature,
    search: dict[str, int],
    select_seconds: float,
    fit_seconds: float,
    warm_start: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Laplace run's manifest ``compute`` block (``bayesian_lora.compute``'s fields).

    One curvature batch (a forward pass and K backward passes of the GGN factors) counts as ONE
    gradient evaluation, like a training step's batch (``grad_evals.curvature``); its backward
    passes are in ``curvature_backward_passes``. The prior-precision search takes no gradients
    (``marglik``: closed-form evidence evaluations; ``val_nll``: forward passes only), so it is
    counted apart. ``train_seconds`` is the fit's wall time (curvature, search, draws);
    ``warm_start`` is the MAP run's block, so the report adds the MAP fit's cost."""
    out: dict[str, Any] = {
        "steps": {},
        "grad_evals": {"curvature": curvature.batches},
        "total_steps": 0,
        "total_grad_evals": curvature.batches,
        "train_examples": curvature.num_data,
        "train_seconds": round(fit_seconds, 3),
        "curvature_batches": curvature.batches,
        "curvature_examples": curvature.num_data,
        "curvature_backward_passes": curvature.backward_passes,
        "curvature_seconds": round(curvature.seconds, 3),
        "prior_search_evaluations": int(search["evaluations"]),
        "prior_search_forward_passes": int(search["forward_passes"]),
        "prior_selection_seconds": round(select_seconds, 3),
    }
    if warm_start:
        out["warm_start"] = dict(warm_start)
    return out


def laplace_options(cfg: DictConfig) -> dict[str, Any]:
    """The options that make a Laplace configuration (the run folder's ``sampler`` block, so
    that the report groups the fits of several MAP seeds as one): structure, how the prior
    precision was chosen, the draws; not the fitted values, which differ between seeds."""
    out: dict[str, Any] = {
        "name": LAPLACE,
        "structure": str(cfg.structure),
        "prior_precision": cfg.prior_precision,
        "num_samples": int(cfg.num_samples),
        "max_batches": cfg.get("max_batches"),
    }
    if cfg.prior_precision == "val_nll":
        out["val_nll_grid"] = [float(d) for d in cfg.val_nll_grid]
        out["val_nll_draws"] = int(cfg.val_nll_draws)
    return out


def write_run(
    out_dir: Path,
    run: RunFolder,
    draws: dict[str, Tensor],
    curvature: Curvature,
    info: dict[str, Any],
    options: dict[str, Any],
) -> None:
    """config.yaml (the MAP's, its sampler replaced by the Laplace ``options`` and the MAP run),
    laplace.safetensors, laplace.json, samples (the fitted prior in the manifest's
    ``prior_std`` and ``posterior``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(run.config)
    sampler = {**options, "from_run": str(run.path)}
    with open_dict(config):
        config.sampler = sampler
        config.paths.output_dir = str(out_dir)
    OmegaConf.save(config, out_dir / "config.yaml", resolve=True)
    tensors = {f"theta/{n}": t.float() for n, t in curvature.theta.items()}
    for b in curvature.blocks:
        stats = {"diag": b.diag_w, "diag_bias": b.diag_b, "A": b.A, "G": b.G}
        tensors |= {f"{k}/{b.weight}": v.float() for k, v in stats.items() if v is not None}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / LAPLACE_FILE))
    write_json(out_dir / "laplace.json", info)
    manifest = {
        **{k: v for k, v in run.manifest.items() if k not in ("parameters", "dtypes")},
        "sampler": sampler,
        "prior_std": float(info["prior_std"]),
        "steps": [],
        "kept_steps_planned": None,
        "status": "complete",
        "compute": info["compute"],
        "posterior": {k: v for k, v in info.items() if k not in ("val_nll_grid", "compute")},
    }
    write_samples(out_dir, draws, manifest)


# ----------------------------------------------------------------------------- GLM predictive
LAPLACE_INFO = "laplace.json"


def read_laplace_folder(run: RunFolder) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``laplace.safetensors`` and ``laplace.json`` of a Laplace run folder (never a pickle)."""
    files = [run.path / LAPLACE_FILE, run.path / LAPLACE_INFO]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MissingInputError(
            f"{run.path} has no {' or '.join(missing)}: predictive=glm needs a run folder "
            "written by python -m bayesian_lora.laplace"
        )
    return load_file(str(files[0])), json.loads(files[1].read_text())


def predict_glm(cfg: DictConfig, run_cfg: DictConfig, runs: Sequence[RunFolder]) -> Members:
    """evaluate's ``predictive=glm``: the linearised predictive of each Laplace run.

    Per run, at its theta* (``laplace.safetensors``), every input's f* and ``J Sigma J^T``
    (:func:`~bayesian_lora.methods.laplace.glm_logit_covariance`: one forward and K backward
    passes per batch); then members: ``glm_link=mc`` gives ``glm_samples`` logit draws per
    example from N(f*, J Sigma J^T) (softmaxed; regression: draws of the mean, which the
    evaluation's Gaussian mixture with ``obs_std`` turns into N(f*, J Sigma J^T + s^2)), one
    CPU generator seeded with ``seed``; ``probit`` one member per run (MacKay). Several runs:
    an equal mixture, members interleaved run by run (member j from run j mod R).
    """
    device = resolve_device(str(cfg.get("device", "auto")))
    module = build_eval_module(run_cfg, runs[0], device)
    dm, batches = build_eval_batches(run_cfg, device, str(cfg.get("split", "test")))
    sets: dict[str, list[dict[str, Tensor]]] = {"test": batches}
    if cfg.get("ood") is not None:
        sets["ood"] = ood_batches(cfg, run_cfg, dm, device)
    if cfg.get("calibrate") is not None:
        sets["val"] = cache_batches(dm.val_dataloader(), device)
    for name in shift_tasks(cfg):
        sets[f"shift/{name}"] = ood_batches(cfg, run_cfg, dm, device, task=name)
    regression = bool(module.task.is_regression)
    link = "mc" if regression else str(cfg.get("glm_link", "mc"))
    num = int(cfg.get("glm_samples", 256))
    gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    params = module.sampled_parameters()
    per_set: dict[str, list[np.ndarray]] = {k: [] for k in sets}
    gaussians: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in sets}
    posts = []
    seconds = 0.0
    for run in runs:
        tensors, info = read_laplace_folder(run)
        post = load_posterior(tensors, info, module.model, params)
        theta = {n: t[None].to(device, params[n].dtype) for n, t in post.curvature.theta.items()}
        swap_in(params, theta, 0)
        posts.append(
            {
                "run_dir": str(run.path),
                "structure": info["structure"],
                "prior_precision": post.prior_precision,
            }
        )
        for key, bs in sets.items():
            start = time.perf_counter()
            f, cov = glm_logit_covariance(module, post, bs)
            if key in ("test", "ood"):
                seconds += time.perf_counter() - start
            gaussians[key].append((f, cov))
            if link == "probit":
                per_set[key].append(probit_probs(f, cov)[None].float().numpy())
                continue
            draws = glm_logit_draws(f, cov, num, gen)  # [S, N, K]
            out = draws[..., 0] if regression else draws.softmax(-1)
            per_set[key].append(out.float().numpy())
    stacked = {k: _interleave(v) for k, v in per_set.items()}
    per_run = stacked["test"].shape[0] // len(runs)
    labels = {k: labels_of(bs).numpy() for k, bs in sets.items()}
    num_out = int(gaussians["test"][0][0].shape[1])
    predictive: dict[str, Any] = {
        "kind": "glm",
        "link": link,
        "logit_draws": None if link == "probit" else num,
        "runs": posts,
        "passes_per_example": {"forward": len(runs), "backward": len(runs) * num_out},
        "jacobian_seconds": round(seconds, 3),
    }
    if regression:
        predictive["closed_form"] = _gaussian_metrics(gaussians["test"], labels["test"], module)
    m = Members(
        preds=stacked["test"],
        labels=labels["test"],
        ood_preds=stacked.get("ood"),
        run=np.tile(np.arange(len(runs)), per_run).astype(np.int64),
        sample=np.repeat(np.arange(per_run), len(runs)).astype(np.int64),
        dropout_pass=np.zeros(per_run * len(runs), dtype=np.int64),
        seconds=seconds,
        val_preds=stacked.get("val"),
        val_labels=labels.get("val"),
        predictive=predictive,
    )
    for key in sets:
        if key.startswith("shift/"):
            m.shift[key.split("/", 1)[1]] = (stacked[key], labels[key])
    return m


def glm_compute(result: dict[str, Any], m: Members) -> None:
    """evaluate's ``timing`` and ``compute`` for ``predictive=glm``: the passes per test example
    are one forward and K backward per run (not one per member: the members are logit draws)."""
    passes = m.predictive["passes_per_example"]
    result["timing"]["forward_passes"] = passes["forward"]
    result["compute"]["forward_passes_per_example"] = passes["forward"]
    result["compute"]["backward_passes_per_example"] = passes["backward"]


def _interleave(per_run: list[np.ndarray]) -> np.ndarray:
    """``[S, N, ...]`` per run -> ``[S * R, N, ...]`` with member j from run j mod R."""
    stacked = np.stack(per_run, axis=1)  # [S, R, N, ...]
    return stacked.reshape(-1, *stacked.shape[2:])


def _gaussian_metrics(
    gaussians: list[tuple[Tensor, Tensor]], labels: np.ndarray, module: Any
) -> dict[str, float]:
    """The regression GLM predictive in closed form: the equal mixture over runs of
    N(f*, J Sigma J^T + obs_std^2); its mean NLL per example and the RMSE of its mean."""
    y = torch.as_tensor(labels, dtype=torch.float64)
    obs = float(module.obs_std) ** 2
    logp = torch.stack(
        [
            torch.distributions.Normal(f[:, 0], (cov[:, 0, 0] + obs).sqrt()).log_prob(y)
            for f, cov in gaussians
        ]
    )
    nll = -(torch.logsumexp(logp, 0) - math.log(len(gaussians))).mean()
    mean = torch.stack([f[:, 0] for f, _ in gaussians]).mean(0)
    return {"nll": float(nll), "rmse": float((mean - y).pow(2).mean().sqrt())}


def summary(info: dict[str, Any], out_dir: Path) -> str:
    c = info["compute"]
    return "\n".join(
        [
            f"Laplace ({info['structure']}) around {info['from_run']}",
            f"  prior precision {info['prior_precision']:.4g} ({info['prior_precision_mode']}; "
            f"the run's: {_fmt(info['run_prior_precision'])}, isotropic runs only)",
            f"  log marginal likelihood {info['log_marglik']:.4f} "
            f"(at the run's prior: {_fmt(info['log_marglik_at_run_prior'])})",
            f"  curvature: {info['num_data']} examples, {info['num_params']:,} parameters, "
            f"{c['curvature_backward_passes']} backward passes, {c['curvature_seconds']:.1f} s",
            f"  {out_dir} (evaluate: python -m bayesian_lora.evaluate run_dir={out_dir})",
        ]
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="laplace")
def main(cfg: DictConfig) -> None:
    run_or_refuse(lambda c, _overrides: fit_laplace(c), cfg)


if __name__ == "__main__":
    main()
