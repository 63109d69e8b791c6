"""Chain-aware progress: phase, step t of T, kept k of S, step size, temperature, ETA.

Lightning's bar counts epochs, which a chain does not have (it read "Epoch 0/-2"). For a chain
this callback replaces it with one status line built from the chain plan:

    chain sgld | sampling | step 120/460 | kept 3/10 | lr 0.03 | T 0.1 | u 0.512 | 1m20s, eta 3m10s

On a terminal the line is redrawn in place every step; in a log (not a TTY) a plain line is
printed every ``every_n_steps`` steps and at the end, flushed at once, so a redirected log shows
progress while the chain runs. Only rank zero prints. The ETA is the mean time per step so far
times the steps left (the warm-up's AdamW steps and the sampler's steps are counted alike).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.samplers.chain import ChainPlan


def format_seconds(seconds: float) -> str:
    """``75 -> '1m15s'``, ``3725 -> '1h02m'``; whole seconds under a minute."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def status_line(
    *,
    sampler: str,
    phase: str,
    step: int,
    total: int,
    kept: int,
    num_samples: int,
    lr: float | None,
    temperature: float | None,
    u: float | None,
    elapsed: float,
    seconds_per_step: float | None,
) -> str:
    """The one-line chain status (pure: what is shown is tested without a trainer)."""
    parts = [
        f"chain {sampler}",
        phase,
        f"step {step}/{total}",
        f"kept {kept}/{num_samples}",
    ]
    if lr is not None:
        parts.append(f"lr {lr:.3g}")
    if temperature is not None:
        parts.append(f"T {temperature:g}")
    if u is not None:
        parts.append(f"u {u:.4g}")
    timing = format_seconds(elapsed)
    if seconds_per_step is not None and step < total:
        timing += f", eta {format_seconds(seconds_per_step * (total - step))}"
    parts.append(timing)
    return " | ".join(parts)


class ChainProgress(L.Callback):
    """Prints the chain's status line (see the module docstring)."""

    def __init__(
        self,
        plan: ChainPlan,
        sampler: str,
        every_n_steps: int = 20,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.plan = plan
        self.total = plan.total_steps()  # the plan is fixed: computed once, not every step
        self.sampler = sampler
        self.every_n_steps = max(1, int(every_n_steps))
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self._start = 0.0
        self._start_step = 0
        self._drawn = False
        self._printed_step = -1
        self._collector: SampleCollector | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        self._start_step = int(getattr(pl_module, "chain_step", 0))  # resumed chains
        self._collector = next(
            (c for c in trainer.callbacks if isinstance(c, SampleCollector)),  # type: ignore[attr-defined]
            None,
        )

    def _line(self, trainer: L.Trainer, pl_module: Any) -> str:
        step = int(pl_module.chain_step)
        total = self.total
        phase = self.plan.phase(step) if step < total else "done"
        lr = temperature = None
        optimizers = trainer.optimizers
        opt = optimizers[0] if phase == "warmup" or len(optimizers) < 2 else optimizers[1]
        if opt.param_groups:
            lr = float(opt.param_groups[0]["lr"])
            if opt is not optimizers[0]:
                temperature = opt.param_groups[0].get("temperature")
        u = trainer.callback_metrics.get("train/u")
        collector = self._collector
        done = step - self._start_step
        elapsed = time.monotonic() - self._start
        # ETA from this process's own pace (a resumed chain did its earlier steps elsewhere).
        pace = elapsed / done if done > 0 else None
        line = status_line(
            sampler=self.sampler,
            phase=phase.replace("_", "-"),
            step=step,
            total=total,
            kept=int(collector.num_kept) if collector is not None else 0,
            num_samples=self.plan.num_samples,
            lr=lr,
            temperature=None if temperature is None else float(temperature),
            u=None if u is None else float(u),
            elapsed=elapsed,
            seconds_per_step=pace,
        )
        return line

    def _write(self, text: str, end: str) -> None:
        self.stream.write(text + end)
        self.stream.flush()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero:
            return
        step = int(getattr(pl_module, "chain_step", 0))
        if self.tty:
            self._write("\r\x1b[2K" + self._line(trainer, pl_module), end="")
            self._drawn = True
        elif step % self.every_n_steps == 0:
            self._write(self._line(trainer, pl_module), end="\n")
            self._printed_step = step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.tty and self._printed_step == int(getattr(pl_module, "chain_step", 0)):
            return  # the last step's line is already in the log
        prefix = "\r\x1b[2K" if self.tty and self._drawn else ""
        self._write(prefix + self._line(trainer, pl_module), end="\n")
