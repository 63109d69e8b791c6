"""Constant-step SGD on the per-datum potential, the iterates SWAG collects (no noise)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bayesian_lora.samplers.base import LangevinSampler


class SGD(LangevinSampler):
    r"""Plain SGD: :math:`\theta \leftarrow \theta - \eta \nabla u` (no noise, T unused).

    It shares the samplers' machinery (closure, per-datum potential ``u = U / N``, chain plan,
    checkpoints) so that SWAG (:mod:`bayesian_lora.methods.swag`) runs as one more chain whose
    "kept steps" are its collection steps. ``temperature`` and ``seed`` are accepted and ignored.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(params, lr, num_data, temperature, seed)
        self.noise_enabled = False

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        torch._foreach_add_(params, grads, alpha=-group["lr"])
