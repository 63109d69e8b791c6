"""Compute accounting: what a run spent, so that methods are compared at equal cost.

Every training run records, in its manifest's ``compute`` block (and its chain checkpoints, so a
resumed run keeps counting):

- ``steps``: optimizer updates, per phase (``map``, ``warmup``, ``burnin``, ``sampling``, ...);
- ``grad_evals``: mini-batch gradient evaluations (backward passes), per phase; SAM-SGLD takes two
  per update, every other sampler one; a divergence retry counts its gradient too;
- ``train_examples``: examples in those gradient evaluations (summed over ranks under DDP);
- ``train_seconds``: wall time spent inside ``trainer.fit`` (validation included), summed over
  resumes (time between the last checkpoint and a crash is not counted: that work was redone);
- ``warm_start``: the ``compute`` block of the run a chain started from (``warmup.from_run``), so a
  chain's total cost includes its MAP fit.

A Laplace run (``python -m bayesian_lora.laplace``, ``bayesian_lora.laplace.laplace_compute``)
trains nothing; its block counts each training batch through the GGN (one forward pass and K
backward passes of the curvature factors) as ONE gradient-equivalent evaluation
(``grad_evals.curvature``, so ``total_grad_evals`` adds it like a training batch; the backward
passes themselves are in ``curvature_backward_passes``), ``train_examples`` = the examples through
the GGN, ``train_seconds`` = the fit's wall time, the prior-precision search apart
(``prior_search_evaluations``: evidence evaluations or grid points; ``prior_search_forward_passes``:
its validation forward passes, not gradients), and ``warm_start`` = the MAP run's block.

Evaluation adds its own (``metrics.json`` ``compute``): members, forward passes per test example
(members x MC-dropout passes) and wall seconds. :func:`total_grad_evals` is what the report adds up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any


class ComputeMeter:
    """Counters of one training run (owned by the Lightning module, saved in its checkpoints)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.grad_evals: dict[str, int] = {}
        self.train_examples = 0
        self._seconds_before = 0.0  # from earlier sessions of this run (a resume)
        self._started: float | None = None
        self.warm_start: dict[str, Any] | None = None

    def start(self) -> None:
        """The clock runs from here (``on_train_start``) until :meth:`stop`."""
        if self._started is None:
            self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            self._seconds_before += time.perf_counter() - self._started
            self._started = None

    @property
    def train_seconds(self) -> float:
        running = 0.0 if self._started is None else time.perf_counter() - self._started
        return self._seconds_before + running

    def gradient(self, phase: str, examples: int) -> None:
        self.grad_evals[phase] = self.grad_evals.get(phase, 0) + 1
        self.train_examples += int(examples)

    def step(self, phase: str) -> None:
        self.steps[phase] = self.steps.get(phase, 0) + 1

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "steps": dict(self.steps),
            "grad_evals": dict(self.grad_evals),
            "total_steps": sum(self.steps.values()),
            "total_grad_evals": sum(self.grad_evals.values()),
            "train_examples": self.train_examples,
            "train_seconds": round(self.train_seconds, 3),
        }
        if self.warm_start:
            out["warm_start"] = dict(self.warm_start)
        return out

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": dict(self.steps),
            "grad_evals": dict(self.grad_evals),
            "train_examples": self.train_examples,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = {str(k): int(v) for k, v in state.get("steps", {}).items()}
        self.grad_evals = {str(k): int(v) for k, v in state.get("grad_evals", {}).items()}
        self.train_examples = int(state.get("train_examples", 0))
        self._seconds_before = float(state.get("train_seconds", 0.0))
        self._started = None


def total_grad_evals(compute: Mapping[str, Any] | None) -> int | None:
    """Gradient evaluations of a run including its warm start (None: not recorded)."""
    if not compute or "total_grad_evals" not in compute:
        return None
    own = int(compute["total_grad_evals"])
    warm = total_grad_evals(compute.get("warm_start"))
    return own + (warm or 0)


def total_train_seconds(compute: Mapping[str, Any] | None) -> float | None:
    """Training wall time of a run including its warm start (None: not recorded)."""
    if not compute or "train_seconds" not in compute:
        return None
    warm = total_train_seconds(compute.get("warm_start"))
    return float(compute["train_seconds"]) + (warm or 0.0)


def _warm_key(compute: Mapping[str, Any]) -> str:
    return json.dumps(compute, sort_keys=True, default=str)


def ensemble_cost(computes: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Training cost of an ensemble of runs: each run's own gradient evaluations and wall time,
    plus its warm start's, where a warm start shared by several runs (the same MAP fit: an equal
    ``warm_start`` block) is counted once. ``None`` where any run did not record it.

    This is the report's convention: a pooled row of three chains started from the three MAP
    seeds costs three chains plus three MAP fits; two chains from one MAP fit cost one MAP fit.
    """
    if not computes or any(not c or "total_grad_evals" not in c for c in computes):
        return {"train_grad_evals": None, "train_seconds": None, "warm_starts": None}
    blocks = [c for c in computes if c is not None]
    warm = {_warm_key(w): w for c in blocks if (w := c.get("warm_start"))}
    grads = sum(int(c["total_grad_evals"]) for c in blocks)
    grads += sum(total_grad_evals(w) or 0 for w in warm.values())
    secs: float | None = None
    if all("train_seconds" in c for c in blocks):
        secs = sum(float(c["train_seconds"]) for c in blocks)
        secs += sum(total_train_seconds(w) or 0.0 for w in warm.values())
    return {
        "train_grad_evals": grads,
        "train_seconds": None if secs is None else round(secs, 3),
        "warm_starts": len(warm),
    }
