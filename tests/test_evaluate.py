"""``python -m bayesian_lora.evaluate`` on tiny run folders trained here (synthetic data, CPU)."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from bayesian_lora.config import load_run_config
from bayesian_lora.config_validation import ConfigError
from bayesian_lora.evaluate import ManifestMismatchError, open_run
from bayesian_lora.evaluation.ensemble import predict_once, predict_samples
from bayesian_lora.evaluation.members import allocate, select_members, spaced_indices
from bayesian_lora.evaluation.predict import build_eval_batches, build_eval_module, eval_run_config
from bayesian_lora.evaluation.results import evaluate_predictions
from bayesian_lora.evaluation.write import load_predictions
from bayesian_lora.models.lora import ModelSettings, build_lora_model
from bayesian_lora.runs import Manifest, SampleFileError, load_samples, write_samples
from tests.helpers import CHAIN as SHORT_CHAIN
from tests.helpers import compose_config, run_eval, train_run

CHAIN = [*SHORT_CHAIN, "sampler.num_samples=4"]
PLOTS = {"reliability.png", "confidence.png", "vs_size.png", "risk_coverage.png"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """The tiny model is overhead-bound: extra threads only contend on a shared CPU (25x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two SGLD chains and two MAP runs (seeds 0 and 1) on synthetic MRPC."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for seed in (0, 1):
        out[f"sgld{seed}"] = train_run(
            synthetic_data_dir, root / f"sgld{seed}", "sampler=sgld", f"seed={seed}", *CHAIN
        )
        out[f"map{seed}"] = train_run(
            synthetic_data_dir, root / f"map{seed}", f"seed={seed}", "trainer.max_epochs=2"
        )
    return out


@pytest.fixture(scope="module")
def chain_eval(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("chain_eval")
    return run_eval(f"run_dir={runs['sgld0']}", "ood=sst2", "single=true", f"out_dir={out}")


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "evaluation*"))
    return dst


# ----------------------------------------------------------------------------- outputs


def test_chain_evaluation_writes_json_predictions_and_plots(chain_eval: dict) -> None:
    out = Path(chain_eval["out_dir"])
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "predictions.safetensors", "evaluate.yaml"} <= names
    assert PLOTS | {"ood_entropy.png", "ood_mutual_information.png"} <= names
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "chain" and saved["num_members"] == 4
    assert len(saved["per_sample"]) == 4 and len(saved["vs_ensemble_size"]) == 3
    assert {"acc@50", "acc@80", "acc@90", "acc@100", "aurc"} <= set(saved["selective"])
    assert {"mutual_information", "entropy", "expected_entropy"} <= set(saved["ensemble"])
    assert {"lora_norm_mean", "lora_norm_std", "lora_norm_cv"} == set(saved["parameters"])
    # the per-step trace of the one chain, diagnosed as its two halves, kept as netCDF
    trace = saved["trace_diagnostics"]
    assert trace["halves_of_one_chain"] and trace["n_chains"] == 2
    assert {"u", "nll"} <= set(trace["summaries"]) and "trace_diagnostics.nc" in names
    assert trace["inference_data"] == "trace_diagnostics.nc"


def test_metrics_recomputed_from_saved_predictions_are_identical(
    chain_eval: dict, runs: dict[str, Path]
) -> None:
    out = Path(chain_eval["out_dir"])
    arrays = load_predictions(out / "predictions.safetensors")
    assert arrays["predictions"].shape == (4, 16, 2)
    run_cfg = load_run_config(runs["sgld0"])
    from bayesian_lora.data.tasks import get_task

    again = evaluate_predictions(arrays["predictions"], arrays["labels"], get_task("mrpc"), 0.5)
    saved = json.loads((out / "metrics.json").read_text())
    assert again["ensemble"] == pytest.approx(saved["ensemble"], abs=0, rel=1e-12)
    assert again["selective"] == saved["selective"]
    # the same samples and test set as the train-time evaluation
    train_time = json.loads((runs["sgld0"] / "metrics.json").read_text())["ensemble"]
    assert saved["ensemble"] == pytest.approx(train_time, rel=1e-5)
    assert run_cfg.data.task == "mrpc"


def test_ood_reports_auroc_and_aupr_for_both_scores(chain_eval: dict) -> None:
    ood = chain_eval["ood"]
    assert ood["task"] == "sst2" and ood["n_in"] == 16 and ood["n_out"] > 0
    for score in ("entropy", "mutual_information"):
        assert set(ood[score]) == {"auroc", "aupr"}
        assert 0.0 <= ood[score]["auroc"] <= 1.0
    arrays = load_predictions(Path(chain_eval["out_dir"]) / "predictions.safetensors")
    assert arrays["ood_predictions"].shape[:1] == (4,)


def test_in_place_swap_matches_a_fresh_model_per_sample(runs: dict[str, Path]) -> None:
    cfg = compose_config("evaluate", [f"run_dir={runs['sgld0']}"])
    run = open_run(runs["sgld0"])
    run_cfg = eval_run_config(cfg, run)
    module = build_eval_module(run_cfg, run, torch.device("cpu"))
    _, batches = build_eval_batches(run_cfg, torch.device("cpu"))
    samples, _ = load_samples(runs["sgld0"])
    swapped = predict_samples(module, samples, batches)
    for i in range(samples[next(iter(samples))].shape[0]):
        fresh = build_lora_model(ModelSettings.from_config(run_cfg.model), 2)
        missing = fresh.load_state_dict({n: t[i] for n, t in samples.items()}, strict=False)
        assert not missing.unexpected_keys
        module.model = fresh.eval()
        torch.testing.assert_close(predict_once(module, batches), swapped[i], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- members


def test_k_keeps_evenly_spaced_samples_ending_at_the_last() -> None:
    assert spaced_indices(10, 3) == [2, 5, 9]
    assert spaced_indices(4, 4) == [0, 1, 2, 3]
    assert spaced_indices(7, 1) == [6]
    assert allocate(5, [4, 4]) == [3, 2] and allocate(None, [3, 1]) == [3, 1]
    assert allocate(9, [1, 1]) == [1, 1]


def test_members_are_round_robin_over_runs(runs: dict[str, Path]) -> None:
    folders = [open_run(runs["sgld0"]), open_run(runs["sgld1"])]
    assert select_members(folders, 3) == [(0, 1), (1, 3), (0, 3)]


def test_k_limits_the_ensemble(runs: dict[str, Path]) -> None:
    result = run_eval(f"run_dir={runs['sgld0']}", "k=2", "plots=false")
    assert result["num_members"] == 2 and result["runs"][0]["samples_used"] == [1, 3]
    assert Path(result["out_dir"]) == runs["sgld0"] / "evaluation_k2"


def test_validation_split_is_evaluated_into_its_own_folder(runs: dict[str, Path]) -> None:
    result = run_eval(f"run_dir={runs['map0']}", "split=validation", "plots=false")
    assert result["split"] == "validation"
    assert Path(result["out_dir"]) == runs["map0"] / "evaluation_validation"
    run_cfg = load_run_config(runs["map0"])
    dm, batches = build_eval_batches(run_cfg, torch.device("cpu"), "validation")
    val_labels = torch.cat([b["labels"] for b in batches]).numpy()
    saved = load_predictions(Path(result["out_dir"]) / "predictions.safetensors")
    np.testing.assert_array_equal(saved["labels"], val_labels)
    assert result["num_test"] == len(val_labels) == len(dm.split_indices["validation"])


def test_deep_ensemble_of_two_map_runs(runs: dict[str, Path]) -> None:
    result = run_eval(f"run_dirs=[{runs['map0']},{runs['map1']}]")
    assert result["kind"] == "deep_ensemble" and result["num_members"] == 2
    assert Path(result["out_dir"]).name.startswith("evaluation_deep_ensemble_2runs_")
    assert "skipped" in result["diagnostics"]
    members = [load_predictions(runs[m] / "predictions.safetensors") for m in ("map0", "map1")]
    saved = load_predictions(Path(result["out_dir"]) / "predictions.safetensors")
    np.testing.assert_allclose(
        saved["predictions"], np.concatenate([a["predictions"] for a in members]), atol=1e-6
    )
    assert saved["member_run"].tolist() == [0, 1]


def test_pooled_chains_get_diagnostics_and_flags(runs: dict[str, Path], tmp_path: Path) -> None:
    result = run_eval(f"run_dirs=[{runs['sgld0']},{runs['sgld1']}]", f"out_dir={tmp_path}")
    diag = result["diagnostics"]
    assert result["kind"] == "pooled_chains" and diag["n_chains"] == 2
    names = set(diag["summaries"])
    assert "test mean log-lik" in names and "LoRA norm" in names
    assert sum(n.startswith("p(label) of probe") for n in names) == 3
    assert not diag["all_mixed"] and diag["flags"]  # 2 chains x 4 draws cannot support ESS 100
    assert diag["verdict"].startswith(("WARNING", "UNDETERMINED"))
    assert "too few draws for the ESS check (2 x 4 = 8 < 100)" in diag["verdict"]
    assert "nan" not in diag["verdict"].lower()
    names_out = {p.name for p in tmp_path.iterdir()}
    assert {"trace.png", "autocorrelation.png", "diagnostics.nc"} <= names_out
    assert diag["inference_data"] == "diagnostics.nc"
    import arviz as az

    idata = az.from_netcdf(tmp_path / "diagnostics.nc")
    assert set(idata.posterior.data_vars) == names
    assert idata.posterior["LoRA norm"].shape == (2, 4)
    trace = result["trace_diagnostics"]  # every sampler step from the first kept one on
    assert not trace["halves_of_one_chain"] and trace["n_chains"] == 2
    assert trace["summaries"]["u"]["n_draws"] > 4


def test_mc_dropout_gives_k_differing_members(runs: dict[str, Path], tmp_path: Path) -> None:
    result = run_eval(
        f"run_dir={runs['map0']}", "mc_dropout=3", "ood=sst2", "plots=false", f"out_dir={tmp_path}"
    )
    assert result["kind"] == "map+mc_dropout3" and result["num_members"] == 3
    preds = load_predictions(tmp_path / "predictions.safetensors")["predictions"]
    assert not np.allclose(preds[0], preds[1]) and not np.allclose(preds[1], preds[2])
    assert result["ensemble"]["mutual_information"] > 0 and "note" not in result["ood"]


def test_map_ood_notes_that_mutual_information_is_zero(runs: dict[str, Path]) -> None:
    result = run_eval(f"run_dir={runs['map0']}", "ood=sst2")
    assert result["ood"]["mutual_information"]["auroc"] == 0.5
    assert "mutual information is 0" in result["ood"]["note"]
    assert Path(result["out_dir"]) == runs["map0"] / "evaluation"


@pytest.mark.slow
def test_regression_chains_pooled(
    synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("stsb")
    chains = [
        train_run(
            synthetic_data_dir,
            root / f"s{seed}",
            "data=stsb",
            "sampler=sgld",
            f"seed={seed}",
            *CHAIN,
        )
        for seed in (0, 1)
    ]
    out = root / "eval"
    result = run_eval(f"run_dirs=[{chains[0]},{chains[1]}]", f"out_dir={out}")
    assert {"nll", "rmse", "pearson", "spearman"} <= set(result["ensemble"])
    assert "selective" not in result and result["num_members"] == 8
    assert any(n.startswith("mean of probe") for n in result["diagnostics"]["summaries"])
    assert load_predictions(out / "predictions.safetensors")["predictions"].shape == (8, 16)
    assert {"vs_size.png", "trace.png"} <= {p.name for p in out.iterdir()}


# ----------------------------------------------------------------------------- refusals


def test_model_override_that_differs_from_the_manifest_is_refused(runs: dict[str, Path]) -> None:
    with pytest.raises(ManifestMismatchError, match=r"lora\.r \(8 vs 4\)"):
        run_eval(f"run_dir={runs['sgld0']}", "model=tiny", "model.lora.r=8")


def _rewrite_manifest(run: Path, edit: Any) -> None:
    """Samples whose (embedded, hashed) manifest says something else: re-published as such."""
    samples, manifest = load_samples(run)
    data = manifest.to_dict()
    edit(data)
    write_samples(run, samples, Manifest.from_dict(data))


def test_a_manifest_for_another_model_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["map0"], tmp_path / "run")
    _rewrite_manifest(run, lambda m: m["model"]["lora"].update(r=16))
    with pytest.raises(ManifestMismatchError, match=r"lora\.r \(4 vs 16\)"):
        run_eval(f"run_dir={run}")


def test_editing_manifest_json_changes_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    """manifest.json is a copy for people; the manifest inside the samples file is the one used."""
    run = _copy_run(runs["map0"], tmp_path / "run")
    copy = json.loads((run / "manifest.json").read_text())
    copy["model"]["lora"]["r"] = 16
    (run / "manifest.json").write_text(json.dumps(copy))
    assert run_eval(f"run_dir={run}", "plots=false")["num_members"] == 1
    assert json.loads((run / "manifest.json").read_text())["model"]["lora"]["r"] == 4


def test_a_manifest_for_another_task_or_split_is_refused(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    run = _copy_run(runs["map0"], tmp_path / "run")
    _rewrite_manifest(run, lambda m: m.update(task="sst2"))
    with pytest.raises(ManifestMismatchError, match=r"task \('mrpc' vs 'sst2'\)"):
        run_eval(f"run_dir={run}")
    run = _copy_run(runs["map0"], tmp_path / "run2")
    _rewrite_manifest(run, lambda m: m["data"].update(split_seed=7))
    with pytest.raises(ManifestMismatchError, match=r"data\.split_seed \(0 vs 7\)"):
        run_eval(f"run_dir={run}")


def test_runs_of_different_tasks_cannot_be_pooled(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["map1"], tmp_path / "run")
    _rewrite_manifest(run, lambda m: m.update(task="sst2"))
    with pytest.raises(ManifestMismatchError, match=r"task \('mrpc' vs 'sst2'\)"):
        run_eval(f"run_dirs=[{runs['map0']},{run}]")


def test_one_flipped_bit_is_refused_naming_the_tensor(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    run = _copy_run(runs["sgld0"], tmp_path / "run")
    path = run / "samples.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    name, info = next((n, i) for n, i in json.loads(data[8:header]).items() if n != "__metadata__")
    data[header + info["data_offsets"][0] + 5] ^= 0x80  # one sign bit of that tensor
    path.write_bytes(bytes(data))
    with pytest.raises(SampleFileError, match=f"tensor {name} does not match its sha256"):
        run_eval(f"run_dir={run}", "plots=false")
    assert not (run / "evaluation").exists()


def test_a_sample_file_with_a_nan_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["sgld0"], tmp_path / "run")
    samples, manifest = load_samples(run)
    name = sorted(samples)[0]
    samples[name][2].view(-1)[0] = float("nan")
    write_samples(run, samples, manifest)  # consistent hashes: the NaN itself is refused
    with pytest.raises(SampleFileError, match=rf"tensor {name} holds non-finite .*\[2\]"):
        run_eval(f"run_dir={run}", "plots=false")


def test_truncated_samples_file_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy_run(runs["sgld0"], tmp_path / "run")
    path = run / "samples.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SampleFileError, match="truncated or corrupt"):
        run_eval(f"run_dir={run}")


def test_no_pickle_is_loaded(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("evaluate must not unpickle anything")

    assert (runs["map0"] / "checkpoints" / "best.ckpt").is_file()  # a pickle is right there
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    result = run_eval(f"run_dir={runs['map0']}", "plots=false", "k=1")
    assert result["num_members"] == 1


def test_clear_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_eval(f"run_dir={tmp_path / 'nope'}")
    with pytest.raises(SampleFileError, match="not a run folder"):
        run_eval(f"run_dir={tmp_path}")
    with pytest.raises(SampleFileError, match="a sweep"):
        run_eval(f"run_dir={runs['map0'].parent}")
    with pytest.raises(ValueError, match="unknown task 'mnli'.*ag_news.*sst2"):
        run_eval(f"run_dir={runs['map0']}", "ood=mnli")
    with pytest.raises(ConfigError, match="k=0"):
        run_eval(f"run_dir={runs['map0']}", "k=0")
    with pytest.raises(ConfigError, match="split='train'.*test, validation"):
        run_eval(f"run_dir={runs['map0']}", "split=train")
    with pytest.raises(ConfigError, match="run_dir"):
        run_eval()


# ----------------------------------------------------------------------------- entry points


@pytest.mark.slow
def test_wandb_offline_logs_metrics_and_plots(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_eval(
        f"run_dir={runs['map0']}", "wandb.enabled=true", "wandb.mode=offline", f"out_dir={tmp_path}"
    )
    assert result["wandb"]["mode"] == "offline" and result["wandb"]["group"] == "tiny-mrpc-map"
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_command_line_entry_point(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """``python -m bayesian_lora.evaluate`` (the Hydra main, run in-process)."""
    from bayesian_lora.evaluate import main

    out = tmp_path / "out"
    argv = ["evaluate", f"run_dir={runs['sgld1']}", "single=true", f"out_dir={out}"]
    monkeypatch.setattr(sys, "argv", [*argv, f"hydra.run.dir={tmp_path / 'hydra'}"])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
    stdout = capsys.readouterr().out
    assert "ensemble@4 (chain)" in stdout and "per-sample metrics" in stdout
    assert (out / "metrics.json").is_file()


def test_weights_override_loads_the_base_from_another_place(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """``weights=`` moves where the base comes from, not what the samples are checked against."""
    missing = tmp_path / "moved_weights"
    with pytest.raises(OSError, match="moved_weights"):
        run_eval(f"run_dir={runs['map0']}", f"weights={missing}", f"out_dir={tmp_path / 'e'}")
