"""Evaluate run folders as one ensemble: ``python -m bayesian_lora.evaluate run_dir=<run folder>``.

run folder(s) -> checks (manifests agree with each other and with the model asked for) -> base
model + LoRA and tokenised test (or validation) set built ONCE -> each kept sample swapped in
place -> member predictions ``[M, N, C]`` -> metrics, predictions, plots (and OOD scores, chain
diagnostics, W&B) in the output folder.

Only ``samples.safetensors``, ``manifest.json`` and ``config.yaml`` are read from run folders:
never a pickle (Lightning ``.ckpt`` files are pickles and are not touched).

Choices:

* ``k``: at most ``k`` kept samples in all (``k * K`` members with ``mc_dropout=K``), shared
  round-robin over the run folders; within a chain they are evenly spaced and end at the last kept sample (sample ``floor((j+1) S / k) - 1``
  for ``j < k``), i.e. the chain is thinned further rather than truncated.
* member order: round-robin over run folders (so ``vs_ensemble_size`` row 2 of a deep ensemble
  is two seeds, not two draws of one chain); with ``mc_dropout=K`` each sample's K passes are
  consecutive members.
* output folder: ``<run_dir>/evaluation[_k<k>][_mcdropout<K>][_validation]`` for one run; for
  several, ``<parent of the first>/evaluation_<kind>_<n>runs_<hash of the folders>[...]`` with
  ``kind`` ``deep_ensemble`` (all MAP), ``pooled_chains`` (all samplers) or ``pooled``; or ``out_dir``.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.config_validation import ConfigError, validate_evaluate_config
from bayesian_lora.data.tasks import TaskSpec, get_task
from bayesian_lora.entry import run_or_refuse
from bayesian_lora.errors import MissingInputError

# torch and the model, data, run-folder and evaluation modules are imported by the functions that
# use them, so that bad options are refused before they load.
if TYPE_CHECKING:
    from bayesian_lora.models.module import BayesianLoRAModule
    from bayesian_lora.runs import RunFolder

_LAZY = {"ManifestMismatchError": "bayesian_lora.runs.checks", "open_run": "bayesian_lora.runs"}


def __getattr__(name: str) -> Any:
    """``ManifestMismatchError`` and ``open_run``, re-exported without importing torch early."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger("bayesian_lora.evaluate")

SPLITS = ("test", "validation")  # validation = the part of train held out for model selection


# ----------------------------------------------------------------------------- run folders


def run_paths(cfg: DictConfig) -> list[Path]:
    """``run_dir`` then ``run_dirs``, resolved and de-duplicated; a glob pattern expands (sorted)
    to the run folders it matches, so ``run_dirs=[<sweep>/*_map_*]`` skips other files."""
    from bayesian_lora.runs import RunFolder

    entries = ([str(cfg.run_dir)] if cfg.get("run_dir") else []) + [
        str(e) for e in cfg.get("run_dirs") or []
    ]
    if not entries:
        raise ConfigError("give run_dir=<run folder> or run_dirs=[<run folder>, ...]")
    paths: list[Path] = []
    for entry in entries:
        entry = str(Path(entry).expanduser())
        if any(c in entry for c in "*?["):
            matches = [m for m in sorted(glob.glob(entry)) if RunFolder(Path(m)).is_run_folder]
            if not matches:
                raise MissingInputError(f"run_dirs pattern {entry!r} matches no run folder")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(entry))
    return list(dict.fromkeys(p.resolve() for p in paths))


def _parameter_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    shapes = [
        f"{n}: {list(expected[n])} vs {list(actual[n])}"
        for n in sorted(set(expected) & set(actual))
        if list(expected[n]) != list(actual[n])
    ]
    out = [f"{len(missing)} parameter(s) only in the first, e.g. {missing[0]}"] if missing else []
    out += [f"{len(extra)} parameter(s) only in the second, e.g. {extra[0]}"] if extra else []
    return out + [f"shape of {s}" for s in shapes[:3]]


def check_consistent(runs: Sequence[RunFolder]) -> None:
    """All run folders must share model id, LoRA config, task and parameter layout."""
    from bayesian_lora.runs.checks import ManifestMismatchError, model_identity
    from bayesian_lora.runs.checks import differences as _differences

    ref = runs[0]
    for run in runs[1:]:
        diffs = _differences(
            {**model_identity(ref.manifest["model"]), "task": ref.manifest["task"]},
            {**model_identity(run.manifest["model"]), "task": run.manifest["task"]},
        )
        diffs += _parameter_differences(ref.manifest["parameters"], run.manifest["parameters"])
        if diffs:
            raise ManifestMismatchError(
                f"run folders {ref.path} and {run.path} cannot be pooled into one ensemble; "
                f"they differ in: {'; '.join(diffs)}"
            )


def check_requested_model(model_cfg: Any, run: RunFolder, source: str) -> None:
    """The model config evaluate builds from must describe the model the samples were drawn for."""
    from bayesian_lora.runs.checks import ManifestMismatchError, model_identity
    from bayesian_lora.runs.checks import differences as _differences

    # a DictConfig's container is a dict (to_container's return type covers lists and strings)
    asked = model_identity(cast(dict[str, Any], OmegaConf.to_container(model_cfg, resolve=True)))
    diffs = _differences(asked, model_identity(run.manifest["model"]))
    if diffs:
        raise ManifestMismatchError(
            f"the model config of {source} does not match the samples' manifest in {run.path} "
            f"(config vs manifest): {'; '.join(diffs)}"
        )


def check_parameters(module: BayesianLoRAModule, run: RunFolder) -> None:
    """The built model's sampled parameters must be exactly those in the manifest."""
    from bayesian_lora.runs.checks import ManifestMismatchError

    actual = {n: list(p.shape) for n, p in module.sampled_parameters().items()}
    diffs = _parameter_differences(run.manifest["parameters"], actual)
    if diffs:
        raise ManifestMismatchError(
            f"the samples in {run.path} do not fit the model built for them "
            f"(manifest vs model): {'; '.join(diffs)}"
        )


def check_options(cfg: DictConfig) -> None:
    validate_evaluate_config(cfg)  # unknown keys, and the options without a registry
    k, K = cfg.get("k"), cfg.get("mc_dropout") or 0
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise ConfigError(f"k={k!r} is not allowed: an integer >= 1, or null for all samples")
    if not (isinstance(K, int) and K >= 0):
        raise ConfigError(f"mc_dropout={K!r} is not allowed: an integer >= 0 (0 = off)")
    split = eval_split(cfg)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not allowed: one of {', '.join(SPLITS)}")
    if is_glm(cfg):
        check_glm_options(cfg)
    if cfg.get("ood") is not None:
        get_task(str(cfg.ood))  # unknown names raise, listing the choices
    from bayesian_lora.evaluation.predict import shift_tasks  # torch: after the light checks
    from bayesian_lora.methods import get_calibrator

    for name in shift_tasks(cfg):
        get_task(name)
    if cfg.get("calibrate") is not None:
        get_calibrator(str(cfg.calibrate))  # unknown names raise, listing the choices
        if split != "test":
            raise ConfigError(
                f"calibrate={cfg.calibrate!r} fits on the validation split, so it cannot also be "
                f"scored there (split={split!r}): use split=test"
            )


def is_glm(cfg: DictConfig) -> bool:
    """``predictive=glm``: the linearised Laplace predictive instead of the stored draws."""
    return str(cfg.get("predictive", "samples")) == "glm"


def _glm_refusal(where: str, sampler: Any) -> ConfigError:
    return ConfigError(
        f"predictive=glm is not allowed for {where}: a {sampler!r} run; the linearised (GLM) "
        "predictive needs a Laplace run folder (python -m bayesian_lora.laplace run_dir=<MAP run>)"
    )


def check_glm_options(cfg: DictConfig) -> None:
    """``predictive=glm``'s combinations, from the manifests' JSON copies (no torch yet); glob
    patterns are checked once expanded (``prepare``)."""
    import json

    if cfg.get("k") is not None:
        raise ConfigError(
            f"k={cfg.k!r} is not allowed with predictive=glm: k selects stored draws and the GLM "
            "predictive uses none (glm_samples sets its logit draws per example)"
        )
    if cfg.get("mc_dropout"):
        raise ConfigError(
            f"mc_dropout={cfg.mc_dropout!r} is not allowed with predictive=glm: the linearised "
            "predictive is taken at theta* with dropout off"
        )
    entries = ([str(cfg.run_dir)] if cfg.get("run_dir") else []) + [
        str(e) for e in cfg.get("run_dirs") or []
    ]
    for entry in entries:
        manifest = Path(entry).expanduser() / "manifest.json"
        if any(c in entry for c in "*?[") or not manifest.is_file():
            continue
        try:
            sampler = json.loads(manifest.read_text()).get("sampler", {}).get("name")
        except (OSError, ValueError, AttributeError):
            continue  # opening the run folder explains it
        if sampler != "laplace":
            raise _glm_refusal(f"run_dir={entry!r}", sampler)


def eval_split(cfg: DictConfig) -> str:
    """The split to score: ``test`` unless ``split=validation`` (evaluate.yaml's ``split``)."""
    return str(cfg.get("split", "test"))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir`` / ``cfg.run_dirs`` as one ensemble; returns the metrics dict."""
    check_options(cfg)  # bad options are refused before the heavy imports below
    from bayesian_lora.evaluation.chains import (
        chain_summaries,
        diagnose_chains,
        diagnostics_verdict,
        public,
    )
    from bayesian_lora.evaluation.members import are_chains, gather_samples, select_members
    from bayesian_lora.evaluation.predict import predict
    from bayesian_lora.evaluation.results import (
        calibrated_result,
        describe,
        evaluate_predictions,
        lora_parameter_stats,
        ood_metrics,
        shift_metrics,
    )
    from bayesian_lora.evaluation.write import (
        default_out_dir,
        format_result,
        write_outputs,
        write_step_trace_diagnostics,
    )
    from bayesian_lora.methods.temperature import calibrate_predictive

    runs, run_cfg, task = prepare(cfg)
    k, K = cfg.get("k"), int(cfg.get("mc_dropout") or 0)
    split = eval_split(cfg)
    calibrate = cfg.get("calibrate")
    glm = is_glm(cfg)
    out_dir = (
        Path(cfg.out_dir) if cfg.get("out_dir") else default_out_dir(runs, k, K, split, calibrate)
    )
    if glm and not cfg.get("out_dir"):  # beside the stored draws' evaluation, not over it
        link = "" if str(cfg.get("glm_link", "mc")) == "mc" else f"_{cfg.glm_link}"
        out_dir = out_dir.with_name(f"{out_dir.name}_glm{link}")
    if glm:  # no stored draw is used: the members are logit draws (or the probit) per run
        from bayesian_lora.laplace import glm_compute, predict_glm

        members: list[tuple[int, int]] = []
        samples: dict[str, Any] = {}
        m = predict_glm(cfg, run_cfg, runs)
    else:
        members = select_members(runs, k)
        samples = gather_samples(runs, members)
        m = predict(cfg, run_cfg, runs[0], samples, members)
    obs_std = float(run_cfg.data.obs_std)
    result = evaluate_predictions(m.preds, m.labels, task, obs_std)
    result.update(describe(runs, members, m, k, K, task, split))
    result["predictive"] = m.predictive
    if glm:
        glm_compute(result, m)
    result["parameters"] = lora_parameter_stats(samples)
    if m.ood_preds is not None:
        result["ood"] = ood_metrics(m.preds, m.ood_preds, str(cfg.ood))
    if m.shift:
        result["shift"] = shift_metrics(task, result["ensemble"], m.shift, len(m.labels))
    calibrated = None
    if calibrate is not None and m.val_preds is not None and m.val_labels is not None:
        state, calibrated, ood_cal = calibrate_predictive(
            m.val_preds, m.val_labels, m.preds, m.ood_preds
        )
        result["calibration"] = calibrated_result(
            str(calibrate), state, calibrated, ood_cal, m, task
        )
    diag = None
    if are_chains(runs):
        chains = chain_summaries(m, samples, len(runs), task, obs_std, _probes(cfg))
        diag = diagnose_chains(chains, *_thresholds(cfg))
        result["diagnostics"] = public(diag)
        result["diagnostics"]["verdict"] = diagnostics_verdict(diag)
    elif len(runs) > 1:
        result["diagnostics"] = {
            "skipped": "the run folders are not chains of one sampler config (MAP runs, mixed "
            "configs, or independent draws of SWAG / Laplace)"
        }
    if not any(r.is_map for r in runs) and (len(runs) == 1 or are_chains(runs)):
        write_step_trace_diagnostics(out_dir, result, [r.path for r in runs], _thresholds(cfg))
    write_outputs(cfg, out_dir, result, m, task, diag, runs, calibrated)
    print(format_result(result, show_single=bool(cfg.get("single"))))
    if glm:
        p = result["predictive"]
        draws = (
            "probit, 1 member per run"
            if p["link"] == "probit"
            else f"{p['logit_draws']} logit draws per example"
        )
        print(f"predictive: glm (linearised Laplace; {draws}; {p['jacobian_seconds']:.1f} s)")
    return result


def prepare(cfg: DictConfig) -> tuple[list[RunFolder], DictConfig, TaskSpec]:
    """Open and cross-check the run folders before any model or data is loaded."""
    from bayesian_lora.evaluation.predict import eval_run_config, shift_tasks
    from bayesian_lora.runs import open_run
    from bayesian_lora.runs.checks import check_data

    check_options(cfg)
    runs = [open_run(p) for p in run_paths(cfg)]
    check_consistent(runs)
    for run in runs:
        if run.manifest.get("status", "complete") != "complete":
            log.warning("%s: samples status %r", run.path, run.manifest.get("status"))
    run_cfg = eval_run_config(cfg, runs[0])
    source = "the model=... override" if cfg.get("model") is not None else "its config.yaml"
    check_requested_model(run_cfg.model, runs[0], source)
    check_data(run_cfg.data, runs[0], "its config.yaml")
    if cfg.get("weights"):  # same model, other location: checked above under its recorded id
        with open_dict(run_cfg):
            run_cfg.model.name_or_path = str(cfg.weights)
    task = get_task(str(run_cfg.data.task))
    if is_glm(cfg):
        for run in runs:
            if run.sampler != "laplace":
                raise _glm_refusal(f"run folder {str(run.path)!r}", run.sampler)
        if task.is_regression and str(cfg.get("glm_link", "mc")) == "probit":
            raise ConfigError(
                f"glm_link=probit is not allowed: it is a softmax link, and {task.name} is a "
                "regression task (its GLM predictive is N(f*, J Sigma J^T + obs_std^2): glm_link=mc)"
            )
    if cfg.get("ood") is not None and task.is_regression:
        raise ConfigError(
            f"ood={cfg.ood!r}: OOD scoring needs a classification task, not {task.name}"
        )
    others = [("ood", str(cfg.ood))] if cfg.get("ood") is not None else []
    for key, name in [*others, *(("shift", n) for n in shift_tasks(cfg))]:
        if get_task(name).is_mcqa != task.is_mcqa or get_task(name).is_regression:
            kind = "an MCQA task" if task.is_mcqa else "a text-classification task"
            raise ConfigError(
                f"{key}={name!r} is not allowed: {kind}, like the runs' task {task.name!r}"
            )
    if cfg.get("calibrate") is not None and task.is_regression:
        raise ConfigError(
            f"calibrate={cfg.calibrate!r}: temperature scaling tempers a softmax, and "
            f"{task.name} is a regression task (its Gaussian noise obs_std is set in data.obs_std)"
        )
    return runs, run_cfg, task


def _probes(cfg: DictConfig) -> int:
    from bayesian_lora.evaluation.chains import NUM_PROBES

    return int(OmegaConf.select(cfg, "diagnostics.probes", default=NUM_PROBES))


def _thresholds(cfg: DictConfig) -> tuple[float, float, float]:
    from bayesian_lora.evaluation.diagnostics import ESS_THRESHOLD, GEWEKE_Z, RHAT_THRESHOLD

    rhat = OmegaConf.select(cfg, "diagnostics.rhat_threshold", default=RHAT_THRESHOLD)
    ess = OmegaConf.select(cfg, "diagnostics.ess_threshold", default=ESS_THRESHOLD)
    z = OmegaConf.select(cfg, "diagnostics.stationarity_z", default=GEWEKE_Z)
    return float(rhat), float(ess), float(z)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_or_refuse(lambda c, _overrides: evaluate(c), cfg)


if __name__ == "__main__":
    main()
