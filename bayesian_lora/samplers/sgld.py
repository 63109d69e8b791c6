"""Stochastic gradient Langevin dynamics (Welling & Teh, 2011)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bayesian_lora.samplers.base import LangevinSampler


class SGLD(LangevinSampler):
    r"""SGLD: :math:`\theta \leftarrow \theta - \eta \nabla u + \sqrt{2 \eta T / N}\,\xi`.

    ``u = U / N`` is the per-datum potential returned by the closure, ``xi ~ N(0, I)``. This is
    the Euler-Maruyama step, with time step ``eta / N``, of the Langevin diffusion whose
    stationary density is ``pi_T ∝ exp(-U / T)``; the discretisation bias is O(eta / N * curvature
    of U), e.g. a Gaussian with precision eigenvalue lambda of U gets variance
    ``T / (lambda (1 - eta lambda / (2 N)))``.
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

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        torch._foreach_add_(params, grads, alpha=-group["lr"])
        if self.noise_enabled:
            noise = self._standard_normal_like(params)
            torch._foreach_add_(params, noise, alpha=self._noise_std(group))
