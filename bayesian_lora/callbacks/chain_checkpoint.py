"""Chain checkpoints for resume: periodic, and a final one when the job is told to stop.

A checkpoint holds the sampled parameters, both optimizers' states (the sampler's includes its
noise generator), the chain step, the torch RNG and the collector's list of kept steps. On SIGTERM
(what a cluster sends before pre-emption) or Ctrl-C, a last checkpoint is written before the run
ends; the sample collector flushes its samples in the same moment.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


class ChainCheckpoint(ModelCheckpoint):
    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        super().__init__(
            dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps
        )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return  # a diverged or crashed state is not worth resuming from
        path = Path(self.dirpath) / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        log.warning("%s: saved a final checkpoint to %s", type(exception).__name__, path)
