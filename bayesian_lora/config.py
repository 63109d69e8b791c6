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
from bayesian_lora.runs.folder import MAP
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
    resumed = upgrade_saved_config(cast(DictConfig, OmegaConf.load(saved)))  # a mapping
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


def upgrade_saved_config(cfg: DictConfig) -> DictConfig:
    """A run folder's config.yaml written before the datamodule, the update rule and the
    callbacks were ``_target_`` configs, in today's form (so that ``resume=`` continues it):
    ``data._target_``, ``sampler.optimizer`` from ``sampler.algorithm`` (else the name), and
    each callback's settings merged into its shipped object config (``trace.enabled: false``
    becomes ``trace: null``). A config already in today's form comes back unchanged."""
    from bayesian_lora.samplers import sampler_target, sampler_targets

    cfg = cfg.copy()
    with open_dict(cfg):
        if "data" in cfg and "_target_" not in cfg.data:
            cfg.data = OmegaConf.merge({"_target_": DATAMODULE_TARGET}, cfg.data)
        sampler = cfg.get("sampler")
        registered = set(sampler_targets().values())  # not methods (blob): no update class
        if (
            sampler is not None
            and not is_map(cfg)
            and "optimizer" not in sampler
            and sampler_algorithm(cfg) in registered
        ):
            sampler.optimizer = {
                "_target_": sampler_target(sampler_algorithm(cfg)),
                "_partial_": True,
            }
            sampler.pop("algorithm", None)
        callbacks = cfg.get("callbacks")
        legacy = callbacks is not None and any(
            isinstance(node, DictConfig) and "_target_" not in node for node in callbacks.values()
        )
        if legacy:
            shipped = OmegaConf.load(CONFIG_DIR / "callbacks" / "default.yaml")
            upgraded: dict[str, Any] = {}
            for name, node in shipped.items():
                old = callbacks.get(name)
                if isinstance(old, DictConfig) and "_target_" not in old:
                    if old.get("enabled") is False:
                        upgraded[str(name)] = None
                        continue
                    settings = {k: v for k, v in old.items() if k != "enabled"}
                    node = OmegaConf.merge(node, settings)
                elif name in callbacks:
                    node = old
                upgraded[str(name)] = node
            for name, node in callbacks.items():
                upgraded.setdefault(str(name), node)
            cfg.callbacks = upgraded
    return cfg


def is_map(cfg: DictConfig) -> bool:
    """A MAP run's config (``sampler=map``): the config-side twin of ``RunFolder.is_map``."""
    return bool(cfg.sampler.name == MAP)


#: the datamodule of a ``data`` node saved without ``_target_`` (run folders of older versions)
DATAMODULE_TARGET = "bayesian_lora.data.datamodule.TextClassificationDataModule"


def build_datamodule(cfg: DictConfig) -> TextClassificationDataModule:
    """``cfg.data`` (a ``_target_`` config) with what the other groups decide: the model's
    tokenizer and length, the data and cache folders, the run's seed (the training order)."""
    from bayesian_lora.instantiate import instantiate_node
    from bayesian_lora.models.lora import ModelSettings, build_tokenizer

    datamodule: TextClassificationDataModule = instantiate_node(
        cfg.data,
        default_target=DATAMODULE_TARGET,
        tokenizer=build_tokenizer(ModelSettings.from_config(cfg.model)),
        max_length=int(cfg.model.max_length),
        data_dir=cfg.paths.data_dir,
        cache_dir=cfg.paths.cache_dir,
        shuffle_seed=int(cfg.seed),
    )
    return datamodule


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
    """The registry name of the run's update rule (``sgld``; ``map`` for MAP): what manifests
    record. From ``sampler.optimizer._target_``; a config saved before the optimizer was a
    ``_target_`` names it ``sampler.algorithm`` (else ``sampler.name``)."""
    from bayesian_lora.samplers import sampler_targets

    target = OmegaConf.select(cfg, "sampler.optimizer._target_", default=None)
    if target is not None:
        return sampler_targets()[str(target)]  # validate_config refused any other
    return str(cfg.sampler.get("algorithm") or cfg.sampler.name)


def build_module(
    cfg: DictConfig, datamodule: TextClassificationDataModule, plan: ChainPlan | None
) -> tuple[BayesianLoRAModule, dict[str, Any]]:
    from bayesian_lora.instantiate import instantiate_node
    from bayesian_lora.models.lora import (
        ModelSettings,
        build_lora_model,
        format_parameter_counts,
        parameter_counts,
    )
    from bayesian_lora.models.module import AdamWSettings, BayesianLoRAModule

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
    if is_map(cfg):  # AdamW on u throughout, no sampler phase (methods/map.py)
        from bayesian_lora.methods.map import adamw_settings

        adamw = adamw_settings(s)
    elif sampler_algorithm(cfg) == "blob":  # VI: AdamW on the negative ELBO
        import torch

        from bayesian_lora.methods.blob import build_objective
        from bayesian_lora.models.lora import sampled_parameters

        seed = int(cfg.seed) + int(s.seed_offset)
        trained = sampled_parameters(model)
        objective = build_objective(prior, trained, s.blob, float(s.temperature), seed)
        factory = partial(torch.optim.AdamW, lr=float(s.lr), weight_decay=0.0)
        adamw = AdamWSettings(lr=float(s.warmup.lr))
    else:  # sampler.optimizer is a _partial_: the module passes the parameters
        factory = instantiate_node(
            optimizer_config(cfg),
            lr=float(s.lr),
            num_data=num_data,
            temperature=float(s.temperature),
            seed=int(cfg.seed) + int(s.seed_offset),
            **s.hparams,
        )
        adamw = AdamWSettings(lr=float(s.warmup.lr))
    if cfg.grad_clip is not None and factory is not None:
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
    run = from_run_folder(cfg)  # None for MAP and for a chain with its own warm start
    if run is not None:
        init_from_run(module, run)
    return module, counts


def optimizer_config(cfg: DictConfig) -> DictConfig:
    """``sampler.optimizer``, or for a config saved without one, the ``_partial_`` config of
    its ``sampler.algorithm`` (else ``sampler.name``)."""
    from bayesian_lora.samplers import sampler_target

    node = cfg.sampler.get("optimizer")
    if node is not None:
        return cast(DictConfig, node)
    return OmegaConf.create({"_target_": sampler_target(sampler_algorithm(cfg)), "_partial_": True})


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
    burn_in, thin, num_samples, warmup, ...), which mean nothing for a MAP fit. The update rule
    is recorded by its registry name (``algorithm``), not its import path (``optimizer``)."""
    from bayesian_lora.config_validation import CHAIN_ONLY_SAMPLER_KEYS

    if is_map(cfg):
        sampler = {k: v for k, v in sampler.items() if k not in CHAIN_ONLY_SAMPLER_KEYS}
    sampler = {k: v for k, v in sampler.items() if k != "optimizer"}  # named by its algorithm
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
) -> tuple[L.Trainer, SampleCollector]:
    """The trainer with the run's callbacks (:func:`build_callbacks`) and loggers, and the
    run's sample collector (every method has one: what it leaves in the run folder, and the
    trainer settings it needs, :meth:`SampleCollector.trainer_overrides`)."""
    from bayesian_lora.callbacks.chain_checkpoint import AtomicCheckpointIO
    from bayesian_lora.callbacks.progress import ChainProgress
    from bayesian_lora.callbacks.sample_collector import SampleCollector

    callbacks = build_callbacks(cfg, run_dir, plan, manifest)
    overrides: dict[str, Any] = {"logger": loggers or False, "plugins": [AtomicCheckpointIO()]}
    collectors = [c for c in callbacks if isinstance(c, SampleCollector)]
    if len(collectors) != 1:
        raise RuntimeError(
            f"a run needs exactly one sample collector (callbacks.samples), found {len(collectors)}"
        )
    collector = collectors[0]
    if any(isinstance(c, ChainProgress) for c in callbacks):
        overrides["enable_progress_bar"] = False  # a chain has no epochs: its own status line
    retries = int(cfg.get("divergence_retries", 0)) if cfg.get("divergence_backoff") else 0
    overrides.update(collector.trainer_overrides(retries))  # a chain's stop rule; MAP: none
    trainer = instantiate(cfg.trainer, callbacks=callbacks, **overrides)
    return trainer, collector


def build_callbacks(
    cfg: DictConfig, run_dir: Path, plan: ChainPlan | None, manifest: Manifest
) -> list[Any]:
    """One callback per entry of ``cfg.callbacks`` that serves this run (``CALLBACKS`` names
    the run's own, for MAP or for chains; any other entry serves every run), ``null`` entries
    left out. ``_partial_`` ones are completed with the run's objects they accept."""
    from bayesian_lora.config_validation import CALLBACKS
    from bayesian_lora.instantiate import instantiate_node
    from bayesian_lora.runs import RunFolder

    run = RunFolder(run_dir)
    kind = "map" if is_map(cfg) else "chain"  # the own callbacks it takes (CALLBACKS.run)
    run_arguments = {
        "run": run,
        "run_dir": run.path,
        "plan": plan,
        "manifest": manifest,
        "dirpath": run.checkpoint_dir,
        "sampler": str(cfg.sampler.name),
    }
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        own = CALLBACKS.get(str(name))
        if name == "samples":
            node = method_collector_config(cfg, node)
        if node is None or (own is not None and own.run not in (kind, "any")):
            continue
        if name == "progress" and not cfg.trainer.get("enable_progress_bar", True):
            continue
        callbacks.append(instantiate_node(node, run_arguments=run_arguments))
    return callbacks


#: methods whose runs keep something else than the iterates: the ``sampler.<block>`` that marks
#: them -> their collector (it replaces callbacks.samples' class) and the block's keys it takes
METHOD_COLLECTORS = {
    "swag": ("bayesian_lora.methods.swag.SWAGCollector", ("rank", "num_draws")),  # moments
    "blob": ("bayesian_lora.methods.blob.BLoBCollector", ("num_draws",)),  # q snapshots
}


def method_collector_config(cfg: DictConfig, samples: DictConfig | None) -> DictConfig | None:
    """The ``samples`` callback of this run: for sampler=map MAP's collector (its one sample,
    the best checkpoint; also when ``callbacks.samples`` is null, as MAP never read it), for
    sampler=swag or blob (a ``sampler.swag`` or ``sampler.blob`` block) their collector, with
    the block's settings and the draws' seed (``seed + <block>.draw_seed``, passed here so that
    config.yaml holds no per-seed value)."""
    from bayesian_lora.methods.map import COLLECTOR as MAP_COLLECTOR

    if is_map(cfg):
        return OmegaConf.create({"_target_": MAP_COLLECTOR, "_partial_": True})
    if samples is None:
        return None
    for block, (target, keys) in METHOD_COLLECTORS.items():
        settings = cfg.sampler.get(block)
        if settings is None:
            continue
        given = {key: int(settings[key]) for key in keys}
        seed = int(cfg.seed) + int(settings.draw_seed)
        extra = {"_target_": target, "_partial_": True, **given, "draw_seed": seed}
        node = OmegaConf.to_container(samples, resolve=True)  # not the struct-flagged node
        return cast(DictConfig, OmegaConf.merge(cast(dict[str, Any], node), extra))
    return samples


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run folder was trained with."""
    from bayesian_lora.runs import RunFolder

    config = RunFolder(Path(run_dir)).config
    assert isinstance(config, DictConfig)
    return config
