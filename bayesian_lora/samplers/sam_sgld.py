"""Sharpness-aware SGLD and its rank-1 directional-noise variant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bayesian_lora.samplers.base import Closure, LangevinSampler, scale_by
from bayesian_lora.samplers.checks import HYPERPARAMETERS

# Guards the division by a global norm when the gradient vanishes.
_TINY = 1e-12


def _global_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of the concatenation of ``tensors``, kept on device (no host sync)."""
    norms = torch._foreach_norm(tensors)
    device = norms[0].device
    return torch.linalg.vector_norm(
        torch.stack([n.to(device=device, dtype=torch.float32) for n in norms])
    )


class SAMSGLD(LangevinSampler):
    r"""SAM-SGLD: Langevin step with the gradient taken at a sharpness-aware perturbation.

    .. math::
        g = \nabla u(\theta),\quad e = \rho\, g / \lVert g \rVert,\quad
        \theta \leftarrow \theta - \eta \nabla u(\theta + e) + \sqrt{2 \eta T / N}\,\xi .

    ``||g||`` is ONE global norm over every sampled parameter with a gradient, across all param
    groups. The closure is called twice per step (at ``theta`` and at ``theta + e``); ``theta``
    is restored exactly (from a copy) before the update. The drift ``grad u(theta + e)`` is not
    the gradient of ``u``, so the chain targets a sharpness-aware density (roughly
    ``exp(-N u(theta + rho g / ||g||) / T)``, favouring flat regions), NOT ``pi_T``;
    ``rho = 0`` is exactly SGLD. ``step`` returns the loss of the first closure call, detached.

    Args:
        rho: perturbation radius >= 0.
    """

    _hyper_checks = HYPERPARAMETERS["sam_sgld"]

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        seed: int = 0,
        rho: float = 0.05,
    ) -> None:
        super().__init__(params, lr, num_data, temperature, seed, rho=rho)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:
        closure = self._check_closure(closure)
        loss = self._evaluate(closure)
        # Let go of the first pass's autograd graph before the second pass: holding it made that
        # pass 10-20% slower on CPU (benchmarks/step_time.py). The caller gets u detached.
        if isinstance(loss, Tensor):
            loss = loss.detach()

        first = [self._params_with_grad(group) for group in self.param_groups]
        if not any(params for params, _ in first):
            return loss
        inv_norm = 1.0 / (_global_norm([g for _, grads in first for g in grads]) + _TINY)
        backups: list[list[Tensor]] = []
        for group, (params, grads) in zip(self.param_groups, first, strict=True):
            backups.append([p.clone() for p in params])
            if params:
                scale = inv_norm * group["rho"]
                torch._foreach_add_(params, scale_by(grads, scale))
        self._evaluate(closure)
        for (params, _), backup in zip(first, backups, strict=True):
            if params:
                torch._foreach_copy_(params, backup)

        # Gradients at theta + e (the parameters themselves are back at theta).
        second = [self._params_with_grad(group) for group in self.param_groups]
        for group, (params, grads) in zip(self.param_groups, second, strict=True):
            if params:
                torch._foreach_add_(params, grads, alpha=-group["lr"])
        if not self.noise_enabled:
            return loss
        noises = [self._standard_normal_like(params) if params else [] for params, _ in second]
        noises = self._shape_noise(second, noises)
        for group, (params, _), noise in zip(self.param_groups, second, noises, strict=True):
            if params:
                torch._foreach_add_(params, noise, alpha=self._noise_std(group))
        return loss

    def _shape_noise(
        self, second: list[tuple[list[Tensor], list[Tensor]]], noises: list[list[Tensor]]
    ) -> list[list[Tensor]]:
        """Hook for the noise covariance; isotropic here."""
        return noises


class SAMSGLDRank1(SAMSGLD):
    r"""SAM-SGLD with extra noise along the perturbed-gradient direction.

    As :class:`SAMSGLD`, but the noise is
    ``sqrt(2 eta T / N) (xi + s (d . xi) d)`` with ``d = grad u(theta + e) / ||grad u(theta + e)||``
    the GLOBAL unit vector (one norm and one dot product over all sampled parameters of all
    groups) and ``s = direction_scale``: the noise variance along ``d`` is ``(1 + s)^2`` times
    the isotropic one, unchanged orthogonal to ``d``. Targets a sharpness-aware density, not
    ``pi_T``; ``s = 0`` is exactly :class:`SAMSGLD`.

    Args:
        rho: perturbation radius >= 0.
        direction_scale: s >= -1 (``s = -1`` removes the noise along ``d``).
    """

    _hyper_checks = HYPERPARAMETERS["sam_sgld_r1"]

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        seed: int = 0,
        rho: float = 0.05,
        direction_scale: float = 1.0,
    ) -> None:
        # Skip SAMSGLD.__init__ (its signature has no direction_scale).
        LangevinSampler.__init__(
            self, params, lr, num_data, temperature, seed, rho=rho, direction_scale=direction_scale
        )

    def _shape_noise(
        self, second: list[tuple[list[Tensor], list[Tensor]]], noises: list[list[Tensor]]
    ) -> list[list[Tensor]]:
        grads = [g for _, gs in second for g in gs]
        flat_noise = [n for ns in noises for n in ns]
        if not grads:
            return noises
        device = grads[0].device
        # d . xi = (g . xi) / ||g||, and (d . xi) d = (g . xi) / ||g||^2 g.
        dot = torch.stack(
            [
                torch.sum(g * n, dtype=torch.float32).to(device)
                for g, n in zip(grads, flat_noise, strict=True)
            ]
        ).sum()
        sq_norm = (
            torch.stack(
                [n.to(device=device, dtype=torch.float32) for n in torch._foreach_norm(grads)]
            )
            .square()
            .sum()
        )
        coeff = dot / (sq_norm + _TINY)
        for group, (_, gs), ns in zip(self.param_groups, second, noises, strict=True):
            if gs:
                c = coeff * group["direction_scale"]
                torch._foreach_add_(ns, scale_by(gs, c))
        return noises
