"""Which optimizer steps of a run are warm-up, burn-in and kept samples.

Global step ``t`` counts every optimizer step from 0 (MAP warm-up included); the sampler step
is ``s = t - warmup_steps``. Eligible steps are ``s >= burn_in`` with
``schedule.collects(s)``; enumerating them ``e_0, e_1, ...``, the chain keeps ``e_j`` when
``(j + 1) % thin == 0`` until ``num_samples`` are kept. A sample is taken right after the
update of a kept step.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from bayesian_lora.samplers.checks import _is_int
from bayesian_lora.samplers.schedules import CyclicalCosine, StepSizeSchedule

Phase = Literal["warmup", "burn_in", "sampling"]


@dataclass(frozen=True)
class ChainPlan:
    """Warm-up / burn-in / thinning plan of one chain.

    Args:
        warmup_steps: MAP (AdamW) warm-start steps before the sampler phase, >= 0.
        burn_in: sampler steps discarded before collecting, >= 0.
        thin: keep every ``thin``-th eligible step, >= 1.
        num_samples: samples to keep, >= 1.
        max_steps: optional limit on the total number of global steps (warm-up included);
            checked by :meth:`validate`.
        schedule: the sampling-phase schedule; only its ``collects`` matters here. ``None``
            means every sampler step is eligible (as for a constant step size).
    """

    warmup_steps: int
    burn_in: int
    thin: int
    num_samples: int
    max_steps: int | None = None
    schedule: StepSizeSchedule | None = None

    def __post_init__(self) -> None:
        for name, low in (("warmup_steps", 0), ("burn_in", 0), ("thin", 1), ("num_samples", 1)):
            value = getattr(self, name)
            if not (_is_int(value) and value >= low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_steps is not None and not (_is_int(self.max_steps) and self.max_steps >= 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {self.max_steps!r}")

    # ---------------------------------------------------------------- eligible-step pattern
    @cached_property
    def _pattern(self) -> tuple[int, tuple[int, ...]]:
        """(period P, sorted offsets O): sampler step s is collectable iff s % P in O."""
        if self.schedule is None:
            return 1, (0,)
        period = int(self.schedule.collection_period)
        offsets = tuple(r for r in range(period) if self.schedule.collects(r))
        if not offsets:
            raise ValueError(f"schedule {self.schedule!r} never collects a sample")
        return period, offsets

    def _eligible_before(self, s: int) -> int:
        """Number of collectable sampler steps in [0, s)."""
        period, offsets = self._pattern
        return (s // period) * len(offsets) + bisect.bisect_left(offsets, s % period)

    def _eligible_at(self, n: int) -> int:
        """The n-th (0-based) collectable sampler step."""
        period, offsets = self._pattern
        return (n // len(offsets)) * period + offsets[n % len(offsets)]

    @cached_property
    def _skipped(self) -> int:
        return self._eligible_before(self.burn_in)

    # ---------------------------------------------------------------- public API
    def kept_steps(self) -> list[int]:
        """Global steps ``t`` after whose update a sample is kept (ascending)."""
        return [
            self.warmup_steps + self._eligible_at(self._skipped + self.thin * k - 1)
            for k in range(1, self.num_samples + 1)
        ]

    def is_eligible(self, t: int) -> bool:
        """Global step ``t`` is past burn-in and its schedule may collect (the kept samples are
        every ``thin``-th of these steps)."""
        s = t - self.warmup_steps
        if s < self.burn_in:
            return False
        period, offsets = self._pattern
        return s % period in offsets

    def is_kept(self, t: int) -> bool:
        if not self.is_eligible(t):
            return False
        s = t - self.warmup_steps
        rank = self._eligible_before(s) - self._skipped + 1  # 1-based among eligible steps
        return rank % self.thin == 0 and rank // self.thin <= self.num_samples

    def cycle(self, t: int) -> int | None:
        """The 0-based cycle of a cyclical schedule that global step ``t`` falls in
        (:meth:`CyclicalCosine.cycle` of its sampler step); None for other schedules and for
        warm-up steps."""
        if not isinstance(self.schedule, CyclicalCosine) or t < self.warmup_steps:
            return None
        return self.schedule.cycle(t - self.warmup_steps)

    def total_steps(self) -> int:
        """Global steps the run takes: the last kept step + 1."""
        last = self._eligible_at(self._skipped + self.thin * self.num_samples - 1)
        return self.warmup_steps + last + 1

    def phase(self, t: int) -> Phase:
        if t < 0:
            raise ValueError(f"global step must be >= 0, got {t}")
        if t < self.warmup_steps:
            return "warmup"
        if t - self.warmup_steps < self.burn_in:
            return "burn_in"
        return "sampling"

    def max_samples_within(self, steps: int) -> int:
        """How many samples are kept within the first ``steps`` global steps."""
        s_end = steps - self.warmup_steps
        if s_end <= self.burn_in:
            return 0
        eligible = self._eligible_before(s_end) - self._skipped
        return min(eligible // self.thin, self.num_samples)

    def validate(self) -> None:
        """Raise ValueError, showing the arithmetic, if the samples do not fit in max_steps."""
        self._pattern  # noqa: B018 -- raises if the schedule never collects
        total = self.total_steps()
        if self.max_steps is None or total <= self.max_steps:
            return
        period, offsets = self._pattern
        head = (
            f"cannot keep num_samples={self.num_samples} within max_steps={self.max_steps}: "
            f"need {self.warmup_steps} warm-up + {self.burn_in} burn-in + "
        )
        fits = self.max_samples_within(self.max_steps)
        tail = f"but max_steps={self.max_steps} (only {fits} samples fit)"
        if offsets == tuple(range(period)):
            raise ValueError(
                f"{head}{self.num_samples} samples x thin {self.thin} = {total} steps {tail}"
            )
        if isinstance(self.schedule, CyclicalCosine):
            how = (
                f"cycle_length={period} with exploration_fraction="
                f"{self.schedule.exploration_fraction} leaves {len(offsets)} sampling-stage "
                f"steps per cycle"
            )
        else:
            how = f"the schedule collects at {len(offsets)} of every {period} sampler steps"
        sampling = total - self.warmup_steps - self.burn_in
        raise ValueError(
            f"{head}{self.num_samples} samples x thin {self.thin} = "
            f"{self.num_samples * self.thin} collectable steps; {how}, so these span "
            f"{sampling} sampler steps: {self.warmup_steps} + {self.burn_in} + {sampling} = "
            f"{total} steps {tail}"
        )
