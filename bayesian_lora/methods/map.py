r"""MAP: AdamW on the per-datum potential, one kept sample (``sampler=map``).

With N training examples and the Gaussian prior N(0, sigma_t^2) on each trained tensor t (the
``prior`` group), MAP minimises the per-datum potential

    u(theta) = mean_batch NLL(y | x, theta) + sum_t ||theta_t||^2 / (2 sigma_t^2 N)

(an unbiased mini-batch estimate of U(theta)/N, U the negative log posterior) with AdamW at
``sampler.lr`` (``weight_decay`` 0 by default: the prior term is the regulariser), a linear
warm-up over ``sampler.warmup_ratio`` of the run's T optimizer steps then a linear decay to zero:

    lr_t = lr (t + 1) / W               for t < W = max(1, warmup_ratio T)
    lr_t = lr max(0, (T - t) / (T - W))  after

T = ``trainer.max_steps``, else the steps of ``trainer.max_epochs`` epochs. Early stopping
(``callbacks.early_stopping``) stops the run when the validation NLL has not improved for
``patience`` validations, and ``callbacks.best_checkpoint`` keeps the checkpoint with the best
validation NLL. The posterior MAP leaves in the run folder is a stack of one sample: the
parameters of that best checkpoint (of the last step when there is none), kept at its step.

How it plugs in: its collector (:class:`MAPCollector`, the run's ``callbacks.samples``) keeps
nothing during training and writes the one sample at the end of training; it adds no chain stop
rule to the trainer (the run ends by epochs or early stopping) and names the next command (a
chain warm-started from this fit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.models.module import AdamWSettings
from bayesian_lora.runs.folder import MAP, RunFolder
from bayesian_lora.runs.manifest import Manifest
from bayesian_lora.samplers.chain import ChainPlan

log = logging.getLogger(__name__)

#: the method's name: ``sampler=map`` on the command line, ``sampler.name`` in its manifests
NAME = MAP
COLLECTOR = "bayesian_lora.methods.map.MAPCollector"

#: what a MAP run keeps: one sample (the collector takes it at the end, not at a planned step)
ONE_SAMPLE = ChainPlan(warmup_steps=0, burn_in=0, thin=1, num_samples=1)


def adamw_settings(sampler: Any) -> AdamWSettings:
    """MAP's AdamW from its ``sampler`` config: ``lr``, ``weight_decay``, ``warmup_ratio``."""
    return AdamWSettings(
        lr=float(sampler.lr),
        weight_decay=float(sampler.weight_decay),
        warmup_ratio=float(sampler.warmup_ratio),
    )


class MAPCollector(SampleCollector):
    """MAP's one sample: the best validation-NLL checkpoint's parameters, at the end of training.

    Nothing is kept during training (an interrupted MAP run writes no sample; ``resume=``
    continues it from its checkpoint). The manifest records the best checkpoint's step, status
    ``complete`` and the compute block; no step-size scales (AdamW has no back-off record)."""

    def __init__(
        self,
        run: RunFolder | str | Path,
        manifest: Manifest,
        plan: ChainPlan | None = None,
        flush_every: int = 1,
    ) -> None:
        super().__init__(run, ONE_SAMPLE, manifest, flush_every)

    def trainer_overrides(self, retries: int) -> dict[str, Any]:
        return {}  # the run ends by trainer.max_epochs / max_steps or early stopping

    @staticmethod
    def next_steps(run_dir: Path) -> list[str]:
        return [
            "then a chain from this MAP fit: python -m bayesian_lora.train <same options> "
            f"sampler=sgld sampler.warmup.from_run={run_dir}"
        ]

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass  # the one sample is taken at the end

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:  # under DDP, only rank zero writes samples
            return
        module: Any = pl_module
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        step = int(module.chain_step)
        if best:
            ckpt = torch.load(best, map_location=module.device, weights_only=True)
            module.load_state_dict(ckpt["state_dict"], strict=False)
            step = int(ckpt.get("chain", {}).get("chain_step", step))
            log.info("MAP: restored the best checkpoint %s (step %d)", best, step)
        self.steps, self.scales = [], []
        self.keep(module)
        self.steps = [step]
        self.flush(trainer, status="complete")
        log.info("MAP sample (step %d) written to %s", step, self.run.path)
