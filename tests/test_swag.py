"""SWAG: exact moments of the collected iterates, the low-rank sampler's covariance, and a tiny
model run through train (+ resume) and evaluate (MultiSWAG = two seeds pooled)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

import bayesian_lora.train as train_module
from bayesian_lora.config_validation import ConfigError, validate_config
from bayesian_lora.methods.swag import SWAG_FILE, SWAGMoments
from bayesian_lora.runs import load_samples
from tests.helpers import AtStep, compose_train, inject, run_eval, smoke_overrides

SWAG = [
    "data=mrpc",
    "sampler=swag",
    "sampler.warmup.steps=3",
    "sampler.burn_in=1",
    "sampler.thin=2",
    "sampler.num_samples=5",
    "sampler.swag.rank=3",
    "sampler.swag.num_draws=4",
    "callbacks.checkpoint.every_n_train_steps=4",
    "callbacks.samples.flush_every=2",
]


def iterates(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"a": torch.randn(2, 3, generator=g), "b": 5 + torch.randn(4, generator=g)}
        for _ in range(n)
    ]


@pytest.mark.parametrize("n", [2, 6, 7])  # fewer than K, a multiple of K, past a wrap
def test_moments_equal_the_sample_moments_of_the_iterates(n: int) -> None:
    its, rank = iterates(n), 3
    m = SWAGMoments(rank)
    for it in its:
        m.collect(it)
    for name in ("a", "b"):
        x = torch.stack([it[name] for it in its]).double()
        torch.testing.assert_close(m.mean[name], x.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.sq_mean[name], (x * x).mean(0), rtol=1e-12, atol=1e-12)
        running = [x[: i + 1].mean(0) for i in range(len(its))]
        first = max(0, len(its) - rank)
        expected = torch.stack([x[i] - running[i] for i in range(first, len(its))])
        torch.testing.assert_close(m.held_deviations()[name], expected, rtol=1e-12, atol=1e-12)
    # the stored tensors round-trip, and collection continues from them as if never stored
    back = SWAGMoments.from_tensors(m.tensors(), rank, m.n)
    assert all(torch.equal(back.held_deviations()[n], m.held_deviations()[n]) for n in "ab")
    more = iterates(2, seed=5)
    for it in more:
        m.collect(it)
        back.collect(it)
    assert all(torch.equal(back.held_deviations()[n], m.held_deviations()[n]) for n in "ab")


def test_low_rank_sampler_reproduces_the_known_covariance() -> None:
    """Fixed moments; 400k draws; empirical covariance vs diag/2 + D D^T / (2 (K - 1)),
    across parameter names too (one z2 is shared by all parameters of a draw)."""
    g = torch.Generator().manual_seed(1)
    k, shapes = 4, {"a": (2, 2), "b": (3,)}
    m = SWAGMoments(k)
    m.n = 10
    for name, shape in shapes.items():
        m.mean[name] = torch.randn(shape, generator=g, dtype=torch.float64)
        var = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
        m.sq_mean[name] = var + m.mean[name] ** 2
        m.deviations[name] = torch.randn((k, *shape), generator=g, dtype=torch.float64)
    draws = m.sample(400_000, torch.Generator().manual_seed(2))
    flat = torch.cat([draws[n].flatten(1) for n in shapes], dim=1)
    diag = torch.cat([m.diag()[n].flatten() for n in shapes])
    dev = torch.cat([m.deviations[n].flatten(1) for n in shapes], dim=1)  # [K, d]
    target = torch.diag(diag) / 2 + dev.T @ dev / (2 * (k - 1))
    mean = torch.cat([m.mean[n].flatten() for n in shapes])
    emp = torch.cov(flat.T)
    rel = (torch.linalg.matrix_norm(emp - target) / torch.linalg.matrix_norm(target)).item()
    print(f"SWAG sampler: relative Frobenius error of the covariance {rel:.4f}")
    assert rel < 0.01  # sampling error ~ sqrt(2 / 400k) = 0.2%
    se = (target.diagonal() / 400_000).sqrt()
    assert ((flat.mean(0) - mean).abs() < 5 * se).all()


def test_one_collection_has_no_low_rank_part() -> None:
    m = SWAGMoments(3)
    m.collect({"a": torch.ones(3)})
    draws = m.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(draws["a"], torch.ones(5, 3, dtype=torch.float64))  # variance 0


def test_bad_swag_settings_are_refused() -> None:
    cfg = compose_train(smoke_overrides(Path("."), Path("/tmp/x"), *SWAG, "sampler.swag.rank=0"))
    with pytest.raises(ConfigError, match=r"sampler.swag.rank=0 is not allowed"):
        validate_config(cfg)
    cfg = compose_train(smoke_overrides(Path("."), Path("/tmp/x"), *SWAG, "+sampler.swag.k=2"))
    with pytest.raises(ConfigError, match="sampler.swag"):
        validate_config(cfg)


class Iterates(L.Callback):
    """Records the sampled parameters after each of the given steps."""

    def __init__(self, steps: list[int]) -> None:
        self.steps, self.seen = set(steps), []  # type: ignore[var-annotated]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.chain_step - 1 in self.steps:
            self.seen.append(
                {n: p.detach().clone() for n, p in pl_module.sampled_parameters().items()}
            )


@pytest.mark.slow
def test_swag_run_through_train_resume_and_evaluate(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = [3 + 1 + 2 * j + 1 for j in range(5)]  # warm-up 3, burn-in 1, every 2nd step
    watch = Iterates(kept)
    inject(monkeypatch, watch)
    ref = tmp_path / "s0"
    train_module.train(compose_train(smoke_overrides(synthetic_data_dir, ref, *SWAG)))
    monkeypatch.undo()
    draws, manifest = load_samples(ref)
    assert manifest["steps"] == kept and manifest["num_samples"] == 4
    assert manifest["posterior"]["num_collected"] == 5 and manifest["status"] == "complete"
    stored = load_file(str(ref / SWAG_FILE))
    for name in draws:
        x = torch.stack([s[name] for s in watch.seen]).double()
        torch.testing.assert_close(stored[f"mean/{name}"], x.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            stored[f"sq_mean/{name}"], (x * x).mean(0), rtol=1e-12, atol=1e-12
        )
        assert stored[f"deviations/{name}"].shape[0] == 3

    # SIGTERM between collections, then resume: the same moments and draws
    out = tmp_path / "resumed"
    inject(monkeypatch, AtStep(8, lambda m: os.kill(os.getpid(), signal.SIGTERM)))
    with pytest.raises(SystemExit):
        train_module.train(compose_train(smoke_overrides(synthetic_data_dir, out, *SWAG)))
    assert load_samples(out)[1]["status"].startswith("interrupted")
    monkeypatch.undo()
    train_module.train(compose_train([f"resume={out}", "paths.output_dir=unused"]))
    again = load_file(str(out / SWAG_FILE))
    assert all(torch.equal(again[k], stored[k]) for k in stored)
    assert all(torch.equal(load_samples(out)[0][n], draws[n]) for n in draws)

    # evaluate one run, and MultiSWAG: two seeds pooled
    single = run_eval(f"run_dir={ref}", "plots=false")
    assert single["num_members"] == 4 and single["runs"][0]["sampler"] == "swag"
    other = tmp_path / "s1"
    train_module.train(compose_train(smoke_overrides(synthetic_data_dir, other, *SWAG, "seed=1")))
    pooled = run_eval(f"run_dirs=[{ref},{other}]", "plots=false")
    assert pooled["num_members"] == 8
    assert "skipped" in pooled["diagnostics"]  # independent draws, not MCMC chains
