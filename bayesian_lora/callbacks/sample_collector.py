"""Keep posterior samples during the chain, on the training device, and never lose them.

At each kept step (``ChainPlan.is_kept``) the sampled parameters are copied into a buffer
preallocated on the training device (``torch._foreach_copy_``: no host synchronisation). The
filled rows (never the others) are flushed to the run folder every ``flush_every`` samples,
before every checkpoint, at the end of training, and on any exception or interrupt.

Resume: the checkpoint lists the kept steps and a hash of each kept row. The samples file must
hold those steps first (it may hold later ones, flushed after the checkpoint) with the same row
hashes; otherwise the resume is refused and the file is left as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from bayesian_lora.runs.folder import RunFolder
from bayesian_lora.runs.manifest import Manifest, SampleFileError
from bayesian_lora.runs.store import row_hashes
from bayesian_lora.samplers.chain import ChainPlan


class ResumeMismatchError(SampleFileError):
    """The samples file does not hold what the checkpoint says was kept."""


class SampleCollector(L.Callback):
    def __init__(
        self,
        run: RunFolder | str | Path,
        plan: ChainPlan,
        manifest: Manifest,
        flush_every: int = 5,
    ) -> None:
        self.run = run if isinstance(run, RunFolder) else RunFolder(Path(run))
        self.run_dir = self.run.path
        self.plan = plan
        self.manifest = manifest
        self.flush_every = max(1, int(flush_every))
        self._kept_steps = frozenset(plan.kept_steps())
        self.buffer: dict[str, Tensor] = {}
        self.steps: list[int] = []
        self.scales: list[float] = []  # the step-size scale in force at each kept sample
        self._hashes: list[str] = []  # of the flushed rows
        self._flushed = 0
        self._claimed: dict[str, Any] | None = None  # from a checkpoint, checked at start
        self._writable = True
        self._trainer: L.Trainer | None = None
        self._module: Any = None

    @property
    def num_kept(self) -> int:
        return len(self.steps)

    # ------------------------------------------------------------ the method's run
    def trainer_overrides(self, retries: int) -> dict[str, Any]:
        """The trainer settings this collector's run needs: a chain stops itself after its last
        kept sample, so ``max_steps`` is only a backstop (``retries``: the divergence retries,
        each an optimizer step the chain does not count). Methods without a chain plan
        (:class:`bayesian_lora.methods.map.MAPCollector`) return their own."""
        return {"max_steps": self.plan.total_steps() + retries, "max_epochs": -1, "min_epochs": 0}

    @staticmethod
    def next_steps(run_dir: Path) -> list[str]:
        """Commands to suggest after this run, beyond evaluating it (``train.print_next_steps``)."""
        return []

    # ------------------------------------------------------------ lifecycle
    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._trainer, self._module = trainer, pl_module
        params = pl_module.sampled_parameters()
        n = self.plan.num_samples
        self.buffer = {
            name: torch.empty((n, *p.shape), dtype=p.dtype, device=p.device)
            for name, p in params.items()
        }
        if self._claimed is not None:
            self._adopt_flushed_samples(self._claimed)
            self._claimed = None

    def _adopt_flushed_samples(self, claimed: dict[str, Any]) -> None:
        steps = [int(s) for s in claimed.get("steps", [])]
        if not steps:
            return
        try:
            if "row_sha256" not in claimed:
                raise ResumeMismatchError(
                    "the checkpoint was written by an older version (no sample hashes)"
                )
            if not self.run.has_samples:
                raise ResumeMismatchError(
                    f"it lists kept steps {steps} but there is no samples file"
                )
            on_disk, manifest = self.run.load_samples()
            k = len(steps)
            if manifest.steps[:k] != steps:
                raise ResumeMismatchError(
                    f"the checkpoint lists kept steps {steps}, the samples file holds "
                    f"{manifest.steps}"
                )
            if row_hashes(on_disk, range(k)) != list(claimed["row_sha256"]):
                raise ResumeMismatchError(
                    f"the samples file's rows for steps {steps} differ from those the "
                    "checkpoint recorded"
                )
        except SampleFileError as err:
            self._writable = False  # never overwrite what we could not verify
            raise ResumeMismatchError(
                f"resume of {self.run.path} refused, nothing was written: {err}"
            ) from err
        for name, t in self.buffer.items():
            t[:k].copy_(on_disk[name][:k])
        self.steps = steps
        self.scales = [float(s) for s in claimed.get("step_size_scales", [1.0] * k)]
        self._hashes = list(claimed["row_sha256"])
        self._flushed = k

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = pl_module.completed_step  # None when the batch was a divergence retry
        if step is None or step not in self._kept_steps or self.num_kept >= self.plan.num_samples:
            return
        if self.steps and step <= self.steps[-1]:
            raise RuntimeError(f"step {step} would be kept twice (kept so far: {self.steps})")
        self.keep(pl_module)
        self.steps.append(step)
        self.scales.append(float(pl_module.lr_scale))
        if (
            self.num_kept - self._flushed >= self.flush_every
            or self.num_kept == self.plan.num_samples
        ):
            self.flush(trainer)

    def keep(self, pl_module: Any) -> None:
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
        if not self._writable or not self.buffer or self.num_kept == 0:
            return
        n = self.num_kept
        samples = {name: t[:n].to("cpu") for name, t in self.buffer.items()}
        self._hashes = self._hashes[: self._flushed] + row_hashes(samples, range(self._flushed, n))
        manifest = self.manifest.replace(
            steps=list(self.steps),
            step_size_scales=list(self.scales),
            status=status,
            compute=self.compute_summary(),
        )
        self.run.write_samples(samples, manifest)
        self._flushed = n

    def compute_summary(self) -> dict[str, Any]:
        """The run's compute so far (``bayesian_lora.compute``), for the manifest."""
        compute = getattr(self._module, "compute", None)
        return compute.summary() if compute is not None else {}

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        if self.num_kept > self._flushed:  # a checkpoint is never ahead of the samples file
            self.flush(self._trainer)
        return {
            "steps": list(self.steps),
            "step_size_scales": list(self.scales),
            "row_sha256": self._hashes[: self.num_kept],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._claimed = dict(state_dict)
