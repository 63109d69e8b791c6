"""Step time of each sampler against a plain PEFT + AdamW training step, same model and batch.

    python benchmarks/step_time.py --model minilm --batch-size 32 --length 64 --repeats 5
    python benchmarks/step_time.py --model smollm2 --batch-size 8 --length 96   # causal LM (MCQA)
    python benchmarks/step_time.py --model tiny --batch-size 8 --length 32 --repeats 2   # seconds

For a causal LM (``kind: causal``, e.g. ``smollm2``, ``tiny_causal``) every step reads the answer
letters at the last position only (``AnswerLetterLM``), and one more baseline is timed:
``peft_adamw``, plain PEFT (``TaskType.CAUSAL_LM``) + AdamW on the usual LM loss of the answer
token (the full-vocabulary logits at every position), same LoRA config, batch and base weights.

Targets (issue "Samplers"): SGLD, pSGLD, ASGLD, SGHMC within 1.05x of AdamW; SAM variants
within 2.1x (two forward/backward passes); the sample-collection copy under 1% of a step.
Issue "methods": a SWAG step (SGD + collecting the float64 moments and a rank-20 deviation,
timed here at every step, the worst case ``thin=1``) within 1.05x of AdamW; a BLoB step (the
module's sampler-phase loss with its objective: one reparameterised draw of every LoRA A through
``torch.func.functional_call``, the KL to the per-layer prior over N, AdamW over mu, rho, B and the
head) within 1.3x of AdamW. Laplace: the curvature pass (``methods.laplace.fit_curvature``, KFAC
and diagonal, ``--laplace-batches`` batches, plus the marginal-likelihood search of the prior
precision) relative to as many AdamW steps, i.e. the fit time relative to one training epoch
(a fit is one pass over the training set).
Optimizers are timed in rounds: each step's block runs right after an AdamW block, and each
round starts at another step (rotated), so that drifting load and a step's position in the round
(a step that always ran after the SAM steps came out ~10% slow) hit all of them alike; the table
reports the median block and, per step, the median and range over rounds of its block time / the
adjacent AdamW block's time. A second table times
the update alone (each optimizer stepping on one stored gradient, SWAG with its collection): the
forward and backward pass is the same for all of them, so a step that differs from AdamW's only in
its update costs (t_AdamW - u_AdamW + u) / t_AdamW, a ratio that machine load hardly moves.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.data.mcqa import CHOICE_MASK, LETTERS
from bayesian_lora.data.tasks import get_task
from bayesian_lora.methods.blob import build_objective
from bayesian_lora.methods.laplace import LaplacePosterior, fit_curvature
from bayesian_lora.methods.swag import SWAGMoments
from bayesian_lora.models.lora import ModelSettings, build_lora_model, sampled_parameters
from bayesian_lora.models.module import BayesianLoRAModule
from bayesian_lora.models.prior import PriorSettings, build_prior
from bayesian_lora.samplers import SAMPLERS
from bayesian_lora.samplers.chain import ChainPlan

HPARAMS = {
    "psgld": {},
    "asgld": {"drift": 1e-3},
    "sam_sgld": {"rho": 0.05},
    "sam_sgld_r1": {"rho": 0.05, "direction_scale": 1.0},
    "sghmc": {"friction": 0.1},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_batch(
    vocab: int, batch: int, length: int, device: torch.device, num_labels: int = 2
) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {
        "input_ids": torch.randint(min(1000, vocab // 2), vocab, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch,), generator=g),
    }
    if num_labels == len(LETTERS):  # MCQA: every letter shown
        out[CHOICE_MASK] = torch.ones(batch, num_labels, dtype=torch.long)
    return {k: v.to(device) for k, v in out.items()}


def plain_peft_step(settings: ModelSettings, batch: dict, device: torch.device) -> Callable:
    """Plain PEFT causal LM + AdamW: LM loss of the answer token appended to each prompt."""
    from peft import LoraConfig, TaskType, get_peft_model

    from bayesian_lora.models.causal import build_base_lm, build_causal_tokenizer, letter_token_ids

    lora = settings.lora
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=list(lora.target_modules),
    )
    model = get_peft_model(build_base_lm(settings), config).to(device).train()
    letters = torch.tensor(
        letter_token_ids(build_causal_tokenizer(settings), LETTERS), device=device
    )
    answer = letters[batch["labels"]][:, None]
    input_ids = torch.cat([batch["input_ids"], answer], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -1] = answer[:, 0]
    mask = torch.ones_like(input_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()

    return step


def make_optimizers(params: list, num_data: int) -> dict[str, torch.optim.Optimizer]:
    opts: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    }
    for name, cls in SAMPLERS.items():
        opts[name] = cls(params, lr=1e-6, num_data=num_data, **HPARAMS.get(name, {}))
    return opts


def blob_step(model: torch.nn.Module, batch: dict, causal: bool, num_data: int) -> Callable:
    """One BLoB VI step as the module takes it (``training_loss`` of the sampler phase with the
    BLoB objective; the optimizer the module builds: AdamW over mu = A, B, head and rho)."""
    prior = build_prior(model, PriorSettings())
    trained = sampled_parameters(model)
    blob = OmegaConf.load(CONFIG_DIR / "sampler" / "blob.yaml").blob
    objective = build_objective(prior, trained, blob, temperature=1.0, seed=0)
    module = BayesianLoRAModule(
        model,
        get_task("obqa" if causal else "mrpc"),
        num_data=num_data,
        prior=prior,
        sampler_factory=torch.optim.AdamW,
        plan=ChainPlan(warmup_steps=0, burn_in=0, thin=1, num_samples=1),
        objective=objective,
    ).to(next(model.parameters()).device)
    opt = module.configure_optimizers()[1]
    for group in opt.param_groups:
        group["lr"] = 1e-5 * group.get("lr_scale", 1.0)
    params = module._state_parameters()

    def step() -> None:
        def closure() -> torch.Tensor:
            for p in params:
                p.grad = None
            loss, _ = module.training_loss(batch, "sampling")
            loss.backward()
            return loss

        opt.step(closure)

    return step


def laplace_fit_seconds(
    model: torch.nn.Module, batch: dict, structure: str, num_batches: int, device: torch.device
) -> float:
    """Curvature pass over ``num_batches`` copies of the batch + the marginal-likelihood search."""
    inputs = [batch] * num_batches

    def forward(b: dict) -> torch.Tensor:
        return model(**{k: v for k, v in b.items() if k != "labels"}).logits.float()

    def nll(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out, labels, reduction="none")

    sync(device)
    start = time.perf_counter()
    params = sampled_parameters(model)
    curvature = fit_curvature(forward, model, params, inputs, nll, "classification", structure)  # type: ignore[arg-type]
    LaplacePosterior(curvature, 1.0).optimize_prior_precision()
    sync(device)
    return time.perf_counter() - start


def time_block(step: Callable[[], object], n: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - start) / n


def update_only_seconds(
    opts: dict[str, torch.optim.Optimizer],
    params: list[torch.Tensor],
    named: dict[str, torch.Tensor],
    closure: Callable[[], torch.Tensor],
    device: torch.device,
    steps: int = 20,
    repeats: int = 7,
) -> dict[str, float]:
    """The update alone (no forward or backward): each optimizer steps on one stored gradient of
    the real loss, so what differs between two training steps is timed without the shared
    forward/backward and its load noise. SWAG's row adds its collection (at every step)."""
    closure()
    grads = [p.grad.detach().clone() for p in params if p.grad is not None]

    def stored() -> torch.Tensor:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return torch.zeros((), device=device)

    moments = SWAGMoments(rank=20)

    def swag() -> None:
        opts["sgd"].step(stored)
        moments.collect(named)

    updates: dict[str, Callable[[], object]] = {  # SAM steps take a second gradient: not here
        name: (lambda o=opt: o.step(stored))
        for name, opt in opts.items()
        if not name.startswith("sam")
    }
    updates["swag (collect every step)"] = swag
    for update in updates.values():
        update()
    times: dict[str, list[float]] = {name: [] for name in updates}
    for _ in range(repeats):
        for name, update in updates.items():
            times[name].append(time_block(update, steps, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def paired_ratios(times: list[float], adamw: list[float]) -> str:
    """Median, min and max over rounds of this step's block time / the AdamW block timed just
    before it: the two run back to back, so load changes and the step's position in the round
    cancel in the ratio (the spread shows how far apart two equal steps can come out)."""
    ratios = [t / a for t, a in zip(times, adamw, strict=True)]
    return f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="minilm", help="a bayesian_lora/conf/model/*.yaml name")
    ap.add_argument("--name-or-path", default=None, help="override the model's weights folder/id")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="round-robin blocks per optimizer")
    ap.add_argument("--samples", type=int, default=20, help="on-device sample buffer size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="32", choices=["32", "bf16"])
    ap.add_argument(
        "--laplace-batches",
        type=int,
        default=3,
        help="batches of the timed curvature pass (0: skip)",
    )
    args = ap.parse_args()

    device = torch.device(args.device)
    settings = ModelSettings.from_config(
        OmegaConf.load(CONFIG_DIR / "model" / f"{args.model}.yaml")
    )
    if args.name_or_path:
        settings.name_or_path = args.name_or_path
    causal = settings.kind == "causal"
    num_labels = len(LETTERS) if causal else 2
    model = build_lora_model(settings, num_labels).to(device)
    model.train()
    params = list(sampled_parameters(model).values())
    batch = make_batch(model.config.vocab_size, args.batch_size, args.length, device, num_labels)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def closure() -> torch.Tensor:
        for p in params:
            p.grad = None
        with autocast:
            if causal:  # the letter read-out has no built-in loss: u's NLL term
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                logits = model(**inputs).logits.float()
                loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            else:
                loss = model(**batch).loss
        loss.backward()
        return loss

    opts = make_optimizers(params, num_data=10_000)
    steps: dict[str, Callable[[], object]] = {
        name: (lambda o=opt: o.step(closure)) for name, opt in opts.items()
    }
    moments, named = SWAGMoments(rank=20), sampled_parameters(model)

    def swag_step() -> None:  # SGD step, then collection (SWAGCollector at a kept step)
        opts["sgd"].step(closure)
        moments.collect(named)

    steps["swag (collect every step)"] = swag_step
    steps["blob (VI step)"] = blob_step(model, batch, causal, num_data=10_000)
    if causal:
        steps = {"peft_adamw": plain_peft_step(settings, batch, device), **steps}
    for step in steps.values():  # warm-up: allocator, optimizer state
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    others = [name for name in steps if name != "adamw"]
    adjacent: dict[str, list[float]] = {name: [] for name in others}  # the AdamW block just before
    for r in range(args.repeats):
        k = r % len(others)  # each round starts at another step: no step always runs late
        for name in others[k:] + others[:k]:
            a = time_block(steps["adamw"], args.steps, device)
            times["adamw"].append(a)
            adjacent[name].append(a)
            times[name].append(time_block(steps[name], args.steps, device))

    buffer = [torch.empty((args.samples, *p.shape), device=device, dtype=p.dtype) for p in params]

    def keep_sample() -> None:  # what SampleCollector does at a kept step
        torch._foreach_copy_([b[0] for b in buffer], [p.detach() for p in params])

    copy_time = statistics.median(time_block(keep_sample, 20, device) for _ in range(5))
    base = statistics.median(times["adamw"])
    print(
        f"\nmodel={args.model} batch={args.batch_size} length={args.length} device={device} "
        f"precision={args.precision} sampled params={sum(p.numel() for p in params):,}\n"
    )
    print(
        "| step | median s/step | ratio to AdamW | paired ratio: median [min, max] over "
        f"{args.repeats} rounds | target |"
    )
    print("|---|---|---|---|---|")
    if causal:
        peft_times = times.pop("peft_adamw")
        peft = statistics.median(peft_times)
        print(
            f"| plain PEFT causal LM + AdamW (LM loss) | {peft:.4f} | {peft / base:.3f} | "
            f"{paired_ratios(peft_times, adjacent['peft_adamw'])} | |"
        )
    for name, ts in times.items():
        if name == "adamw":
            target = "1.00"
        elif name.startswith("sam"):
            target = "<= 2.10"
        else:
            target = "<= 1.30" if name.startswith("blob") else "<= 1.05"
        med = statistics.median(ts)
        vs_peft = f" ({med / peft:.3f} of plain PEFT)" if causal else ""
        paired = "1.000 (reference)" if name == "adamw" else paired_ratios(ts, adjacent[name])
        print(f"| {name} | {med:.4f} | {med / base:.3f}{vs_peft} | {paired} | {target} |")
    print(f"| sample copy (per kept sample) | {copy_time:.6f} | {copy_time / base:.5f} | < 0.01 |")
    updates = update_only_seconds(opts, params, named, closure, device)
    print(
        "\n| update alone (stored gradient, no forward/backward) | ms | AdamW step with this "
        "update instead of AdamW's: (t_AdamW - u_AdamW + u) / t_AdamW |"
    )
    print("|---|---|---|")
    for name, u in updates.items():
        print(f"| {name} | {1000 * u:.3f} | {(base - updates['adamw'] + u) / base:.4f} |")
    if args.laplace_batches > 0 and not causal:
        n = args.laplace_batches
        print(f"\n| Laplace fit ({n} batches + marglik prior) | s | relative to one epoch |")
        print("|---|---|---|")
        for structure in ("kron", "diag"):
            fit = statistics.median(
                laplace_fit_seconds(model, batch, structure, n, device) for _ in range(3)
            )
            print(f"| {structure} | {fit:.4f} | {fit / (n * base):.3f} (epoch = {n} AdamW steps) |")


if __name__ == "__main__":
    main()
