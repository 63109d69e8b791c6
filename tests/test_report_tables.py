"""The report's rows against known answers, on hand-made run folders (no training, no model).

Bootstrap CIs over test examples, pooled chains at 3 and 30 members, the compute columns with
the warm-start convention, temperature-scaled rows, and the per-chain stationarity verdicts.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bayesian_lora.compute import ensemble_cost
from bayesian_lora.evaluation.metrics import classification_metrics, ensemble_metrics
from bayesian_lora.evaluation.write import METRICS_FILE, save_predictions, write_json
from bayesian_lora.report import build_report
from bayesian_lora.reporting.bootstrap import (
    bootstrap_indices,
    percentile_ci,
    replicates,
)
from bayesian_lora.reporting.chain_checks import chain_rows, config_verdict, within_chain
from bayesian_lora.reporting.discovery import EvalFolder, SweepRun, group_runs, load_run
from tests.helpers import fake_run_folder

N, C = 200, 2
MAP_COMPUTE = {"total_grad_evals": 128, "train_seconds": 60.0}


def _probs(rng: np.random.Generator, m: int, n: int = N) -> np.ndarray:
    """``[m, n, 2]`` member probabilities leaning to a shared label pattern (so they agree)."""
    base = np.where(np.arange(n) % 3 == 0, 0.3, 0.7)
    p1 = np.clip(base[None] + 0.25 * rng.standard_normal((m, n)), 0.02, 0.98)
    return np.stack([1 - p1, p1], axis=-1)


LABELS = (np.arange(N) % 3 != 0).astype(np.int64)


# ----------------------------------------------------------------------------- bootstrap


def test_whole_set_replicate_equals_the_metrics_module() -> None:
    p = _probs(np.random.default_rng(0), 1)[0]
    reps = replicates(p, LABELS, np.arange(N)[None], "f1_accuracy")
    want = classification_metrics(p, LABELS, "f1_accuracy")
    for key in ("acc", "nll", "ece", "brier", "f1"):
        assert reps[key][0] == pytest.approx(want[key], abs=1e-6), key  # torchmetrics f1: float32


def test_one_resample_equals_the_metrics_of_the_resampled_set() -> None:
    p = _probs(np.random.default_rng(1), 1)[0]
    idx = bootstrap_indices(N, 3, seed=7)
    reps = replicates(p, LABELS, idx, "f1_accuracy")
    for b in range(3):
        want = classification_metrics(p[idx[b]], LABELS[idx[b]], "f1_accuracy")
        for key in ("acc", "nll", "ece", "brier", "f1"):
            assert reps[key][b] == pytest.approx(want[key], abs=1e-6), (b, key)  # f1: float32


def test_constant_correct_predictions_give_a_zero_width_ci() -> None:
    p = np.eye(C)[LABELS]  # probability 1 on the label of every example
    reps = replicates(p, LABELS, bootstrap_indices(N, 1000, 0), "f1_accuracy")
    for key, value in {"acc": 1.0, "nll": 0.0, "ece": 0.0, "brier": 0.0, "f1": 1.0}.items():
        lo, hi = percentile_ci(reps[key])
        assert lo == pytest.approx(value, abs=1e-9) and hi == pytest.approx(lo, abs=1e-12), key


def test_known_accuracy_ci_covers_it_with_the_binomial_width() -> None:
    n, acc = 1000, 0.7
    labels = np.zeros(n, dtype=np.int64)
    right = np.arange(n) < acc * n  # exactly 700 correct
    p = np.where(right[:, None], [0.8, 0.2], [0.2, 0.8])
    reps = replicates(p, labels, bootstrap_indices(n, 4000, 0))["acc"]
    lo, hi = percentile_ci(reps, 0.95)
    sd = math.sqrt(acc * (1 - acc) / n)  # 0.0145
    assert lo < acc < hi
    assert reps.std() == pytest.approx(sd, rel=0.07)
    assert hi - lo == pytest.approx(2 * 1.959964 * sd, rel=0.1)


def test_index_sets_are_the_same_for_every_row_and_change_with_the_seed() -> None:
    a, b = bootstrap_indices(N, 50, 3), bootstrap_indices(N, 50, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, bootstrap_indices(N, 50, 4))


# ----------------------------------------------------------------------------- fake sweep


def _chain_trace(rng: np.random.Generator, drift: float, steps: int = 200) -> dict[str, Any]:
    t = np.arange(steps)
    noise = rng.standard_normal((3, steps))
    return {
        "u": 5 + noise[0] + drift * t,
        "nll": 0.5 + 0.1 * noise[1],
        "probe_loglik": -0.4 + 0.05 * noise[2],
        "norm.lora_A": 7 + 0.01 * t,
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 MAP seeds (1 sample) and 3 SGLD chains from them (10 kept samples each); the chain of
    seed 2 drifts (its u grows linearly along the trace)."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    maps, chains = [], []
    for s in range(3):
        compute = {**MAP_COMPUTE, "train_seconds": 60.0 + s}
        p = _probs(rng, 1)
        maps.append(p)
        fake_run_folder(
            root / "map" / f"{s}_tiny_mrpc_map_s{s}", p, LABELS, seed=s, compute=compute
        )
        q = _probs(rng, 10)
        chains.append(q)
        chain_compute = {"total_grad_evals": 80, "train_seconds": 20.0, "warm_start": compute}
        fake_run_folder(
            root / "sgld_T1.0" / f"{s}_tiny_mrpc_sgld_s{s}",
            q,
            LABELS,
            sampler="sgld",
            seed=s,
            temperature=1.0,
            lr=0.1,
            compute=chain_compute,
            trace=_chain_trace(rng, drift=0.05 if s == 2 else 0.0),
        )
    out = root / "report"
    report = build_report([root], out_dir=out, plots=False)
    return {"root": root, "out": out, "report": report, "maps": maps, "chains": chains}


def _row(report: dict[str, Any], method: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["method"] == method)


def test_rows_of_the_table(sweep: dict[str, Any]) -> None:
    assert [(r["method"], r["members"]) for r in sweep["report"]["rows"]] == [
        ("map", 1),
        ("deep_ensemble", 3),
        ("sgld", 10),
        ("sgld pooled (1/chain)", 3),
        ("sgld pooled (all/chain)", 30),
    ]
    sgld = _row(sweep["report"], "sgld")
    assert sgld["sampler_temperature"] == 1.0 and sgld["step_size"] == 0.1
    assert _row(sweep["report"], "map")["sampler_temperature"] is None


def test_pooling_at_3_and_30_members_averages_the_right_member_rows(
    sweep: dict[str, Any],
) -> None:
    last = np.stack([q[-1] for q in sweep["chains"]])  # the last kept sample of each chain
    every = np.concatenate(sweep["chains"])
    for method, members in (("sgld pooled (1/chain)", last), ("sgld pooled (all/chain)", every)):
        row = _row(sweep["report"], method)
        want = ensemble_metrics(members, LABELS, "f1_accuracy")
        for key in ("acc", "nll", "ece", "brier", "f1"):
            assert row[f"{key}_mean"] == pytest.approx(want[key], abs=1e-6), (method, key)
    de = _row(sweep["report"], "deep_ensemble")
    want = ensemble_metrics(np.concatenate(sweep["maps"]), LABELS, "f1_accuracy")
    assert de["nll_mean"] == pytest.approx(want["nll"], abs=1e-6)


def test_cis_are_paired_percentiles_over_the_same_resamples(sweep: dict[str, Any]) -> None:
    idx = bootstrap_indices(N, 1000, 0)
    pooled = np.concatenate(sweep["chains"]).astype(np.float32).astype(np.float64).mean(axis=0)
    reps = replicates(pooled, LABELS, idx, "f1_accuracy")
    row = _row(sweep["report"], "sgld pooled (all/chain)")
    for key in ("acc", "nll", "ece", "brier", "f1"):
        lo, hi = percentile_ci(reps[key])
        assert (row[f"{key}_ci_low"], row[f"{key}_ci_high"]) == pytest.approx((lo, hi)), key
        assert lo <= row[f"{key}_mean"] <= hi
    # a row over seeds: the CI of the seed-mean (each resample averages the seeds' metrics)
    per_seed = [
        replicates(p[0].astype(np.float32).astype(np.float64), LABELS, idx)["acc"]
        for p in sweep["maps"]
    ]
    lo, hi = percentile_ci(np.mean(per_seed, axis=0))
    row = _row(sweep["report"], "map")
    assert (row["acc_ci_low"], row["acc_ci_high"]) == pytest.approx((lo, hi))


def test_paired_differences_against_the_map_row(sweep: dict[str, Any]) -> None:
    idx = bootstrap_indices(N, 1000, 0)
    f32 = [p[0].astype(np.float32).astype(np.float64) for p in sweep["maps"]]
    map_nll = np.mean([replicates(p, LABELS, idx)["nll"] for p in f32], axis=0)
    de_probs = np.concatenate(sweep["maps"]).astype(np.float32).astype(np.float64).mean(axis=0)
    de_nll = replicates(de_probs, LABELS, idx)["nll"]
    report = sweep["report"]
    de, ref = _row(report, "deep_ensemble"), _row(report, "map")
    assert de["delta_vs"] == "map" and "nll_delta_mean" not in ref
    assert de["nll_delta_mean"] == pytest.approx(de["nll_mean"] - ref["nll_mean"])
    lo, hi = percentile_ci(de_nll - map_nll)
    assert (de["nll_delta_ci_low"], de["nll_delta_ci_high"]) == pytest.approx((lo, hi))
    # paired: the difference's interval is narrower than the two rows' intervals side by side
    assert hi - lo < (de["nll_ci_high"] - de["nll_ci_low"]) + (
        ref["nll_ci_high"] - ref["nll_ci_low"]
    )
    assert "Δ nll vs map" in (sweep["out"] / "report.md").read_text()


def test_compute_columns_count_each_map_fit_once_per_seed(sweep: dict[str, Any]) -> None:
    report = sweep["report"]
    map_seconds = 60.0 + 61.0 + 62.0
    assert _row(report, "map")["train_grad_evals"] == 128  # per seed
    assert _row(report, "sgld")["train_grad_evals"] == 80 + 128  # a chain and its MAP fit
    de = _row(report, "deep_ensemble")
    assert (de["train_grad_evals"], de["train_seconds"]) == (3 * 128, map_seconds)
    for method in ("sgld pooled (1/chain)", "sgld pooled (all/chain)"):
        row = _row(report, method)
        assert row["train_grad_evals"] == 3 * 80 + 3 * 128
        assert row["train_seconds"] == pytest.approx(3 * 20.0 + map_seconds)
        assert row["warm_starts"] == 3


def test_a_warm_start_shared_by_two_chains_counts_once() -> None:
    fit = {"total_grad_evals": 100, "train_seconds": 10.0}
    chain = {"total_grad_evals": 40, "train_seconds": 4.0, "warm_start": fit}
    assert ensemble_cost([chain, chain]) == {
        "train_grad_evals": 140 + 40,
        "train_seconds": 18.0,
        "warm_starts": 1,
    }
    other = {**chain, "warm_start": {**fit, "train_seconds": 11.0}}  # another MAP fit
    assert ensemble_cost([chain, other])["train_grad_evals"] == 2 * 140
    assert ensemble_cost([chain, {}])["train_grad_evals"] is None  # not recorded: unknown


def test_outputs_have_the_ci_and_compute_columns(sweep: dict[str, Any]) -> None:
    out = sweep["out"]
    text = (out / "report.md").read_text()
    assert "## tiny on mrpc" in text and "train grad evals" in text and "[" in text
    with (out / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    pooled = next(r for r in rows if r["method"] == "sgld pooled (all/chain)")
    assert float(pooled["members"]) == 30 and float(pooled["train_grad_evals"]) == 624
    lo, hi = float(pooled["acc_pct_ci_low"]), float(pooled["acc_pct_ci_high"])
    assert lo <= float(pooled["acc_pct_mean"]) <= hi
    saved = json.loads((out / "report.json").read_text())
    assert saved["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95}


# ----------------------------------------------------------------------------- chains


def test_geweke_flags_a_drifting_trace_and_not_white_noise() -> None:
    rng = np.random.default_rng(3)
    noise = within_chain({"u": rng.standard_normal(300)})
    assert noise["stationary"] is True and abs(noise["summaries"]["u"]["geweke_z"]) < 3
    assert noise["summaries"]["u"]["ess_bulk"] > 150  # white noise: nearly independent draws
    drift = within_chain({"u": rng.standard_normal(300) + 0.02 * np.arange(300)})
    assert drift["stationary"] is False and drift["drifting"] == ["u"]
    assert drift["summaries"]["u"]["geweke_z"] < -3  # the start lies below the end
    short = within_chain({"u": rng.standard_normal(20)})
    assert short["stationary"] is None  # too few steps to check


def test_per_chain_table_and_verdict(sweep: dict[str, Any]) -> None:
    chains = sweep["report"]["chains"]
    assert [(c["seed"], c["stationary"]) for c in chains] == [(0, True), (1, True), (2, False)]
    assert chains[2]["drifting"] == ["u"] and set(chains[0]["summaries"]) == {
        "u",
        "nll",
        "probe_loglik",
    }
    (verdict,) = sweep["report"]["chain_verdicts"]
    assert verdict["verdict"].startswith("2/3 chains stationary at T=1")
    assert "drifting: seed 2 (u)" in verdict["verdict"]
    text = (sweep["out"] / "report.md").read_text()
    assert "within-chain diagnostics" in text and "**NO**" in text and "2/3 chains" in text
    with (sweep["out"] / "chains.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_the_whole_trace_or_from_the_first_kept_sample(tmp_path: Path) -> None:
    """A 60-step chain keeping from step 30 on: the whole trace has the 40 steps Geweke needs
    (and its burn-in transient is flagged); the kept part alone is too short to check."""
    steps = np.arange(60)
    u = np.where(steps < 12, 8.0, 5.0) + 0.1 * np.random.default_rng(5).standard_normal(60)
    trace = {"u": u, "nll": u / 10, "probe_loglik": -u / 10, "kept": steps >= 30}
    run = fake_run_folder(
        tmp_path / "0_tiny_mrpc_sgld_s0",
        _probs(np.random.default_rng(0), 3),
        LABELS,
        sampler="sgld",
        trace=trace,
    )
    (group,) = group_runs([load_run(run)])
    (whole,) = chain_rows(group, trace_from="start")
    assert whole["n_draws"] == 60 and whole["stationary"] is False and "u" in whole["drifting"]
    (kept,) = chain_rows(group, trace_from="first_kept")
    assert kept["n_draws"] == 30 and kept["stationary"] is None
    verdict = config_verdict([kept])
    assert verdict.startswith("stationarity not checked at T=1: 1 chain with fewer than 40")
    assert "0/" not in verdict  # none checked is not "0/1 stationary"
    partly = config_verdict([whole, kept])
    assert partly.startswith("0/1 checked chains stationary") and "; 1 not checked" in partly


def test_the_same_seed_twice_in_one_config_is_noted(sweep: dict[str, Any], tmp_path: Path) -> None:
    root = sweep["root"]
    copy = tmp_path / "copy" / "0_tiny_mrpc_map_s0"
    fake_run_folder(copy, sweep["maps"][0], LABELS, seed=0, compute=MAP_COMPUTE)
    report = build_report([root, tmp_path / "copy"], out_dir=tmp_path / "out", plots=False)
    assert _row(report, "map")["seeds"] == [0, 0, 1, 2]
    assert any("2 runs of seed 0" in n for n in report["notes"])


def test_display_and_flush_settings_do_not_split_a_configuration() -> None:
    def run(seed: int, every: int, lr: float = 0.1) -> SweepRun:
        config = {
            "seed": seed,
            "model": {"name": "tiny"},
            "data": {"task": "mrpc"},
            "sampler": {"name": "map", "lr": lr},
            "callbacks": {"progress": {"every_n_steps": every}, "trace": {"probe_size": 32}},
            "trainer": {"log_every_n_steps": every},
        }
        return SweepRun(Path(f"/runs/{seed}"), config, {"acc": 0.5})

    (group,) = group_runs([run(0, 50), run(1, 20), run(2, 20)])
    assert [r.seed for r in group.runs] == [0, 1, 2]
    assert len(group_runs([run(0, 50), run(1, 50, lr=0.2)])) == 2  # a real difference splits


def test_config_verdict_without_traces() -> None:
    assert config_verdict([]) == "no per-step traces"


# ----------------------------------------------------------------------------- temperature


def test_temperature_scaled_evaluations_become_rows(sweep: dict[str, Any], tmp_path: Path) -> None:
    root = sweep["root"]
    runs = sorted((root / "map").glob("*_map_s*"))
    scaled = []
    for s, run in enumerate(runs):
        t = 1.5 + 0.1 * s
        p = sweep["maps"][s][0] ** (1 / t)
        p = p / p.sum(axis=1, keepdims=True)
        scaled.append(p)
        _eval_folder(
            run / "evaluation_temperature",
            [run],
            sweep["maps"][s],
            calibrated=(p, t),
            compute={"eval_seconds": 2.0},
        )
    pooled = np.concatenate(sweep["maps"]).mean(axis=0) ** (1 / 1.2)
    pooled = pooled / pooled.sum(axis=1, keepdims=True)
    _eval_folder(
        root / "map" / "evaluation_deep_ensemble_t",
        runs,
        np.concatenate(sweep["maps"]),
        calibrated=(pooled, 1.2),
        compute={"eval_seconds": 2.0},
    )
    report = build_report([root], out_dir=tmp_path, plots=False)
    methods = [r["method"] for r in report["rows"]]
    assert methods[:4] == [
        "map",
        "map + temperature",
        "deep_ensemble",
        "deep_ensemble + temperature",
    ]
    row = _row(report, "map + temperature")
    want = [classification_metrics(p, LABELS, "f1_accuracy")["nll"] for p in scaled]
    assert row["nll_mean"] == pytest.approx(np.mean(want)) and row["n"] == 3
    assert row["scaling_temperature"] == pytest.approx(1.6) and row["eval_seconds"] == 2.0
    de = _row(report, "deep_ensemble + temperature")
    assert de["members"] == 3 and de["scaling_temperature"] == 1.2
    assert de["nll_mean"] == pytest.approx(classification_metrics(pooled, LABELS)["nll"])
    assert de["train_grad_evals"] == 3 * 128
    assert de["nll_ci_low"] <= de["nll_mean"] <= de["nll_ci_high"]


# ----------------------------------------------------------------------------- every method
# MAP + MC dropout, Laplace + its GLM predictive and OOD evaluations, as the evaluate command
# writes them (reduced to what the report reads); every number checked against a hand
# computation from the saved member probabilities.

LAPLACE_SAMPLER = {  # a Laplace run's sampler block: no step size, no temperature
    "structure": "kron",
    "prior_precision": "marglik",
    "num_samples": 4,
    "lr": None,
    "temperature": None,
}
OOD_AUROC = {"rte": (0.61, 0.58), "sst2": (0.99, 0.98)}  # (entropy, MI) hand-set per OOD task


def _hand(p: np.ndarray, y: np.ndarray = LABELS) -> dict[str, float]:
    """Accuracy, NLL and 15-bin top-label ECE (right-closed bins) of a predictive ``[N, C]``."""
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    ece = 0.0
    for b in range(15):
        inside = (conf > b / 15) & (conf <= (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return {"acc": correct.mean(), "nll": -np.log(p[np.arange(len(y)), y]).mean(), "ece": ece}


def _mean32(members: np.ndarray) -> np.ndarray:
    """The mean predictive of members as the report reads them back (float32 on disk)."""
    return members.astype(np.float32).astype(np.float64).mean(axis=0)


def _eval_folder(
    folder: Path,
    runs: list[Path],
    members: np.ndarray,
    *,
    samples_used: list[list[int]] | None = None,
    mc_dropout: int = 0,
    glm_link: str | None = None,
    ood: str | None = None,
    compute: dict[str, Any] | None = None,
    calibrated: tuple[np.ndarray, float] | None = None,
) -> None:
    """What ``evaluate`` writes for ``run_dir(s)=runs`` (``mc_dropout=``, ``predictive=glm``,
    ``ood=``, ``calibrate=temperature``: the calibrated predictive and its T), reduced to what
    the report reads: member predictions, the ensemble metrics, the OOD AUROCs of
    ``OOD_AUROC`` (the calibrated entropy AUROC: the uncalibrated one + 0.01)."""
    extra = (
        {} if calibrated is None else {"calibrated_predictions": calibrated[0].astype(np.float32)}
    )
    save_predictions(folder / "predictions.safetensors", members, LABELS, extra)
    used = samples_used or [[0] for _ in runs]
    result: dict[str, Any] = {
        "kind": "eval",
        "split": "test",
        "mc_dropout": mc_dropout,
        "num_members": int(members.shape[0]),
        "runs": [{"run_dir": str(r), "samples_used": u} for r, u in zip(runs, used, strict=True)],
        "ensemble": ensemble_metrics(members, LABELS, "f1_accuracy"),
        "predictive": {"kind": "samples"}
        if glm_link is None
        else {"kind": "glm", "link": glm_link},
        "compute": {"forward_passes_per_example": int(members.shape[0]), **(compute or {})},
    }
    if ood is not None:
        entropy, mi = OOD_AUROC[ood]
        result["ood"] = {
            "task": ood,
            "entropy": {"auroc": entropy},
            "mutual_information": {"auroc": mi},
        }
    if calibrated is not None:
        result["calibration"] = {
            "method": "temperature",
            "temperature": calibrated[1],
            "ensemble": classification_metrics(calibrated[0], LABELS, "f1_accuracy"),
        }
        if ood is not None:
            result["calibration"]["ood_entropy"] = {"auroc": OOD_AUROC[ood][0] + 0.01}
    write_json(folder / METRICS_FILE, result)


@pytest.fixture(scope="module")
def methods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 MAP seeds, each with an MC-dropout evaluation (K=10; OOD rte, seed 2 against sst2),
    one of all three together; 3 Laplace fits around them (4 draws each) with a plain OOD
    evaluation (seeds 0, 1), the GLM predictive (mc: 64 logit draws, OOD rte on seeds 0, 1;
    probit: 1 member) and OOD evaluations of the pooled draws (all 12; and 3 that are not the
    last draw of each fit, which must not land in the 1/fit row)."""
    root = tmp_path_factory.mktemp("methods")
    rng = np.random.default_rng(7)
    d: dict[str, Any] = {"root": root, "map": [], "mc": [], "laplace": [], "glm": [], "probit": []}
    d["laplace_compute"] = []
    map_runs, laplace_runs = [], []
    for s in range(3):
        map_compute = {**MAP_COMPUTE, "train_seconds": 60.0 + s}
        p = _probs(rng, 1)
        run = fake_run_folder(
            root / f"{s}_tiny_mrpc_map_s{s}", p, LABELS, seed=s, compute=map_compute
        )
        map_runs.append(run)
        mc = _probs(rng, 10)
        _eval_folder(
            run / "evaluation_mcdropout10",
            [run],
            mc,
            mc_dropout=10,
            ood="sst2" if s == 2 else "rte",
            compute={"eval_seconds": 3.0 + s},
        )
        q = _probs(rng, 4)
        lap_compute = {
            "total_grad_evals": 5,
            "train_seconds": 2.0 + s,
            "grad_evals": {"curvature": 5},
            "curvature_batches": 5,
            "curvature_backward_passes": 10,
            "warm_start": map_compute,
        }
        lap = fake_run_folder(
            root / f"{s}_tiny_mrpc_map_s{s}_laplace_kron",
            q,
            LABELS,
            sampler="laplace",
            seed=s,
            compute=lap_compute,
            sampler_config={**LAPLACE_SAMPLER, "from_run": str(run)},
            posterior={"method": "laplace", "structure": "kron"},
        )
        laplace_runs.append(lap)
        if s < 2:
            _eval_folder(lap / "evaluation", [lap], q, samples_used=[[0, 1, 2, 3]], ood="rte")
        glm = _probs(rng, 64)
        glm_ood = "rte" if s < 2 else None
        passes = {"forward_passes_per_example": 1, "backward_passes_per_example": 2}
        secs = {**passes, "eval_seconds": 1.0 + s}
        _eval_folder(lap / "evaluation_glm", [lap], glm, glm_link="mc", ood=glm_ood, compute=secs)
        probit = _probs(rng, 1)
        _eval_folder(lap / "evaluation_glm_probit", [lap], probit, glm_link="probit", compute=secs)
        d["map"].append(p), d["mc"].append(mc), d["laplace"].append(q)
        d["glm"].append(glm), d["probit"].append(probit), d["laplace_compute"].append(lap_compute)
    d["mc_pooled"] = np.concatenate(d["mc"])
    _eval_folder(
        root / "evaluation_deep_ensemble_3runs_mcdropout10",
        map_runs,
        d["mc_pooled"],
        samples_used=[[0]] * 3,
        mc_dropout=10,
        ood="rte",
        compute={"eval_seconds": 9.0},
    )
    every = np.concatenate(d["laplace"])
    _eval_folder(
        root / "evaluation_pooled_all",
        laplace_runs,
        every,
        samples_used=[[0, 1, 2, 3]] * 3,
        ood="rte",
    )
    firsts = np.stack([q[0] for q in d["laplace"]])  # 3 members, but not the last draw of each
    _eval_folder(
        root / "evaluation_pooled_first", laplace_runs, firsts, samples_used=[[0]] * 3, ood="rte"
    )
    d["out"] = root / "report"
    d["report"] = build_report([root], out_dir=d["out"], plots=False)
    return d


def test_every_method_is_a_row(methods: dict[str, Any]) -> None:
    rows = [(r["method"], r["n"], r["members"]) for r in methods["report"]["rows"]]
    assert rows == [
        ("map", 3, 1),
        ("map + MC dropout (K=10)", 3, 10),
        ("deep_ensemble", 3, 3),
        ("deep_ensemble + MC dropout (K=10)", 3, 30),
        ("laplace (kron)", 3, 4),
        ("laplace (kron) GLM (mc)", 3, 1),  # one forward pass per example: 64 logit draws
        ("laplace (kron) GLM (probit)", 3, 1),
        ("laplace (kron) pooled (1/chain)", 3, 3),
        ("laplace (kron) pooled (all/chain)", 3, 12),
    ]


def test_mc_dropout_row_against_a_hand_computation(methods: dict[str, Any]) -> None:
    report = methods["report"]
    row = _row(report, "map + MC dropout (K=10)")
    per_seed = [_hand(_mean32(mc)) for mc in methods["mc"]]
    for key in ("acc", "nll", "ece"):
        values = [m[key] for m in per_seed]
        assert row[f"{key}_mean"] == pytest.approx(np.mean(values), abs=1e-6), key
        assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6), key
    # the CI of the seed-mean from each seed's saved members, paired with the MAP row
    idx = bootstrap_indices(N, 1000, 0)
    reps = [replicates(_mean32(mc), LABELS, idx, "f1_accuracy") for mc in methods["mc"]]
    nll = np.mean([r["nll"] for r in reps], axis=0)
    assert (row["nll_ci_low"], row["nll_ci_high"]) == pytest.approx(percentile_ci(nll))
    map_nll = np.mean([replicates(_mean32(p), LABELS, idx)["nll"] for p in methods["map"]], axis=0)
    assert row["delta_vs"] == "map"
    assert row["nll_delta_mean"] == pytest.approx(row["nll_mean"] - _row(report, "map")["nll_mean"])
    lo, hi = percentile_ci(nll - map_nll)
    assert (row["nll_delta_ci_low"], row["nll_delta_ci_high"]) == pytest.approx((lo, hi))
    # compute: K x 1 sample forward passes, the MAP fit per seed, the evaluations' seconds
    assert row["members"] == 10 and row["eval_seconds"] == pytest.approx(4.0)
    assert (row["train_grad_evals"], row["train_seconds"]) == (128, pytest.approx(61.0))
    # OOD: seeds 0 and 1 against rte; seed 2's evaluation against sst2 is not averaged in
    assert row["ood_task"] == "rte" and row["ood_auroc_entropy_n"] == 2
    assert row["ood_auroc_entropy_mean"] == pytest.approx(0.61)
    assert row["ood_auroc_mi_mean"] == pytest.approx(0.58)
    assert any(
        "map + MC dropout (K=10): OOD AUROCs from the evaluation(s) against rte (2 of 3)" in n
        and "sst2" in n
        for n in report["notes"]
    )


def test_pooled_mc_dropout_row(methods: dict[str, Any]) -> None:
    row = _row(methods["report"], "deep_ensemble + MC dropout (K=10)")
    want = _hand(_mean32(methods["mc_pooled"]))
    for key in ("acc", "nll", "ece"):
        assert row[f"{key}_mean"] == pytest.approx(want[key], abs=1e-6), key
    assert row["members"] == 30 and row["eval_seconds"] == 9.0
    assert (row["train_grad_evals"], row["train_seconds"]) == (3 * 128, pytest.approx(183.0))
    assert row["ood_auroc_mi_mean"] == pytest.approx(0.58) and row["ood_task"] == "rte"
    reps = replicates(_mean32(methods["mc_pooled"]), LABELS, bootstrap_indices(N, 1000, 0))
    assert (row["ece_ci_low"], row["ece_ci_high"]) == pytest.approx(percentile_ci(reps["ece"]))


def test_laplace_rows_group_the_seeds_and_count_the_map_fit(methods: dict[str, Any]) -> None:
    report = methods["report"]
    row = _row(report, "laplace (kron)")
    assert row["seeds"] == [0, 1, 2] and row["sampler_temperature"] is None
    per_seed = [_hand(_mean32(q)) for q in methods["laplace"]]
    assert row["nll_mean"] == pytest.approx(np.mean([m["nll"] for m in per_seed]), abs=1e-6)
    # per seed: 5 curvature batches + its MAP fit's 128; fit seconds + the MAP's
    assert row["train_grad_evals"] == 5 + 128
    assert row["train_seconds"] == pytest.approx(np.mean([2.0 + 60.0 + 2 * s for s in range(3)]))
    assert row["ood_auroc_entropy_n"] == 2 and row["ood_task"] == "rte"  # seeds 0, 1 evaluated
    every = _row(report, "laplace (kron) pooled (all/chain)")
    assert every["train_grad_evals"] == 3 * 5 + 3 * 128 and every["warm_starts"] == 3
    assert every["train_seconds"] == pytest.approx(sum(2.0 + 60.0 + 2 * s for s in range(3)))
    assert every["ood_auroc_entropy_mean"] == pytest.approx(0.61)
    want = _hand(_mean32(np.concatenate(methods["laplace"])))
    assert every["nll_mean"] == pytest.approx(want["nll"], abs=1e-6)
    # 3 members, but not the row's (the last draw of each fit): no OOD columns from them
    last = _row(report, "laplace (kron) pooled (1/chain)")
    assert "ood_auroc_entropy_mean" not in last and "ood_task" not in last
    # independent draws of 3 fits, not chains: no seeds-as-chains R-hat (as evaluate)
    assert (
        report["diagnostics"] == []
        and "MCMC diagnostics" not in (methods["out"] / "report.md").read_text()
    )


def test_glm_rows_against_a_hand_computation(methods: dict[str, Any]) -> None:
    report = methods["report"]
    for link, members in (("mc", methods["glm"]), ("probit", methods["probit"])):
        row = _row(report, f"laplace (kron) GLM ({link})")
        per_seed = [_hand(_mean32(m)) for m in members]
        for key in ("acc", "nll", "ece"):
            want = [m[key] for m in per_seed]
            assert row[f"{key}_mean"] == pytest.approx(np.mean(want), abs=1e-6), (link, key)
            assert row[f"{key}_std"] == pytest.approx(np.std(want, ddof=1), abs=1e-6), (link, key)
        assert (row["members"], row["backward_passes"]) == (1, 2), link
        assert row["eval_seconds"] == pytest.approx(2.0) and row["train_grad_evals"] == 5 + 128
        assert row["nll_ci_low"] <= row["nll_mean"] <= row["nll_ci_high"]
        assert row["delta_vs"] == "map"
    mc = _row(report, "laplace (kron) GLM (mc)")
    assert mc["ood_auroc_mi_n"] == 2 and mc["ood_auroc_mi_mean"] == pytest.approx(0.58)
    assert "ood_auroc_mi_mean" not in _row(report, "laplace (kron) GLM (probit)")  # no ood=


def test_markdown_names_the_rows_the_passes_and_the_ood_task(methods: dict[str, Any]) -> None:
    text = (methods["out"] / "report.md").read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| tiny")]
    head = next(ln for ln in text.splitlines() if ln.startswith("| model"))
    assert "backward passes" in head and "ood auroc MI" in head
    glm = next(ln for ln in table if "GLM (mc)" in ln)
    assert "(n=2)" in glm  # 2 of 3 seeds were scored against OOD inputs
    assert "- OOD AUROC columns: this task's test inputs against those of **rte**." in text
    with (methods["out"] / "report.csv").open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(rows["laplace (kron) GLM (mc)"]["backward_passes"]) == 2
    assert rows["map"]["backward_passes"] == ""


@pytest.mark.parametrize(
    ("result", "plain", "variant"),
    [
        ({"split": "test", "mc_dropout": 0, "predictive": {"kind": "samples"}}, True, None),
        ({}, True, None),  # an evaluation written before these keys: the test split, as saved
        ({"mc_dropout": 10}, False, " + MC dropout (K=10)"),
        ({"predictive": {"kind": "glm", "link": "mc"}}, False, " GLM (mc)"),
        ({"predictive": {"kind": "glm", "link": "probit"}}, False, " GLM (probit)"),
        ({"split": "validation"}, False, None),
        ({"split": "validation", "mc_dropout": 10}, False, None),
    ],
)
def test_which_evaluations_are_plain_and_which_are_rows_of_their_own(
    result: dict[str, Any], plain: bool, variant: str | None
) -> None:
    """Plain evaluations (the test split, the stored members) give a row its OOD AUROCs and
    eval seconds; MC dropout and the GLM predictive are rows of their own; validation is none."""
    e = EvalFolder(Path("/e"), frozenset(), result)
    assert (e.plain, e.variant) == (plain, variant)


def test_laplace_fits_of_several_map_seeds_are_one_configuration() -> None:
    """Seeds, paths and the MAP run a fit started from differ; the structure splits."""

    def run(seed: int, structure: str = "kron") -> SweepRun:
        config = {
            "seed": seed,
            "model": {"name": "tiny"},
            "data": {"task": "mrpc"},
            "prior_std": 1.0,
            "sampler": {
                **LAPLACE_SAMPLER,
                "name": "laplace",
                "structure": structure,
                "from_run": f"/runs/map_s{seed}",
            },
            "paths": {"output_dir": f"/runs/map_s{seed}_laplace_{structure}"},
        }
        return SweepRun(Path(f"/runs/{seed}_{structure}"), config, {"acc": 0.5})

    groups = group_runs([run(0), run(1), run(2), run(0, "diag"), run(1, "diag")])
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        ("laplace (diag)", [0, 1]),
        ("laplace (kron)", [0, 1, 2]),
    ]


def test_ood_columns_of_every_row_kind(tmp_path: Path) -> None:
    """Each row takes its OOD AUROCs from an evaluation with ``ood=`` of exactly its runs and
    members: single rows (a MAP seed, a chain: SWAG, BLoB and Laplace runs are read the same
    way), the deep ensemble, pooled chains at 1 and all samples per chain, temperature rows
    (entropy only: the tempered mean predictive has no mutual information)."""
    rng = np.random.default_rng(11)
    maps, chains = [], []
    for s in range(2):
        p, q = _probs(rng, 1), _probs(rng, 10)
        maps.append(fake_run_folder(tmp_path / f"{s}_map", p, LABELS, seed=s))
        chain = fake_run_folder(tmp_path / f"{s}_sgld", q, LABELS, sampler="sgld", seed=s)
        chains.append((chain, q))
        _eval_folder(maps[-1] / "evaluation", [maps[-1]], p, ood="rte")
        if s == 0:  # all 10 samples: the chain's own row
            _eval_folder(
                chain / "evaluation", [chain], q, samples_used=[list(range(10))], ood="rte"
            )
        else:  # evaluate k=2: not the row's members
            _eval_folder(
                chain / "evaluation_k2", [chain], q[[4, 9]], samples_used=[[4, 9]], ood="rte"
            )
        _eval_folder(
            maps[-1] / "evaluation_temperature", [maps[-1]], p, ood="rte", calibrated=(p[0], 1.5)
        )
    members = np.concatenate([_probs(rng, 1) for _ in range(2)])
    _eval_folder(tmp_path / "evaluation_de", maps, members, ood="rte")
    _eval_folder(tmp_path / "evaluation_de_t", maps, members, ood="rte", calibrated=(members[0], 2))
    runs = [c for c, _ in chains]
    last = np.stack([q[-1] for _, q in chains])
    _eval_folder(tmp_path / "evaluation_1", runs, last, samples_used=[[9], [9]], ood="rte")
    every = np.concatenate([q for _, q in chains])
    _eval_folder(tmp_path / "evaluation_all", runs, every, samples_used=[list(range(10))] * 2)
    report = build_report([tmp_path], out_dir=tmp_path / "out", plots=False)
    with_ood = {r["method"]: r.get("ood_auroc_entropy_mean") for r in report["rows"]}
    assert with_ood == {
        "map": pytest.approx(0.61),
        "map + temperature": pytest.approx(0.62),
        "deep_ensemble": pytest.approx(0.61),
        "deep_ensemble + temperature": pytest.approx(0.62),
        "sgld": pytest.approx(0.61),
        "sgld pooled (1/chain)": pytest.approx(0.61),
        "sgld pooled (all/chain)": None,  # its evaluation had no ood=
    }
    assert _row(report, "sgld")["ood_auroc_entropy_n"] == 1  # seed 1: only k=2 was evaluated
    for row in report["rows"]:
        has_mi = "ood_auroc_mi_mean" in row
        assert has_mi == (
            row["kind"] != "temperature" and row["method"] != "sgld pooled (all/chain)"
        )
        assert row.get("ood_task") == (None if with_ood[row["method"]] is None else "rte")
