"""The report's "Under shift" tables against known answers, on hand-made folders (no model).

Two MAP seeds and two SGLD chains trained on OBQA, with evaluation folders as ``evaluate ...
shift=[arc_e,arc_c]`` writes them: each MAP seed, the deep ensemble, SGLD seed 0 alone (seed 1
has none), both chains pooled with all samples, and one chain at k=2 (no row's members). Every
shift predictive is built so that its mean predictive puts 0.85 on the label (right) or 0.55 on
another letter and 0.15 on the label (wrong), so with a fraction ``a`` right:
acc = a, NLL = -(a log 0.85 + (1 - a) log 0.15), ECE = 0.15 a + 0.55 (1 - a).

A second sweep (``seeds``) has only each run's own shift evaluation (SGLD seed 1 too): its deep
ensemble and pooled rows are combined from those evaluations' saved member predictions. The mean
of two such predictives with r0 <= r1 right puts 0.85 on the label for the first r0 examples,
(0.85 + 0.15) / 2 = 0.5 (still the argmax) for the next r1 - r0 and 0.15 for the rest:
acc = r1 / n, NLL = -(r0 log 0.85 + (r1 - r0) log 0.5 + (n - r1) log 0.15) / n,
ECE = (0.15 r0 + 0.5 (r1 - r0) + 0.55 (n - r1)) / n (0.85, 0.5 and 0.55 fall in different bins).
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
    "sgld_s1": (16, 8),  # the second sweep only
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


def two(r0: int, r1: int, n: int) -> dict[str, float]:
    """Acc, NLL and ECE of the mean of predictive(n, r0) and predictive(n, r1), r0 <= r1."""
    mixed = (RIGHT + LABEL_IF_WRONG) / 2
    return {
        "acc": r1 / n,
        "nll": -(
            r0 * math.log(RIGHT) + (r1 - r0) * math.log(mixed) + (n - r1) * math.log(LABEL_IF_WRONG)
        )
        / n,
        "ece": ((1 - RIGHT) * r0 + (1 - mixed) * (r1 - r0) + WRONG * (n - r1)) / n,
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
    shifted = {
        t: (members(predictive(n, r), m).astype(np.float32), labels_of(n))
        for (t, n), r in zip(SHIFT_N.items(), right, strict=True)
    }
    write_eval(folder, runs, in_preds, shifted, calibration)


def write_eval(
    folder: Path,
    runs: list[Path],
    in_preds: np.ndarray,
    shifted: dict[str, tuple[np.ndarray, np.ndarray]],
    calibration: dict[str, Any] | None = None,
    samples_used: list[list[int]] | None = None,
) -> None:
    """An evaluation folder of ``runs`` (``samples_used`` recorded per run where given) that
    scored the shift tasks of ``shifted`` (task -> member predictions, labels)."""
    m = in_preds.shape[0]
    y_in = labels_of(N_IN)
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
        "runs": [
            {"run_dir": str(r), **({} if samples_used is None else {"samples_used": u})}
            for r, u in zip(runs, samples_used or [None] * len(runs), strict=True)
        ],
        "ensemble": ensemble,
        "shift": shift_metrics(get_task("obqa"), ensemble, shifted, N_IN),
    }
    if calibration is not None:
        result["calibration"] = calibration
    write_json(folder / METRICS_FILE, result)


def _report(root: Path, out: Path) -> dict[str, Any]:
    return build_report([root], out_dir=out, plots=False, bootstrap=Bootstrap(B, 0))


def _runs(root: Path) -> tuple[list[Path], list[Path]]:
    """Two MAP seeds (one sample each) and two SGLD chains (three kept samples each)."""
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
    return maps, chains


def _own(run: Path) -> np.ndarray:
    return load_predictions(run / "predictions.safetensors")["predictions"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("obqa_sweep")
    y = labels_of(N_IN)
    maps, chains = _runs(root)
    # the in-domain report before any shift evaluation exists
    before_out = tmp_path_factory.mktemp("before")
    before = _report(root, before_out)
    own = {p: _own(p) for p in maps + chains}
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
    # nor can it be combined from its runs' own evaluations: seed 1 has none
    assert "none for 3_tiny_obqa_sgld_s1" in missing["sgld pooled (1/chain)"]
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


# ----------------------------------------------------------------------------- combined from seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The runs of ``sweep`` with each run's own shift evaluation only (both SGLD chains)."""
    root = tmp_path_factory.mktemp("obqa_seeds")
    maps, chains = _runs(root)
    for name, run in zip(("map_s0", "map_s1", "sgld_s0", "sgld_s1"), maps + chains, strict=True):
        shift_eval(run / "evaluation", [run], _own(run), RIGHT_OF[name])
    out = tmp_path_factory.mktemp("seeds_report")
    return {"root": root, "out": out, "report": _report(root, out), "maps": maps, "chains": chains}


ENSEMBLES = (  # the ensemble rows of ``seeds``: (method, members, the two runs' right answers)
    ("deep_ensemble", 2, ("map_s0", "map_s1")),
    ("sgld pooled (1/chain)", 2, ("sgld_s0", "sgld_s1")),
    ("sgld pooled (all/chain)", 6, ("sgld_s0", "sgld_s1")),
)


@pytest.mark.parametrize("task", list(SHIFT_N))
def test_ensemble_rows_combined_from_each_runs_evaluation_are_hand_computed(
    seeds: dict[str, Any], task: str
) -> None:
    """Each run's members' mean is its predictive(), and so is a chain's last kept sample (the
    1/chain member: +0.03 / -0.03 / 0 moved on members 0 / 1 / 2), so every ensemble's mean
    predictive is the mean of the two runs' predictive()s."""
    n, at = SHIFT_N[task], list(SHIFT_N).index(task)
    for method, m, (a, b) in ENSEMBLES:
        row = _row(seeds["report"], method, task)
        want = two(RIGHT_OF[a][at], RIGHT_OF[b][at], n)
        for key in ("acc", "nll", "ece"):
            assert row[f"{key}_mean"] == pytest.approx(want[key], rel=1e-5), (method, key)
            assert f"{key}_std" not in row
        assert row["members"] == m and row["n_examples"] == n and row["combined_from_runs"]
        runs = seeds["maps"] if method == "deep_ensemble" else seeds["chains"]
        assert row["from"] == [str(r / "evaluation") for r in runs] and row["evaluations"] == 2
        assert row["paired"] and row["delta_vs"] == "map"


def test_combined_rows_cis_are_paired_with_the_other_rows(seeds: dict[str, Any]) -> None:
    report = seeds["report"]
    for task, n in SHIFT_N.items():
        at = list(SHIFT_N).index(task)
        idx = bootstrap_indices(n, B, 0)  # one set per shift task
        y = labels_of(n)

        maps = mean_replicates(
            [replicates(predictive(n, RIGHT_OF[f"map_s{s}"][at]), y, idx) for s in range(2)]
        )
        for method, _, (a, b) in ENSEMBLES:
            mean = (predictive(n, RIGHT_OF[a][at]) + predictive(n, RIGHT_OF[b][at])) / 2
            mine = replicates(mean, y, idx)
            row = _row(report, method, task)
            for key in ("acc", "nll", "ece"):
                lo, hi = percentile_ci(mine[key])
                assert row[f"{key}_ci_low"] == pytest.approx(lo, abs=1e-6), (method, task, key)
                assert row[f"{key}_ci_high"] == pytest.approx(hi, abs=1e-6), (method, task, key)
            lo, hi = percentile_ci(mine["nll"] - maps["nll"])  # on the MAP row's resamples
            assert row["nll_delta_ci_low"] == pytest.approx(lo, abs=1e-6), (method, task)
            assert row["nll_delta_ci_high"] == pytest.approx(hi, abs=1e-6), (method, task)


def test_the_notes_name_the_combined_rows(seeds: dict[str, Any]) -> None:
    (section,) = seeds["report"]["shift"]["sections"]
    assert section["missing"] == []  # every row of the table has its shift numbers
    text = (seeds["out"] / "report.md").read_text()
    for method, m, (a, _) in ENSEMBLES:
        run = "0_tiny_obqa_map_s0" if a == "map_s0" else "2_tiny_obqa_sgld_s0"
        (note,) = [n for n in section["notes"] if n.startswith(f"{method} on arc_e, arc_c:")]
        assert "combined from its runs' own shift evaluations" in note
        assert f"of the row's {m} members: {run}/evaluation, " in note
        assert f"- {note}" in text
    de = next(ln for ln in text.splitlines() if ln.startswith("| deep_ensemble ") and "[" in ln)
    assert f"| {100 * two(10, 14, 20)['acc']:.2f} [" in de


def test_an_evaluation_of_the_ensemble_comes_first(sweep: dict[str, Any]) -> None:
    """``sweep`` has both MAP seeds' own shift evaluations and one of the deep ensemble (with
    other numbers): the row is the deep ensemble's evaluation, nothing combined."""
    report = sweep["report"]
    for task in SHIFT_N:
        row = _row(report, "deep_ensemble", task)
        assert row["from"] == [str(sweep["root"] / "evaluation_de")]
        assert row["acc_mean"] == pytest.approx(_frac("deep_ensemble", task))
        assert "combined_from_runs" not in row
    (section,) = report["shift"]["sections"]
    assert not [n for n in section["notes"] if "combined" in n], section["notes"]


def _rr(arrays: list[np.ndarray]) -> np.ndarray:
    """Members round-robin over the runs, as ``evaluate 'run_dirs=[...]'`` orders them."""
    return np.stack([a[j] for j in range(len(arrays[0])) for a in arrays])


def test_an_ensembles_evaluation_and_its_combination_agree(
    seeds: dict[str, Any], tmp_path: Path
) -> None:
    """Evaluations of the ensembles whose members' shift predictions are exactly those the
    runs' own evaluations saved (as a real evaluation of the same samples would be): the
    rows they give are the combined rows' to 1e-9, and they take precedence; the 1/chain one
    scored arc_e only, so its arc_c row is still combined."""
    root = tmp_path / "sweep"
    shutil.copytree(seeds["root"], root)
    maps, chains = ([root / p.name for p in seeds[k]] for k in ("maps", "chains"))
    saved = {
        r: load_predictions(r / "evaluation" / "predictions.safetensors") for r in maps + chains
    }

    def shifted(runs: list[Path], take: list[int] | None, tasks: list[str]) -> dict[str, Any]:
        return {
            t: (
                _rr([saved[r][f"shift_{t}_predictions"][take or slice(None)] for r in runs]),
                labels_of(SHIFT_N[t]),
            )
            for t in tasks
        }

    both = list(SHIFT_N)
    write_eval(
        root / "evaluation_de", maps, _rr([_own(r) for r in maps]), shifted(maps, None, both)
    )
    write_eval(
        root / "evaluation_pooled",
        chains,
        _rr([_own(r) for r in chains]),
        shifted(chains, None, both),
    )
    write_eval(
        root / "evaluation_pooled_k2",
        chains,
        _rr([_own(r)[[2]] for r in chains]),
        shifted(chains, [2], ["arc_e"]),
        samples_used=[[2], [2]],
    )
    report = _report(root, tmp_path / "out")
    (section,) = report["shift"]["sections"]
    combined = [n for n in section["notes"] if "combined from" in n]
    assert len(combined) == 1 and combined[0].startswith("sgld pooled (1/chain) on arc_c:")
    expect_from = {
        ("deep_ensemble", "arc_e"): "evaluation_de",
        ("deep_ensemble", "arc_c"): "evaluation_de",
        ("sgld pooled (all/chain)", "arc_e"): "evaluation_pooled",
        ("sgld pooled (all/chain)", "arc_c"): "evaluation_pooled",
        ("sgld pooled (1/chain)", "arc_e"): "evaluation_pooled_k2",
    }
    assert len(report["shift"]["rows"]) == len(seeds["report"]["shift"]["rows"])
    for want in seeds["report"]["shift"]["rows"]:
        got = _row(report, want["method"], want["shift_task"])
        where = expect_from.get((want["method"], want["shift_task"]))
        if where is not None:
            assert got["from"] == [str(root / where)] and "combined_from_runs" not in got
        numbers = [k for k, v in want.items() if isinstance(v, float) and "seconds" not in k]
        assert numbers and set(numbers) <= set(got)
        for k in numbers:
            assert got[k] == pytest.approx(want[k], abs=1e-9, nan_ok=True), (got["method"], k)


def _rewrite(run: Path, right: tuple[int, int], shift_n: dict[str, int], shift: int) -> None:
    """Replace a run's own evaluation by one of the shift tasks (and sizes) of ``shift_n``, its
    arc_c labels moved by ``shift`` letters (other examples of the same number)."""
    own = _own(run)
    write_eval(
        run / "evaluation",
        [run],
        own,
        {
            t: (
                members(predictive(n, r), len(own)).astype(np.float32),
                (labels_of(n) + (shift if t == "arc_c" else 0)) % C,
            )
            for (t, n), r in zip(shift_n.items(), right, strict=False)
        },
    )


@pytest.mark.parametrize(
    ("shift_n", "shift", "why"),
    [
        (
            {"arc_e": 20},
            0,
            "1_tiny_obqa_map_s1 scored no arc_c (its runs' evaluations cover different",
        ),
        (
            {"arc_e": 20, "arc_c": 8},
            0,
            "they scored different examples (10/8; another ood_max_samples?)",
        ),
        (
            {"arc_e": 20, "arc_c": 10},
            1,
            "they scored different examples (10/10; another ood_max_samples?)",
        ),
    ],
    ids=["other_shift_tasks", "fewer_examples", "other_labels"],
)
def test_runs_evaluations_of_other_tasks_or_examples_are_not_combined(
    seeds: dict[str, Any], tmp_path: Path, shift_n: dict[str, int], shift: int, why: str
) -> None:
    """MAP seed 1 evaluated on arc_e only, on 8 arc_c examples against seed 0's 10, or on 10
    with other labels: the deep ensemble gets no arc_c row, a note says why; its arc_e row is
    still combined."""
    root = tmp_path / "sweep"
    shutil.copytree(seeds["root"], root)
    _rewrite(root / seeds["maps"][1].name, RIGHT_OF["map_s1"], shift_n, shift)
    report = _report(root, tmp_path / "out")
    (section,) = report["shift"]["sections"]
    mine = {r["shift_task"]: r for r in report["shift"]["rows"] if r["method"] == "deep_ensemble"}
    assert set(mine) == {"arc_e"}
    assert mine["arc_e"]["acc_mean"] == pytest.approx(two(10, 14, 20)["acc"])
    note = f"deep_ensemble on arc_c: not combined from its runs' own shift evaluations: {why}"
    assert any(n.startswith(note) for n in section["notes"]), section["notes"]
    assert any(n.startswith("deep_ensemble on arc_e: combined") for n in section["notes"])
    # the pooled chains' rows are unaffected
    assert {
        r["shift_task"] for r in report["shift"]["rows"] if r["method"] == "sgld pooled (1/chain)"
    } == set(SHIFT_N)


def test_runs_evaluations_on_as_many_examples_are_chosen(
    seeds: dict[str, Any], tmp_path: Path
) -> None:
    """MAP seed 1 scored 8 arc_c examples; seed 0 has its 10 and, in another folder, the same
    8: the deep ensemble's arc_c row combines the two evaluations of 8."""
    root = tmp_path / "sweep"
    shutil.copytree(seeds["root"], root)
    s0, s1 = (root / p.name for p in seeds["maps"])
    _rewrite(s1, RIGHT_OF["map_s1"], {"arc_e": 20, "arc_c": 8}, 0)
    _rewrite(s0, RIGHT_OF["map_s0"], {"arc_e": 20, "arc_c": 8}, 0)
    shutil.move(s0 / "evaluation", s0 / "evaluation_n8")
    shift_eval(s0 / "evaluation", [s0], _own(s0), RIGHT_OF["map_s0"])
    report = _report(root, tmp_path / "out")
    row = _row(report, "deep_ensemble", "arc_c")
    assert row["from"] == [str(s0 / "evaluation_n8"), str(s1 / "evaluation")]
    assert row["n_examples"] == 8 and row["acc_mean"] == pytest.approx(two(4, 6, 8)["acc"])
    assert row["nll_mean"] == pytest.approx(two(4, 6, 8)["nll"], rel=1e-5)
    assert _row(report, "deep_ensemble", "arc_e")["n_examples"] == 20
