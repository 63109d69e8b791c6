"""From a composed Hydra config to the objects of a run: data, model, chain plan, trainer.

Entry points stay thin; every ``build_*`` here takes the config and returns one thing.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from bayesian_lora.config_validation import override_key
from bayesian_lora.data.tasks import get_task
from bayesian_lora.errors import MissingInputError
from bayesian_lora.rank_zero import process_rank
from bayesian_lora.samplers.chain import ChainPlan
from bayesian_lora.samplers.schedules import build_schedule

# torch, Lightning, transformers, peft and the run-folder store are imported inside the functions
# that use them, so that ``resolve_resume`` and ``build_chain_plan`` run (and refuse bad input)
# without them.
if TYPE_CHECKING:
    import lightning as L

    from bayesian_lora.callbacks.sample_collector import SampleCollector
    from bayesian_lora.data.datamodule import TextClassificationDataModule
    from bayesian_lora.models.module import BayesianLoRAModule
    from bayesian_lora.models.prior import GaussianPrior
    from bayesian_lora.runs import Manifest, RunFolder

log = logging.getLogger("bayesian_lora")

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


# hydra/default.yaml: a resumed run logs into its own folder (Hydra makes no new one), and its
# .hydra/ keeps the command that started the run.
OmegaConf.register_new_resolver(
    "resume_or", lambda resume, default: resume or default, replace=True
)
OmegaConf.register_new_resolver(
    "unless_resume", lambda resume, v: None if resume else v, replace=True
)


def print_config(cfg: DictConfig) -> None:
    """Print the composed config (the same text is saved as ``config.yaml`` in the run folder);
    under DDP only rank zero prints it."""
    if process_rank() == 0:
        print(OmegaConf.to_yaml(cfg, resolve=True))


class ResumeError(MissingInputError):
    """``resume=`` names no resumable run folder, or comes with overrides it cannot honour."""


#: overrides that ``resume=`` applies to the saved config: where the data and caches are now,
#: how the run reports progress, and breaking a stale lock; none of them changes the chain.
RESUME_SAFE_OVERRIDES = (
    "paths.data_dir",
    "paths.cache_dir",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "break_lock",
)


def resolve_resume(cfg: DictConfig, overrides: Sequence[str] = ()) -> tuple[DictConfig, str | None]:
    """``resume=<run folder>``: continue that run with its own saved config and last checkpoint.

    Of the other command-line ``overrides``, the ``RESUME_SAFE_OVERRIDES`` (and ``hydra.*``) are
    applied to the saved config (and logged); any other is refused, naming it, before anything is
    written: the run continues with the config it started with.
    """
    if not cfg.get("resume"):
        return cfg, None
    from bayesian_lora.runs import RunFolder

    run = RunFolder(Path(cfg.resume).expanduser().resolve())
    ckpt, saved = run.last_checkpoint, run.config_file
    if not saved.is_file() or (not ckpt.is_file() and run.has_samples):
        missing = [p for p in (saved, ckpt) if not p.is_file()]
        found = (
            "does not exist"
            if not run.path.is_dir()
            else "has no " + " and no ".join(str(p.relative_to(run.path)) for p in missing)
        )
        raise ResumeError(
            f"resume={cfg.resume!r} is not allowed: the folder {found}; allowed: the folder of "
            f"a run that saved its config ({saved.name}) and, once it kept samples, a "
            f"checkpoint ({ckpt.relative_to(run.path)})"
        )
    keys = [(o, override_key(o)) for o in overrides]
    other = [(o, k) for o, k in keys if k != "resume" and not k.startswith("hydra.")]
    refused = [o for o, k in other if k not in RESUME_SAFE_OVERRIDES or o.startswith("~")]
    if refused:
        verb = "is" if len(refused) == 1 else "are"
        raise ResumeError(
            f"{', '.join(refused)} {verb} not allowed with resume={cfg.resume!r}: the run "
            f"continues with its saved config ({saved}), so the override would be ignored; "
            f"allowed with resume=: {', '.join(RESUME_SAFE_OVERRIDES)} (to change anything "
            "else, start a new run, e.g. from this one's samples with sampler.warmup.from_run=)"
        )
    resumed = cast(DictConfig, OmegaConf.load(saved))  # a run's config.yaml is a mapping
    with open_dict(resumed):
        resumed.paths.output_dir = str(run.path)
        resumed.resume = str(run.path)
        resumed.break_lock = bool(cfg.get("break_lock", False))  # about this attempt, not the run
        for override, key in other:
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
            log.info("resume: applied %s", override)
    if not ckpt.is_file():  # stopped before its first checkpoint: nothing to lose, start again
        log.warning("%s has no checkpoint (and no samples) yet: the chain starts again", run.path)
        return resumed, None
    log.info("resuming %s from %s", run.path, ckpt)
    return resumed, str(ckpt)


def is_map(cfg: DictConfig) -> bool:
    return cfg.sampler.name == "map"


def build_datamodule(cfg: DictConfig) -> TextClassificationDataModule:
    from bayesian_lora.data.datamodule import TextClassificationDataModule
    from bayesian_lora.models.lora import ModelSettings, build_tokenizer

    settings = ModelSettings.from_config(cfg.model)
    d = cfg.data
    return TextClassificationDataModule(
        task=d.task,
        tokenizer=build_tokenizer(settings),
        max_length=int(cfg.model.max_length),
        batch_size=int(d.batch_size),
        eval_batch_size=int(d.eval_batch_size),
        data_dir=cfg.paths.data_dir,
        val_fraction=float(d.val_fraction),
        split_seed=int(d.split_seed),
        shuffle_seed=int(cfg.seed),
        max_train_samples=d.max_train_samples,
        max_eval_samples=d.max_eval_samples,
        num_workers=int(d.num_workers),
        cache_dir=cfg.paths.cache_dir,
    )


def world_size(cfg: DictConfig) -> int:
    """Processes sharing one chain's global batch, as the trainer will resolve them:
    ``trainer.devices`` (an integer, a list, or auto / -1 = every GPU, or 1 on a CPU) times
    ``trainer.num_nodes``. ``train()`` checks it against the built trainer."""
    import torch

    t = cfg.trainer
    devices = t.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        accelerator = str(t.get("accelerator", "auto"))
        gpu = accelerator in ("gpu", "cuda") or (
            accelerator == "auto" and torch.cuda.is_available()
        )
        count = torch.cuda.device_count() if gpu else 1
    else:
        count = int(devices)
    return count * int(t.get("num_nodes") or 1)


def steps_per_epoch(cfg: DictConfig, num_train_examples: int) -> int:
    """Optimizer steps in one pass over the training set: each of the R ranks takes
    ceil(n / R) examples of the epoch's order in batches of ``data.batch_size`` (RankShard)."""
    per_rank = math.ceil(num_train_examples / world_size(cfg))
    return math.ceil(per_rank / int(cfg.data.batch_size))


def build_chain_plan(cfg: DictConfig, steps_per_epoch: int | None = None) -> ChainPlan | None:
    """The chain's step arithmetic (None for MAP). Validated before any model is loaded."""
    if is_map(cfg):
        return None
    s = cfg.sampler
    schedule_kwargs = {k: v for k, v in s.schedule.items() if k != "name"}
    warmup = 0 if s.warmup.get("from_run") else int(s.warmup.steps)
    if s.warmup.get("epochs") is not None and not s.warmup.get("from_run"):
        # Epochs become steps once the data is known; before that the check uses 0 epochs.
        warmup = int(s.warmup.epochs) * int(steps_per_epoch or 0)
    plan = ChainPlan(
        warmup_steps=warmup,
        burn_in=int(s.burn_in),
        thin=int(s.thin),
        num_samples=int(s.num_samples),
        max_steps=None if s.max_steps is None else int(s.max_steps),
        schedule=build_schedule(s.schedule.name, float(s.lr), **schedule_kwargs),
    )
    plan.validate()
    return plan


def sampler_algorithm(cfg: DictConfig) -> str:
    return str(cfg.sampler.get("algorithm") or cfg.sampler.name)


def build_module(
    cfg: DictConfig, datamodule: TextClassificationDataModule, plan: ChainPlan | None
) -> tuple[BayesianLoRAModule, dict[str, Any]]:
    from bayesian_lora.models.lora import (
        ModelSettings,
        build_lora_model,
        format_parameter_counts,
        parameter_counts,
    )
    from bayesian_lora.models.module import AdamWSettings, BayesianLoRAModule
    from bayesian_lora.samplers import SAMPLERS

    num_data = datamodule.num_train_examples
    if num_data is None:
        raise RuntimeError("call datamodule.setup('fit') before build_module")
    task = get_task(cfg.data.task)
    settings = ModelSettings.from_config(cfg.model)
    model = build_lora_model(settings, task.num_labels)
    counts = parameter_counts(model)
    log.info(format_parameter_counts(counts))  # Hydra's console handler prints it too
    s = cfg.sampler
    factory: Any = None
    objective = None
    prior = build_prior_for(cfg, model)
    if plan is not None and sampler_algorithm(cfg) == "blob":  # VI: AdamW on the negative ELBO
        import torch

        from bayesian_lora.methods.blob import build_objective
        from bayesian_lora.models.lora import sampled_parameters

        seed = int(cfg.seed) + int(s.seed_offset)
        trained = sampled_parameters(model)
        objective = build_objective(prior, trained, s.blob, float(s.temperature), seed)
        factory = partial(torch.optim.AdamW, lr=float(s.lr), weight_decay=0.0)
        adamw = AdamWSettings(lr=float(s.warmup.lr))
    elif plan is not None:
        cls = SAMPLERS[sampler_algorithm(cfg)]
        factory = partial(
            cls,
            lr=float(s.lr),
            num_data=num_data,
            temperature=float(s.temperature),
            seed=int(cfg.seed) + int(s.seed_offset),
            **dict(s.hparams),
        )
        adamw = AdamWSettings(lr=float(s.warmup.lr))
    else:
        adamw = AdamWSettings(
            lr=float(s.lr), weight_decay=float(s.weight_decay), warmup_ratio=float(s.warmup_ratio)
        )
    if cfg.grad_clip is not None and plan is not None:
        warnings.warn(
            "grad_clip is set: clipping gradients during sampling biases the chain", stacklevel=2
        )
    steps_per_epoch = len(datamodule.train_dataloader())
    max_steps = cfg.trainer.get("max_steps") or -1
    total_map = max_steps if max_steps > 0 else steps_per_epoch * int(cfg.trainer.max_epochs)
    module = BayesianLoRAModule(
        model,
        task=task,
        num_data=num_data,
        prior=prior,
        obs_std=float(cfg.data.obs_std),
        adamw=adamw,
        sampler_factory=factory,
        plan=plan,
        total_map_steps=total_map,
        dropout_during_sampling=bool(cfg.dropout_during_sampling),
        grad_clip=cfg.grad_clip,
        divergence_backoff=cfg.get("divergence_backoff"),
        divergence_retries=int(cfg.get("divergence_retries", 3)),
        objective=objective,
    )
    if plan is not None and s.warmup.get("from_run"):
        run = from_run_folder(cfg)
        assert run is not None
        init_from_run(module, run)
    return module, counts


def build_prior_for(cfg: DictConfig, model: Any) -> GaussianPrior:
    """The ``prior`` group (or the isotropic ``prior_std`` override) applied to this model."""
    from bayesian_lora.models.prior import PriorSettings, build_prior

    prior_std = cfg.get("prior_std")
    settings = PriorSettings.from_config(
        cfg.get("prior"), None if prior_std is None else float(prior_std)
    )
    prior = build_prior(model, settings)
    prior.log_table()
    return prior


def from_run_folder(cfg: DictConfig) -> RunFolder | None:
    """``sampler.warmup.from_run``, resolved and checked against this config (before any model
    is loaded): task, label count, model and LoRA config, prior and data split must agree."""
    from bayesian_lora.runs import resolve_from_run
    from bayesian_lora.runs.checks import check_from_run

    if is_map(cfg) or not cfg.sampler.warmup.get("from_run"):
        return None
    run = resolve_from_run(cfg.sampler.warmup.from_run, int(cfg.seed))
    check_from_run(cfg, run)
    return run


def init_from_run(module: BayesianLoRAModule, run: RunFolder) -> None:
    """Start the chain at the (last) sample of another run, typically a MAP run."""
    from bayesian_lora.evaluation.ensemble import swap_in
    from bayesian_lora.runs import load_samples

    samples, manifest = load_samples(run.path)
    params = module.sampled_parameters()
    shapes = {n: list(p.shape) for n, p in params.items()}
    if {n: list(t.shape[1:]) for n, t in samples.items()} != shapes:
        raise ValueError(
            f"warmup.from_run={str(run.path)!r} holds parameters for a different model/LoRA "
            f"config (model {manifest.get('model', {}).get('name_or_path')!r})"
        )
    swap_in(params, samples, manifest["num_samples"] - 1)
    module.compute.warm_start = dict(manifest.get("compute") or {}) or None
    log.info("chain initialised from %s", run.path)


def _registry_names(block: Any) -> Any:
    """A config block without Hydra import paths (manifests name things by registry name)."""
    if isinstance(block, dict):
        return {
            k: _registry_names(v) for k, v in block.items() if k not in ("_target_", "_partial_")
        }
    return block


def manifest_for(
    cfg: DictConfig,
    datamodule: TextClassificationDataModule,
    plan: ChainPlan | None,
    prior: GaussianPrior | None = None,
) -> Manifest:
    from bayesian_lora.runs import Manifest

    c = _registry_names(OmegaConf.to_container(cfg, resolve=True))
    prior_std = cfg.get("prior_std")
    return Manifest(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model=c["model"],
        lora=c["model"]["lora"],
        task=cfg.data.task,
        data=c["data"],
        num_data=datamodule.num_train_examples,
        prior_std=None if prior_std is None else float(prior_std),
        prior=prior.describe() if prior is not None else {},
        seed=int(cfg.seed),
        sampler=sampler_record(cfg, c["sampler"]),
        kept_steps_planned=plan.kept_steps() if plan is not None else None,
        versions=library_versions(),
    )


def sampler_record(cfg: DictConfig, sampler: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``sampler``: the config block (registry names: ``name``, ``algorithm``),
    for MAP without the chain keys that shared configs give every sampler (``debug=smoke``'s
    burn_in, thin, num_samples, warmup, ...), which mean nothing for a MAP fit."""
    if is_map(cfg):
        from bayesian_lora.config_validation import CHAIN_ONLY_SAMPLER_KEYS

        sampler = {k: v for k, v in sampler.items() if k not in CHAIN_ONLY_SAMPLER_KEYS}
    return {**sampler, "name": cfg.sampler.name, "algorithm": sampler_algorithm(cfg)}


def library_versions() -> dict[str, str]:
    import lightning as L
    import peft
    import torch
    import transformers

    import bayesian_lora

    return {
        "bayesian_lora": bayesian_lora.__version__,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def wandb_group(model: str, task: str, sampler: str, sweep_dir: str | Path | None = None) -> str:
    """The one W&B group rule, for training and evaluation runs alike: the sweep folder's name
    for the runs of a ``-m`` sweep (a sweep reads as one dashboard), else
    ``<model>-<task>-<sampler>``."""
    return Path(sweep_dir).name if sweep_dir else f"{model}-{task}-{sampler}"


def sweep_group(cfg: DictConfig) -> str:
    """W&B group of this training run (:func:`wandb_group`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    sweep = None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = HydraConfig.get().sweep.dir
    return wandb_group(cfg.model.name, cfg.data.task, cfg.sampler.name, sweep)


def build_loggers(cfg: DictConfig, counts: dict[str, Any]) -> list[Any]:
    loggers = []
    for lg in (cfg.get("logger") or {}).values():
        if lg is None:
            continue
        is_wandb = str(lg.get("_target_", "")).endswith("WandbLogger")
        extra = {"group": sweep_group(cfg)} if is_wandb and lg.get("group") is None else {}
        loggers.append(instantiate(lg, **extra))
    container = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))  # cfg: a mapping
    for logger in loggers:
        logger.log_hyperparams({**container, **counts})
    return loggers


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    plan: ChainPlan | None,
    manifest: Manifest,
    loggers: list[Any],
) -> tuple[L.Trainer, SampleCollector | None]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from bayesian_lora.callbacks.chain_checkpoint import AtomicCheckpointIO, ChainCheckpoint
    from bayesian_lora.callbacks.progress import ChainProgress
    from bayesian_lora.callbacks.trace import TraceRecorder
    from bayesian_lora.runs import RunFolder

    cb = cfg.callbacks
    run = RunFolder(run_dir)
    ckpt_dir = run.checkpoint_dir
    overrides: dict[str, Any] = {"logger": loggers or False, "plugins": [AtomicCheckpointIO()]}
    collector = None
    if plan is None:
        callbacks: list[Any] = [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=cb.early_stopping.monitor,
                mode=cb.early_stopping.mode,
                save_top_k=1,
                save_last=False,
            ),
            EarlyStopping(
                monitor=cb.early_stopping.monitor,
                mode=cb.early_stopping.mode,
                patience=int(cb.early_stopping.patience),
            ),
        ]
    else:
        collector = build_collector(cfg, run, plan, manifest)
        callbacks = [
            collector,
            ChainCheckpoint(run.last_checkpoint, int(cb.checkpoint.every_n_train_steps)),
        ]
        if cfg.trainer.get("enable_progress_bar", True):
            # A chain has no epochs: its own status line replaces Lightning's epoch bar.
            progress = cb.get("progress") or {}
            every = int(progress.get("every_n_steps", 20))
            callbacks.append(ChainProgress(plan, str(cfg.sampler.name), every_n_steps=every))
            overrides["enable_progress_bar"] = False
        trace = cb.get("trace")
        if trace is not None and trace.enabled:
            callbacks.append(
                TraceRecorder(
                    run_dir,
                    plan,
                    probe_size=int(trace.probe_size),
                    flush_every_steps=int(trace.flush_every_steps),
                )
            )
        # The module stops the run after the last kept sample; max_steps is only a backstop
        # (a divergence retry costs an optimizer step that the chain does not count).
        retries = int(cfg.get("divergence_retries", 0)) if cfg.get("divergence_backoff") else 0
        overrides.update(max_steps=plan.total_steps() + retries, max_epochs=-1, min_epochs=0)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, **overrides)
    return trainer, collector


def build_collector(
    cfg: DictConfig, run: RunFolder, plan: ChainPlan, manifest: Manifest
) -> SampleCollector:
    """What a chain keeps at its kept steps: the iterates, SWAG's moments (``sampler.swag``),
    or BLoB's q snapshots (``sampler.blob``)."""
    from bayesian_lora.callbacks.sample_collector import SampleCollector
    from bayesian_lora.methods.swag import SWAGCollector

    flush_every = int(cfg.callbacks.samples.flush_every)
    blob = cfg.sampler.get("blob")
    if blob is not None:
        from bayesian_lora.methods.blob import BLoBCollector

        return BLoBCollector(
            run.path,
            plan,
            manifest,
            num_draws=int(blob.num_draws),
            draw_seed=int(cfg.seed) + int(blob.draw_seed),
            flush_every=flush_every,
        )
    swag = cfg.sampler.get("swag")
    if swag is None:
        return SampleCollector(run, plan, manifest, flush_every=flush_every)
    return SWAGCollector(
        run.path,
        plan,
        manifest,
        rank=int(swag.rank),
        num_draws=int(swag.num_draws),
        draw_seed=int(cfg.seed) + int(swag.draw_seed),
        flush_every=flush_every,
    )


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run folder was trained with."""
    from bayesian_lora.runs import RunFolder

    config = RunFolder(Path(run_dir)).config
    assert isinstance(config, DictConfig)
    return config
