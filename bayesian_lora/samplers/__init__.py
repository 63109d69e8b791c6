r"""SG-MCMC samplers over (LoRA) parameters, as :class:`torch.optim.Optimizer` subclasses.

Convention. For data ``(x_i, y_i)``, ``i = 1..N``, and prior ``N(0, sigma^2 I)``:

    U(theta) = -sum_i log p(y_i | x_i, theta) - log p(theta),
    pi_T(theta) ∝ exp(-U(theta) / T)          (T = 1 Bayes posterior, T < 1 cold).

The training step evaluates the per-datum potential ``u = U / N``, estimated on a minibatch as
``mean NLL + ||theta||^2 / (2 sigma^2 N)``; the closure passed to ``step`` zeroes the
gradients, computes ``u``, calls ``backward()`` and returns ``u``. With step size
``eta = group['lr']`` and ``xi ~ N(0, I)`` drawn from the sampler's seeded generator:

* ``SGLD``:   theta <- theta - eta grad u + sqrt(2 eta T / N) xi
* ``PSGLD``:  V <- beta V + (1-beta) g*g;  G = 1/(lambda + sqrt V);
  theta <- theta - eta G*g + sqrt(2 eta T G / N) xi      (Gamma correction omitted)
* ``ASGLD``:  m, v Adam moments of g;
  theta <- theta - eta (g + a m/(sqrt v + lambda)) + sqrt(2 eta T / N) xi   (biased for a > 0)
* ``SAMSGLD``: theta <- theta - eta grad u(theta + rho g/||g||) + sqrt(2 eta T / N) xi
  (global norm; targets a sharpness-aware density)
* ``SAMSGLDRank1``: as SAMSGLD with noise sqrt(2 eta T / N) (xi + s (d.xi) d), d the global
  unit vector of grad u(theta + e)
* ``SGHMC``:  v <- (1-alpha) v - eta grad u + sqrt(2 alpha eta T / N) xi;  theta <- theta + v
* ``SGD``:    theta <- theta - eta grad u  (no noise: the iterates SWAG collects)

``step(closure)`` returns the loss of the first closure call; ``noise_enabled = False`` makes
every step its pure drift; ``state_dict()`` carries the generator state under
``"sampler_rng"`` so a reloaded sampler continues the chain bit for bit.
"""

# The package is imported lazily (PEP 562): ``bayesian_lora.samplers.checks`` and ``.chain``
# are read by the config validation before torch may be imported.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bayesian_lora.samplers.asgld import ASGLD
    from bayesian_lora.samplers.base import LangevinSampler
    from bayesian_lora.samplers.chain import ChainPlan
    from bayesian_lora.samplers.psgld import PSGLD
    from bayesian_lora.samplers.sam_sgld import SAMSGLD, SAMSGLDRank1
    from bayesian_lora.samplers.schedules import (
        ConstantSchedule,
        CyclicalCosine,
        PolynomialDecay,
        StepSizeSchedule,
        build_schedule,
    )
    from bayesian_lora.samplers.sgd import SGD
    from bayesian_lora.samplers.sghmc import SGHMC
    from bayesian_lora.samplers.sgld import SGLD

    SAMPLERS: dict[str, type[LangevinSampler]]

#: algorithm name -> class name in this package (the names of ``checks.HYPERPARAMETERS``)
_SAMPLER_CLASSES = {
    "sgld": "SGLD",
    "psgld": "PSGLD",
    "asgld": "ASGLD",
    "sam_sgld": "SAMSGLD",
    "sam_sgld_r1": "SAMSGLDRank1",
    "sghmc": "SGHMC",
    "sgd": "SGD",
}
_MODULES = {
    "ASGLD": "asgld",
    "LangevinSampler": "base",
    "ChainPlan": "chain",
    "PSGLD": "psgld",
    "SAMSGLD": "sam_sgld",
    "SAMSGLDRank1": "sam_sgld",
    "ConstantSchedule": "schedules",
    "CyclicalCosine": "schedules",
    "PolynomialDecay": "schedules",
    "StepSizeSchedule": "schedules",
    "build_schedule": "schedules",
    "SGD": "sgd",
    "SGHMC": "sghmc",
    "SGLD": "sgld",
}


def sampler_targets() -> dict[str, str]:
    """``sampler.optimizer._target_`` as configs write it -> registry name (``sgld``); both the
    package path (``bayesian_lora.samplers.SGLD``) and the module path. No torch import."""
    targets = {}
    for algorithm, cls in _SAMPLER_CLASSES.items():
        targets[f"{__name__}.{cls}"] = algorithm
        targets[f"{__name__}.{_MODULES[cls]}.{cls}"] = algorithm
    return targets


def sampler_target(algorithm: str) -> str:
    """The ``_target_`` of a registry name: ``sgld`` -> ``bayesian_lora.samplers.SGLD``."""
    return f"{__name__}.{_SAMPLER_CLASSES[algorithm]}"


def __getattr__(name: str) -> Any:
    if name == "SAMPLERS":
        return {algo: __getattr__(cls) for algo, cls in _SAMPLER_CLASSES.items()}
    if name in _MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ASGLD",
    "PSGLD",
    "SAMPLERS",
    "SAMSGLD",
    "SGD",
    "SGHMC",
    "SGLD",
    "ChainPlan",
    "ConstantSchedule",
    "CyclicalCosine",
    "LangevinSampler",
    "PolynomialDecay",
    "SAMSGLDRank1",
    "StepSizeSchedule",
    "build_schedule",
    "sampler_target",
    "sampler_targets",
]
