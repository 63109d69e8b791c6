"""Shared machinery of the SG-MCMC samplers: validation, closure handling, seeded noise, state.

Every sampler is a :class:`torch.optim.Optimizer` driven by a closure that zeroes the
gradients, evaluates the per-datum potential ``u(theta) = U(theta) / N`` on the current
minibatch, calls ``backward()`` and returns ``u``. Per param group the sampler reads
``lr`` (eta), ``num_data`` (N) and ``temperature`` (T); the Langevin noise scale for a
plain step is ``sqrt(2 eta T / N)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from bayesian_lora.samplers.checks import Check, _is_int, positive

Closure = Callable[[], Any]

_RNG_KEY = "sampler_rng"


def scale_by(tensors: list[Tensor], scale: Tensor) -> list[Tensor]:
    """``[t * scale for t in tensors]`` for a 0-dim ``scale`` tensor, without a host sync."""
    if all(t.device == scale.device for t in tensors):
        return list(torch._foreach_mul(tensors, scale))
    return [t * scale.to(t.device) for t in tensors]


class LangevinSampler(torch.optim.Optimizer):
    r"""Base class: a Langevin-type sampler for :math:`\pi_T(\theta) \propto \exp(-U(\theta)/T)`.

    ``U(theta) = -sum_i log p(y_i | x_i, theta) - log p(theta)`` over the N training data;
    the closure returns the per-datum potential ``u = U / N`` (minibatch mean NLL plus
    ``||theta||^2 / (2 sigma^2 N)``) with ``grad u`` in ``.grad``. With step size
    ``eta = group['lr']`` the Euler-Maruyama discretisation of the Langevin diffusion on
    ``U`` with time step ``eta / N`` is ``theta <- theta - eta grad u + sqrt(2 eta T / N) xi``.

    Args:
        params: parameters (or param-group dicts) to sample.
        lr: step size eta > 0 (per-datum parametrisation, see above).
        num_data: N >= 1, the number of training examples U sums over.
        temperature: T > 0 (1 = Bayes posterior, < 1 = cold posterior).
        seed: seed of the sampler-owned :class:`torch.Generator` that draws the noise.
        **hyperparameters: algorithm hyperparameters, validated by ``_hyper_checks``.

    Attributes:
        noise_enabled: when ``False`` the step is the pure drift (no noise is drawn);
            cyclical schedules switch it off in their exploration stage.
        seed: the generator seed (restored by :meth:`load_state_dict`).
    """

    #: Checks of the algorithm hyperparameters (subclasses set ``checks.HYPERPARAMETERS[name]``).
    _hyper_checks: dict[str, Check] = {}
    _base_checks: dict[str, Check] = {
        "lr": positive(),
        "num_data": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        "temperature": positive(),
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        num_data: int,
        temperature: float = 1.0,
        seed: int = 0,
        **hyperparameters: Any,
    ) -> None:
        if not _is_int(seed):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        unknown = set(hyperparameters) - set(self._hyper_checks)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected hyperparameter(s) {sorted(unknown)}; "
                f"accepted: {sorted(self._hyper_checks)}"
            )
        defaults = {"lr": lr, "num_data": num_data, "temperature": temperature, **hyperparameters}
        self._validate(defaults)
        self.seed: int = int(seed)
        self.noise_enabled: bool = True
        self._generator: torch.Generator | None = None
        # Generator state loaded before the generator exists (it is created lazily).
        self._pending_rng_state: Tensor | None = None
        self._pending_rng_device: str | None = None
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ validation
    def _validate(self, values: Mapping[str, Any]) -> None:
        checks = {**self._base_checks, **self._hyper_checks}
        for name, (ok, allowed) in checks.items():
            if name in values and not ok(values[name]):
                raise ValueError(
                    f"{type(self).__name__}: {name} must be {allowed}, got {values[name]!r}"
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # Per-group overrides (e.g. a different temperature) get the same checks as defaults.
        self._validate(self.param_groups[-1])

    # ------------------------------------------------------------------ closure / grads
    def _check_closure(self, closure: Closure | None) -> Closure:
        if closure is None:
            raise ValueError(
                f"{type(self).__name__}.step() requires a closure that zeroes the gradients, "
                "evaluates the per-datum potential u on the minibatch, calls backward() and "
                "returns u"
            )
        return closure

    @staticmethod
    def _evaluate(closure: Closure) -> Any:
        # step() runs under no_grad; the closure needs autograd (as in SAM implementations).
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:
        """Evaluate the closure once (u and grad u), then update every group; returns u."""
        closure = self._check_closure(closure)
        loss = self._evaluate(closure)
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if params:
                self._update_group(group, params, grads)
        return loss

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        """One algorithm's update of ``params`` given ``grads = grad u`` (subclasses)."""
        raise NotImplementedError

    def _state_buffers(self, params: list[Tensor], name: str) -> list[Tensor]:
        """Per-parameter state tensor ``name`` (momentum, moments), created as zeros on first use."""
        buffers = []
        for p in params:
            state = self.state[p]
            if name not in state:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state[name])
        return buffers

    @staticmethod
    def _params_with_grad(group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Langevin samplers do not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        return params, grads

    @staticmethod
    def _noise_std(group: dict[str, Any], scale: float = 1.0) -> float:
        """``sqrt(2 * scale * eta * T / N)``: the per-step Langevin noise standard deviation."""
        return math.sqrt(2.0 * scale * group["lr"] * group["temperature"] / group["num_data"])

    # ------------------------------------------------------------------ noise
    def _get_generator(self) -> torch.Generator:
        if self._generator is None:
            device = self.param_groups[0]["params"][0].device
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_rng_state is not None:
                if self._pending_rng_device != gen.device.type:
                    raise RuntimeError(
                        f"saved sampler RNG state belongs to a {self._pending_rng_device} "
                        f"generator but the parameters are on {gen.device.type}; the chain "
                        "cannot be continued bit for bit on another device type"
                    )
                gen.set_state(self._pending_rng_state)
                self._pending_rng_state = None
                self._pending_rng_device = None
            self._generator = gen
        return self._generator

    def _standard_normal_like(self, tensors: list[Tensor]) -> list[Tensor]:
        """i.i.d. N(0, 1) tensors shaped like ``tensors``, drawn from the sampler's generator.

        One ``randn`` call per (device, dtype) bucket, split into views, instead of one kernel
        launch per parameter: cheap for the many small LoRA matrices.
        """
        gen = self._get_generator()
        out: list[Tensor | None] = [None] * len(tensors)
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            buckets.setdefault((t.device, t.dtype), []).append(i)
        for (device, dtype), idx in buckets.items():
            numels = [tensors[i].numel() for i in idx]
            flat = torch.randn(sum(numels), generator=gen, device=gen.device, dtype=dtype)
            if flat.device != device:  # a param on another device than the generator
                flat = flat.to(device)
            for i, chunk in zip(idx, flat.split(numels), strict=True):
                out[i] = chunk.view_as(tensors[i])
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Torch optimizer state plus ``"sampler_rng"``: seed, generator state and its device."""
        sd = super().state_dict()
        gen = self._generator
        if gen is not None:
            rng_state: Tensor | None = gen.get_state()
            device: str | None = gen.device.type
        elif self._pending_rng_state is not None:
            rng_state, device = self._pending_rng_state.clone(), self._pending_rng_device
        else:
            rng_state, device = None, None
        sd[_RNG_KEY] = {"seed": self.seed, "generator_state": rng_state, "device": device}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop(_RNG_KEY, None)
        super().load_state_dict(state_dict)
        if rng is None:  # e.g. a plain torch optimizer state dict: keep the current generator
            return
        self.seed = int(rng["seed"])
        self._generator = None
        self._pending_rng_state = None
        self._pending_rng_device = None
        if rng["generator_state"] is not None:
            # Generator.set_state wants a CPU ByteTensor, even for CUDA generators; a
            # checkpoint loaded with map_location may have moved it.
            self._pending_rng_state = rng["generator_state"].detach().to("cpu", torch.uint8)
            self._pending_rng_device = rng["device"]
            self._get_generator()  # fail early on a device-type mismatch

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Unpickled/deep-copied instances created before these attributes existed.
        self.__dict__.setdefault("noise_enabled", True)
        self.__dict__.setdefault("seed", 0)
        self.__dict__.setdefault("_generator", None)
        self.__dict__.setdefault("_pending_rng_state", None)
        self.__dict__.setdefault("_pending_rng_device", None)
