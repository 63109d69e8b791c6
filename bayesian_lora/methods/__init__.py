"""Methods other than SG-MCMC chains, one file each, behind string names (``METHODS``).

Every method ends in the same place: a run folder whose ``samples.safetensors`` is a stack of
parameter draws (``[S, *shape]`` per sampled parameter, written through the sample store) and
whose ``manifest.json`` says how they were drawn, so ``evaluate``, ``report`` and the pooling of
several run folders (deep ensembles, MultiSWAG) work unchanged. Methods that fit a distribution
(SWAG's moments, Laplace's curvature) also store its parameters as safetensors next to the
draws (see :mod:`bayesian_lora.methods.posterior`). Calibrators act on the predictive instead
(``evaluate ... calibrate=<name>``).

| name | kind | entry |
|---|---|---|
| ``map`` | training (AdamW, one sample) | ``python -m bayesian_lora.train sampler=map`` |
| ``temperature`` | calibration | ``python -m bayesian_lora.evaluate run_dir=... calibrate=temperature`` |
| ``swag`` | training (SGD iterates) | ``python -m bayesian_lora.train sampler=swag`` |
| ``laplace`` | post-hoc around a MAP | ``python -m bayesian_lora.laplace run_dir=<MAP run>`` |
| ``blob`` | training (VI) | ``python -m bayesian_lora.train sampler=blob`` |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bayesian_lora.methods.temperature import TemperatureScaling


@dataclass(frozen=True)
class MethodInfo:
    """One method: what kind it is and how it is run."""

    name: str
    kind: Literal["calibration", "training", "post-hoc"]
    entry: str
    summary: str


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "map",
            "training",
            "python -m bayesian_lora.train sampler=map",
            "AdamW on u, early stopping on val NLL, the best checkpoint as the one sample",
        ),
        MethodInfo(
            "temperature",
            "calibration",
            "python -m bayesian_lora.evaluate run_dir=<run> calibrate=temperature",
            "one scalar T fitted on validation NLL: softmax(log p / T) (Guo et al. 2017)",
        ),
        MethodInfo(
            "swag",
            "training",
            "python -m bayesian_lora.train sampler=swag",
            "diagonal + low-rank Gaussian from SGD iterates (Maddox et al. 2019)",
        ),
        MethodInfo(
            "laplace",
            "post-hoc",
            "python -m bayesian_lora.laplace run_dir=<MAP run>",
            "Gaussian at the MAP, diagonal or KFAC GGN precision (Yang et al. 2024)",
        ),
        MethodInfo(
            "blob",
            "training",
            "python -m bayesian_lora.train sampler=blob",
            "mean-field Gaussian over LoRA A, B a point estimate, reparameterised ELBO (BLoB)",
        ),
    )
}

#: ``calibrate=<name>`` of ``evaluate``: name -> calibrator class (``fit``, ``transform``, ``state``)
CALIBRATORS: dict[str, type[TemperatureScaling]] = {"temperature": TemperatureScaling}


def get_calibrator(name: str) -> TemperatureScaling:
    """A fresh calibrator for ``calibrate=<name>``; unknown names list the choices."""
    from bayesian_lora.config_validation import ConfigError

    if name not in CALIBRATORS:
        raise ConfigError(
            f"calibrate={name!r} is not allowed: one of {', '.join(sorted(CALIBRATORS))}, or null"
        )
    return CALIBRATORS[name]()
