"""Ensemble@S wall time (evaluate's code path) against S plain forward passes of the test set.

    python benchmarks/eval_time.py                                   # tiny model, synthetic data
    python benchmarks/eval_time.py --model minilm --data-dir ../shared/data --task mrpc

Target: ensemble@20 within 1.10x of 20 x one forward pass. The ensemble is timed through
``bayesian_lora.evaluation.predict.predict_members`` (samples moved to the device, each swapped into the
sampled parameters in place, one pass over the cached tokenised test batches, predictions back on
the host); the baseline is ``predict_once`` S times on the same model and cached batches, with no
swap. Model and batches are built once, as evaluate does. Fake samples are random perturbations
of the LoRA parameters (timing does not depend on their values). The two are timed round-robin,
so drifting machine load hits both alike; the table reports medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.ensemble import predict_once
from bayesian_lora.evaluation.predict import build_eval_batches, predict_members, resolve_device
from bayesian_lora.models.lora import ModelSettings, build_lora_model
from bayesian_lora.models.module import BayesianLoRAModule

TARGET = 1.10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="tiny", help="a bayesian_lora/conf/model option (tiny, minilm, ...)"
    )
    p.add_argument("--task", default="mrpc")
    p.add_argument("--data-dir", default=None, help="Hub-layout data root; default: synthetic")
    p.add_argument("--samples", type=int, default=20, help="ensemble size S")
    p.add_argument("--repeats", type=int, default=5, help="round-robin repeats (median kept)")
    p.add_argument("--batch-size", type=int, default=64, help="eval batch size")
    p.add_argument("--max-eval-samples", type=int, default=None, help="cap the test set")
    p.add_argument("--synthetic-test-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args()


def run_config(args: argparse.Namespace, data_dir: str) -> DictConfig:
    overrides = [
        f"model={args.model}",
        f"data={args.task}",
        f"paths.data_dir={data_dir}",
        "paths.output_dir=unused",
        f"data.eval_batch_size={args.batch_size}",
    ]
    if args.max_eval_samples is not None:
        overrides.append(f"data.max_eval_samples={args.max_eval_samples}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def fake_samples(module: BayesianLoRAModule, num: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        name: p.detach().cpu()[None] + 0.01 * torch.randn((num, *p.shape), generator=g)
        for name, p in module.sampled_parameters().items()
    }


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            from bayesian_lora.data.synthetic import write_synthetic_task

            n = args.synthetic_test_size
            write_synthetic_task(Path(tmp), args.task, n_train=64, n_validation=n, n_test=n)
            data_dir = tmp
        cfg = run_config(args, data_dir)
        task = get_task(cfg.data.task)
        model = build_lora_model(ModelSettings.from_config(cfg.model), task.num_labels)
        module = BayesianLoRAModule(model, task=task, num_data=1).to(device).eval()
        _, batches = build_eval_batches(cfg, device)
    n_test = sum(int(b["labels"].shape[0]) for b in batches)
    samples = fake_samples(module, args.samples)
    members = [(0, i) for i in range(args.samples)]

    def baseline() -> None:
        for _ in range(args.samples):
            predict_once(module, batches)

    def ensemble() -> None:
        predict_members(module, samples, members, batches, None, 0)

    baseline(), ensemble()  # warm-up
    base, ens = [], []
    for _ in range(args.repeats):
        base.append(timed(baseline, device))
        ens.append(timed(ensemble, device))
    b, e = statistics.median(base), statistics.median(ens)
    print_table(args, cfg, device, n_test, b, e)


def print_table(
    args: argparse.Namespace, cfg: DictConfig, device: torch.device, n: int, b: float, e: float
) -> None:
    s = args.samples
    where = f"{device}" + ("" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
    print(f"ensemble@{s} vs {s} x one forward pass ({where}; median of {args.repeats})\n")
    print(
        "| model | task | test examples | 1 pass (s) | "
        f"{s} x 1 pass (s) | ensemble@{s} (s) | ratio | target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratio = e / b
    verdict = "ok" if ratio <= TARGET else "MISSED"
    print(
        f"| {cfg.model.name} | {cfg.data.task} | {n} | {b / s:.4f} | {b:.3f} | {e:.3f} | "
        f"{ratio:.3f}x | <= {TARGET:.2f}x {verdict} |"
    )


if __name__ == "__main__":
    main()
