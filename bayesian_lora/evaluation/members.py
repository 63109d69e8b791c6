"""Which kept samples become ensemble members, and whether run folders are chains of one config.

Members are ``(run index, sample index)`` pairs, round-robin over the run folders; within a chain
the chosen samples are evenly spaced and end at the last kept sample.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bayesian_lora.runs import load_samples

if TYPE_CHECKING:
    from bayesian_lora.runs import RunFolder


def spaced_indices(num: int, take: int) -> list[int]:
    """``take`` of ``0..num-1`` evenly spaced and ending at ``num - 1``."""
    return [(j + 1) * num // take - 1 for j in range(take)]


def allocate(k: int | None, counts: Sequence[int]) -> list[int]:
    """Share ``k`` members round-robin over runs holding ``counts`` samples (None = all)."""
    if k is None:
        return list(counts)
    take, left = [0] * len(counts), min(k, sum(counts))
    while left:
        for i, c in enumerate(counts):
            if left and take[i] < c:
                take[i] += 1
                left -= 1
    return take


def select_members(runs: Sequence[RunFolder], k: int | None) -> list[tuple[int, int]]:
    """(run index, sample index) of each member, round-robin over runs."""
    takes = allocate(k, [r.num_samples for r in runs])
    chosen = [
        spaced_indices(r.num_samples, t) if t else [] for r, t in zip(runs, takes, strict=True)
    ]
    depth = max(takes)
    return [(r, chosen[r][j]) for j in range(depth) for r in range(len(runs)) if j < takes[r]]


def gather_samples(
    runs: Sequence[RunFolder], members: Sequence[tuple[int, int]]
) -> dict[str, Tensor]:
    """The selected samples stacked in member order (``[M, *shape]`` per parameter)."""
    loaded = [load_samples(run.path)[0] for run in runs]
    names = list(loaded[0])
    return {n: torch.stack([loaded[r][n][i] for r, i in members]) for n in names}


def ensemble_kind(runs: Sequence[RunFolder], mc_dropout: int) -> str:
    if all(r.is_map for r in runs):
        kind = "deep_ensemble" if len(runs) > 1 else "map"
    elif not any(r.is_map for r in runs):
        kind = "pooled_chains" if len(runs) > 1 else "chain"
    else:
        kind = "pooled"
    return f"{kind}+mc_dropout{mc_dropout}" if mc_dropout else kind


def sampler_signature(run: RunFolder) -> dict[str, Any]:
    """The sampler config without per-chain keys (the warm-start folder)."""
    s = copy.deepcopy(run.manifest["sampler"])
    s.get("warmup", {}).pop("from_run", None)
    return s


def are_chains(runs: Sequence[RunFolder]) -> bool:
    """>= 2 sampler runs of one sampler config (seeds = chains). Runs whose stack holds
    independent draws from a fitted distribution (a manifest ``posterior``: SWAG, Laplace) are
    not chains: MCMC diagnostics do not apply to them."""
    if len(runs) < 2 or any(r.is_map or r.manifest.get("posterior") for r in runs):
        return False
    ref = sampler_signature(runs[0])
    return all(sampler_signature(r) == ref for r in runs[1:])
