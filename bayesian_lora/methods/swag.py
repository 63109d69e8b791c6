r"""SWAG: a Gaussian from the SGD iterates (Maddox et al., 2019); MultiSWAG = several seeds pooled.

After the warm start, SGD runs at a constant step on the per-datum potential
``u = mean NLL + ||theta||^2 / (2 sigma^2 N)`` (``sampler=swag``, algorithm ``sgd``). The chain
plan's kept steps are the collection steps (after ``burn_in`` SGD steps, every ``thin``-th step,
``num_samples`` collections in all). With the collected iterates ``theta_1 .. theta_n``:

    mean     = (1/n) sum_i theta_i
    sq_mean  = (1/n) sum_i theta_i^2                    (elementwise)
    diag     = max(sq_mean - mean^2, 0)                 (the diagonal covariance)
    D        = [theta_i - mean_i]  for the last K collections, mean_i = (1/i) sum_{j<=i} theta_j

(running means, as in the paper's Algorithm 1; K = ``sampler.swag.rank``). The SWAG posterior is

    N(mean, diag / 2 + D D^T / (2 (K - 1)))

and a draw is ``theta = mean + (1/sqrt 2) diag^(1/2) z1 + (1/sqrt(2 (K - 1))) D z2`` with
``z1 ~ N(0, I_d)``, ``z2 ~ N(0, I_K)`` (one ``z2`` shared by all parameters of a draw; with
fewer than 2 collections the low-rank term is left out). At the end of training
``sampler.swag.num_draws`` draws from a generator seeded with ``seed + sampler.swag.draw_seed``
are written as the run's sample stack, so evaluate, report and ``run_dirs=[...]`` pooling
(MultiSWAG) work unchanged; the moments are kept in ``swag.safetensors`` (``mean``, ``sq_mean``,
``deviations``, one tensor per parameter name and moment). Accumulators are float64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.runs.layout import atomic_write
from bayesian_lora.runs.manifest import Manifest
from bayesian_lora.runs.store import write_samples
from bayesian_lora.samplers.chain import ChainPlan

log = logging.getLogger(__name__)

SWAG_FILE = "swag.safetensors"
MOMENTS = ("mean", "sq_mean", "deviations")


class SWAGMoments:
    """Running first and second moments and the last ``rank`` deviations of named tensors."""

    def __init__(self, rank: int) -> None:
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"SWAG rank must be an integer >= 1, got {rank!r}")
        self.rank = rank
        self.n = 0
        self.mean: dict[str, Tensor] = {}
        self.sq_mean: dict[str, Tensor] = {}
        self.deviations: dict[str, Tensor] = {}  # [K_held, *shape], oldest first

    @property
    def num_deviations(self) -> int:
        return min(self.n, self.rank)

    @torch.no_grad()
    def collect(self, params: Mapping[str, Tensor]) -> None:
        """Add one iterate: mean_n = mean_{n-1} + (theta - mean_{n-1}) / n, likewise sq_mean."""
        self.n += 1
        for name, p in params.items():
            x = p.detach().to(torch.float64)
            if name not in self.mean:
                self.mean[name] = torch.zeros_like(x)
                self.sq_mean[name] = torch.zeros_like(x)
                self.deviations[name] = torch.zeros(
                    (self.rank, *x.shape), dtype=x.dtype, device=x.device
                )
            elif self.mean[name].device != x.device:  # restored from a checkpoint on the CPU
                for store in (self.mean, self.sq_mean, self.deviations):
                    store[name] = store[name].to(x.device)
            self.mean[name].add_((x - self.mean[name]) / self.n)
            self.sq_mean[name].add_((x * x - self.sq_mean[name]) / self.n)
            # a ring buffer: collection n goes to slot (n - 1) % rank, over the oldest
            self.deviations[name][(self.n - 1) % self.rank].copy_(x - self.mean[name])

    def diag(self) -> dict[str, Tensor]:
        return {n: (self.sq_mean[n] - self.mean[n] ** 2).clamp_min(0.0) for n in self.mean}

    def held_deviations(self) -> dict[str, Tensor]:
        """The last ``min(n, rank)`` deviations ``[K, *shape]``, oldest first."""
        if self.n <= self.rank:
            return {n: d[: self.n] for n, d in self.deviations.items()}
        oldest = self.n % self.rank
        return {n: torch.roll(d, shifts=-oldest, dims=0) for n, d in self.deviations.items()}

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``num`` draws ``[num, *shape]`` per name (float64, on the generator's device)."""
        device = generator.device
        k = self.num_deviations
        low_rank = k >= 2
        z2 = torch.randn(num, k, generator=generator, dtype=torch.float64, device=device)
        out = {}
        diag, deviations = self.diag(), self.held_deviations()
        for name, mean in self.mean.items():
            mean = mean.to(device)
            sd = diag[name].to(device).sqrt()
            z1 = torch.randn(
                (num, *mean.shape), generator=generator, dtype=torch.float64, device=device
            )
            draw = mean + sd * z1 / math.sqrt(2.0)
            if low_rank:
                dev = deviations[name].to(device).flatten(1)  # [K, d]
                draw += (z2 @ dev).view(num, *mean.shape) / math.sqrt(2.0 * (k - 1))
            out[name] = draw
        return out

    # ------------------------------------------------------------ storage
    def tensors(self) -> dict[str, Tensor]:
        """``<moment>/<name>`` -> tensor (deviations ``[K_held, *shape]``), for safetensors."""
        out = {f"mean/{n}": t for n, t in self.mean.items()}
        out |= {f"sq_mean/{n}": t for n, t in self.sq_mean.items()}
        out |= {f"deviations/{n}": t for n, t in self.held_deviations().items()}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], rank: int, n: int) -> SWAGMoments:
        m = cls(rank)
        m.n = int(n)
        for key, t in tensors.items():
            moment, name = key.split("/", 1)
            if moment == "deviations":  # oldest first -> ring-buffer slots
                full = torch.zeros((rank, *t.shape[1:]), dtype=t.dtype)
                full[: t.shape[0]] = t
                m.deviations[name] = torch.roll(full, n % rank, 0) if n > rank else full
            else:
                getattr(m, moment)[name] = t.clone()
        return m


def save_moments(run_dir: Path, moments: SWAGMoments) -> None:
    meta = {"n": str(moments.n), "rank": str(moments.rank)}
    tensors = moments.tensors()
    atomic_write(run_dir / SWAG_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta), "swag")


def load_moments(run_dir: Path, rank: int, n: int) -> SWAGMoments:
    return SWAGMoments.from_tensors(load_file(str(run_dir / SWAG_FILE)), rank, n)


class SWAGCollector(SampleCollector):
    """Collects the SWAG moments at the plan's kept steps; writes draws + moments on flush.

    Flushes (moments to ``swag.safetensors``, ``num_draws`` fresh draws from the same seeded
    generator to the sample store) happen every ``flush_every`` collections, at the end and on
    any exception, so a crash keeps every collection made so far. The moments travel in the
    chain checkpoints (``state_dict``), so ``resume=`` continues the collection exactly. The
    step bookkeeping is :class:`SampleCollector`'s; only what is kept and written differs.
    """

    def __init__(
        self,
        run_dir: str | Path,
        plan: ChainPlan,
        manifest: Manifest,
        rank: int,
        num_draws: int,
        draw_seed: int,
        flush_every: int = 5,
    ) -> None:
        super().__init__(run_dir, plan, manifest, flush_every)
        self.num_draws = int(num_draws)
        self.draw_seed = int(draw_seed)
        self.moments = SWAGMoments(int(rank))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._module = pl_module  # no sample buffer: the moments are the collected state

    def keep(self, pl_module: L.LightningModule) -> None:
        self.moments.collect(cast(Any, pl_module).sampled_parameters())

    def draws(self, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The ``num_draws`` draws, cast to the parameters' dtypes (CPU generator: reproducible)."""
        gen = torch.Generator().manual_seed(self.draw_seed)
        out = self.moments.sample(self.num_draws, gen)
        return {n: out[n].to(like[n].dtype) for n in like}

    def flush(self, trainer: L.Trainer | None = None, status: str = "running") -> None:
        if trainer is not None and not trainer.is_global_zero:
            return
        if self.moments.n == 0 or self._module is None:
            return
        save_moments(self.run_dir, self.moments)
        posterior = {
            "method": "swag",
            "num_collected": self.moments.n,
            "rank": self.moments.rank,
            "num_deviations": self.moments.num_deviations,
            "low_rank_used": self.moments.num_deviations >= 2,
            "draw_seed": self.draw_seed,
            "file": SWAG_FILE,
        }
        manifest = {
            **self.manifest,
            "steps": list(self.steps),
            "status": status,
            "posterior": posterior,
            "compute": self.compute_summary(),
        }
        like = cast(Any, self._module).sampled_parameters()
        write_samples(self.run_dir, self.draws(like), manifest)
        self._flushed = self.num_kept

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "n": self.moments.n, "moments": self.moments.tensors()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        if state_dict.get("moments"):
            self.moments = SWAGMoments.from_tensors(
                state_dict["moments"], self.moments.rank, int(state_dict["n"])
            )
        self._flushed = self.num_kept
