"""Keep posterior samples during the chain, on the training device, and never lose them.

At each kept step (``ChainPlan.is_kept``) the sampled parameters are copied into a buffer
preallocated on the training device (``torch._foreach_copy_``: no host synchronisation). The
buffer is flushed to the run folder every ``flush_every`` samples, at the end of training, and on
any exception or interrupt, so a crash keeps what was collected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from bayesian_lora.callbacks.sample_store import load_samples, write_samples
from bayesian_lora.samplers.chain import ChainPlan


class SampleCollector(L.Callback):
    def __init__(
        self,
        run_dir: str | Path,
        plan: ChainPlan,
        manifest: dict[str, Any],
        flush_every: int = 5,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.plan = plan
        self.manifest = manifest
        self.flush_every = max(1, int(flush_every))
        self._kept_steps = frozenset(plan.kept_steps())
        self.buffer: dict[str, Tensor] = {}
        self.steps: list[int] = []
        self._flushed = 0
        self._module: L.LightningModule | None = None

    @property
    def num_kept(self) -> int:
        return len(self.steps)

    # ------------------------------------------------------------ lifecycle
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._module = pl_module
        params = pl_module.sampled_parameters()
        n = self.plan.num_samples
        self.buffer = {
            name: torch.empty((n, *p.shape), dtype=p.dtype, device=p.device)
            for name, p in params.items()
        }
        if self.steps:  # resumed: refill the buffer with what is on disk, nothing more
            on_disk, _ = load_samples(self.run_dir, device=pl_module.device)
            for name, t in self.buffer.items():
                t[: self.num_kept].copy_(on_disk[name][: self.num_kept])
            self._flushed = self.num_kept

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = pl_module.chain_step - 1  # the update that just happened
        if step not in self._kept_steps or self.num_kept >= self.plan.num_samples:
            return
        self.keep(pl_module)
        self.steps.append(step)
        if (
            self.num_kept - self._flushed >= self.flush_every
            or self.num_kept == self.plan.num_samples
        ):
            self.flush(trainer)

    def keep(self, pl_module: L.LightningModule) -> None:
        """Store the current parameters as kept sample ``num_kept`` (subclasses: SWAG)."""
        params = pl_module.sampled_parameters()
        i = self.num_kept
        torch._foreach_copy_(
            [self.buffer[n][i] for n in params], [p.detach() for p in params.values()]
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(
            trainer, status="complete" if self.num_kept == self.plan.num_samples else "stopped"
        )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.flush(trainer, status=f"interrupted: {type(exception).__name__}")

    # ------------------------------------------------------------ writing
    def flush(self, trainer: L.Trainer | None = None, status: str = "running") -> None:
        """Write every sample kept so far (rank zero only); safe to call at any time."""
        if trainer is not None and not trainer.is_global_zero:
            return
        if not self.buffer or self.num_kept == 0:
            return
        samples = {name: t[: self.num_kept] for name, t in self.buffer.items()}
        manifest = {**self.manifest, "steps": list(self.steps), "status": status}
        write_samples(self.run_dir, samples, manifest)
        self._flushed = self.num_kept

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
