"""The LightningModule that runs a chain: MAP (AdamW) steps and SG-MCMC sampler steps.

Objective (the per-datum potential, see the README's "Math conventions"):

    u(theta) = mean_batch NLL(y | x, theta) + sum_t ||theta_t||^2 / (2 sigma_t^2 N)

an unbiased mini-batch estimate of U(theta)/N, with U the negative log posterior under the
Gaussian prior N(0, sigma_t^2) on each trained tensor t (sigmas per group, see
:mod:`bayesian_lora.models.prior`) and N the number of training examples. MAP is AdamW on u;
samplers consume u through their ``step(closure)`` and move only the sampled groups
(``prior.sampled``); held groups stay at their warm-start value.

A training method that minimises something other than u after the warm start (BLoB's negative
ELBO, :mod:`bayesian_lora.methods.blob`) plugs in as the ``objective`` hook: a module with
``loss(module, batch) -> (loss, mean NLL)`` used in the burn-in and sampling phases instead of u,
and ``param_groups(params)`` giving the sampler-phase optimizer its parameter groups (the moved
parameters plus the objective's own; a group's ``lr_scale`` multiplies the step size). The
objective's parameters and state travel in the checkpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from bayesian_lora.compute import ComputeMeter
from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.evaluation.epoch_metrics import ClassificationMetrics, RegressionMetrics
from bayesian_lora.models.lora import sampled_parameters
from bayesian_lora.models.prior import GaussianPrior, isotropic_prior
from bayesian_lora.samplers.chain import ChainPlan

if TYPE_CHECKING:
    from bayesian_lora.data.datamodule import ResumableRandomSampler
    from bayesian_lora.samplers.base import LangevinSampler

log = logging.getLogger(__name__)


#: the phases whose steps are AdamW on u: a MAP run's (all of it) and a chain's warm start
ADAMW_PHASES = ("map", "warmup")


class DivergenceError(RuntimeError):
    """The chain produced a non-finite potential or parameter."""


@dataclass
class AdamWSettings:
    """AdamW for MAP and for the MAP warm start; linear warm-up then linear decay to zero."""

    lr: float = 5e-4
    weight_decay: float = 0.0  # the prior term already regularises; keep 0 to stay on u(theta)
    warmup_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)


def gaussian_nll(mean: Tensor, target: Tensor, obs_std: float) -> Tensor:
    """Per-example -log N(target | mean, obs_std^2)."""
    z = (target - mean) / obs_std
    return 0.5 * z * z + math.log(obs_std) + 0.5 * math.log(2 * math.pi)


def set_dropout(model: nn.Module, active: bool) -> None:
    """Switch all dropout on or off via the module mode.

    Toggling ``nn.Dropout`` modules is not enough: Hugging Face attention applies its dropout
    functionally whenever the attention module is in training mode. The encoders used here have
    no other train/eval-dependent layers (no batch norm), so the mode is exactly "dropout on".
    Setting the mode walks every submodule, so it is skipped when the mode is already right.
    """
    if model.training != active or any(m.training != active for m in model.children()):
        model.train(active)


class BayesianLoRAModule(L.LightningModule):
    """Runs MAP or a chain over the sampled parameters with manual optimization.

    ``sampler_factory`` builds the SG-MCMC optimizer from the sampled parameters (``None`` for
    MAP). ``prior`` gives each trained tensor's sigma and which groups are sampled (default:
    N(0, 1) on everything, all sampled). ``plan`` says which global steps are warm-up (AdamW), burn-in and kept samples;
    ``total_map_steps`` sizes the AdamW schedule of a pure MAP run. ``objective`` replaces u in
    the sampler phases (see the module docstring; BLoB).
    """

    def __init__(
        self,
        model: nn.Module,
        task: TaskSpec,
        num_data: int,
        prior: GaussianPrior | None = None,
        obs_std: float = 0.5,
        adamw: AdamWSettings | None = None,
        sampler_factory: Any | None = None,
        plan: ChainPlan | None = None,
        total_map_steps: int = 1000,
        dropout_during_sampling: bool = False,
        grad_clip: float | None = None,
        divergence_backoff: float | None = None,
        divergence_retries: int = 3,
        objective: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the sampled parameters
        self.model = model.train()  # HF loads in eval mode; dropout is then set per phase
        self.task = task
        self.num_data = int(num_data)
        trained = sampled_parameters(self.model)
        self.prior = prior if prior is not None else isotropic_prior(trained)
        if set(self.prior.sigmas) != set(trained):
            raise ValueError("the prior's parameters are not the model's trained parameters")
        self.obs_std = float(obs_std)
        self.adamw = adamw or AdamWSettings()
        self.sampler_factory = sampler_factory
        self.plan = plan
        self.total_map_steps = int(total_map_steps)
        self.dropout_during_sampling = dropout_during_sampling
        self.grad_clip = grad_clip
        self.divergence_backoff = divergence_backoff
        self.divergence_retries = int(divergence_retries)
        self.chain_step = 0  # global step t, counting every optimizer step of the run
        self.completed_step: int | None = None  # the step the last batch took (None: a retry)
        self.lr_scale = 1.0  # < 1 after step-size back-offs on divergence
        self.retries_used = 0  # batches spent on divergence retries (they advance the data)
        self._last_good: list[Tensor] | None = None  # the state before the current step
        # The Parameter objects survive .to(device), so the name scans are done once.
        self._sampled: dict[str, nn.Parameter] = trained
        self._moved = {n: p for n, p in trained.items() if self.prior.is_sampled(n)}
        self._inv_var = self.prior.inverse_variances(list(trained))
        self._held_frozen = False
        self.last_stats: dict[str, Tensor] | None = None
        self.objective = objective  # the sampler phases' loss instead of u (None: u)
        self._prior_masks: dict[frozenset[str], Tensor] = {}
        self.compute = ComputeMeter()  # steps, gradient evaluations, wall time (manifest)
        self.val_metrics: ClassificationMetrics | RegressionMetrics = (
            RegressionMetrics(self.obs_std)
            if task.is_regression
            else ClassificationMetrics(task.num_labels, task.metric)
        )

    # ----------------------------------------------------------------- the potential
    def sampled_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter: what the warm start trains, each kept sample stores, the
        checkpoints hold and evaluation swaps in (held-fixed groups included)."""
        return self._sampled

    def sampler_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the SG-MCMC sampler moves (the groups in ``prior.sampled``)."""
        return self._moved

    def forward(
        self, batch: dict[str, Tensor], overrides: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Outputs on ``batch``; ``overrides`` (name -> tensor) replace trained parameters for
        this call only (``torch.func.functional_call``; gradients flow into them)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if overrides:
            logits = torch.func.functional_call(self.model, overrides, (), inputs).logits
        else:
            logits = self.model(**inputs).logits
        return logits.squeeze(-1) if self.task.is_regression else logits

    def per_example_nll(self, outputs: Tensor, labels: Tensor) -> Tensor:
        if self.task.is_regression:
            return gaussian_nll(outputs.float(), labels.float(), self.obs_std)
        return nn.functional.cross_entropy(outputs.float(), labels, reduction="none")

    def prior_term(self, skip: Collection[str] = ()) -> Tensor:
        """sum_t ||theta_t||^2 / (2 sigma_t^2 N): the prior's share of one datum's potential.

        Over every trained tensor but those named in ``skip`` (an objective that treats them
        otherwise, e.g. BLoB's KL over A); the held-fixed ones add a constant during sampling."""
        params = list(self.sampled_parameters().values())
        sq = torch.stack([p.float().pow(2).sum() for p in params])
        if self._inv_var.device != sq.device:
            self._inv_var = self._inv_var.to(sq.device)
        weights = self._inv_var
        if skip:
            key = frozenset(skip)
            mask = self._prior_masks.get(key)
            if mask is None or mask.device != sq.device:
                keep = [n not in key for n in self.sampled_parameters()]
                mask = torch.tensor(keep, dtype=sq.dtype, device=sq.device)
                self._prior_masks[key] = mask
            weights = weights * mask
        return (sq * weights).sum() / (2 * self.num_data)

    def potential(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(u, mean NLL) on a mini-batch."""
        nll = self.per_example_nll(self(batch), batch["labels"]).mean()
        return nll + self.prior_term(), nll

    def training_loss(self, batch: dict[str, Tensor], phase: str) -> tuple[Tensor, Tensor]:
        """(loss, mean NLL) that the step of ``phase`` minimises: u, or the ``objective``'s
        loss in the sampler phases (burn-in, sampling) when there is one."""
        if self.objective is not None and phase not in ADAMW_PHASES:
            return cast(tuple[Tensor, Tensor], cast(Any, self.objective).loss(self, batch))
        return self.potential(batch)

    def sampler_param_groups(self) -> list[Any]:
        """What the sampler-phase optimizer is built on: the moved parameters, plus the
        ``objective``'s parameter groups when there is one."""
        params = list(self.sampler_parameters().values())
        if self.objective is None:
            return params
        return cast(list[Any], cast(Any, self.objective).param_groups(params))

    # ----------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        params = list(self.sampled_parameters().values())
        adamw = torch.optim.AdamW(
            params, lr=self.adamw.lr, betas=self.adamw.betas, weight_decay=self.adamw.weight_decay
        )
        factory = self.sampler_factory
        if factory is None:  # a method without a sampler phase (MAP): AdamW throughout
            return [adamw]
        return [adamw, factory(self.sampler_param_groups())]

    def on_train_start(self) -> None:
        self.compute.start()
        if self.plan is None:  # the loader length per rank is known only now (DDP shards it)
            estimated = self.trainer.estimated_stepping_batches
            if math.isfinite(estimated):
                self.total_map_steps = int(estimated)

    def on_train_end(self) -> None:
        self.compute.stop()

    def adamw_lr(self, step: int, total: int) -> float:
        """Linear warm-up over warmup_ratio of ``total`` steps, then linear decay to zero."""
        warm = max(1, int(self.adamw.warmup_ratio * total))
        if step < warm:
            return self.adamw.lr * (step + 1) / warm
        return self.adamw.lr * max(0.0, (total - step) / max(1, total - warm))

    def phase(self, step: int) -> str:
        """The plan's phase of ``step``; ``map`` throughout for a run without a plan (MAP)."""
        return "map" if self.plan is None else self.plan.phase(step)

    @property
    def adamw_steps(self) -> int:
        """The length of the AdamW schedule: the chain's warm start, or the whole run (MAP)."""
        return self.total_map_steps if self.plan is None else self.plan.warmup_steps

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step = self.chain_step
        phase = self.phase(step)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        stats: dict[str, Tensor] = {}

        def closure() -> Tensor:
            for p in self._state_parameters():  # held and objective's too: no stale gradients
                p.grad = None
            u, nll = self.training_loss(batch, phase)
            self.manual_backward(u)
            self.compute.gradient(phase, batch["labels"].shape[0] * self.trainer.world_size)
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(list(self.sampled_parameters().values()), self.grad_clip)
            stats.setdefault("u", u.detach())
            stats.setdefault("nll", nll.detach())
            return u

        plan = self.plan
        if phase in ADAMW_PHASES or plan is None:  # phase() is "map" exactly when no plan
            opt = optimizers[0]
            lr = self.adamw_lr(step, self.adamw_steps)
            set_dropout(self.model, True)
        else:
            opt = optimizers[1]
            self._freeze_held()
            s = step - plan.warmup_steps
            schedule = plan.schedule
            assert schedule is not None, "a chain's sampling phase needs a step-size schedule"
            lr = schedule.lr(s)
            cast("LangevinSampler", opt.optimizer).noise_enabled = bool(schedule.noise(s))
            set_dropout(self.model, self.dropout_during_sampling)
        lr *= self.lr_scale
        for group in opt.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.completed_step = None
        if self.divergence_backoff is not None:
            self._snapshot()
        opt.step(closure=closure)
        if not self._finite(stats["u"]):
            self._on_divergence(opt, step, phase, lr, bool(torch.isfinite(stats["u"])))
            return stats["u"]
        self.completed_step = step
        self.chain_step += 1
        self.compute.step(phase)
        self.last_stats = stats  # u and NLL of this update, on the device (callbacks.trace)
        self.log_dict(
            {"train/u": stats["u"], "train/nll": stats["nll"]},
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=batch["labels"].shape[0],
        )
        self.log("train/lr", lr, on_step=True, on_epoch=False)
        if self.plan is not None and self.chain_step >= self.plan.total_steps():
            self.trainer.should_stop = True
        return stats["u"]

    def _freeze_held(self) -> None:
        """Sampler phase: held-fixed groups stop requiring gradients (head-only sampling then
        back-propagates through nothing but the head). Not under DDP, whose reducer expects a
        gradient for every parameter it was built with; there they are computed and unused."""
        if self._held_frozen:
            return
        self._held_frozen = True
        if self._trainer is not None and self.trainer.world_size > 1:
            return
        for name, p in self.sampled_parameters().items():
            if name not in self._moved:
                p.requires_grad_(False)

    def _state_parameters(self) -> list[Tensor]:
        """Every parameter a step changes: the trained ones and the objective's."""
        params: list[Tensor] = list(self.sampled_parameters().values())
        if self.objective is not None:
            params += list(self.objective.parameters())
        return params

    def _finite(self, u: Tensor) -> bool:
        """Check the potential and the parameters (one host sync per step)."""
        params = self._state_parameters()
        total = u.detach().float() + torch.stack([p.detach().float().sum() for p in params]).sum()
        return bool(torch.isfinite(total))

    def _snapshot(self) -> None:
        """Remember the state before this step's update (its potential is checked by the step)."""
        params = [p.detach() for p in self._state_parameters()]
        if self._last_good is None:
            self._last_good = [p.clone() for p in params]
        else:
            torch._foreach_copy_(self._last_good, params)

    def _on_divergence(
        self, opt: Any, step: int, phase: str, lr: float, potential_finite: bool
    ) -> None:
        """Back off (restore the pre-step state, smaller step) or stop with a clear message.

        Only an update that diverged from a state with a finite potential is retried: the chain
        step does not advance, the retry uses the next batch, and nothing is kept for the failed
        attempt. A non-finite potential at the current state cannot be fixed by a smaller step
        (and going back further would discard accepted steps): the run stops.
        """
        name = "AdamW" if phase in ADAMW_PHASES else type(opt.optimizer).__name__
        message = (
            f"non-finite potential or parameters at step {step} ({phase} phase) with {name}, "
            f"step size {lr:g}"
        )
        if not potential_finite:
            raise DivergenceError(
                f"{message}: the potential is already non-finite at the state this step starts "
                "from, so no smaller step can help (divergence_backoff retries only updates "
                "that diverge); check the data for NaN/inf targets in this batch, or lower the "
                "step size (sampler.lr)"
            )
        if self.divergence_backoff is None or self.divergence_retries <= 0:
            raise DivergenceError(
                f"{message}; lower the step size (sampler.lr), or set divergence_backoff to "
                "retry from the last good state with a smaller step"
                + ("" if self.divergence_backoff is None else " (no retries left)")
            )
        assert self._last_good is not None
        self.divergence_retries -= 1
        self.retries_used += 1
        self.lr_scale *= float(self.divergence_backoff)
        params = [p.data for p in self._state_parameters()]
        torch._foreach_copy_(params, self._last_good)
        opt.optimizer.state.clear()  # momenta / preconditioners may hold non-finite values
        log.warning(
            "%s: restored the state before this step, step size scale now %g (%d retries left)",
            message,
            self.lr_scale,
            self.divergence_retries,
        )

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        outputs = self(batch)
        preds = outputs.float() if self.task.is_regression else outputs.float().softmax(-1)
        self.val_metrics.update(preds, batch["labels"])

    def on_validation_epoch_end(self) -> None:
        if not self.val_metrics.update_called:
            return
        # compute() reduces the states over the DDP ranks (sums, or the gathered predictions),
        # so every rank holds the same values: sync_dist only keeps Lightning's check quiet.
        metrics = {k: float(v) for k, v in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        self.log_dict({f"val/{k}": v for k, v in metrics.items() if k != "nll"}, sync_dist=True)
        self.log("val/nll", metrics["nll"], prog_bar=True, sync_dist=True)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen base is rebuilt from the model id; storing it would cost 100s of MB.
        names = {f"model.{n}" for n in self.sampled_parameters()}
        checkpoint["state_dict"] = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k in names or k.startswith("objective.")  # the objective's parameters and state
        }
        checkpoint["chain"] = {
            "chain_step": self.chain_step,
            "lr_scale": self.lr_scale,
            "retries_used": self.retries_used,
            "retries_left": self.divergence_retries,
            "torch_rng": torch.get_rng_state(),  # dropout, when it is on, draws from it
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "compute": self.compute.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        chain = checkpoint.get("chain", {})
        self.chain_step = int(chain.get("chain_step", 0))
        self.lr_scale = float(chain.get("lr_scale", 1.0))
        self.retries_used = int(chain.get("retries_used", 0))
        self.divergence_retries = int(chain.get("retries_left", self.divergence_retries))
        if "compute" in chain:
            self.compute.load_state_dict(chain["compute"])
        if "torch_rng" in chain:
            torch.set_rng_state(chain["torch_rng"].cpu())
        if chain.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(chain["cuda_rng"])

    # ----------------------------------------------------------------- data order
    def on_fit_start(self) -> None:
        """The train sampler's order follows this chain's batch count (``data_position``), in a
        fresh run as in a resumed one."""
        sampler = self._train_sampler()
        if sampler is not None:
            sampler.follow(self.data_position)

    def teardown(self, stage: str) -> None:
        sampler = self._train_sampler()
        if sampler is not None:
            sampler.follow(None)

    def _train_sampler(self) -> ResumableRandomSampler | None:
        """The datamodule's train sampler (None without a trainer or datamodule, or another
        datamodule's loader)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        return getattr(datamodule, "train_sampler", None)

    def data_position(self) -> tuple[int, int]:
        """Where the next batch starts: ``(epoch, k)``, position ``k`` of that epoch's order.

        The one owner of the data order (the train sampler asks it as each of its iterations
        starts): the batches used so far, one per step taken and one per divergence retry, in
        epochs of ceil(n / (batch_size x world size)) steps, since a step takes ``batch_size``
        indices per rank from one order (``RankShard``). Lightning's own epoch counter is not
        used: restored from a checkpoint written where an epoch ends, it runs one ahead.
        """
        sampler = self._train_sampler()
        if sampler is None:
            raise RuntimeError("data_position needs the trainer's datamodule and its sampler")
        batch_size = int(cast(Any, self.trainer).datamodule.batch_size) * self.trainer.world_size
        steps_per_epoch = math.ceil(sampler.num_samples / batch_size)
        epoch, step = divmod(self.chain_step + self.retries_used, steps_per_epoch)
        return epoch, step * batch_size
