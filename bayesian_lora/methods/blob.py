r"""BLoB-style variational LoRA (Wang et al., 2024): a mean-field Gaussian over LoRA A.

Variational family: every LoRA A matrix is ``q(A) = N(mu, diag(s^2))`` with ``s = softplus(rho)``
(per entry); LoRA B and the head stay point estimates. With the prior N(0, sigma^2 I) of the
other methods and N training examples, the per-datum loss (the negative ELBO over N, plus the
MAP term of the point-estimated parameters) is

    L = E_q[ mean_batch NLL(y | x, A, B) ] + KL(q || p) / N + ||B||^2 / (2 sigma^2 N)
    KL(q || p) = sum_j [ log(sigma / s_j) + (s_j^2 + mu_j^2) / (2 sigma^2) - 1/2 ]

and the expectation is estimated by reparameterisation, ``A = mu + s * eps``, eps ~ N(0, I)
(one draw per step; flipout is not implemented). At evaluation ``k`` draws of A (with the
trained B) form the sample stack, like every other method.

Status: this module holds the variational family, its KL and draws, and a forward pass with the
drawn A substituted by ``torch.func.functional_call``; it is checked on a conjugate model whose
exact posterior is a diagonal Gaussian (``tests/test_blob.py``). It is NOT yet wired into
``train`` (a ``sampler=blob`` config and a module step that minimises L), so no run folder is
produced by it yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


class MeanFieldGaussian(nn.Module):
    """q = prod_j N(mu_j, softplus(rho_j)^2) over named tensors; prior N(0, prior_std^2)."""

    def __init__(
        self, init: Mapping[str, Tensor], init_std: float = 1e-3, prior_std: float = 1.0
    ) -> None:
        super().__init__()
        if not (init_std > 0 and prior_std > 0):
            raise ValueError(f"init_std and prior_std must be > 0, got {init_std}, {prior_std}")
        self.names = list(init)
        self.prior_std = float(prior_std)
        rho0 = math.log(math.expm1(init_std))  # softplus^-1
        self.mu = nn.ParameterDict(
            {_key(n): nn.Parameter(t.detach().clone()) for n, t in init.items()}
        )
        self.rho = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(t, rho0)) for n, t in init.items()}
        )

    def std(self) -> dict[str, Tensor]:
        return {n: nn.functional.softplus(self.rho[_key(n)]) for n in self.names}

    def rsample(
        self, generator: torch.Generator | None = None, num: int | None = None
    ) -> dict[str, Tensor]:
        """A reparameterised draw ``mu + s * eps`` per tensor (differentiable in mu, rho);
        ``num`` draws stacked in a leading dimension when given."""
        out = {}
        for n, s in self.std().items():
            mu = self.mu[_key(n)]
            shape = mu.shape if num is None else (num, *mu.shape)
            eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
            out[n] = mu + s * eps
        return out

    def kl(self) -> Tensor:
        """KL(q || N(0, prior_std^2 I)), summed over every entry."""
        var_p = self.prior_std**2
        total = []
        for n, s in self.std().items():
            mu = self.mu[_key(n)]
            total.append(
                (
                    math.log(self.prior_std) - torch.log(s) + (s * s + mu * mu) / (2 * var_p) - 0.5
                ).sum()
            )
        return torch.stack(total).sum()

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``num`` draws ``[num, *shape]`` per tensor (for the sample stack)."""
        return self.rsample(generator, num)


def forward_with(
    model: nn.Module, overrides: Mapping[str, Tensor], *args: object, **kwargs: object
) -> object:
    """``model(*args, **kwargs)`` with the named parameters replaced by ``overrides`` (drawn A);
    gradients flow into the overrides, the model's own parameters are untouched."""
    return functional_call(model, dict(overrides), args, kwargs)


def negative_elbo_per_datum(
    mean_nll: Tensor, q: MeanFieldGaussian, num_data: int, point_sq_norm: Tensor | float = 0.0
) -> Tensor:
    """``mean NLL + KL / N + ||B||^2 / (2 sigma^2 N)`` (the L of the module docstring)."""
    return mean_nll + q.kl() / num_data + point_sq_norm / (2 * q.prior_std**2 * num_data)
