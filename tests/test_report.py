"""``python -m bayesian_lora.report`` on a real ``-m`` sweep: 2 samplers x 2 seeds, tiny model."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bayesian_lora.evaluate import evaluate
from bayesian_lora.report import (
    SweepRun,
    _cell,
    build_report,
    find_run_folders,
    group_runs,
    load_run,
    main,
    run_report,
)
from tests.helpers import compose_config, compose_eval

MAP_RUNS = ("0_tiny_mrpc_map_s0", "1_tiny_mrpc_map_s1")
SGLD_RUNS = ("2_tiny_mrpc_sgld_s0", "3_tiny_mrpc_sgld_s1")

# The module fixture runs a 4-job sweep in-process (~5-10 s).
pytestmark = pytest.mark.slow

SWEEP = [
    "model=tiny",
    "debug=smoke",
    "logger=none",
    "data=mrpc",
    "sampler=map,sgld",
    "seed=0,1",
    "++sampler.warmup.steps=3",
    "sampler.burn_in=2",
    "sampler.thin=2",
    "sampler.num_samples=4",
    "trainer.max_epochs=2",
]


@pytest.fixture(scope="module")
def sweep(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m bayesian_lora.train -m ...`` run in-process (Hydra's basic launcher)."""
    from bayesian_lora.train import main as train_main

    folder = tmp_path_factory.mktemp("multirun") / "sweep"
    argv = ["train", "-m", *SWEEP, f"paths.data_dir={synthetic_data_dir}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is overhead-bound; threads only contend
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [*argv, f"hydra.sweep.dir={folder}"])
        try:
            train_main()
        finally:
            GlobalHydra.instance().clear()
            torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def report(sweep: Path) -> dict[str, Any]:
    return build_report([sweep])


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of the first markdown table in ``text`` (header first, no separator line)."""
    lines: list[str] = []
    for ln in text.splitlines():
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return [c for c in cells if not all(set(x) <= set("-:") for x in c)]


def _row(report: dict[str, Any], method: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["method"] == method)


def test_finds_every_run_of_the_sweep(sweep: Path) -> None:
    runs = find_run_folders([sweep])
    assert [p.name for p in runs] == [
        "0_tiny_mrpc_map_s0",
        "1_tiny_mrpc_map_s1",
        "2_tiny_mrpc_sgld_s0",
        "3_tiny_mrpc_sgld_s1",
    ]
    groups = group_runs([load_run(p) for p in runs])
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        ("map", [0, 1]),
        ("sgld", [0, 1]),
    ]


def test_run_folders_of_a_real_sweep_know_their_sweep(sweep: Path) -> None:
    from bayesian_lora.evaluation.wandb_logging import training_sweep

    assert training_sweep(sweep / "2_tiny_mrpc_sgld_s0") == sweep.resolve()


def test_table_has_mean_std_over_seeds_and_a_deep_ensemble_row(
    report: dict[str, Any], sweep: Path
) -> None:
    assert [r["method"] for r in report["rows"]] == [
        "map",
        "deep_ensemble",
        "sgld",
        "sgld pooled (1/chain)",
        "sgld pooled (all/chain)",
    ]
    sgld = _row(report, "sgld")
    accs = [
        json.loads((sweep / name / "metrics.json").read_text())["ensemble"]["acc"]
        for name in ("2_tiny_mrpc_sgld_s0", "3_tiny_mrpc_sgld_s1")
    ]
    assert sgld["n"] == 2 and sgld["acc_mean"] == pytest.approx(np.mean(accs))
    assert sgld["acc_std"] == pytest.approx(np.std(accs, ddof=1))
    text = (sweep / "report.md").read_text()
    assert "ece (%)" in text and "±" in text
    table = markdown_rows(text)
    assert table[0][:4] == ["model", "task", "method", "n"]
    assert [r[2:5] for r in table[1:]] == [
        ["map", "2", "1"],
        ["deep_ensemble", "2", "2"],
        ["sgld", "2", "4"],
        ["sgld pooled (1/chain)", "2", "2"],
        ["sgld pooled (all/chain)", "2", "8"],
    ]
    assert table[0][4] == "members"
    assert table[3][table[0].index("ece (%)")] == _cell(sgld, "ece", 100.0)
    assert " ± " in table[3][table[0].index("ece (%)")] and "[" in table[3][table[0].index("nll")]
    with (sweep / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows][:3] == ["map", "deep_ensemble", "sgld"]
    assert float(rows[2]["ece_pct_mean"]) == pytest.approx(100 * sgld["ece_mean"])
    assert float(rows[2]["ece_pct_ci_low"]) == pytest.approx(100 * sgld["ece_ci_low"])
    # compute columns from the manifests (these chains warm-start themselves: 3 AdamW steps)
    maps = [json.loads((sweep / n / "manifest.json").read_text())["compute"] for n in MAP_RUNS]
    chains = [json.loads((sweep / n / "manifest.json").read_text())["compute"] for n in SGLD_RUNS]
    pooled = _row(report, "sgld pooled (all/chain)")
    assert pooled["train_grad_evals"] == sum(c["total_grad_evals"] for c in chains) > 0
    assert _row(report, "deep_ensemble")["train_grad_evals"] == sum(
        c["total_grad_evals"] for c in maps
    )


def test_deep_ensemble_row_matches_the_evaluate_code_path(
    report: dict[str, Any], sweep: Path, tmp_path: Path
) -> None:
    cfg = compose_eval([f"run_dirs=[{sweep}/*_map_*]", "plots=false", f"out_dir={tmp_path}"])
    result = evaluate(cfg)
    assert result["kind"] == "deep_ensemble" and result["num_members"] == 2
    row = _row(report, "deep_ensemble")
    for key in ("acc", "nll", "ece", "brier"):
        assert row[f"{key}_mean"] == pytest.approx(result["ensemble"][key], rel=1e-6)


def test_sampler_chains_are_diagnosed_and_flagged(report: dict[str, Any], sweep: Path) -> None:
    (diag,) = report["diagnostics"]
    assert diag["method"] == "sgld" and diag["n_chains"] == 2
    assert set(diag["summaries"]) >= {"test mean log-lik", "LoRA norm"}
    assert not diag["all_mixed"]
    # 2 seeds x 4 draws: the ESS check cannot be met, and the verdict says so (not "nan < 100")
    assert "too few draws for the ESS check (2 x 4 = 8 < 100)" in diag["verdict"]
    assert "nan" not in diag["verdict"].lower()
    assert diag["inference_data"] == "tiny_mrpc_sgld_diagnostics.nc"
    assert (sweep / diag["inference_data"]).is_file()
    text = (sweep / "report.md").read_text()
    assert "MCMC diagnostics" in text and "max |Geweke z|" in text
    diag_rows = [ln for ln in text.splitlines() if ln.startswith("| tiny") and "probe" in ln]
    assert diag_rows and all(("**NO**" in ln or "too few draws" in ln) for ln in diag_rows)
    assert all("not checked" in ln for ln in diag_rows)  # 4 draws: no stationarity check
    # the seeds' per-step traces, diagnosed the same way, in report.json and report.md
    trace = diag["trace"]
    assert trace["n_chains"] == 2 and {"u", "nll"} <= set(trace["summaries"])
    assert trace["summaries"]["u"]["n_draws"] > diag["summaries"]["LoRA norm"]["n_draws"]
    assert "Per-step traces" in text and "per-step traces: " in text
    for png in ("comparison_tiny_mrpc.png", "delta_tiny_mrpc.png", "tiny_mrpc_sgld_trace.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"


def test_ood_auroc_column_when_a_run_was_evaluated(sweep: Path, tmp_path: Path) -> None:
    run = sweep / "0_tiny_mrpc_map_s0"
    cfg = compose_eval([f"run_dir={run}", "ood=sst2", "plots=false"])
    evaluate(cfg)
    out = build_report([sweep], out_dir=tmp_path, plots=False)
    row = out["rows"][0]
    assert row["method"] == "map" and row["ood_auroc_entropy_n"] == 1
    text = (tmp_path / "report.md").read_text()
    assert "ood auroc entropy" in text and "(n=1)" in text and "sst2" in text


def _report_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    """``python -m bayesian_lora.report <argv>`` in-process."""
    monkeypatch.setattr(sys, "argv", ["report", *argv])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def test_command_line_prints_the_table(
    sweep: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _report_main(monkeypatch, f"sweep_dir={sweep}", f"out_dir={tmp_path / 'out'}", "plots=false")
    out = capsys.readouterr().out
    assert markdown_rows(out)[0][:4] == ["model", "task", "method", "n"] and "deep_ensemble" in out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "report.md",
        "report.csv",
        "report.json",
        "chains.csv",
        "tiny_mrpc_sgld_diagnostics.nc",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no stray outputs/ or .hydra/"


def test_old_positional_form_is_refused_with_the_override_to_use(
    sweep: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as info:
        _report_main(monkeypatch, str(sweep), "--out", str(tmp_path), "--no-plots")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m bayesian_lora.report sweep_dir={sweep} out_dir={tmp_path} plots=false" in err
    assert not (tmp_path / "report.md").exists()


def test_command_line_error_for_a_folder_without_runs(tmp_path: Path, capsys: Any) -> None:
    assert run_report(compose_config("report", [f"sweep_dir={tmp_path}"])) == 2
    assert "no run folders" in capsys.readouterr().err
    assert run_report(compose_config("report")) == 2
    assert "sweep_dir is not set" in capsys.readouterr().err


def test_several_sweep_dirs_make_one_report(sweep: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "report",
        [
            f"sweep_dirs=[{sweep}/0_tiny_mrpc_map_s0,{sweep}/1_tiny_mrpc_map_s1]",
            f"out_dir={tmp_path}",
        ],
    )
    assert cfg.diagnostics.rhat_threshold == 1.01
    assert run_report(cfg) == 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["num_runs"] == 2 and [r["method"] for r in saved["rows"]] == [
        "map",
        "deep_ensemble",
    ]


def test_groups_split_by_config_and_name_what_differs() -> None:
    def run(lr: float, seed: int) -> SweepRun:
        config = {
            "seed": seed,
            "model": {"name": "tiny"},
            "data": {"task": "mrpc"},
            "sampler": {"name": "sgld", "lr": lr},
            "paths": {"output_dir": f"/runs/{lr}_{seed}"},
        }
        return SweepRun(Path(f"/runs/{lr}_{seed}"), config, {"acc": 0.5})

    groups = group_runs([run(0.01, 1), run(0.001, 0), run(0.01, 0), run(0.001, 1)])
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        ("sgld (sampler.lr=0.01)", [0, 1]),
        ("sgld (sampler.lr=0.001)", [0, 1]),
    ]


def test_unfinished_runs_are_skipped_with_a_note(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    (copy / "3_tiny_mrpc_sgld_s1" / "metrics.json").unlink()
    out = build_report([copy], plots=False)
    assert out["num_runs"] == 3 and [r["n"] for r in out["rows"]] == [2, 2, 1]  # no pooled rows
    assert any("skipped 1 run folder" in n and "3_tiny_mrpc_sgld_s1" in n for n in out["notes"])


def test_temperature_scaled_evaluations_of_the_real_evaluate_become_rows(
    sweep: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
    single = evaluate(
        compose_eval([f"run_dir={copy / MAP_RUNS[0]}", "calibrate=temperature", "plots=false"])
    )
    pooled = evaluate(
        compose_eval(
            [f"run_dirs=[{copy}/*_map_*]", "calibrate=temperature", "ood=sst2", "plots=false"]
        )
    )
    dropout = evaluate(
        compose_eval([f"run_dir={copy / MAP_RUNS[1]}", "mc_dropout=3", "ood=sst2", "plots=false"])
    )
    out = build_report([copy], out_dir=tmp_path / "out", plots=False)
    methods = [r["method"] for r in out["rows"]]
    assert methods[:5] == [
        "map",
        "map + temperature",
        "map + MC dropout (K=3)",
        "deep_ensemble",
        "deep_ensemble + temperature",
    ]
    mc = _row(out, "map + MC dropout (K=3)")  # the real evaluate's folder: seed 1 only
    assert mc["seeds"] == [1] and mc["members"] == 3 and mc["ood_task"] == "sst2"
    assert mc["nll_mean"] == pytest.approx(dropout["ensemble"]["nll"])
    assert mc["ood_auroc_mi_mean"] == pytest.approx(dropout["ood"]["mutual_information"]["auroc"])
    assert mc["eval_seconds"] == dropout["compute"]["eval_seconds"]
    row = _row(out, "map + temperature")
    assert row["n"] == 1 and row["seeds"] == [0]
    assert row["nll_mean"] == pytest.approx(single["calibration"]["ensemble"]["nll"])
    assert row["scaling_temperature"] == pytest.approx(single["calibration"]["temperature"])
    de = _row(out, "deep_ensemble + temperature")
    assert de["members"] == 2 and de["eval_seconds"] == pooled["compute"]["eval_seconds"]
    assert de["ece_mean"] == pytest.approx(pooled["calibration"]["ensemble"]["ece"])
    assert de["ece_ci_low"] <= de["ece_mean"] <= de["ece_ci_high"]
    # the OOD AUROCs of the pooled evaluation land in the ensemble rows (not added by hand)
    plain = _row(out, "deep_ensemble")
    assert plain["ood_auroc_mi_mean"] == pytest.approx(pooled["ood"]["mutual_information"]["auroc"])
    assert de["ood_auroc_entropy_mean"] == pytest.approx(
        pooled["calibration"]["ood_entropy"]["auroc"]
    )
    assert any("sst2" in n for n in out["notes"])
