"""Step-size schedules of the sampling phase.

``step`` is the sampler step index ``s`` (0-based, counted from the start of the sampling
phase, i.e. after the MAP warm-up). Each schedule gives the step size ``lr(s)``, whether the
step adds noise (``noise(s)``) and whether a sample may be kept after it (``collects(s)``).
``collects`` must be periodic with period ``collection_period`` (``ChainPlan`` relies on it
for closed-form sample indices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from bayesian_lora.samplers.checks import _is_int, _is_real


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_lr(lr: Any) -> None:
    _check("lr", lr, _is_real(lr) and lr > 0, "a finite real number > 0")


class StepSizeSchedule:
    """Base schedule: noise at every step, every step may be collected."""

    #: ``collects(s) == collects(s % collection_period)`` for every ``s >= 0``.
    collection_period: int = 1

    def lr(self, step: int) -> float:
        raise NotImplementedError

    def noise(self, step: int) -> bool:
        return True

    def collects(self, step: int) -> bool:
        return True


@dataclass(frozen=True)
class ConstantSchedule(StepSizeSchedule):
    """``eta_s = lr``."""

    lr_value: float

    def __init__(self, lr: float) -> None:
        _check_lr(lr)
        object.__setattr__(self, "lr_value", float(lr))

    def lr(self, step: int) -> float:
        return self.lr_value


@dataclass(frozen=True)
class PolynomialDecay(StepSizeSchedule):
    """``eta_s = lr (1 + s / tau)^(-gamma)`` (Welling & Teh; gamma in (0.5, 1] for the
    Robbins-Monro conditions, gamma = 0 is constant)."""

    lr_value: float
    tau: float
    gamma: float

    def __init__(self, lr: float, tau: float, gamma: float) -> None:
        _check_lr(lr)
        _check("tau", tau, _is_real(tau) and tau > 0, "a finite real number > 0")
        _check("gamma", gamma, _is_real(gamma) and gamma >= 0, "a finite real number >= 0")
        object.__setattr__(self, "lr_value", float(lr))
        object.__setattr__(self, "tau", float(tau))
        object.__setattr__(self, "gamma", float(gamma))

    def lr(self, step: int) -> float:
        return self.lr_value * (1.0 + step / self.tau) ** (-self.gamma)


@dataclass(frozen=True)
class CyclicalCosine(StepSizeSchedule):
    """Cyclical cosine step size of cSG-MCMC (Zhang et al., 2020).

    ``eta_s = lr / 2 (cos(pi r_s) + 1)`` with ``r_s = mod(s, L) / L``, ``L = cycle_length``.
    Steps with ``r_s < exploration_fraction`` are the exploration stage: no noise (pure
    drift, an SGD step) and no collection; the rest of each cycle is the sampling stage.
    """

    lr_value: float
    cycle_length: int
    exploration_fraction: float

    def __init__(self, lr: float, cycle_length: int, exploration_fraction: float = 0.5) -> None:
        _check_lr(lr)
        _check(
            "cycle_length",
            cycle_length,
            _is_int(cycle_length) and cycle_length >= 1,
            "an integer >= 1",
        )
        _check(
            "exploration_fraction",
            exploration_fraction,
            _is_real(exploration_fraction) and 0 <= exploration_fraction < 1,
            "a real number in [0, 1)",
        )
        object.__setattr__(self, "lr_value", float(lr))
        object.__setattr__(self, "cycle_length", int(cycle_length))
        object.__setattr__(self, "exploration_fraction", float(exploration_fraction))

    @property
    def collection_period(self) -> int:  # type: ignore[override]
        return self.cycle_length

    def cycle(self, step: int) -> int:
        """The 0-based cycle that sampler step ``step`` belongs to (``floor(s / L)``); the
        report groups a chain's kept samples and trace by it."""
        return step // self.cycle_length

    def _position(self, step: int) -> float:
        return (step % self.cycle_length) / self.cycle_length

    def lr(self, step: int) -> float:
        return self.lr_value / 2.0 * (math.cos(math.pi * self._position(step)) + 1.0)

    def _exploring(self, step: int) -> bool:
        return self._position(step) < self.exploration_fraction

    def noise(self, step: int) -> bool:
        return not self._exploring(step)

    def collects(self, step: int) -> bool:
        return not self._exploring(step)

    def sampling_steps_per_cycle(self) -> int:
        return sum(self.collects(r) for r in range(self.cycle_length))


_SCHEDULES: dict[str, type[StepSizeSchedule]] = {
    "constant": ConstantSchedule,
    "polynomial": PolynomialDecay,
    "cyclical": CyclicalCosine,
}


def build_schedule(name: str, lr: float, **kwargs: Any) -> StepSizeSchedule:
    """Build a schedule by name: ``"constant"``, ``"polynomial"`` (``tau``, ``gamma``) or
    ``"cyclical"`` (``cycle_length``, ``exploration_fraction``)."""
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(_SCHEDULES)}")
    cls = _SCHEDULES[name]
    accepted = [f.name for f in fields(cls) if f.name != "lr_value"]  # type: ignore[arg-type]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise ValueError(
            f"schedule {name!r} got unexpected argument(s) {unexpected}; it accepts lr and "
            f"{accepted}"
        )
    return cls(lr, **kwargs)  # type: ignore[call-arg]
