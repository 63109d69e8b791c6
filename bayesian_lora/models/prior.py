"""Gaussian priors with a stated meaning on the trained parameters, and which of them are sampled.

Groups. Every trained tensor is in one group, by its name: ``lora_A``, ``lora_B`` (the LoRA
factors of an adapted layer) or ``head`` (the modules of ``modules_to_save``: the classifier,
DistilBERT's ``pre_classifier``, ...). The prior is independent ``N(0, sigma_t^2)`` on every
entry of tensor ``t``, with ``sigma_t`` from its group (``prior.modules`` overrides it for one
head module by name).

Implied prior on the update. An adapted layer computes ``(W + dW) x`` with ``dW = s B A``,
``s = alpha / r``, ``A`` (r x in) and ``B`` (out x r). With independent zero-mean entries,
``A_kj ~ N(0, sigma_A^2)`` and ``B_ik ~ N(0, sigma_B^2)``::

    Var(dW_ij) = s^2 * r * sigma_A^2 * sigma_B^2

The default (``prior=default``) asks for ``Var(dW_ij) = f Var(W)`` in every adapted layer, with
``f = prior.dW_fraction`` (0.01: a prior draw of dW has a tenth of the pretrained weights' std)
and ``Var(W)`` the variance of the entries of that layer's pretrained weight. With both LoRA
sigmas null they are chosen equal per layer, ``sigma_A = sigma_B = (f Var(W) / (s^2 r))^(1/4)``;
with one of them given, the other is solved from the same equation; with both given, ``f`` is not
used and the implied ratio is reported. The head's sigma defaults (``head: null``) to
``1/sqrt(fan_in)`` for weight matrices (a prior logit has the features' rms as its std) and 1 for
biases. ``prior_std`` (top level), when set, is an isotropic override: every group gets it.

Sampled groups. ``prior.sampled`` lists the groups the sampler moves: all three (default),
``[lora_A]`` (B and the head held at their warm-start values, as BLoB does) or ``[head]``. The
MAP warm start trains every group; during burn-in and sampling the held groups do not move. Every
kept sample stores every trained tensor (held ones repeat their warm-start value), so a run folder
reproduces the model without knowing which groups were sampled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

GROUPS = ("lora_A", "lora_B", "head")


def parameter_group(name: str) -> str:
    """``lora_A``, ``lora_B`` or ``head`` for a trained parameter's name."""
    if ".lora_A." in name:
        return "lora_A"
    if ".lora_B." in name:
        return "lora_B"
    return "head"


def head_module(name: str) -> str:
    """The ``modules_to_save`` entry a head parameter belongs to (``classifier``, ...)."""
    return name.split(".modules_to_save.")[0].rsplit(".", 1)[-1]


@dataclass
class PriorSettings:
    """The ``prior:`` config group (see the module docstring)."""

    name: str = "default"
    dW_fraction: float | None = 0.01
    lora_A: float | None = None
    lora_B: float | None = None
    head: float | None = None
    modules: dict[str, float] = field(default_factory=dict)
    sampled: list[str] = field(default_factory=lambda: list(GROUPS))

    @classmethod
    def from_config(cls, cfg: Any | None, prior_std: float | None = None) -> PriorSettings:
        """From ``cfg.prior`` (absent in run folders older than the group: isotropic 1), with
        the top-level ``prior_std`` as an isotropic override when it is set."""
        if cfg is None:
            settings = cls(name="isotropic", dW_fraction=None, lora_A=1.0, lora_B=1.0, head=1.0)
        else:
            d = dict(cfg)
            d["modules"] = {str(k): float(v) for k, v in dict(d.get("modules") or {}).items()}
            d["sampled"] = [str(g) for g in d.get("sampled", GROUPS)]
            settings = cls(**d)
        if prior_std is not None:
            s = float(prior_std)
            settings.name = f"isotropic (prior_std={s:g})"
            settings.dW_fraction, settings.modules = None, {}
            settings.lora_A = settings.lora_B = settings.head = s
        return settings


@dataclass
class LayerPrior:
    """The implied prior on one adapted layer's update dW."""

    layer: str
    scaling: float  # s = alpha / r
    r: int
    sigma_A: float
    sigma_B: float
    var_W: float  # variance of the pretrained weight's entries
    var_dW: float  # s^2 r sigma_A^2 sigma_B^2

    @property
    def ratio(self) -> float:
        return self.var_dW / self.var_W if self.var_W > 0 else math.inf


@dataclass
class GaussianPrior:
    """Per-tensor prior sigmas, groups, and the per-layer implied Var(dW) (built by
    :func:`build_prior`)."""

    settings: PriorSettings
    sigmas: dict[str, float]  # parameter name -> sigma
    groups: dict[str, str]  # parameter name -> group
    layers: list[LayerPrior]

    def is_sampled(self, name: str) -> bool:
        return self.groups[name] in self.settings.sampled

    def held_fixed(self) -> list[str]:
        return [n for n in self.sigmas if not self.is_sampled(n)]

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the manifest (settings, sigma per group, per-layer dW)."""
        by_group: dict[str, list[float]] = {}
        for name, sigma in self.sigmas.items():
            by_group.setdefault(self.groups[name], []).append(sigma)
        return {
            **asdict(self.settings),
            "formula": "Var(dW_ij) = (alpha/r)^2 * r * sigma_A^2 * sigma_B^2",
            "sigma_range_by_group": {g: [min(v), max(v)] for g, v in by_group.items()},
            "held_fixed": self.held_fixed(),
            "layers": [{**asdict(lay), "var_dW_over_var_W": lay.ratio} for lay in self.layers],
        }

    def log_table(self) -> None:
        log.info(
            "prior %s: sampled groups %s; Var(dW) = (alpha/r)^2 r sigma_A^2 sigma_B^2",
            self.settings.name,
            ", ".join(self.settings.sampled),
        )
        for lay in self.layers:
            log.info(
                "  %s: sigma_A %.4g, sigma_B %.4g, Var(dW) %.3g vs Var(W) %.3g (ratio %.3g)",
                lay.layer,
                lay.sigma_A,
                lay.sigma_B,
                lay.var_dW,
                lay.var_W,
                lay.ratio,
            )
        heads = {n: s for n, s in self.sigmas.items() if self.groups[n] == "head"}
        for name, sigma in heads.items():
            log.info("  %s: sigma %.4g", name, sigma)

    def inverse_variances(self, names: Sequence[str]) -> Tensor:
        """1 / sigma^2 of each named tensor, in that order (float32 on the CPU)."""
        return torch.tensor([self.sigmas[n] ** -2 for n in names], dtype=torch.float32)


def _lora_sigmas(settings: PriorSettings, scale2_r: float, var_w: float) -> tuple[float, float]:
    """(sigma_A, sigma_B) of one layer; ``scale2_r = s^2 r``."""
    a, b, f = settings.lora_A, settings.lora_B, settings.dW_fraction
    if a is not None and b is not None:
        return float(a), float(b)
    if f is None:
        raise ValueError(
            f"prior {settings.name!r}: prior.lora_A={a} and prior.lora_B={b}; with "
            "prior.dW_fraction=null both must be numbers"
        )
    target = float(f) * var_w / scale2_r  # = sigma_A^2 sigma_B^2
    if a is None and b is None:
        s = target**0.25
        return s, s
    if a is None:
        return math.sqrt(target) / float(b), float(b)  # type: ignore[arg-type]
    return float(a), math.sqrt(target) / float(a)


def _head_sigma(settings: PriorSettings, name: str, p: Tensor) -> float:
    module = head_module(name)
    if module in settings.modules:
        return float(settings.modules[module])
    if settings.head is not None:
        return float(settings.head)
    return 1.0 / math.sqrt(p.shape[1]) if p.ndim == 2 else 1.0


def build_prior(model: nn.Module, settings: PriorSettings) -> GaussianPrior:
    """Sigmas for every trained parameter of a PEFT LoRA model, and the per-layer dW prior."""
    from peft.tuners.lora.layer import LoraLayer  # not at import: config validation uses GROUPS

    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = set(settings.sampled) - set(GROUPS)
    if unknown or not settings.sampled:
        raise ValueError(
            f"prior.sampled={settings.sampled} is not allowed: a non-empty list of {list(GROUPS)}"
        )
    sigmas: dict[str, float] = {}
    layers: list[LayerPrior] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base: Any = module.get_base_layer()
        weight = base.weight
        var_w = float(weight.detach().float().var())
        for adapter in module.active_adapters:
            r, scaling = int(module.r[adapter]), float(module.scaling[adapter])
            sigma_a, sigma_b = _lora_sigmas(settings, scaling**2 * r, var_w)
            sigmas[f"{module_name}.lora_A.{adapter}.weight"] = sigma_a
            sigmas[f"{module_name}.lora_B.{adapter}.weight"] = sigma_b
            var_dw = scaling**2 * r * sigma_a**2 * sigma_b**2
            layers.append(LayerPrior(module_name, scaling, r, sigma_a, sigma_b, var_w, var_dw))
    groups = {n: parameter_group(n) for n in trained}
    for name, p in trained.items():
        if groups[name] == "head":
            sigmas[name] = _head_sigma(settings, name, p)
        elif name not in sigmas:
            raise ValueError(f"trained LoRA parameter {name} belongs to no adapted layer")
    sigmas = {n: sigmas[n] for n in trained}  # the model's order; nothing untrained
    prior = GaussianPrior(settings, sigmas, groups, layers)
    if not any(prior.is_sampled(n) for n in trained):
        present = sorted(set(groups.values()))
        raise ValueError(
            f"prior.sampled={settings.sampled} selects none of this model's trained parameters "
            f"(its groups: {present})"
        )
    unused = set(settings.modules) - {head_module(n) for n, g in groups.items() if g == "head"}
    if unused:
        raise ValueError(
            f"prior.modules names {sorted(unused)}, which are not trained head modules "
            "(model.lora.modules_to_save)"
        )
    return prior


def isotropic_prior(params: Mapping[str, Tensor], sigma: float = 1.0) -> GaussianPrior:
    """N(0, sigma^2 I) on every tensor, all sampled (no per-layer dW report)."""
    settings = PriorSettings.from_config(None, prior_std=sigma)
    return GaussianPrior(
        settings, {n: sigma for n in params}, {n: parameter_group(n) for n in params}, []
    )
