"""Cheap function-space summaries at every sampler step: ``trace.safetensors`` in the run folder.

Kept samples are thinned (tens of draws per chain); within-chain diagnostics (split R-hat, ESS,
stationarity of the first versus the last part) need hundreds. This callback records, at every
burn-in and sampling step (not the warm start), a few scalars whose computation costs no extra
backward pass, into buffers preallocated on the training device (no host synchronisation per
step), written with the samples: every ``flush_every_steps`` steps, at the end, and on any
exception or interrupt (atomically, like the samples).

File format ``bayesian-lora-trace/1`` (safetensors; metadata ``format``, ``groups``,
``probe_size``), every tensor of length S = the number of sampler steps recorded, in step order:

- ``step`` (int64): the global step t of the update;
- ``kept`` (uint8): 1 where the parameters after that update are a kept sample (``manifest.steps``);
- ``u`` (float32): the mini-batch potential u = mean NLL + prior / N that the update used
  (evaluated at the parameters before it);
- ``nll`` (float32): the same batch's mean NLL;
- ``norm.<group>`` (float32): ||theta_group||_2 after the update, for each trained group present
  (``lora_A``, ``lora_B``, ``head``; see ``bayesian_lora.models.prior``);
- ``probe_loglik`` (float32, when ``probe_size`` > 0): the mean log-likelihood of a fixed probe
  set (the first ``probe_size`` validation examples, one batch) after the update, dropout off.

A resumed chain refills the buffers from the file for the steps it had already taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from bayesian_lora.models.module import set_dropout
from bayesian_lora.runs.layout import atomic_write
from bayesian_lora.samplers.chain import ChainPlan

TRACE_FILE = "trace.safetensors"
TRACE_FORMAT = "bayesian-lora-trace/1"


class TraceRecorder(L.Callback):
    def __init__(
        self,
        run_dir: str | Path,
        plan: ChainPlan,
        probe_size: int = 32,
        flush_every_steps: int = 100,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.plan = plan
        self.probe_size = int(probe_size)
        self.flush_every_steps = max(1, int(flush_every_steps))
        self.capacity = plan.total_steps() - plan.warmup_steps
        self._kept = frozenset(plan.kept_steps())
        self.buffers: dict[str, Tensor] = {}
        self.groups: dict[str, list[Tensor]] = {}
        self.recorded = 0
        self._probe: dict[str, Tensor] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        device = pl_module.device
        prior = pl_module.prior
        for name, p in pl_module.sampled_parameters().items():
            self.groups.setdefault(prior.groups[name], []).append(p)
        columns = ["u", "nll", *(f"norm.{g}" for g in self.groups)]
        if self.probe_size > 0:
            columns.append("probe_loglik")
            self._probe = self._probe_batch(trainer, device)
        n = self.capacity
        self.buffers = {c: torch.zeros(n, dtype=torch.float32, device=device) for c in columns}
        self.buffers["step"] = torch.zeros(n, dtype=torch.int64, device=device)
        self.buffers["kept"] = torch.zeros(n, dtype=torch.uint8, device=device)
        self.recorded = 0
        path = self.run_dir / TRACE_FILE
        done = pl_module.chain_step - self.plan.warmup_steps
        if done > 0 and path.is_file():  # resumed: what the chain had recorded before
            on_disk = load_file(str(path), device=str(device))
            keep = min(done, int(on_disk["step"].shape[0]))
            for name, t in self.buffers.items():
                if name in on_disk:
                    t[:keep].copy_(on_disk[name][:keep])
            self.recorded = keep

    def _probe_batch(self, trainer: L.Trainer, device: torch.device) -> dict[str, Tensor] | None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            return None
        batch = next(iter(datamodule.val_dataloader()), None)
        if batch is None:
            return None
        return {k: v[: self.probe_size].to(device) for k, v in batch.items()}

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = pl_module.chain_step - 1  # the update that just happened
        i = step - self.plan.warmup_steps
        stats = getattr(pl_module, "last_stats", None)
        if i < 0 or i >= self.capacity or stats is None or i != self.recorded:
            return
        b = self.buffers
        b["step"][i] = step
        b["kept"][i] = int(step in self._kept)
        b["u"][i] = stats["u"].float()
        b["nll"][i] = stats["nll"].float()
        for group, params in self.groups.items():
            norms = torch._foreach_norm([p.detach() for p in params])
            b[f"norm.{group}"][i] = torch.stack(norms).float().pow(2).sum().sqrt()
        if self._probe is not None:
            was_training = pl_module.model.training
            set_dropout(pl_module.model, False)
            nll = pl_module.per_example_nll(pl_module(self._probe), self._probe["labels"])
            set_dropout(pl_module.model, was_training)
            b["probe_loglik"][i] = -nll.mean()
        self.recorded += 1
        if self.recorded % self.flush_every_steps == 0:
            self.flush(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.flush(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self.flush(trainer)

    def flush(self, trainer: L.Trainer | None = None) -> None:
        """Write the steps recorded so far (rank zero only); safe to call at any time."""
        if trainer is not None and not trainer.is_global_zero:
            return
        if not self.buffers or self.recorded == 0:
            return
        n = self.recorded
        tensors = {k: v[:n].detach().to("cpu").contiguous() for k, v in self.buffers.items()}
        meta = {
            "format": TRACE_FORMAT,
            "groups": ",".join(self.groups),
            "probe_size": str(self.probe_size if self._probe is not None else 0),
        }
        path = self.run_dir / TRACE_FILE
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), "trace")


def load_trace(run_dir: str | Path) -> dict[str, Tensor]:
    """The trace of a run folder (``{}`` if it has none)."""
    path = Path(run_dir) / TRACE_FILE
    return load_file(str(path)) if path.is_file() else {}
