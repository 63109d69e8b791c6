r"""BLoB-style variational LoRA (Wang et al., 2024): a mean-field Gaussian over LoRA A.

Variational family: every LoRA A matrix is ``q(A) = N(mu, diag(s^2))`` with ``s = softplus(rho)``
(per entry); LoRA B and the head stay point estimates. The mean ``mu`` *is* the model's LoRA A
parameter (so the warm start, the checkpoints and ``warmup.from_run`` set it like any chain's
A), ``rho`` is this method's own parameter. With the prior of the ``prior`` group
(``N(0, sigma_t^2)`` per tensor t: per-layer sigma_A, sigma_B from
:mod:`bayesian_lora.models.prior`, the head's sigma) and N training examples, ``sampler=blob``
minimises the per-datum loss (the negative ELBO over N, plus the MAP term of the
point-estimated groups, exactly the prior term of the potential u)

    L = E_q[ mean_batch NLL(y | x, A, B, head) ] + KL(q || p) / N
        + sum_{t in B, head} ||theta_t||^2 / (2 sigma_t^2 N)
    KL(q || p) = sum_{t in A} sum_j [ log(sigma_t / s_j) + (s_j^2 + mu_j^2) / (2 sigma_t^2) - 1/2 ]

KL(q || p) is the reverse (mode-seeking) direction, in closed form. The expectation is estimated
by reparameterisation with one draw per step, ``A = mu + s * eps``, eps ~ N(0, I) from this
objective's own generator (seeded ``seed + sampler.seed_offset``, saved in the checkpoints),
substituted by ``torch.func.functional_call`` (the model's A stays mu). Flipout is not
implemented. At temperature T != 1 the target is pi_T ∝ exp(-U/T) and the loss is
``T/N KL(q || pi_T)`` up to a constant: the entropy part of the KL is multiplied by T, i.e.
``log(sigma_t / s_j)`` becomes ``T log(sigma_t / s_j)`` and ``-1/2`` becomes ``-T/2``.

Training (``sampler=blob``): the warm start (AdamW on u, or ``warmup.from_run=<MAP run>``) gives
mu, B and head their MAP values; then the chain's burn-in and sampling steps are AdamW steps on L
over (mu, rho, B, head) (rho at ``sampler.lr x blob.rho_lr_scale``), starting from
``s = blob.init_std_fraction x sigma_t``. The plan's kept steps are snapshots: at each (and at
the end, and on an interrupt) the collector writes q's parameters to ``blob.safetensors``
(``mu/<name>``, ``std/<name>``) and ``blob.num_draws`` draws of A (from a CPU generator seeded
``seed + blob.draw_seed``, with the current B and head repeated) as the run's sample stack, so
evaluate, report and deep-ensemble pooling work unchanged. The mean-field optimum on a
conjugate model with a diagonal posterior is that posterior (``tests/test_blob.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.func import functional_call

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.runs.layout import atomic_write
from bayesian_lora.runs.manifest import Manifest
from bayesian_lora.runs.store import write_samples
from bayesian_lora.samplers.chain import ChainPlan

BLOB_FILE = "blob.safetensors"
VARIATIONAL_GROUP = "lora_A"


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


def _per_tensor(value: float | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {n: float(value[n]) for n in names}
    return dict.fromkeys(names, float(value))


class MeanFieldGaussian(nn.Module):
    """q = prod_j N(mu_j, softplus(rho_j)^2) over named tensors; prior N(0, prior_std_t^2).

    ``prior_std`` and ``init_std`` are one number or one per tensor name. With ``share=True`` the
    means are the given Parameters themselves (not copies, and not registered here: the model
    owns them); ``mu`` then maps the same keys to them.
    """

    def __init__(
        self,
        init: Mapping[str, Tensor],
        init_std: float | Mapping[str, float] = 1e-3,
        prior_std: float | Mapping[str, float] = 1.0,
        share: bool = False,
    ) -> None:
        super().__init__()
        self.names = list(init)
        self.prior_stds = _per_tensor(prior_std, self.names)
        init_stds = _per_tensor(init_std, self.names)
        if not all(v > 0 for v in [*self.prior_stds.values(), *init_stds.values()]):
            raise ValueError(f"init_std and prior_std must be > 0, got {init_std}, {prior_std}")
        # one scalar, for negative_elbo_per_datum's point term (the first tensor's sigma)
        self.prior_std = next(iter(self.prior_stds.values()), 1.0)
        self.mu: Any  # Mapping[str, Tensor]: a ParameterDict, or the shared Parameters
        if share:
            self.mu = {_key(n): t for n, t in init.items()}
        else:
            self.mu = nn.ParameterDict(
                {_key(n): nn.Parameter(t.detach().clone()) for n, t in init.items()}
            )
        self.rho = nn.ParameterDict(
            {
                _key(n): nn.Parameter(
                    torch.full_like(t.detach(), math.log(math.expm1(init_stds[n])))
                )
                for n, t in init.items()
            }
        )

    def std(self) -> dict[str, Tensor]:
        return {n: nn.functional.softplus(self.rho[_key(n)]) for n in self.names}

    def mean(self, name: str) -> Tensor:
        return self.mu[_key(name)]

    def rsample(
        self, generator: torch.Generator | None = None, num: int | None = None
    ) -> dict[str, Tensor]:
        """A reparameterised draw ``mu + s * eps`` per tensor (differentiable in mu, rho);
        ``num`` draws stacked in a leading dimension when given."""
        out = {}
        for n, s in self.std().items():
            mu = self.mean(n)
            shape = mu.shape if num is None else (num, *mu.shape)
            eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
            out[n] = mu + s * eps
        return out

    def kl(self, temperature: float = 1.0) -> Tensor:
        """KL(q || prod_t N(0, prior_std_t^2 I)), summed over every entry; at ``temperature`` T
        the entropy part is multiplied by T (see the module docstring)."""
        total = []
        for n, s in self.std().items():
            mu, sigma = self.mean(n), self.prior_stds[n]
            entropy_part = math.log(sigma) - torch.log(s) - 0.5
            total.append((temperature * entropy_part + (s * s + mu * mu) / (2 * sigma**2)).sum())
        return torch.stack(total).sum()

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``num`` draws ``[num, *shape]`` per tensor, on the generator's device."""
        device = generator.device
        out = {}
        for n, s in self.std().items():
            mu = self.mean(n).detach().to(device)
            eps = torch.randn((num, *mu.shape), generator=generator, dtype=mu.dtype, device=device)
            out[n] = mu + s.detach().to(device) * eps
        return out


def forward_with(
    model: nn.Module, overrides: Mapping[str, Tensor], *args: object, **kwargs: object
) -> object:
    """``model(*args, **kwargs)`` with the named parameters replaced by ``overrides`` (drawn A);
    gradients flow into the overrides, the model's own parameters are untouched."""
    return functional_call(model, dict(overrides), args, kwargs)


def negative_elbo_per_datum(
    mean_nll: Tensor, q: MeanFieldGaussian, num_data: int, point_sq_norm: Tensor | float = 0.0
) -> Tensor:
    """``mean NLL + KL / N + ||B||^2 / (2 sigma^2 N)`` (the L of the module docstring, one sigma)."""
    return mean_nll + q.kl() / num_data + point_sq_norm / (2 * q.prior_std**2 * num_data)


class BLoBObjective(nn.Module):
    """The loss L of the module docstring, as :class:`BayesianLoRAModule`'s ``objective`` hook.

    ``loss(module, batch)`` returns (L, mean NLL of the draw) for one reparameterised draw of
    every LoRA A; ``param_groups(params)`` gives the optimizer the module's trained parameters
    (mu = A, B, head) plus rho at ``rho_lr_scale`` times the step size. The noise generator's
    state is part of ``state_dict`` (``_extra_state``), so a resumed run draws the same eps.
    """

    def __init__(
        self,
        means: Mapping[str, nn.Parameter],
        prior_std: Mapping[str, float],
        init_std_fraction: float = 0.2,
        rho_lr_scale: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not means:
            raise ValueError("BLoB needs LoRA A parameters to put q on (prior.sampled: lora_A)")
        init_std = {n: float(init_std_fraction) * float(prior_std[n]) for n in means}
        self.q = MeanFieldGaussian(means, init_std, {n: prior_std[n] for n in means}, share=True)
        self.rho_lr_scale = float(rho_lr_scale)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending_state: Tensor | None = None

    @property
    def variational_names(self) -> list[str]:
        return list(self.q.names)

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            g = torch.Generator(device=device).manual_seed(self.seed)
            state = self._pending_state
            if state is None and self._generator is not None:
                state = self._generator.get_state()
            if state is not None:
                g.set_state(state)
            self._generator, self._pending_state = g, None
        return self._generator

    def param_groups(self, params: Sequence[nn.Parameter]) -> list[dict[str, Any]]:
        return [
            {"params": list(params), "temperature": self.temperature},
            {
                "params": list(self.q.rho.values()),
                "lr_scale": self.rho_lr_scale,
                "temperature": self.temperature,
            },
        ]

    def loss(self, module: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        first = self.q.mean(self.q.names[0])
        draw = self.q.rsample(self.generator(first.device))
        nll = module.per_example_nll(module(batch, overrides=draw), batch["labels"]).mean()
        kl = self.q.kl(self.temperature) / module.num_data
        return nll + kl + module.prior_term(skip=self.variational_names), nll

    # ------------------------------------------------------------ the generator in checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        if self._generator is not None:
            return {"generator": self._generator.get_state()}
        if self._pending_state is not None:
            return {"generator": self._pending_state}
        return {}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and state.get("generator") is not None:
            self._pending_state = state["generator"].cpu()
            self._generator = None

    # ------------------------------------------------------------ storage
    @torch.no_grad()
    def tensors(self) -> dict[str, Tensor]:
        """``mu/<name>`` and ``std/<name>`` of every A, for ``blob.safetensors``."""
        out = {f"mu/{n}": self.q.mean(n) for n in self.q.names}
        out |= {f"std/{n}": s for n, s in self.q.std().items()}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def build_objective(
    prior: Any, trained: Mapping[str, nn.Parameter], settings: Any, temperature: float, seed: int
) -> BLoBObjective:
    """BLoB's objective over the LoRA A tensors that the chain moves (``prior.sampled``)."""
    means = {
        n: p
        for n, p in trained.items()
        if prior.groups[n] == VARIATIONAL_GROUP and prior.is_sampled(n)
    }
    return BLoBObjective(
        means,
        prior.sigmas,
        init_std_fraction=float(settings.init_std_fraction),
        rho_lr_scale=float(settings.rho_lr_scale),
        temperature=temperature,
        seed=seed,
    )


def save_posterior(run_dir: Path, objective: BLoBObjective) -> None:
    tensors = objective.tensors()
    meta = {"method": "blob", "family": "mean-field Gaussian over LoRA A"}
    atomic_write(run_dir / BLOB_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta), "blob")


class BLoBCollector(SampleCollector):
    """At the plan's kept steps (snapshots): q's parameters to ``blob.safetensors`` and
    ``num_draws`` draws of A (B and head at their current values) as the sample stack.

    Flushes happen every ``flush_every`` snapshots, at the end and on any exception. q (mu, rho,
    the optimizer, the eps generator) travels in the module's checkpoint, so ``resume=`` only
    needs the snapshot steps here; the draws come from a generator seeded afresh at each flush.
    """

    def __init__(
        self,
        run_dir: str | Path,
        plan: ChainPlan,
        manifest: Manifest,
        num_draws: int,
        draw_seed: int,
        flush_every: int = 1,
    ) -> None:
        super().__init__(run_dir, plan, manifest, flush_every)
        self.num_draws = int(num_draws)
        self.draw_seed = int(draw_seed)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer, self._module = trainer, pl_module  # no buffer: q is the state

    def keep(self, pl_module: L.LightningModule) -> None:
        pass  # q lives in the module; a snapshot is written at the flush

    def draws(self) -> dict[str, Tensor]:
        module = cast(Any, self._module)
        objective: BLoBObjective = module.objective
        params = module.sampled_parameters()
        drawn = objective.q.sample(self.num_draws, torch.Generator().manual_seed(self.draw_seed))
        out = {}
        for name, p in params.items():
            if name in drawn:
                out[name] = drawn[name].to(p.dtype)
            else:  # point estimates: the same value in every row
                out[name] = p.detach().cpu()[None].expand(self.num_draws, *p.shape).clone()
        return out

    def flush(self, trainer: L.Trainer | None = None, status: str = "running") -> None:
        if trainer is not None and not trainer.is_global_zero:
            return
        if self.num_kept == 0 or self._module is None:
            return
        module = cast(Any, self._module)
        objective: BLoBObjective = module.objective
        save_posterior(self.run_dir, objective)
        posterior = {
            "method": "blob",
            "family": "mean-field Gaussian over LoRA A; B and head point estimates",
            "variational": objective.variational_names,
            "num_draws": self.num_draws,
            "draw_seed": self.draw_seed,
            "temperature": objective.temperature,
            "file": BLOB_FILE,
        }
        manifest = self.manifest.replace(
            steps=list(self.steps),
            status=status,
            compute=module.compute.summary(),
            posterior=posterior,
        )
        write_samples(self.run_dir, self.draws(), manifest)
        self._flushed = self.num_kept

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        self._flushed = self.num_kept
