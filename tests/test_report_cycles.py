"""Cycles of cyclical chains in the report, against hand-computed answers (no training).

Run folders are made by hand (``fake_run_folder``): a cSGLD config, the manifest's kept steps,
the per-step trace, the member predictions (rows in kept-step order) and the samples.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from bayesian_lora.config import build_chain_plan
from bayesian_lora.evaluation.metrics import compare_predictives
from bayesian_lora.report import build_report
from bayesian_lora.reporting.chain_checks import chain_rows, config_verdict, within_chain
from bayesian_lora.reporting.cycles import chain_verdict, cycle_rows
from bayesian_lora.reporting.discovery import group_runs, load_run
from bayesian_lora.samplers import CyclicalCosine
from tests.helpers import compose_train, fake_run_folder


def _csgld(cycle_length: int, warmup: int, burn_in: int, thin: int, num_samples: int) -> dict:
    """The chain keys of a cSGLD config, as ``config.yaml`` saves them."""
    return {
        "warmup": {"steps": warmup, "epochs": None, "from_run": None},
        "burn_in": burn_in,
        "thin": thin,
        "num_samples": num_samples,
        "max_steps": None,
        "schedule": {
            "name": "cyclical",
            "cycle_length": cycle_length,
            "exploration_fraction": 0.5,
        },
    }


def _members(p1: list[list[float]]) -> np.ndarray:
    """``[M, N, 2]`` from each member's probabilities of class 1."""
    q = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - q, q], axis=-1)


# A cSGLD chain: 2 warm-up steps, cycles of 8 sampler steps whose last 4 (s % 8 in 4..7) are
# the sampling stage, thin 2, 6 samples. Eligible sampler steps 4, 5, 6, 7, 12, 13, ...; every
# 2nd is kept: s = 5, 7 | 13, 15 | 21, 23, i.e. global steps t = s + 2:
KEPT = [7, 9, 15, 17, 23, 25]  # cycles 0, 0, 1, 1, 2, 2
LABELS = np.array([0, 1, 0, 1])
# Members in kept-step order; the cycle means of p(class 1) are
# cycle 0: [.3, .7, .3, .7] (all right), cycle 1: [.7, .7, .3, .3] (2 of 4), cycle 2:
# [.9, .1, .9, .1] (none right); the two members of cycles 0 and 1 are 0.1 apart per class.
P1 = [
    [0.25, 0.75, 0.35, 0.65],
    [0.35, 0.65, 0.25, 0.75],
    [0.65, 0.75, 0.25, 0.35],
    [0.75, 0.65, 0.35, 0.25],
    [0.9, 0.1, 0.9, 0.1],
    [0.9, 0.1, 0.9, 0.1],
]
# Samples in two tensors (the distance sums over both): theta = (lora_A, lora_B) =
# (0,0) (3,4) | (10,0) (10,1) | (13,5) (16,9).
THETA = np.array([[0, 0], [3, 4], [10, 0], [10, 1], [13, 5], [16, 9]], dtype=np.float64)


@pytest.fixture(scope="module")
def cyclical(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cycles")
    s = np.arange(24)  # the trace: sampler steps 0..23 = global steps 2..25
    trace = {
        "step": s + 2,
        "u": s.astype(float),
        "nll": 10.0 * s,
        "probe_loglik": -1.0 * s,
        "norm.lora_A": np.full(24, 2.0),
        "kept": np.isin(s + 2, KEPT),
    }
    run = fake_run_folder(
        root / "0_tiny_mrpc_csgld_s0",
        _members(P1),
        LABELS,
        sampler="csgld",
        sampler_config=_csgld(cycle_length=8, warmup=2, burn_in=0, thin=2, num_samples=6),
        steps=KEPT,
        samples={"lora_A": THETA[:, :1], "lora_B": THETA[:, 1:]},
        trace=trace,
    )
    out = root / "report"
    report = build_report([root], out_dir=out, plots=False)
    return {"run": run, "out": out, "report": report}


def test_kept_samples_trace_means_and_cycle_ensembles(cyclical: dict[str, Any]) -> None:
    cycles = cyclical["report"]["cycles"]
    assert [c["cycle"] for c in cycles] == [0, 1, 2]
    assert [c["kept_steps"] for c in cycles] == [[7, 9], [15, 17], [23, 25]]
    # the sampling stage of cycle c is s = 8c + 4 .. 8c + 7, where u = s, nll = 10 s
    assert [c["n_steps"] for c in cycles] == [4, 4, 4]
    assert [c["trace_means"]["u"] for c in cycles] == [5.5, 13.5, 21.5]
    assert [c["trace_means"]["nll"] for c in cycles] == [55.0, 135.0, 215.0]
    assert [c["trace_means"]["probe_loglik"] for c in cycles] == [-5.5, -13.5, -21.5]
    assert [c["trace_means"]["norm.lora_A"] for c in cycles] == [2.0, 2.0, 2.0]
    assert [c["stationary"] for c in cycles] == [None, None, None]  # 4 steps: not checked
    acc = [c["metrics"]["acc"] for c in cycles]
    nll = [c["metrics"]["nll"] for c in cycles]
    assert acc == [1.0, 0.5, 0.0]
    expected_nll = [-math.log(0.7), -(math.log(0.3) + math.log(0.7)) / 2, -math.log(0.1)]
    assert nll == pytest.approx(expected_nll, rel=1e-6)


def test_consecutive_cycles_and_halves_by_hand(cyclical: dict[str, Any]) -> None:
    first, second, third = cyclical["report"]["cycles"]
    assert first["previous"] is None
    # cycle 0 -> 1: argmax [0,1,0,1] vs [1,1,0,0] differ on 2 of 4; |p - q| = 0.4 on those two
    one = second["previous"]
    assert one["cycle"] == 0
    assert one["disagreement"] == 0.5
    assert one["tv"] == pytest.approx(0.2, rel=1e-6)
    assert one["sym_kl"] == pytest.approx(0.4 * math.log(7 / 3), rel=1e-6)
    # cycle 1 -> 2: [1,1,0,0] vs [1,0,1,0]; |p1 - q1| = .2, .6, .6, .2
    two = third["previous"]
    assert two["disagreement"] == 0.5 and two["tv"] == pytest.approx(0.4, rel=1e-6)
    kl = 2 * 0.2 * math.log(0.9 / 0.7 * 0.3 / 0.1) + 2 * 0.6 * math.log(0.7 / 0.1 * 0.9 / 0.3)
    assert two["sym_kl"] == pytest.approx(kl / 4, rel=1e-6)
    # halves: the two members of cycles 0 and 1 agree on every argmax, 0.1 apart per class
    for c in (first, second):
        assert c["within"]["disagreement"] == 0.0
        assert c["within"]["tv"] == pytest.approx(0.1, rel=1e-5)
    assert third["within"] == {"disagreement": 0.0, "tv": 0.0, "sym_kl": 0.0}
    # parameters: last samples (3,4) -> (10,1) -> (16,9); walks |(10,1)-(10,0)| = 1, |(3,4)| = 5
    assert one["jump"] == pytest.approx(math.sqrt(58)) and one["walk"] == 1.0
    assert one["jump_over_walk"] == pytest.approx(math.sqrt(58))
    assert two["jump"] == 10.0 and two["walk"] == 5.0 and two["jump_over_walk"] == 2.0


def test_compare_predictives_is_symmetric_and_zero_on_equal_inputs() -> None:
    p = _members([[0.2, 0.9, 0.5]])[0]
    q = _members([[0.6, 0.8, 0.1]])[0]
    assert compare_predictives(p, q) == pytest.approx(compare_predictives(q, p))
    assert compare_predictives(p, p) == {"disagreement": 0.0, "tv": 0.0, "sym_kl": 0.0}


def test_verdict_compares_cycles_with_the_halves_and_does_not_overclaim(
    cyclical: dict[str, Any],
) -> None:
    (v,) = cyclical["report"]["cycle_verdicts"]
    assert v["seed"] == 0
    text = v["verdict"]
    assert text.startswith("3 cycles with kept samples (2 each)")
    assert "disagree on 50.0% of test examples (TV 0.2-0.4)" in text
    assert "halves of one cycle on 0.0% (TV 0-0.1)" in text
    assert "differ more from each other than within a cycle" in text
    assert "does not show they are different modes" in text
    assert "2-7.6x as far apart as the path walked within a cycle" in text
    assert "not checked" in text
    # the same chain where the halves of a cycle are as far apart as two cycles: no claim
    cycles = cyclical["report"]["cycles"]
    wide = [{**c, "within": {"disagreement": 0.5, "tv": 0.5, "sym_kl": 1.0}} for c in cycles]
    assert "no sign of different modes" in chain_verdict(wide)
    assert "no two cycles to compare" in chain_verdict(cycles[:1])


def test_report_files_hold_the_cycles(cyclical: dict[str, Any]) -> None:
    out = cyclical["out"]
    text = (out / "report.md").read_text()
    assert "### Cycles of cyclical chains (tiny on mrpc)" in text
    assert "- **csgld** seed 0: 3 cycles with kept samples" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| csgld")]
    assert len(table) == 3  # one line per (chain, cycle)
    cells = [c.strip() for c in table[1].strip("|").split("|")]
    assert "50.0" in cells and cells[-1] == "7.62"  # disagree prev (%), jump / walk
    with (out / "cycles.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["cycle"] for r in rows] == ["0", "1", "2"]
    assert [r["kept_steps"] for r in rows] == ["7 9", "15 17", "23 25"]
    assert float(rows[2]["prev_jump_over_walk"]) == 2.0 and rows[0]["prev_tv"] == ""
    saved = json.loads((out / "report.json").read_text())
    assert [c["trace_means"]["u"] for c in saved["cycles"]] == [5.5, 13.5, 21.5]
    assert (
        saved["cycle_verdicts"][0]["verdict"] == cyclical["report"]["cycle_verdicts"][0]["verdict"]
    )
    # the whole-trace Geweke of this chain is marked not applicable, in the table and chains.csv
    (chain,) = saved["chains"]
    assert chain["stationary"] is None and chain["not_applicable"].startswith("cyclical")
    assert "n/a (cyclical: per cycle below)" in text
    with (out / "chains.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["not_applicable"].startswith("cyclical schedule")


def test_cycle_assignment_follows_the_schedule(tmp_path: Path) -> None:
    """A real cSGLD config (burn-in ending mid-cycle, thinning across cycles): the report's
    cycles are the schedule's: every kept step lies in the sampling stage, the step size never
    restarts between two kept steps of one reported cycle, and restarts between cycles."""
    cfg = compose_train(
        [
            "sampler=csgld",
            "sampler.warmup.steps=3",
            "sampler.schedule.cycle_length=10",
            "sampler.burn_in=7",
            "sampler.thin=3",
            "sampler.num_samples=7",
        ]
    )
    plan = build_chain_plan(cfg)
    assert plan is not None and isinstance(plan.schedule, CyclicalCosine)
    kept = plan.kept_steps()
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    assert isinstance(sampler, dict)
    run = fake_run_folder(
        tmp_path / "0_tiny_mrpc_csgld_s0",
        _members([[0.5 + 0.01 * i] * 4 for i in range(len(kept))]),
        LABELS,
        sampler="csgld",
        sampler_config={k: v for k, v in sampler.items() if k != "name"},
        steps=kept,
    )
    (group,) = group_runs([load_run(run)])
    cycles, notes = cycle_rows(group)
    assert notes == []
    schedule, w = plan.schedule, plan.warmup_steps
    assert [t for c in cycles for t in c["kept_steps"]] == kept
    for c in cycles:
        assert all(schedule.collects(t - w) for t in c["kept_steps"])
        assert {schedule.cycle(t - w) for t in c["kept_steps"]} == {c["cycle"]}
        first, last = c["kept_steps"][0] - w, c["kept_steps"][-1] - w
        lrs = [schedule.lr(s) for s in range(first, last + 1)]
        assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))  # no restart inside
    for a, b in zip(cycles, cycles[1:], strict=False):
        s0, s1 = a["kept_steps"][-1] - w, b["kept_steps"][0] - w
        assert any(schedule.lr(s + 1) > schedule.lr(s) for s in range(s0, s1))  # a restart
    # by hand: eligible s = 7, 8, 9 | 15..19 | 25..29 | 35..39 | 45.. (s % 10 in 5..9, s >= 7);
    # every 3rd: s = 9 | 17 | 25, 28 | 36, 39 | 47, i.e. t = s + 3
    assert [c["kept_steps"] for c in cycles] == [[12], [20], [28, 31], [39, 42], [50]]


def _rng_trace(cycle_length: int, cycles: int, drift_cycle: int) -> dict[str, np.ndarray]:
    """u per sampler step: 20 falling to 5 in each exploration stage, white noise around 5 in
    each sampling stage, except for a linear drift in the sampling stage of ``drift_cycle``;
    nll and probe_loglik white noise."""
    rng = np.random.default_rng(7)
    s = np.arange(cycle_length * cycles)
    r = s % cycle_length
    half = cycle_length // 2
    u = np.where(r < half, 20 - 15 * r / half, 5 + 0.3 * rng.standard_normal(len(s)))
    drift = (s // cycle_length == drift_cycle) & (r >= half)
    u = u + np.where(drift, 0.05 * (r - half), 0.0)
    noise = 0.1 * rng.standard_normal((2, len(s)))
    return {"step": s, "u": u, "nll": 0.5 + noise[0], "probe_loglik": -0.5 + noise[1]}


def test_geweke_per_cycle_sampling_stage_and_not_over_the_phases(tmp_path: Path) -> None:
    """Cycles of 100 steps, 50 in the sampling stage: the sampling stage of cycle 0 is white
    noise, that of cycle 1 drifts. The whole trace alternates 20 -> 5 ramps with noise, which a
    whole-trace Geweke z compares; the report marks it not applicable and checks each cycle's
    sampling stage."""
    trace = _rng_trace(100, 2, drift_cycle=1)
    sampler = _csgld(cycle_length=100, warmup=0, burn_in=0, thin=10, num_samples=10)
    run = fake_run_folder(
        tmp_path / "0_tiny_mrpc_csgld_s0",
        _members([[0.4, 0.6, 0.4, 0.6]] * 10),
        LABELS,
        sampler="csgld",
        sampler_config=sampler,
        steps=[59, 69, 79, 89, 99, 159, 169, 179, 189, 199],
        trace={**trace, "kept": np.isin(trace["step"], [59, 99, 159, 199])},
        # back and forth: each cycle walks 4 and ends where it began; the cycles end 3 apart
        samples={"lora_A": np.array([[0], [1], [0], [1], [0], [3], [4], [3], [4], [3]])},
    )
    (group,) = group_runs([load_run(run)])
    # a whole-trace Geweke z (first 10% on an exploration ramp, autocorrelation-aware errors
    # inflated by the ramps) passes this chain and misses the drift within cycle 1
    assert within_chain(trace)["stationary"] is True
    (chain,) = chain_rows(group)
    assert chain["stationary"] is None and chain["summaries"] == {}
    assert "not applicable to 1 cyclical chain" in config_verdict([chain])
    cycles, _ = cycle_rows(group)
    assert [c["n_steps"] for c in cycles] == [50, 50]
    assert [c["stationary"] for c in cycles] == [True, False]
    assert cycles[1]["drifting"] == ["u"]
    assert cycles[0]["trace_means"]["u"] == pytest.approx(trace["u"][50:100].mean())
    assert cycles[1]["trace_means"]["u"] == pytest.approx(trace["u"][150:200].mean())
    assert cycles[1]["previous"]["walk"] == 4.0 and cycles[1]["previous"]["jump"] == 3.0
    assert cycles[1]["previous"]["jump_over_walk"] == 0.75
    assert "1/2 cycles show no drift" in chain_verdict(cycles)
    assert "still settling: cycle 1 (u)" in chain_verdict(cycles)


def test_a_chain_whose_kept_steps_are_not_its_plans_is_skipped_with_a_note(tmp_path: Path) -> None:
    run = fake_run_folder(
        tmp_path / "0_tiny_mrpc_csgld_s0",
        _members(P1),
        LABELS,
        sampler="csgld",
        sampler_config=_csgld(cycle_length=8, warmup=3, burn_in=0, thin=2, num_samples=6),
        steps=KEPT,  # the plan of warm-up 2, not 3
    )
    (group,) = group_runs([load_run(run)])
    cycles, notes = cycle_rows(group)
    assert cycles == [] and "are not those of the plan its config gives" in notes[0]


def test_non_cyclical_chains_have_no_cycles(tmp_path: Path) -> None:
    run = fake_run_folder(
        tmp_path / "0_tiny_mrpc_sgld_s0", _members(P1), LABELS, sampler="sgld", steps=KEPT
    )
    (group,) = group_runs([load_run(run)])
    assert cycle_rows(group) == ([], [])
