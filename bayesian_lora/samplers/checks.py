"""Allowed values of the samplers' arguments, importable without torch.

The config validation (``bayesian_lora.config_validation``) runs before torch is imported and
the samplers check their constructor arguments with the same predicates, so a config and the
sampler built from it cannot disagree. ``HYPERPARAMETERS`` lists each algorithm's own
hyperparameters (``sampler.hparams``); the sampler classes read their checks from it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

#: (predicate on the value, description of the allowed values)
Check = tuple[Callable[[Any], bool], str]


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive() -> Check:
    return (lambda v: _is_real(v) and v > 0, "a finite real number > 0")


def non_negative() -> Check:
    return at_least(0)


def at_least(low: float) -> Check:
    return (lambda v: _is_real(v) and v >= low, f"a finite real number >= {low}")


def unit_interval_open_right() -> Check:
    return (lambda v: _is_real(v) and 0 <= v < 1, "a real number in [0, 1)")


def unit_interval_open_left() -> Check:
    return (lambda v: _is_real(v) and 0 < v <= 1, "a real number in (0, 1]")


#: algorithm name (``sampler.algorithm``, else ``sampler.name``) -> {hyperparameter: check}
HYPERPARAMETERS: dict[str, dict[str, Check]] = {
    "sgld": {},
    "psgld": {"beta": unit_interval_open_right(), "eps": positive()},
    "asgld": {
        "drift": non_negative(),
        "beta1": unit_interval_open_right(),
        "beta2": unit_interval_open_right(),
        "eps": positive(),
    },
    "sam_sgld": {"rho": non_negative()},
    "sam_sgld_r1": {"rho": non_negative(), "direction_scale": at_least(-1)},
    "sghmc": {"friction": unit_interval_open_left()},
    "sgd": {},  # SWAG's iterates (no noise)
    "blob": {},  # BLoB's VI: AdamW on the negative ELBO (settings in sampler.blob)
}
