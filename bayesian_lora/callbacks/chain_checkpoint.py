"""Chain checkpoints for resume: at the start, every n chain steps, and when told to stop.

A checkpoint holds the sampled parameters, both optimizers' states (the sampler's includes its
noise generator), the chain step, the torch RNG and the collector's kept steps with a hash of
each kept row. The collector flushes its samples before every checkpoint (its ``state_dict``), so
a checkpoint is never ahead of the samples file. Checkpoints are published atomically
(:class:`AtomicCheckpointIO`: temporary file, fsync, rename).

Stop signals: SIGTERM (what a cluster sends before pre-emption), SIGUSR1 and SIGUSR2 (SLURM's
``--signal``, as submitit requests it) all let the current step finish, then write a checkpoint
at that step, flush the samples and end the process with status 143 (128 + SIGTERM) so that a
scheduler sees an interrupted job; ``resume=<run folder>`` continues without losing a step.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bayesian_lora.runs import RunFolder
from bayesian_lora.runs.layout import atomic_write

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # 143
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # handled like SIGTERM


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file, fsync, then rename over the checkpoint."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp), "checkpoint")


def _as_sigterm(signum: int, frame: Any) -> None:
    log.warning("received signal %d: stopping like on SIGTERM", signum)
    os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler (and DDP broadcast) takes over


class ChainCheckpoint(Checkpoint):
    """Writes ``checkpoints/last.ckpt`` of the run folder ``run`` (resume= reads it)."""

    def __init__(self, run: RunFolder | str | Path, every_n_train_steps: int) -> None:
        self.path = (run if isinstance(run, RunFolder) else RunFolder(Path(run))).last_checkpoint
        self.every_n = int(every_n_train_steps)
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, _as_sigterm)
            except ValueError:  # not the main thread: Lightning does not handle SIGTERM either
                break
        if trainer.ckpt_path is None:  # a fresh chain can be resumed from its first step on
            self.save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.completed_step is not None and pl_module.chain_step % self.every_n == 0:
            self.save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return  # a diverged or crashed state is not worth resuming from
        self.save(trainer)
        log.warning(
            "%s: saved a checkpoint at chain step %d to %s",
            type(exception).__name__,
            getattr(pl_module, "chain_step", -1),
            self.path,
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
