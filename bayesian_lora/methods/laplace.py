r"""Laplace-LoRA (Yang et al., 2024): a Gaussian at a MAP run's LoRA + head parameters.

``python -m bayesian_lora.laplace run_dir=<MAP run> [structure=kron|diag]
[prior_precision=marglik|val_nll|<number>] [num_samples=20]`` writes a new run folder whose
sample stack holds draws from the Laplace posterior (so evaluate, report and pooling work
unchanged) and whose ``laplace.safetensors`` holds its parameters.

Model. theta* = the MAP's sampled parameters (every one belongs to an ``nn.Linear``: LoRA A, LoRA
B, the head); N training examples; an isotropic prior N(0, delta^-1 I), one scalar delta (the
run's own per-group prior, ``prior=default``, is not used; with ``prior_std`` set, 1 / prior_std^2
is reported for comparison and is the starting point).
The posterior is approximated by N(theta*, P^-1) with

    P = H + delta I,   H = sum_i J_i^T Lambda_i J_i        (generalised Gauss-Newton)

J_i the Jacobian of example i's outputs f_i (logits or means) w.r.t. theta, Lambda_i the
Hessian of -log p(y_i | f_i) w.r.t. f_i: ``diag(p) - p p^T`` for the softmax (factored exactly as
``sum_c s_c s_c^T``, ``s_c = sqrt(p_c) (e_c - p)``: C backward passes per batch) and ``I / s^2``
for a Gaussian with noise s (``data.obs_std``). Dropout is off. Two structures of H per linear
layer y_t = W a_t (+ b) applied at positions t (tokens), with the bias as a last input column:

* ``diag``: the exact diagonal of H, from per-example gradients ``sum_t g_t a_t^T``.
* ``kron`` (KFAC, the "reduce" flavour for weight sharing over tokens): with
  ``abar_i = mean over the real (attention-mask) tokens of a_it`` and
  ``g_ic = sum_t g_itc`` (the output gradient of backward pass c),
  ``A = sum_i abar_i abar_i^T``, ``G = sum_{i,c} g_ic g_ic^T`` and ``H_layer ~ (G kron A) / N``
  in the row-major order of W. Exact when the inputs do not vary over positions (the head, and
  a linear model). Layers are independent (block diagonal).

With eigendecompositions A = U_A diag(a) U_A^T and G = U_G diag(g) U_G^T, ``P_layer`` has the
eigenvalues ``L_oi = g_o a_i / N + delta``; a draw is ``W = W* + U_G (Z / sqrt L) U_A^T``,
Z ~ N(0, 1). ``diag`` draws ``theta* + z / sqrt(h + delta)``.

Prior precision. The Laplace estimate of the log evidence at theta* (D parameters),

    log Z(delta) = log p(D | theta*) - delta ||theta*||^2 / 2 + (D / 2) log delta - (1/2) log det P,

is concave in delta (its derivative ``-||theta*||^2 / 2 + (1/2) sum_k h_k / (delta (h_k + delta))``
decreases), so ``prior_precision=marglik`` maximises it by a bounded Brent search on log delta.
For a linear model with Gaussian noise and theta* the exact posterior mean, Laplace is exact
(mean, covariance and evidence), which ``tests/test_laplace.py`` checks. ``val_nll`` instead
picks, from a grid, the delta whose draws give the lowest validation NLL. theta* is not refitted
for the chosen delta (as in laplace-torch's post-hoc use).

Predictives. evaluate's default is the MC predictive of the drawn samples (the sample stack).
``predictive=glm`` is the linearised (GLM) predictive: f(x, theta) ~ f(x, theta*) + J (theta -
theta*), so the outputs are Gaussian, f ~ N(f*, J Sigma J^T), J = df/dtheta at theta* (K x D per
input), Sigma = P^-1 as fitted (diag or KFAC). :func:`glm_logit_covariance` computes the K x K
matrix J Sigma J^T of every input exactly for that Sigma without forming J or Sigma: K backward
passes per batch give each example's Jacobian row of every block, ``M_k = sum_t g_tk a_t^T``
(``g`` the block's output gradient of output k, ``a`` its input), which is whitened by the
block's Sigma^(1/2) (diag: ``M / sqrt(h + delta)``; KFAC: ``(U_G^T M U_A) / sqrt(L)``), and
J Sigma J^T is the sum over blocks of the whitened rows' inner products. Classification then
takes ``glm_link=mc`` (default: S draws of f per input, softmaxed, the members; MI and OOD
scores work as for any ensemble) or ``probit`` (MacKay: ``softmax(f* / sqrt(1 + pi/8 diag(J
Sigma J^T)))``, one member); regression: N(f*, J Sigma J^T + s^2). For a linear model the
linearisation is exact, so the GLM predictive is the exact posterior predictive (tested).

laplace-torch 0.3 and curvlinops-for-pytorch 3.0.1 were not used: installing either from PyPI
here pulls torch 2.14.1 with the CUDA 13 wheels and torchvision (``pip install --dry-run``),
replacing the torch<2.14 CPU build this project pins; so the diagonal and KFAC GGN are computed
here with forward/backward hooks on the ``nn.Linear`` modules.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

log = logging.getLogger(__name__)

Structure = Literal["diag", "kron"]
STRUCTURES = ("diag", "kron")
LAPLACE_FILE = "laplace.safetensors"


@dataclass
class LinearBlock:
    """The sampled weight (and bias) of one ``nn.Linear``; its curvature statistics."""

    module: nn.Linear
    weight: str
    bias: str | None
    diag_w: Tensor | None = None  # [out, in]
    diag_b: Tensor | None = None  # [out]
    A: Tensor | None = None  # [in (+1), in (+1)]
    G: Tensor | None = None  # [out, out]
    _a: Tensor | None = None  # current batch's inputs [B, T, in]
    _abar: Tensor | None = None  # current batch's reduced inputs [B, in (+1)]

    @property
    def names(self) -> list[str]:
        return [self.weight] + ([self.bias] if self.bias else [])


def linear_blocks(root: nn.Module, params: Mapping[str, Tensor]) -> list[LinearBlock]:
    """Group the sampled parameters by their ``nn.Linear`` (clear error for anything else)."""
    modules = dict(root.named_modules())
    blocks: dict[str, LinearBlock] = {}
    for name in params:
        parent, _, leaf = name.rpartition(".")
        module = modules.get(parent)
        if not isinstance(module, nn.Linear) or leaf not in ("weight", "bias"):
            raise ValueError(
                f"Laplace needs every sampled parameter to be the weight or bias of an nn.Linear; "
                f"{name} is not (module {type(module).__name__})"
            )
        block = blocks.setdefault(parent, LinearBlock(module, f"{parent}.weight", None))
        if leaf == "bias":
            block.bias = name
    for block in blocks.values():
        if block.weight not in params:
            raise ValueError(f"{block.weight} is not sampled but its bias is; Laplace needs both")
    return list(blocks.values())


def ggn_factors(outputs: Tensor, labels: Tensor, likelihood: str, obs_std: float) -> Tensor:
    """``S`` ``[B, K, K']`` with ``Lambda_i = S_i S_i^T`` (the NLL's Hessian in the outputs)."""
    if likelihood == "classification":
        p = outputs.detach().double().softmax(-1)  # [B, C]
        eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
        return (eye[None] - p[:, :, None]) * p.sqrt()[:, None, :]  # column c: sqrt(p_c)(e_c - p)
    k = 1 if outputs.dim() == 1 else outputs.shape[1]
    eye = torch.eye(k, dtype=torch.float64, device=outputs.device) / obs_std
    return eye.expand(outputs.shape[0], k, k)


@dataclass
class Curvature:
    """GGN statistics of the training data at theta* (``fit_curvature``'s result)."""

    structure: Structure
    blocks: list[LinearBlock]
    theta: dict[str, Tensor]  # theta* (float64, CPU)
    num_data: int
    log_likelihood: float  # sum_i log p(y_i | x_i, theta*)
    backward_passes: int
    seconds: float
    batches: int = 0  # training batches through the GGN (one forward + K backward passes each)
    eig: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.theta.values())

    def eigen(self) -> None:
        """Eigendecompose every block's A and G once (kron)."""
        if self.structure != "kron" or self.eig:
            return
        for b in self.blocks:
            assert b.A is not None and b.G is not None
            a, ua = torch.linalg.eigh(b.A)
            g, ug = torch.linalg.eigh(b.G)
            self.eig[b.weight] = (a.clamp_min(0), ua, g.clamp_min(0), ug)

    def curvature_eigenvalues(self) -> Tensor:
        """All eigenvalues h_k of H (diag: its diagonal; kron: g_o a_i / N per block)."""
        if self.structure == "diag":
            parts = []
            for b in self.blocks:
                assert b.diag_w is not None
                parts.append(b.diag_w.flatten())
                if b.diag_b is not None:
                    parts.append(b.diag_b.flatten())
            return torch.cat(parts)
        self.eigen()
        return torch.cat(
            [torch.outer(g, a).flatten() / self.num_data for a, _, g, _ in self.eig.values()]
        )


def fit_curvature(
    forward: Callable[[dict[str, Tensor]], Tensor],
    root: nn.Module,
    params: Mapping[str, Tensor],
    batches: Iterable[dict[str, Tensor]],
    nll: Callable[[Tensor, Tensor], Tensor],
    likelihood: str,
    structure: Structure = "kron",
    obs_std: float = 1.0,
) -> Curvature:
    """One pass over ``batches``: GGN diagonal or KFAC factors of every linear block.

    ``forward(batch)`` gives outputs ``[B, K]`` (or ``[B]``); ``nll(outputs, labels)`` the
    per-example NLL; ``batches`` hold ``labels`` (and ``attention_mask`` for token inputs).
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure={structure!r} is not allowed: one of {', '.join(STRUCTURES)}")
    start = time.perf_counter()
    blocks = linear_blocks(root, params)
    mask: list[Tensor | None] = [None]
    handles = []
    for block in blocks:
        handles.append(block.module.register_forward_hook(_forward_hook(block, mask, structure)))
    n, loglik, passes, num_batches = 0, 0.0, 0, 0
    try:
        for batch in batches:
            num_batches += 1
            mask[0] = batch.get("attention_mask")
            outputs = forward(batch)
            loglik -= float(nll(outputs.detach(), batch["labels"]).double().sum())
            factors = ggn_factors(outputs, batch["labels"], likelihood, obs_std)
            flat = outputs if outputs.dim() == 2 else outputs[:, None]
            for c in range(factors.shape[2]):
                s = factors[:, :, c].to(flat.dtype)
                torch.autograd.backward((flat * s).sum(), retain_graph=c < factors.shape[2] - 1)
                passes += 1
            n += int(batch["labels"].shape[0])
    finally:
        for h in handles:
            h.remove()
        for p in params.values():
            p.grad = None
    theta = {name: p.detach().double().cpu().clone() for name, p in params.items()}
    for b in blocks:
        b._a = b._abar = None
    seconds = time.perf_counter() - start
    return Curvature(structure, blocks, theta, n, loglik, passes, seconds, num_batches)


def _forward_hook(block: LinearBlock, mask: list[Tensor | None], structure: Structure) -> Any:
    """Store the layer's input; register a hook on its output that accumulates the statistics."""

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        a = inputs[0].detach()
        a = a[:, None] if a.dim() == 2 else a  # [B, T, in]
        block._a = a
        if structure == "kron":
            m = mask[0]
            if m is not None and m.dim() == 2 and m.shape == a.shape[:2]:
                w = m.to(a.dtype)[:, :, None]
                abar = (a * w).sum(1) / w.sum(1).clamp_min(1)
            else:
                abar = a.mean(1)
            abar = abar.double()
            if block.bias is not None:
                abar = torch.cat([abar, torch.ones_like(abar[:, :1])], dim=1)
            block._abar = abar
            stat = abar.T @ abar
            block.A = stat if block.A is None else block.A + stat
            # A is accumulated once per forward (not per backward pass)
        if output.requires_grad:
            output.register_hook(lambda g: _accumulate(block, g, structure))

    return hook


def _accumulate(block: LinearBlock, grad: Tensor, structure: Structure) -> None:
    g = grad.detach()
    g = g[:, None] if g.dim() == 2 else g  # [B, T, out]
    if structure == "kron":
        gsum = g.sum(1).double()
        stat = gsum.T @ gsum
        block.G = stat if block.G is None else block.G + stat
        return
    assert block._a is not None
    per_example = torch.einsum("bto,bti->boi", g, block._a).double()
    sq = per_example.pow(2).sum(0)
    block.diag_w = sq if block.diag_w is None else block.diag_w + sq
    if block.bias is not None:
        sqb = g.sum(1).double().pow(2).sum(0)
        block.diag_b = sqb if block.diag_b is None else block.diag_b + sqb


@dataclass
class LaplacePosterior:
    """N(theta*, (H + delta I)^-1) from a :class:`Curvature`."""

    curvature: Curvature
    prior_precision: float
    search_evaluations: int = 0  # log-evidence evaluations of the last marglik search

    def log_det_precision(self, delta: float | None = None) -> float:
        d = self.prior_precision if delta is None else delta
        return float(torch.log(self.curvature.curvature_eigenvalues() + d).sum())

    def log_marglik(self, delta: float | None = None) -> float:
        """Laplace's log evidence at theta* for prior precision ``delta``."""
        d = self.prior_precision if delta is None else float(delta)
        c = self.curvature
        sq = float(sum(t.pow(2).sum() for t in c.theta.values()))
        return (
            c.log_likelihood
            - 0.5 * d * sq
            + 0.5 * c.num_params * math.log(d)
            - 0.5 * self.log_det_precision(d)
        )

    def optimize_prior_precision(self, low: float = 1e-6, high: float = 1e8) -> float:
        """Maximise :meth:`log_marglik` over delta (concave: one maximum); sets and returns it."""
        res = minimize_scalar(
            lambda x: -self.log_marglik(math.exp(x)),
            bounds=(math.log(low), math.log(high)),
            method="bounded",
            options={"xatol": 1e-8},
        )
        self.prior_precision = float(math.exp(res.x))
        self.search_evaluations = int(res.nfev)
        return self.prior_precision

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``num`` draws ``[num, *shape]`` per parameter (float64, CPU generator)."""
        c, d = self.curvature, self.prior_precision
        c.eigen()
        out: dict[str, Tensor] = {}
        for b in c.blocks:
            w = c.theta[b.weight]
            if c.structure == "diag":
                assert b.diag_w is not None
                z = torch.randn((num, *w.shape), generator=generator, dtype=torch.float64)
                out[b.weight] = w + z / (b.diag_w + d).sqrt()
                if b.bias is not None:
                    assert b.diag_b is not None
                    bias = c.theta[b.bias]
                    zb = torch.randn((num, *bias.shape), generator=generator, dtype=torch.float64)
                    out[b.bias] = bias + zb / (b.diag_b + d).sqrt()
                continue
            a, ua, g, ug = c.eig[b.weight]
            scale = (torch.outer(g, a) / c.num_data + d).rsqrt()  # [out, in (+1)]
            z = torch.randn((num, *scale.shape), generator=generator, dtype=torch.float64)
            delta_w = ug @ (z * scale) @ ua.T  # [num, out, in (+1)]
            if b.bias is not None:
                out[b.weight] = w + delta_w[:, :, :-1]
                out[b.bias] = c.theta[b.bias] + delta_w[:, :, -1]
            else:
                out[b.weight] = w + delta_w
        return out

    def covariance(self) -> Tensor:
        """The dense covariance (small models only), blocks in order, each block's row-major
        weight followed by its bias."""
        c, d = self.curvature, self.prior_precision
        c.eigen()
        parts: list[Tensor] = []
        for b in c.blocks:
            if c.structure == "diag":
                assert b.diag_w is not None
                h = b.diag_w.flatten()
                if b.bias is not None:
                    assert b.diag_b is not None
                    h = torch.cat([h, b.diag_b])
                parts.append(torch.diag(1 / (h + d)))
                continue
            a, ua, g, ug = c.eig[b.weight]
            u = torch.kron(ug.contiguous(), ua.contiguous())
            cov = u @ torch.diag(1 / (torch.outer(g, a).flatten() / c.num_data + d)) @ u.T
            if b.bias is not None:  # rows of [W | b] -> all of W, then b
                idx = torch.arange(g.numel() * a.numel()).view(g.numel(), a.numel())
                order = torch.cat([idx[:, :-1].flatten(), idx[:, -1]])
                cov = cov[order][:, order]
            parts.append(cov)
        return torch.block_diag(*parts)


# ----------------------------------------------------------------------------- GLM predictive


def glm_logit_covariance(
    forward: Callable[[dict[str, Tensor]], Tensor],
    post: LaplacePosterior,
    batches: Iterable[dict[str, Tensor]],
) -> tuple[Tensor, Tensor]:
    """The linearised model's Gaussian over the outputs: ``f*`` ``[N, K]`` and
    ``J Sigma J^T`` ``[N, K, K]`` (float64, CPU) at every input of ``batches``.

    ``forward`` must run the model whose linear blocks are ``post.curvature.blocks`` at theta*
    (eval mode). K backward passes per batch (one per output, ``f[:, k].sum()``: examples are
    independent, so the output gradients of one pass are every example's own); a hook on each
    block turns its input ``a`` ``[B, T, in]`` and output gradient ``g`` ``[B, T, out]`` into the
    exact per-example Jacobian row ``M = sum_t g_t a_t^T`` (bias: ``sum_t g_t``) and whitens it
    by Sigma's factor, so ``J Sigma J^T = sum_blocks W W^T`` with ``W[k] = Sigma^(1/2) vec(M_k)``:
    ``diag`` ``M / sqrt(h + delta)``; ``kron`` ``(U_G^T M U_A) / sqrt(L)`` with ``L_oi = g_o a_i / N
    + delta`` (``U_G^T M U_A = sum_t (U_G^T g_t)(U_A^T a_t)^T``, never the dense covariance).
    """
    c, delta = post.curvature, post.prior_precision
    c.eigen()
    state: dict[str, Any] = {"k": 0}
    whitened: dict[str, dict[int, Tensor]] = {b.weight: {} for b in c.blocks}
    scales: dict[str, tuple[Tensor, Tensor | None]] = {}
    rotations: dict[str, tuple[Tensor, Tensor]] = {}  # kron: U_A, U_G on the model's device
    for b in c.blocks:
        if c.structure == "diag":
            assert b.diag_w is not None
            sb = None if b.diag_b is None else (b.diag_b + delta).rsqrt()
            scales[b.weight] = ((b.diag_w + delta).rsqrt(), sb)
        else:
            a, _, g, _ = c.eig[b.weight]
            scales[b.weight] = ((torch.outer(g, a) / c.num_data + delta).rsqrt(), None)

    def make_hook(block: LinearBlock) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            a = inputs[0].detach()
            a = (a[:, None] if a.dim() == 2 else a).to(_work_dtype(a))  # [B, T, in]

            def on_grad(grad: Tensor) -> None:
                g = grad.detach()
                g = (g[:, None] if g.dim() == 2 else g).to(a.dtype)  # [B, T, out]
                w = _whiten(block, a, g, c, scales, rotations)
                whitened[block.weight][state["k"]] = w

            if output.requires_grad:
                output.register_hook(on_grad)

        return hook

    handles = [b.module.register_forward_hook(make_hook(b)) for b in c.blocks]
    means, covs = [], []
    try:
        for batch in batches:
            outputs = forward(batch)
            flat = outputs if outputs.dim() == 2 else outputs[:, None]
            num_out = flat.shape[1]
            for k in range(num_out):
                state["k"] = k
                torch.autograd.backward(flat[:, k].sum(), retain_graph=k < num_out - 1)
            cov = torch.zeros(flat.shape[0], num_out, num_out, dtype=torch.float64)
            for name, per_block in whitened.items():
                if not per_block:  # the block did not take part in this forward
                    continue
                w = torch.stack([per_block[k] for k in range(num_out)], dim=1)  # [B, K, D_b]
                if w.shape[0] != flat.shape[0]:
                    raise ValueError(
                        f"{name} sees {w.shape[0]} rows for {flat.shape[0]} outputs: the GLM "
                        "predictive needs one model row per example"
                    )
                cov += torch.einsum("bkd,bld->bkl", w, w).double().cpu()
                per_block.clear()
            means.append(flat.detach().double().cpu())
            covs.append(cov)
    finally:
        for h in handles:
            h.remove()
        for b in c.blocks:
            for name in b.names:
                param = getattr(b.module, name.rpartition(".")[2])
                param.grad = None
    return torch.cat(means), torch.cat(covs)


def _work_dtype(t: Tensor) -> torch.dtype:
    """The whitening runs in the model's precision, at least float32 (the sum over blocks of
    the whitened rows' inner products is accumulated in float64)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _whiten(
    block: LinearBlock,
    a: Tensor,
    g: Tensor,
    c: Curvature,
    scales: Mapping[str, tuple[Tensor, Tensor | None]],
    rotations: dict[str, tuple[Tensor, Tensor]],
) -> Tensor:
    """``Sigma_block^(1/2) vec(M)`` ``[B, D_block]`` of the per-example Jacobian row ``M``."""
    scale, scale_b = scales[block.weight]
    scale = scale.to(a.device, a.dtype)
    if c.structure == "diag":
        m = torch.einsum("bto,bti->boi", g, a) * scale
        parts = [m.flatten(1)]
        if block.bias is not None:
            assert scale_b is not None
            parts.append(g.sum(1) * scale_b.to(a.device, a.dtype))
        return torch.cat(parts, dim=1)
    if block.weight not in rotations:  # the eigenvectors in the working precision, cast once
        _, ua64, _, ug64 = c.eig[block.weight]
        rotations[block.weight] = (ua64.to(a.device, a.dtype), ug64.to(a.device, a.dtype))
    ua, ug = rotations[block.weight]
    if block.bias is not None:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    tokens, out, inp = a.shape[1], g.shape[2], a.shape[2]
    if out * inp * (out + inp) <= tokens * (out * out + inp * inp):  # LoRA: a rank-r side
        rotated = ug.T @ torch.einsum("bto,bti->boi", g, a) @ ua  # M first, then U_G^T M U_A
    else:  # few positions (the head): rotate the inputs and output gradients first
        rotated = torch.einsum("bto,bti->boi", g @ ug, a @ ua)
    return (rotated * scale).flatten(1)


def probit_probs(mean: Tensor, cov: Tensor) -> Tensor:
    """MacKay's probit approximation ``softmax(f* / sqrt(1 + pi/8 diag(J Sigma J^T)))``."""
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    return (mean / (1 + math.pi / 8 * var).sqrt()).softmax(-1)


def glm_logit_draws(mean: Tensor, cov: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """``num`` draws ``[num, N, K]`` from N(f*, J Sigma J^T) per example (``f* + V sqrt(l) z``)."""
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp_min(0).sqrt()[:, None, :]  # [N, K, K]
    z = torch.randn((num, *mean.shape), generator=generator, dtype=mean.dtype)
    return mean + torch.einsum("nkl,snl->snk", root, z)


def load_posterior(
    tensors: Mapping[str, Tensor],
    info: Mapping[str, Any],
    root: nn.Module,
    params: Mapping[str, Tensor],
) -> LaplacePosterior:
    """The posterior a Laplace run folder stores: ``laplace.safetensors`` (``tensors``: theta*,
    the diagonal or the A and G factors) and ``laplace.json`` (``info``), on ``root``'s blocks."""
    structure = str(info["structure"])
    if structure not in STRUCTURES:
        raise ValueError(f"laplace.json: structure {structure!r} is not one of {STRUCTURES}")
    blocks = linear_blocks(root, params)
    stats = {"diag": "diag_w", "diag_bias": "diag_b", "A": "A", "G": "G"}
    for b in blocks:
        for key, attr in stats.items():
            t = tensors.get(f"{key}/{b.weight}")
            setattr(b, attr, None if t is None else t.double().cpu())
        needed = ("diag_w",) if structure == "diag" else ("A", "G")
        missing = [a for a in needed if getattr(b, a) is None]
        if missing or (structure == "diag" and b.bias is not None and b.diag_b is None):
            raise ValueError(f"{LAPLACE_FILE} lacks the {structure} statistics of {b.weight}")
    theta = {n: tensors[f"theta/{n}"].double().cpu() for n in params}
    compute = info.get("compute") or {}
    curvature = Curvature(
        structure,  # type: ignore[arg-type]
        blocks,
        theta,
        int(info["num_data"]),
        float(info.get("log_likelihood", 0.0)),
        int(compute.get("curvature_backward_passes", 0)),
        float(compute.get("curvature_seconds", 0.0)),
        int(compute.get("curvature_batches", 0)),
    )
    return LaplacePosterior(curvature, float(info["prior_precision"]))
