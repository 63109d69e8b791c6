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

import copy
import glob
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from bayesian_lora.callbacks.sample_store import (
    MANIFEST_FILE,
    SampleFileError,
    load_samples,
    read_manifest,
)
from bayesian_lora.config import CONFIG_DIR, build_datamodule, load_run_config
from bayesian_lora.config_validation import ConfigError
from bayesian_lora.data.datamodule import TextClassificationDataModule
from bayesian_lora.data.tasks import TaskSpec, get_task
from bayesian_lora.evaluation import runner as R
from bayesian_lora.evaluation.ensemble import cache_batches, labels_of, predict_samples
from bayesian_lora.evaluation.metrics import (
    ensemble_metrics,
    ood_detection,
    predictive_entropy,
    selective_prediction,
)
from bayesian_lora.methods import get_calibrator
from bayesian_lora.methods.temperature import calibrate_predictive
from bayesian_lora.models.lora import ModelSettings, build_lora_model
from bayesian_lora.models.module import BayesianLoRAModule

log = logging.getLogger("bayesian_lora.evaluate")

PER_SAMPLE_KEYS = ("acc", "nll", "ece", "brier", "f1", "mcc", "rmse", "pearson", "spearman")
SPLITS = ("test", "validation")  # validation = the part of train held out for model selection


class ManifestMismatchError(SampleFileError):
    """Samples that do not fit the model/LoRA config or the other run folders."""


@dataclass
class RunFolder:
    """A run folder: its manifest and the config it was trained with."""

    path: Path
    manifest: dict[str, Any]
    config: DictConfig

    @property
    def sampler(self) -> str:
        return str(self.manifest["sampler"]["name"])

    @property
    def is_map(self) -> bool:
        return self.sampler == "map"

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])


# ----------------------------------------------------------------------------- run folders


def run_paths(cfg: DictConfig) -> list[Path]:
    """``run_dir`` then ``run_dirs``, resolved and de-duplicated; a glob pattern expands (sorted)
    to the run folders it matches, so ``run_dirs=[<sweep>/*_map_*]`` skips other files."""
    entries = ([str(cfg.run_dir)] if cfg.get("run_dir") else []) + [
        str(e) for e in cfg.get("run_dirs") or []
    ]
    if not entries:
        raise ConfigError("give run_dir=<run folder> or run_dirs=[<run folder>, ...]")
    paths: list[Path] = []
    for entry in entries:
        entry = str(Path(entry).expanduser())
        if any(c in entry for c in "*?["):
            matches = [m for m in sorted(glob.glob(entry)) if (Path(m) / MANIFEST_FILE).is_file()]
            if not matches:
                raise FileNotFoundError(f"run_dirs pattern {entry!r} matches no run folder")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(entry))
    return list(dict.fromkeys(p.resolve() for p in paths))


def open_run(path: Path) -> RunFolder:
    """Manifest + saved config of a run folder, with clear errors for anything else."""
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if not (path / MANIFEST_FILE).is_file():
        inner = sorted(p.parent for p in path.glob(f"*/{MANIFEST_FILE}"))
        hint = (
            f"; it holds {len(inner)} run folders (a sweep?): pool them with "
            f"'run_dirs=[{path}/*]' or evaluate each with -m run_dir=..."
            if inner
            else ""
        )
        raise SampleFileError(f"{path} is not a run folder (no {MANIFEST_FILE}){hint}")
    return RunFolder(path, read_manifest(path), load_run_config(path))


def model_identity(model: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the function and the parameter layout: model id, lengths and LoRA config."""
    s = ModelSettings.from_config(model)
    return {
        "model.name_or_path": s.name_or_path,
        "model.max_length": int(s.max_length),
        "model.tiny": dict(s.tiny) if s.name_or_path == "tiny-bert" else {},
        "lora.r": int(s.lora.r),
        "lora.alpha": float(s.lora.alpha),
        "lora.dropout": float(s.lora.dropout),
        "lora.target_modules": sorted(s.lora.target_modules),
        "lora.modules_to_save": sorted(s.lora.modules_to_save),
    }


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys if a.get(k) != b.get(k)]


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
    asked = model_identity(OmegaConf.to_container(model_cfg, resolve=True))
    diffs = _differences(asked, model_identity(run.manifest["model"]))
    if diffs:
        raise ManifestMismatchError(
            f"the model config of {source} does not match the samples' manifest in {run.path} "
            f"(config vs manifest): {'; '.join(diffs)}"
        )


def check_parameters(module: BayesianLoRAModule, run: RunFolder) -> None:
    """The built model's sampled parameters must be exactly those in the manifest."""
    actual = {n: list(p.shape) for n, p in module.sampled_parameters().items()}
    diffs = _parameter_differences(run.manifest["parameters"], actual)
    if diffs:
        raise ManifestMismatchError(
            f"the samples in {run.path} do not fit the model built for them "
            f"(manifest vs model): {'; '.join(diffs)}"
        )


def check_options(cfg: DictConfig) -> None:
    k, K = cfg.get("k"), cfg.get("mc_dropout") or 0
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise ConfigError(f"k={k!r} is not allowed: an integer >= 1, or null for all samples")
    if not (isinstance(K, int) and K >= 0):
        raise ConfigError(f"mc_dropout={K!r} is not allowed: an integer >= 0 (0 = off)")
    split = eval_split(cfg)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not allowed: one of {', '.join(SPLITS)}")
    if cfg.get("ood") is not None:
        get_task(str(cfg.ood))  # unknown names raise, listing the choices
    if cfg.get("calibrate") is not None:
        get_calibrator(str(cfg.calibrate))  # unknown names raise, listing the choices
        if split != "test":
            raise ConfigError(
                f"calibrate={cfg.calibrate!r} fits on the validation split, so it cannot also be "
                f"scored there (split={split!r}): use split=test"
            )


def eval_split(cfg: DictConfig) -> str:
    """The split to score: ``test`` unless ``split=validation`` (evaluate.yaml's ``split``)."""
    return str(cfg.get("split", "test"))


# ----------------------------------------------------------------------------- members


def spaced_indices(num: int, take: int) -> list[int]:
    """``take`` of ``0..num-1`` evenly spaced and ending at ``num - 1``."""
    return [(j + 1) * num // take - 1 for j in range(take)]


def allocate(k: int | None, counts: Sequence[int]) -> list[int]:
    """Share ``k`` members round-robin over runs holding ``counts`` samples (None = all)."""
    if k is None:
        return list(counts)
    take, left = [0] * len(counts), min(k, sum(counts))
    while left:
        for i, c in enumerate(counts):
            if left and take[i] < c:
                take[i] += 1
                left -= 1
    return take


def select_members(runs: Sequence[RunFolder], k: int | None) -> list[tuple[int, int]]:
    """(run index, sample index) of each member, round-robin over runs."""
    takes = allocate(k, [r.num_samples for r in runs])
    chosen = [
        spaced_indices(r.num_samples, t) if t else [] for r, t in zip(runs, takes, strict=True)
    ]
    depth = max(takes)
    return [(r, chosen[r][j]) for j in range(depth) for r in range(len(runs)) if j < takes[r]]


def gather_samples(
    runs: Sequence[RunFolder], members: Sequence[tuple[int, int]]
) -> dict[str, Tensor]:
    """The selected samples stacked in member order (``[M, *shape]`` per parameter)."""
    loaded = [load_samples(run.path)[0] for run in runs]
    names = list(loaded[0])
    return {n: torch.stack([loaded[r][n][i] for r, i in members]) for n in names}


# ----------------------------------------------------------------------------- model and data


def eval_run_config(cfg: DictConfig, run: RunFolder) -> DictConfig:
    """The run's saved config with evaluate's overrides (model, data dir, eval batch size)."""
    c = copy.deepcopy(run.config)
    with open_dict(c):
        if cfg.get("model") is not None:
            c.model = cfg.model
        for key in ("data_dir", "cache_dir"):
            if cfg.paths.get(key):
                c.paths[key] = cfg.paths[key]
        if cfg.get("eval_batch_size"):
            c.data.eval_batch_size = int(cfg.eval_batch_size)
    return c


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_eval_module(run_cfg: DictConfig, run: RunFolder, device: torch.device) -> Any:
    """Base model + LoRA (once), with the task's head; parameters checked against the manifest."""
    task = get_task(run_cfg.data.task)
    model = build_lora_model(ModelSettings.from_config(run_cfg.model), task.num_labels)
    module = BayesianLoRAModule(
        model,
        task=task,
        num_data=int(run.manifest.get("num_data") or 1),
        prior_std=float(run_cfg.prior_std),
        obs_std=float(run_cfg.data.obs_std),
    )
    check_parameters(module, run)
    return module.to(device).eval()


def build_eval_batches(
    run_cfg: DictConfig, device: torch.device, split: str = "test"
) -> tuple[TextClassificationDataModule, list[dict[str, Tensor]]]:
    """Tokenised batches of the test split, or of the validation split carved from train."""
    datamodule = build_datamodule(run_cfg)
    datamodule.setup()
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    return datamodule, cache_batches(loader, device)


def ood_batches(
    cfg: DictConfig, run_cfg: DictConfig, dm: TextClassificationDataModule, device: torch.device
) -> list[dict[str, Tensor]]:
    """The OOD task's test split, tokenised like the in-domain data (same tokenizer/length)."""
    d = run_cfg.data
    max_samples = cfg.ood_max_samples if cfg.ood_max_samples is not None else d.max_eval_samples
    ood_dm = TextClassificationDataModule(
        task=str(cfg.ood),
        tokenizer=dm.tokenizer,
        max_length=dm.max_length,
        eval_batch_size=dm.eval_batch_size,
        data_dir=run_cfg.paths.data_dir,
        val_fraction=float(d.val_fraction),
        split_seed=int(d.split_seed),
        max_eval_samples=max_samples,
        cache_dir=run_cfg.paths.cache_dir,
    )
    ood_dm.setup("test")
    return cache_batches(ood_dm.test_dataloader(), device)


# ----------------------------------------------------------------------------- descriptions


def ensemble_kind(runs: Sequence[RunFolder], mc_dropout: int) -> str:
    if all(r.is_map for r in runs):
        kind = "deep_ensemble" if len(runs) > 1 else "map"
    elif not any(r.is_map for r in runs):
        kind = "pooled_chains" if len(runs) > 1 else "chain"
    else:
        kind = "pooled"
    return f"{kind}+mc_dropout{mc_dropout}" if mc_dropout else kind


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
        return runs[0].path / f"{R.EVALUATION_DIR}{suffix}"
    digest = hashlib.sha1("\n".join(sorted(str(r.path) for r in runs)).encode()).hexdigest()[:8]
    kind = ensemble_kind(runs, 0)
    return runs[0].path.parent / f"{R.EVALUATION_DIR}_{kind}_{len(runs)}runs_{digest}{suffix}"


def sampler_signature(run: RunFolder) -> dict[str, Any]:
    """The sampler config without per-chain keys (the warm-start folder)."""
    s = copy.deepcopy(run.manifest["sampler"])
    s.get("warmup", {}).pop("from_run", None)
    return s


def are_chains(runs: Sequence[RunFolder]) -> bool:
    """>= 2 sampler runs of one sampler config (seeds = chains)."""
    if len(runs) < 2 or any(r.is_map for r in runs):
        return False
    ref = sampler_signature(runs[0])
    return all(sampler_signature(r) == ref for r in runs[1:])


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Members:
    """Member predictions and where each member came from."""

    preds: np.ndarray  # [M, N, C] or [M, N]
    labels: np.ndarray  # [N]
    ood_preds: np.ndarray | None  # [M, N_ood, C]
    run: np.ndarray  # [M] index into the run folders
    sample: np.ndarray  # [M] kept-sample index within its run
    dropout_pass: np.ndarray  # [M] MC-dropout pass (0 without MC dropout)
    seconds: float
    val_preds: np.ndarray | None = None  # [M, N_val, C], for calibrate=
    val_labels: np.ndarray | None = None


def predict_members(
    module: Any,
    samples: Mapping[str, Tensor],
    members: Sequence[tuple[int, int]],
    batches: list[dict[str, Tensor]],
    extra_batches: list[dict[str, Tensor]] | None,
    mc_dropout: int,
) -> Members:
    """One swap per sample, one pass over the in-domain (+ OOD) cached batches."""
    n_in = sum(int(b["labels"].shape[0]) for b in batches)
    device = next(iter(module.parameters())).device
    on_device = {n: t.to(device) for n, t in samples.items()}
    start = time.perf_counter()
    out = predict_samples(module, on_device, batches + (extra_batches or []), None, mc_dropout)
    out = out.cpu().numpy()
    seconds = time.perf_counter() - start
    passes = max(mc_dropout, 1)
    run = np.repeat([r for r, _ in members], passes)
    sample = np.repeat([i for _, i in members], passes)
    return Members(
        preds=out[:, :n_in],
        labels=labels_of(batches).numpy(),
        ood_preds=out[:, n_in:] if extra_batches else None,
        run=run.astype(np.int64),
        sample=sample.astype(np.int64),
        dropout_pass=np.tile(np.arange(passes), len(members)).astype(np.int64),
        seconds=seconds,
    )


def chain_summaries(
    m: Members,
    samples: Mapping[str, Tensor],
    n_runs: int,
    task: TaskSpec,
    obs_std: float,
    probes: int,
) -> list[dict[str, np.ndarray]]:
    """Per chain: function-space summaries per kept sample (MC passes averaged) + LoRA norm."""
    probe_idx = R.probe_indices(len(m.labels), probes)
    norms = R.lora_norms(samples)
    passes = int(m.dropout_pass.max()) + 1
    chains = []
    for r in range(n_runs):
        rows = np.flatnonzero(m.run == r)
        preds = m.preds[rows].reshape(-1, passes, *m.preds.shape[1:]).mean(axis=1)
        summary = R.function_space_summaries(preds, m.labels, task, obs_std, probe_idx)
        if norms.size:
            summary[R.LORA_NORM] = norms[rows[::passes] // passes]
        chains.append(summary)
    return chains


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir`` / ``cfg.run_dirs`` as one ensemble; returns the metrics dict."""
    runs, run_cfg, task = prepare(cfg)
    k, K = cfg.get("k"), int(cfg.get("mc_dropout") or 0)
    split = eval_split(cfg)
    calibrate = cfg.get("calibrate")
    out_dir = (
        Path(cfg.out_dir) if cfg.get("out_dir") else default_out_dir(runs, k, K, split, calibrate)
    )
    members = select_members(runs, k)
    samples = gather_samples(runs, members)
    m = predict(cfg, run_cfg, runs[0], samples, members)
    obs_std = float(run_cfg.data.obs_std)
    result = R.evaluate_predictions(m.preds, m.labels, task, obs_std)
    result.update(describe(runs, members, m, k, K, task, split))
    result["parameters"] = R.lora_parameter_stats(samples)
    if m.ood_preds is not None:
        result["ood"] = R.ood_metrics(m.preds, m.ood_preds, str(cfg.ood))
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
        diag = R.diagnose_chains(chains, *_thresholds(cfg))
        result["diagnostics"] = {key: v for key, v in diag.items() if key != "_chains"}
        result["diagnostics"]["verdict"] = R.diagnostics_verdict(diag)
    elif len(runs) > 1:
        result["diagnostics"] = {"skipped": "the run folders are not chains of one sampler config"}
    write_outputs(cfg, out_dir, result, m, task, diag, runs, calibrated)
    print(format_result(result, show_single=bool(cfg.get("single"))))
    return result


def prepare(cfg: DictConfig) -> tuple[list[RunFolder], DictConfig, TaskSpec]:
    """Open and cross-check the run folders before any model or data is loaded."""
    check_options(cfg)
    runs = [open_run(p) for p in run_paths(cfg)]
    check_consistent(runs)
    for run in runs:
        if run.manifest.get("status", "complete") != "complete":
            log.warning("%s: samples status %r", run.path, run.manifest.get("status"))
    run_cfg = eval_run_config(cfg, runs[0])
    source = "the model=... override" if cfg.get("model") is not None else "its config.yaml"
    check_requested_model(run_cfg.model, runs[0], source)
    if cfg.get("weights"):  # same model, other location: checked above under its recorded id
        with open_dict(run_cfg):
            run_cfg.model.name_or_path = str(cfg.weights)
    task = get_task(str(run_cfg.data.task))
    if cfg.get("ood") is not None and task.is_regression:
        raise ConfigError(
            f"ood={cfg.ood!r}: OOD scoring needs a classification task, not {task.name}"
        )
    if cfg.get("calibrate") is not None and task.is_regression:
        raise ConfigError(
            f"calibrate={cfg.calibrate!r}: temperature scaling tempers a softmax, and "
            f"{task.name} is a regression task (its Gaussian noise obs_std is set in data.obs_std)"
        )
    return runs, run_cfg, task


def predict(
    cfg: DictConfig,
    run_cfg: DictConfig,
    run: RunFolder,
    samples: Mapping[str, Tensor],
    members: Sequence[tuple[int, int]],
) -> Members:
    """Model and (OOD) test batches built once, then every member predicted."""
    device = resolve_device(str(cfg.get("device", "auto")))
    module = build_eval_module(run_cfg, run, device)
    dm, batches = build_eval_batches(run_cfg, device, eval_split(cfg))
    extra = ood_batches(cfg, run_cfg, dm, device) if cfg.get("ood") is not None else None
    torch.manual_seed(int(cfg.get("seed", 0)))
    K = int(cfg.mc_dropout or 0)
    m = predict_members(module, samples, members, batches, extra, K)
    if cfg.get("calibrate") is not None:  # the validation predictive the calibrator is fitted on
        val = cache_batches(dm.val_dataloader(), device)
        on_device = {n: t.to(device) for n, t in samples.items()}
        m.val_preds = predict_samples(module, on_device, val, None, K).cpu().numpy()
        m.val_labels = labels_of(val).numpy()
    return m


def calibrated_result(
    name: str,
    state: Mapping[str, Any],
    calibrated: np.ndarray,
    ood_calibrated: np.ndarray | None,
    m: Members,
    task: TaskSpec,
) -> dict[str, Any]:
    """Metrics of the calibrated test predictive (the uncalibrated ones stay in ``ensemble``)."""
    out: dict[str, Any] = {
        "method": name,
        **state,
        "ensemble": ensemble_metrics(calibrated[None], m.labels, task.metric),
        "selective": selective_prediction(calibrated, m.labels),
    }
    if ood_calibrated is not None:
        out["ood_entropy"] = ood_detection(
            predictive_entropy(calibrated), predictive_entropy(ood_calibrated)
        )
    return out


def _probes(cfg: DictConfig) -> int:
    return int(OmegaConf.select(cfg, "diagnostics.probes", default=R.NUM_PROBES))


def _thresholds(cfg: DictConfig) -> tuple[float, float]:
    rhat = OmegaConf.select(cfg, "diagnostics.rhat_threshold", default=1.05)
    ess = OmegaConf.select(cfg, "diagnostics.ess_threshold", default=100)
    return float(rhat), float(ess)


def describe(
    runs: Sequence[RunFolder],
    members: Sequence[tuple[int, int]],
    m: Members,
    k: int | None,
    mc_dropout: int,
    task: TaskSpec,
    split: str,
) -> dict[str, Any]:
    """What was evaluated: runs, chosen samples, split, sizes and timing."""
    return {
        "kind": ensemble_kind(runs, mc_dropout),
        "task": task.name,
        "split": split,
        "model": runs[0].manifest["model"].get("name_or_path"),
        "k": k,
        "mc_dropout": mc_dropout,
        "num_members": int(m.preds.shape[0]),
        "num_test": int(len(m.labels)),
        "runs": [
            {
                "run_dir": str(run.path),
                "sampler": run.sampler,
                "seed": run.manifest.get("seed"),
                "status": run.manifest.get("status"),
                "num_samples": run.num_samples,
                "samples_used": [i for r, i in members if r == ri],
            }
            for ri, run in enumerate(runs)
        ],
        "timing": {
            "predict_seconds": m.seconds,
            "forward_passes": int(m.preds.shape[0]),
        },
    }


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
    """predictions.safetensors, metrics.json, evaluate.yaml, PNGs (and W&B if enabled)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"member_run": m.run, "member_sample": m.sample, "member_pass": m.dropout_pass}
    if calibrated is not None:  # the calibrated predictive [N, C] and what was fitted
        extra["calibrated_predictions"] = np.ascontiguousarray(calibrated, dtype=np.float32)
        cal = {k: v for k, v in result["calibration"].items() if not isinstance(v, dict)}
        R.write_json(out_dir / f"{result['calibration']['method']}.json", cal)
    if m.ood_preds is not None:
        extra["ood_predictions"] = np.ascontiguousarray(m.ood_preds, dtype=np.float32)
    meta = {"task": task.name, "runs": "\n".join(str(r.path) for r in runs)}
    R.save_predictions(out_dir / R.PREDICTIONS_FILE, m.preds, m.labels, extra, meta)
    plots: list[Path] = []
    if cfg.get("plots", True):
        ood = str(cfg.get("ood"))
        plots = R.write_evaluation_plots(out_dir, result, m.preds, m.labels, task, m.ood_preds, ood)
        if diag is not None:
            plots += R.write_diagnostic_plots(out_dir, diag)
    result["out_dir"] = str(out_dir)
    result["plots"] = [p.name for p in plots]
    OmegaConf.save(cfg, out_dir / "evaluate.yaml", resolve=True)
    if OmegaConf.select(cfg, "wandb.enabled", default=False):
        from bayesian_lora.evaluation.wandb_logging import log_evaluation

        result["wandb"] = log_evaluation(result, out_dir, plots, cfg.wandb, runs[0].manifest)
    R.write_json(out_dir / R.METRICS_FILE, result)


def format_result(result: Mapping[str, Any], show_single: bool = False) -> str:
    """The console summary: ensemble metrics, selective, OOD, parameters, diagnostics."""
    n = result["num_members"]
    parts = [
        R.format_metrics(
            result["ensemble"],
            f"ensemble@{n} ({result['kind']}) {result['split']} metrics",
        )
    ]
    if show_single:
        parts.append(R.format_per_sample(result["per_sample"], PER_SAMPLE_KEYS))
    for key in ("selective", "parameters"):
        if result.get(key):
            parts.append(R.format_metrics(result[key], key))
    if "ood" in result:
        ood = result["ood"]
        flat = {f"{s} {m}": ood[s][m] for s in ("entropy", "mutual_information") for m in ood[s]}
        parts.append(R.format_metrics(flat, f"OOD detection vs {ood['task']}"))
        if "note" in ood:
            parts.append(f"  note: {ood['note']}")
    if "calibration" in result:
        cal = result["calibration"]
        title = (
            f"after {cal['method']} scaling (T = {cal['temperature']:.4f}, fitted on "
            f"{cal['num_validation']} validation examples: NLL {cal['validation_nll_before']:.4f}"
            f" -> {cal['validation_nll_after']:.4f})"
        )
        parts.append(R.format_metrics(cal["ensemble"], title))
    diag = result.get("diagnostics", {})
    if "verdict" in diag:
        parts.append("MCMC diagnostics across chains: " + diag["verdict"])
        parts += [f"  {flag}" for flag in diag["flags"]]
    parts.append(f"outputs in {result['out_dir']}")
    return "\n".join(parts)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
