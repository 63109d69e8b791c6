"""Train one chain (or one MAP run): ``python -m bayesian_lora.train model=minilm data=mrpc sampler=sgld``.

config -> (validated) -> data + model -> chain -> run folder (samples + manifest + metrics).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from bayesian_lora.config import (
    CONFIG_DIR,
    build_chain_plan,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    from_run_folder,
    manifest_for,
    print_config,
    resolve_resume,
    steps_per_epoch,
    world_size,
)
from bayesian_lora.config_validation import validate_config, validate_model
from bayesian_lora.data.checks import check_local_copy
from bayesian_lora.entry import run_or_refuse
from bayesian_lora.errors import InputError
from bayesian_lora.rank_zero import process_rank

# torch, Lightning, transformers, peft and datasets are imported only once the config is valid.
if TYPE_CHECKING:
    from bayesian_lora.runs import RunFolder

log = logging.getLogger("bayesian_lora.train")

# Chain checkpoints are meant to hold the state after the step (chain_step counts it).
warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")


class RunFolderInUseError(InputError, FileExistsError):
    """The output folder already holds a run."""


def train(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run one chain end to end; returns the test metrics (empty if not evaluated).

    ``overrides`` are the command line's (Hydra's task overrides): ``resume=`` and the rules
    about keys that do nothing in this run read them. Bad input raises before the run folder
    is written, and a bad config before torch is imported.
    """
    cfg, ckpt_path = resolve_resume(cfg, overrides)
    validate_config(cfg, () if ckpt_path else overrides)
    validate_model(cfg)  # reads the model's config (transformers), not its weights
    check_local_copy(cfg)  # the data files' columns, sizes and labels (Parquet footers)
    from bayesian_lora.runs import RunFolder
    from bayesian_lora.runs.layout import remove_stale_temporaries

    from_run_folder(cfg)  # a warm start that does not fit is refused before anything loads
    run = RunFolder(Path(cfg.paths.output_dir))
    writer = process_rank() == 0  # under DDP, rank zero owns the folder
    lock = run.lock(break_lock=bool(cfg.get("break_lock", False))) if writer else nullcontext()
    with lock:
        if writer:
            remove_stale_temporaries(run.path)
        if ckpt_path is None:
            refuse_to_overwrite(run)
        return _train(cfg, run, ckpt_path)


def _train(cfg: DictConfig, run: RunFolder, ckpt_path: str | None) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from bayesian_lora.callbacks.chain_checkpoint import PREEMPTED_EXIT_CODE

    run_dir = run.path
    print_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")  # the data checks, before the config is written
    OmegaConf.save(absolute_data_dir(cfg), run.config_file, resolve=True)
    plan = build_chain_plan(cfg, steps_per_epoch(cfg, int(datamodule.num_train_examples or 0)))
    module, counts = build_module(cfg, datamodule, plan)
    manifest = manifest_for(cfg, datamodule, plan, module.prior)
    loggers = build_loggers(cfg, counts)
    trainer, collector = build_trainer(cfg, run_dir, plan, manifest, loggers)
    counted_epochs = OmegaConf.select(cfg, "sampler.warmup.epochs", default=None) is not None
    if counted_epochs and trainer.world_size != world_size(cfg):  # warm-up epochs were counted
        raise RuntimeError(
            f"the trainer runs {trainer.world_size} processes where trainer.devices x "
            f"trainer.num_nodes gave {world_size(cfg)}; set trainer.devices explicitly"
        )

    metrics: dict[str, Any] = {}
    status = "failed"  # until the run gets through fit, the sample and the test evaluation
    try:  # the loggers are finished however the run ends (a W&B run is not left open)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            log.warning(
                "stopped by a signal after chain step %d: checkpoint written, samples flushed; "
                "continue with resume=%s",
                module.chain_step,
                run_dir,
            )
            raise SystemExit(PREEMPTED_EXIT_CODE) from None
        planned = collector.plan.num_samples  # the collector wrote them (MAP: the best step)
        if trainer.is_global_zero and collector.num_kept < planned:
            log.warning("the run stopped with %d of %d samples kept", collector.num_kept, planned)
        if cfg.evaluate_on_fit_end and trainer.is_global_zero:
            metrics = evaluate_module_on_test(module, datamodule, run_dir)
            test = {f"test/{k}": v for k, v in metrics["ensemble"].items()}
            for logger in loggers:
                logger.log_metrics(test, step=trainer.global_step)
        status = "success"
    finally:
        close_loggers(loggers, status)
    if trainer.is_global_zero:
        print_next_steps(run_dir, collector.next_steps(run_dir))
    return metrics


def absolute_data_dir(cfg: DictConfig) -> DictConfig:
    """The config to save: ``paths.data_dir`` absolute, so that ``evaluate`` of the run folder
    works from any directory."""
    data_dir = cfg.paths.get("data_dir")
    if not data_dir:
        return cfg
    saved = cfg.copy()
    with open_dict(saved):
        saved.paths.data_dir = str(Path(str(data_dir)).expanduser().resolve())
    return saved


def print_next_steps(run_dir: Path, then: Sequence[str] = ()) -> None:
    """Where the run folder is, and the commands to try next: evaluate it, then the method's
    own (``then``, :meth:`SampleCollector.next_steps`: MAP's is a chain from its fit)."""
    lines = [f"run folder: {run_dir}", f"next: python -m bayesian_lora.evaluate run_dir={run_dir}"]
    print("\n".join([*lines, *then]), flush=True)


def evaluate_module_on_test(module: Any, datamodule: Any, run_dir: Path) -> dict[str, Any]:
    """Test metrics of the kept samples (``evaluation.predict``, imported when needed)."""
    from bayesian_lora.evaluation import predict

    return predict.evaluate_module_on_test(module, datamodule, run_dir)


def close_loggers(loggers: list[Any], status: str = "success") -> None:
    """Finalize every logger with ``status`` ("success", or "failed" when the run raised: a
    divergence, a crash, a stop signal); W&B runs are finished (with exit code 1 when failed, so
    W&B marks them failed) so that the next job of a sweep gets its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


def refuse_to_overwrite(run: RunFolder) -> None:
    """A rerun into a folder that already holds a chain would overwrite its samples."""
    existing = [p for p in (run.samples_file, run.last_checkpoint) if p.exists()]
    if existing:
        raise RunFolderInUseError(
            f"{run.path} already holds a run ({', '.join(p.name for p in existing)}): continue "
            f"it with resume={run.path}, or choose another output folder"
        )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    run_or_refuse(train, cfg)


if __name__ == "__main__":
    main()
