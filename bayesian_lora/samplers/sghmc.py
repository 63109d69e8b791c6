"""Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin, 2014)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bayesian_lora.samplers.base import LangevinSampler
from bayesian_lora.samplers.checks import HYPERPARAMETERS


class SGHMC(LangevinSampler):
    r"""SGHMC with friction ``alpha`` in the velocity ("SGD with momentum") form.

    .. math::
        v \leftarrow (1-\alpha) v - \eta \nabla u + \sqrt{2 \alpha \eta T / N}\,\xi,\qquad
        \theta \leftarrow \theta + v .

    Derivation of the constants. The dynamics ``dtheta = M^-1 r dt``,
    ``dr = -grad U dt - C M^-1 r dt + N(0, 2 C T dt)`` leave ``exp(-(U + r^T M^-1 r / 2) / T)``
    invariant. An Euler step of length ``e`` in ``v = e M^-1 r`` reads
    ``v <- v - e^2 M^-1 grad U - (e M^-1 C) v + e M^-1 N(0, 2 C T e)``, i.e. Chen et al.'s
    ``v <- v - eta_c grad U - alpha v + N(0, 2 alpha eta_c T)`` (eq. 15 with ``beta_hat = 0``)
    with ``eta_c = e^2 M^-1``, ``alpha = e M^-1 C`` and noise variance
    ``(e M^-1)^2 2 C T e = 2 T alpha eta_c``. With ``U = N u`` and ``eta_c = eta / N``:
    ``eta_c grad U = eta grad u`` and the noise variance is ``2 alpha eta T / N``, as
    implemented. So ``eta`` is the squared step (times ``N M^-1``) and theta's stationary
    density is ``pi_T`` up to an O(eta / N * curvature) discretisation bias (on a Gaussian about
    half of SGLD's at ``alpha = 0.1``). ``friction = 1`` is SGLD. The velocity starts at 0; the
    minibatch-noise correction ``beta_hat`` is taken as 0.

    Args:
        friction: alpha in (0, 1].
    """

    _hyper_checks = HYPERPARAMETERS["sghmc"]

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        seed: int = 0,
        friction: float = 0.1,
    ) -> None:
        super().__init__(params, lr, num_data, temperature, seed, friction=friction)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        velocity = self._state_buffers(params, "velocity")
        alpha = group["friction"]
        torch._foreach_mul_(velocity, 1.0 - alpha)
        torch._foreach_add_(velocity, grads, alpha=-group["lr"])
        if self.noise_enabled:
            noise = self._standard_normal_like(params)
            torch._foreach_add_(velocity, noise, alpha=self._noise_std(group, scale=alpha))
        torch._foreach_add_(params, velocity)
