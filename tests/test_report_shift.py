"""The report's "Under shift" tables against known answers, on hand-made folders (no model).

Two MAP seeds and two SGLD chains trained on OBQA, with evaluation folders as ``evaluate ...
shift=[arc_e,arc_c]`` writes them: each MAP seed, the deep ensemble, SGLD seed 0 alone (seed 1
has none), both chains pooled with all samples, and one chain at k=2 (no row's members). Every
shift predictive is built so that its mean predictive puts 0.85 on the label (right) or 0.55 on
another letter and 0.15 on the label (wrong), so with a fraction ``a`` right:
acc = a, NLL = -(a log 0.85 + (1 - a) log 0.15), ECE = 0.15 a + 0.55 (1 - a).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.metrics import ensemble_metrics
from bayesian_lora.evaluation.results import shift_metrics
from bayesian_lora.evaluation.write import (
    METRICS_FILE,
    load_predictions,
    save_predictions,
    write_json,
)
from bayesian_lora.report import build_report
from bayesian_lora.reporting.bootstrap import (
    Bootstrap,
    bootstrap_indices,
    mean_replicates,
    percentile_ci,
    replicates,
)
from tests.helpers import fake_run_folder

C = 5  # answer letters
N_IN = 20  # OBQA test examples
SHIFT_N = {"arc_e": 20, "arc_c": 10}
B = 200  # bootstrap resamples (the report's are set to match)
RIGHT, WRONG, LABEL_IF_WRONG = 0.85, 0.55, 0.15

#: right answers per shift task of each evaluation folder (name -> (arc_e, arc_c))
RIGHT_OF = {
    "map_s0": (10, 4),
    "map_s1": (14, 6),
    "deep_ensemble": (16, 7),
    "sgld_s0": (12, 5),
    "pooled_all": (18, 8),
    "chain_k2": (1, 1),
}


def labels_of(n: int) -> np.ndarray:
    return (np.arange(n) * 3) % C


def predictive(n: int, right: int) -> np.ndarray:
    """``[n, 5]``: the first ``right`` examples 0.85 on the label (0.0375 elsewhere), the rest
    0.55 on the next letter, 0.15 on the label and 0.1 on the other three."""
    y = labels_of(n)
    p = np.full((n, C), 0.1)
    p[:right] = (1 - RIGHT) / (C - 1)
    p[np.arange(right), y[:right]] = RIGHT
    wrong = np.arange(right, n)
    p[wrong, y[wrong]] = LABEL_IF_WRONG
    p[wrong, (y[wrong] + 1) % C] = WRONG
    return p


def members(p: np.ndarray, m: int) -> np.ndarray:
    """``m`` members whose mean is ``p``: 0.03 moved between the label and a letter that is
    neither the label nor the argmax, +, -, 0 in turn (so a member's NLL is not the mean's)."""
    y = labels_of(len(p))
    rows = np.arange(len(p))
    signs = [(+1, -1, 0)[i % 3] for i in range(m)]
    if m % 3 == 1:
        signs[-1] = 0
    out = np.repeat(p[None], m, axis=0)
    for i, s in enumerate(signs):
        out[i, rows, y] += 0.03 * s
        out[i, rows, (y + 2) % C] -= 0.03 * s
    return out


def hand(a: float) -> dict[str, float]:
    """Acc, NLL and ECE of a predictive() with a fraction ``a`` right."""
    return {
        "acc": a,
        "nll": -(a * math.log(RIGHT) + (1 - a) * math.log(LABEL_IF_WRONG)),
        "ece": (1 - RIGHT) * a + WRONG * (1 - a),
    }


def in_domain(rng: np.random.Generator, m: int) -> np.ndarray:
    return rng.dirichlet(np.ones(C), size=(m, N_IN))


def shift_eval(
    folder: Path,
    runs: list[Path],
    in_preds: np.ndarray,
    right: tuple[int, int],
    calibration: dict[str, Any] | None = None,
) -> None:
    """What ``evaluate ... shift=[arc_e,arc_c]`` writes, reduced to what the report reads; its
    shift block from the real ``shift_metrics``."""
    m = in_preds.shape[0]
    y_in = labels_of(N_IN)
    shifted = {
        t: (members(predictive(n, r), m).astype(np.float32), labels_of(n))
        for (t, n), r in zip(SHIFT_N.items(), right, strict=True)
    }
    extra: dict[str, np.ndarray] = {}
    for t, (preds, y) in shifted.items():
        extra[f"shift_{t}_predictions"], extra[f"shift_{t}_labels"] = preds, y
    save_predictions(folder / "predictions.safetensors", in_preds, y_in, extra)
    ensemble = ensemble_metrics(in_preds.astype(np.float32), y_in)
    result: dict[str, Any] = {
        "kind": "map" if len(runs) == 1 else "deep_ensemble",
        "split": "test",
        "mc_dropout": 0,
        "num_members": m,
        "runs": [{"run_dir": str(r)} for r in runs],
        "ensemble": ensemble,
        "shift": shift_metrics(get_task("obqa"), ensemble, shifted, N_IN),
    }
    if calibration is not None:
        result["calibration"] = calibration
    write_json(folder / METRICS_FILE, result)


def _report(root: Path, out: Path) -> dict[str, Any]:
    return build_report([root], out_dir=out, plots=False, bootstrap=Bootstrap(B, 0))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("obqa_sweep")
    rng = np.random.default_rng(0)
    y = labels_of(N_IN)
    maps = [
        fake_run_folder(root / f"{s}_tiny_obqa_map_s{s}", in_domain(rng, 1), y, seed=s, task="obqa")
        for s in range(2)
    ]
    chains = [
        fake_run_folder(
            root / f"{2 + s}_tiny_obqa_sgld_s{s}",
            in_domain(rng, 3),
            y,
            sampler="sgld",
            seed=s,
            task="obqa",
        )
        for s in range(2)
    ]
    # the in-domain report before any shift evaluation exists
    before_out = tmp_path_factory.mktemp("before")
    before = _report(root, before_out)
    own = {p: load_predictions(p / "predictions.safetensors")["predictions"] for p in maps + chains}
    for s, run in enumerate(maps):
        shift_eval(run / "evaluation", [run], own[run], RIGHT_OF[f"map_s{s}"])
    both = np.concatenate([own[r] for r in maps])
    calibration = {
        "method": "temperature",
        "temperature": 1.3,
        "ensemble": ensemble_metrics(both, y),
    }
    shift_eval(root / "evaluation_de", maps, both, RIGHT_OF["deep_ensemble"], calibration)
    shift_eval(chains[0] / "evaluation", [chains[0]], own[chains[0]], RIGHT_OF["sgld_s0"])
    pooled = np.concatenate([own[r] for r in chains])
    shift_eval(root / "evaluation_pooled", chains, pooled, RIGHT_OF["pooled_all"])
    shift_eval(chains[0] / "evaluation_k2", [chains[0]], own[chains[0]][1:], RIGHT_OF["chain_k2"])
    out = tmp_path_factory.mktemp("report")
    return {
        "root": root,
        "out": out,
        "report": _report(root, out),
        "before": before,
        "before_out": before_out,
    }


def _row(report: dict[str, Any], method: str, task: str) -> dict[str, Any]:
    (row,) = [
        r for r in report["shift"]["rows"] if r["method"] == method and r["shift_task"] == task
    ]
    return row


def _frac(name: str, task: str) -> float:
    return RIGHT_OF[name][list(SHIFT_N).index(task)] / SHIFT_N[task]


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("task", list(SHIFT_N))
def test_ensemble_rows_are_the_hand_computed_metrics_of_their_mean_predictive(
    sweep: dict[str, Any], task: str
) -> None:
    for method, name, members_ in (
        ("deep_ensemble", "deep_ensemble", 2),
        ("sgld pooled (all/chain)", "pooled_all", 6),
    ):
        row = _row(sweep["report"], method, task)
        want = hand(_frac(name, task))
        for key in ("acc", "nll", "ece"):
            assert row[f"{key}_mean"] == pytest.approx(want[key], rel=1e-5), (method, key)
            assert f"{key}_std" not in row  # one ensemble: no sd
        assert row["members"] == members_ and row["n_examples"] == SHIFT_N[task]
        assert row["evaluations"] == 1


@pytest.mark.parametrize("task", list(SHIFT_N))
def test_rows_over_seeds_are_the_mean_and_sd_of_each_seeds_evaluation(
    sweep: dict[str, Any], task: str
) -> None:
    row = _row(sweep["report"], "map", task)
    per_seed = [hand(_frac(f"map_s{s}", task)) for s in range(2)]
    for key in ("acc", "nll", "ece"):
        values = [p[key] for p in per_seed]
        assert row[f"{key}_mean"] == pytest.approx(np.mean(values), rel=1e-5), key
        assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-4), key
    assert row["seeds"] == [0, 1] and row["n"] == 2 and row["acc_n"] == 2
    # SGLD: only seed 0 was evaluated under shift (and with all 3 samples): 1 of 2 seeds
    sgld = _row(sweep["report"], "sgld", task)
    assert sgld["seeds"] == [0] and sgld["acc_n"] == 1 and sgld["n"] == 2
    assert sgld["acc_mean"] == pytest.approx(_frac("sgld_s0", task))
    assert math.isnan(sgld["acc_std"])


def test_recomputed_numbers_equal_each_evaluations_metrics_json(sweep: dict[str, Any]) -> None:
    for row in sweep["report"]["shift"]["rows"]:
        saved = [
            json.loads((Path(p) / METRICS_FILE).read_text())["shift"]["tasks"][row["shift_task"]]
            for p in row["from"]
        ]
        assert len(saved) == row["evaluations"]
        for key in ("acc", "nll", "ece", "brier"):
            want = np.mean([s[key] for s in saved])
            assert row[f"{key}_mean"] == pytest.approx(want, rel=1e-6, abs=1e-9), (row, key)
        assert row["n_examples"] == saved[0]["n"]


def test_cis_bracket_the_estimate_and_use_the_same_resamples_in_every_row(
    sweep: dict[str, Any],
) -> None:
    report = sweep["report"]
    for row in report["shift"]["rows"]:
        for key in ("acc", "nll", "ece"):
            assert row[f"{key}_ci_low"] <= row[f"{key}_mean"] <= row[f"{key}_ci_high"], row
        assert row["paired"]
    for task, n in SHIFT_N.items():
        idx = bootstrap_indices(n, B, 0)  # depends on (n, B, seed) only: one set per shift task
        y = labels_of(n)
        de = replicates(predictive(n, RIGHT_OF["deep_ensemble"][list(SHIFT_N).index(task)]), y, idx)
        maps = mean_replicates(
            [
                replicates(predictive(n, RIGHT_OF[f"map_s{s}"][list(SHIFT_N).index(task)]), y, idx)
                for s in range(2)
            ]
        )
        for method, reps in (("deep_ensemble", de), ("map", maps)):
            row = _row(report, method, task)
            for key in ("acc", "nll", "ece"):
                lo, hi = percentile_ci(reps[key])
                assert row[f"{key}_ci_low"] == pytest.approx(lo, abs=1e-6), (method, task, key)
                assert row[f"{key}_ci_high"] == pytest.approx(hi, abs=1e-6), (method, task, key)
        # the paired difference to the MAP row: on the same resamples
        row = _row(report, "deep_ensemble", task)
        assert row["delta_vs"] == "map"
        lo, hi = percentile_ci(de["nll"] - maps["nll"])
        assert row["nll_delta_ci_low"] == pytest.approx(lo, abs=1e-6)
        assert row["nll_delta_ci_high"] == pytest.approx(hi, abs=1e-6)
        assert row["nll_delta_mean"] == pytest.approx(
            row["nll_mean"] - _row(report, "map", task)["nll_mean"]
        )


# ----------------------------------------------------------------------------- rows without one


def test_rows_without_a_shift_evaluation_get_a_note_and_no_numbers(sweep: dict[str, Any]) -> None:
    report = sweep["report"]
    (section,) = report["shift"]["sections"]
    assert (section["model"], section["task"], section["shift_tasks"]) == (
        "tiny",
        "obqa",
        ["arc_e", "arc_c"],
    )
    shifted = {r["method"] for r in report["shift"]["rows"]}
    assert shifted == {"map", "deep_ensemble", "sgld", "sgld pooled (all/chain)"}
    missing = {m["method"]: m["reason"] for m in section["missing"]}
    assert set(missing) == {"sgld pooled (1/chain)", "deep_ensemble + temperature"}
    assert "exactly its 2 runs and 2 members" in missing["sgld pooled (1/chain)"]
    assert "uncalibrated" in missing["deep_ensemble + temperature"]
    # the chain evaluated at k=2 is no row's members: named, not used
    assert any(n.startswith("evaluation_k2:") for n in section["notes"]), section["notes"]
    text = (sweep["out"] / "report.md").read_text()
    assert "- No shift evaluation for **sgld pooled (1/chain)**:" in text
    table = text.split("### tiny trained on obqa")[1]
    assert "sgld pooled (1/chain) |" not in table.split("\n- ")[0]


def test_no_shift_evaluation_no_section(sweep: dict[str, Any]) -> None:
    before = sweep["before"]
    assert before["shift"] == {"sections": [], "rows": []}
    assert "Under shift" not in (sweep["before_out"] / "report.md").read_text()
    assert not (sweep["before_out"] / "shift.csv").exists()


# ----------------------------------------------------------------------------- outputs


def test_markdown_csv_and_json(sweep: dict[str, Any]) -> None:
    out = sweep["out"]
    text = (out / "report.md").read_text()
    assert "## Under shift" in text and "### tiny trained on obqa" in text
    head = next(
        ln for ln in text.split("### tiny trained on obqa")[1].splitlines() if ln.startswith("|")
    )
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert cells == [
        "method",
        "n",
        "members",
        *[f"{t} {c}" for t in SHIFT_N for c in ("acc (%)", "nll", "ece (%)", "n")],
    ]
    de = next(ln for ln in text.splitlines() if ln.startswith("| deep_ensemble ") and "[" in ln)
    assert f"{100 * _frac('deep_ensemble', 'arc_e'):.2f} [" in de
    sgld = next(ln for ln in text.splitlines() if ln.startswith("| sgld ") and "(n=1)" in ln)
    assert sgld.count("(n=1)") == 6  # acc, nll, ece of both shift tasks: 1 of 2 seeds
    assert "- On arc_e, lowest NLL: **sgld pooled (all/chain)**" in text
    with open(out / "shift.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["shift_task"] == "arc_e" and rows[0]["n_examples"] == "20"
    first = rows[0]
    assert first["method"] == "map" and float(first["acc_pct_mean"]) == pytest.approx(60.0)
    assert {"nll_ci_low", "ece_pct_ci_high", "nll_delta_mean", "train_grad_evals"} <= set(first)
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["shift"]["rows"]) == 8


def test_the_in_domain_table_is_unchanged(sweep: dict[str, Any]) -> None:
    def plain(report: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.items() if k != "runs"}
            for r in report["rows"]
            if "temperature" not in r["method"]
        ]

    assert plain(sweep["report"]) == plain(sweep["before"])


def test_a_metrics_json_that_disagrees_with_its_predictions_is_noted(
    sweep: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep["root"], copy)
    path = copy / "evaluation_pooled" / METRICS_FILE
    saved = json.loads(path.read_text())
    saved["shift"]["tasks"]["arc_c"]["nll"] += 0.1
    path.write_text(json.dumps(saved))
    report = _report(copy, tmp_path / "out")
    (section,) = report["shift"]["sections"]
    assert any(
        "evaluation_pooled: arc_c recomputed" in n and "nll" in n for n in section["notes"]
    ), section["notes"]
    row = _row(report, "sgld pooled (all/chain)", "arc_c")
    assert row["nll_mean"] == pytest.approx(hand(_frac("pooled_all", "arc_c"))["nll"], rel=1e-5)


def test_a_row_read_from_evaluation_folders_takes_their_shift_block(sweep: dict[str, Any]) -> None:
    """Rows the row machinery reads from evaluation folders (``from``: MC dropout, the GLM
    predictive) are scored under shift by those folders, over seeds when there are several."""
    from bayesian_lora.reporting.discovery import find_eval_folders, find_run_folders, load_run
    from bayesian_lora.reporting.rows import RowContext
    from bayesian_lora.reporting.shift import shift_report

    root = sweep["root"]
    runs = [load_run(p) for p in find_run_folders([root])]
    ctx = RowContext(Bootstrap(B, 0), find_eval_folders([root], runs))
    maps = sorted(root.glob("*_map_s*"))
    row = {**_in_domain_row(sweep, "map"), "method": "map + variant", "kind": "variant"}
    row["from"] = [str(p / "evaluation") for p in maps]
    out = shift_report([*sweep["report"]["rows"], row], runs, ctx)
    mine = {r["shift_task"]: r for r in out["rows"] if r["method"] == "map + variant"}
    for task, r in mine.items():
        assert r["acc_mean"] == pytest.approx(_row(sweep["report"], "map", task)["acc_mean"])
        assert r["acc_n"] == 2 and r["seeds"] == [0, 1]
    row["from"] = [str(root / "1_tiny_obqa_map_s1")]  # a folder without a shift block
    out = shift_report([*sweep["report"]["rows"], row], runs, ctx)
    (section,) = out["sections"]
    assert {
        "method": "map + variant",
        "reason": "its evaluation folder(s) have no shift block",
    } in (section["missing"])


def _in_domain_row(sweep: dict[str, Any], method: str) -> dict[str, Any]:
    return dict(next(r for r in sweep["report"]["rows"] if r["method"] == method))
