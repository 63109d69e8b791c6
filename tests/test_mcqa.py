"""Multiple-choice QA tasks: prompts per dataset schema, answer letters as labels, splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bayesian_lora.data.datamodule import TextClassificationDataModule, load_task_dataset
from bayesian_lora.data.mcqa import CHOICE_MASK, LETTERS, format_row, to_classification
from bayesian_lora.data.synthetic import write_synthetic_task
from bayesian_lora.data.tasks import TASKS, get_task
from bayesian_lora.models.causal import TINY_CAUSAL_ID, build_causal_tokenizer
from bayesian_lora.models.lora import ModelSettings

MCQA_TASKS = sorted(name for name, spec in TASKS.items() if spec.is_mcqa)

# (template, a row in the dataset's own Hub schema, expected prompt, label, letters shown)
ROWS = [
    (
        "arc",
        {
            "id": "Mercury_1",
            "question": "Which gas do plants take in?",
            "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["1", "2", "3"]},
            "answerKey": "2",
        },
        "Question: Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nAnswer:",
        1,
        3,
    ),
    (
        "arc",
        {
            "id": "Mercury_2",
            "question": "Pick E.",
            "choices": {"text": list("vwxyz"), "label": list("ABCDE")},
            "answerKey": "E",
        },
        "Question: Pick E.\nA. v\nB. w\nC. x\nD. y\nE. z\nAnswer:",
        4,
        5,
    ),
    (
        "obqa",
        {
            "id": "7-980",
            "question_stem": "The sun is responsible for",
            "choices": {
                "text": ["puppies", "plants sprouting", "ice", "rain"],
                "label": list("ABCD"),
            },
            "answerKey": "B",
        },
        "Question: The sun is responsible for\nA. puppies\nB. plants sprouting\nC. ice\nD. rain\n"
        "Answer:",
        1,
        4,
    ),
    (
        "mmlu",
        {
            "question": "2 + 2 =",
            "subject": "elementary_mathematics",
            "choices": list("1234"),
            "answer": 3,
        },
        "The following is a multiple choice question about elementary mathematics.\n"
        "Question: 2 + 2 =\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:",
        3,
        4,
    ),
    (
        "boolq",
        {"question": "is the sky blue", "answer": True, "passage": "The sky is blue."},
        "Passage: The sky is blue.\nQuestion: is the sky blue?\nA. yes\nB. no\nAnswer:",
        0,
        2,
    ),
    (
        "boolq",
        {"question": "is ice hot?", "answer": False, "passage": "Ice is cold."},
        "Passage: Ice is cold.\nQuestion: is ice hot?\nA. yes\nB. no\nAnswer:",
        1,
        2,
    ),
    (
        "winogrande",
        {"sentence": "Tom beat Sam, so _ won.", "option1": "Tom", "option2": "Sam", "answer": "1"},
        "Sentence: Tom beat Sam, so _ won.\nWhich option fills the blank _?\nA. Tom\nB. Sam\n"
        "Answer:",
        0,
        2,
    ),
]


@pytest.mark.parametrize(("template", "row", "prompt", "label", "shown"), ROWS)
def test_prompt_label_and_mask_per_schema(
    template: str, row: dict, prompt: str, label: int, shown: int
) -> None:
    out = format_row(template, row)
    assert out["prompt"] == prompt
    assert out["label"] == label
    assert out[CHOICE_MASK] == [1] * shown + [0] * (len(LETTERS) - shown)


@pytest.mark.parametrize(
    ("template", "row"),
    [
        (
            "arc",
            {
                "question": "q",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "C",
            },
        ),
        ("winogrande", {"sentence": "_", "option1": "a", "option2": "b", "answer": ""}),
        ("boolq", {"question": "q", "answer": None, "passage": "p"}),
    ],
)
def test_unknown_answers_get_label_minus_one(template: str, row: dict) -> None:
    assert format_row(template, row)["label"] == -1


def test_every_mcqa_task_is_registered_with_five_letters() -> None:
    assert set(MCQA_TASKS) == {
        "obqa",
        "arc_e",
        "arc_c",
        "mmlu",
        "boolq",
        "winogrande",
        "winogrande_s",
        "winogrande_m",
    }
    for name in MCQA_TASKS:
        spec = get_task(name)
        assert spec.num_labels == 5 and spec.label_names == LETTERS and spec.metric == "accuracy"
    assert get_task("mmlu").train_split is None  # evaluation only
    assert get_task("boolq").test_split == get_task("winogrande").test_split == "validation"


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_causal_tokenizer(
        ModelSettings(name="tiny_causal", name_or_path=TINY_CAUSAL_ID, kind="causal")
    )


@pytest.mark.parametrize("name", MCQA_TASKS)
def test_synthetic_rows_in_each_schema_become_prompts(
    name: str,
    synthetic_data_dir: Path,
    tokenizer,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    spec = get_task(name)
    raw = load_task_dataset(spec, synthetic_data_dir, str(tmp_path), test_only=True)
    formatted = to_classification(spec, raw)[spec.test_split]
    for row in formatted:
        shown = sum(row[CHOICE_MASK])
        assert row["prompt"].endswith("\nAnswer:")
        letters = [line[0] for line in row["prompt"].split("\n") if line[1:3] == ". "]
        assert letters == list(LETTERS[:shown])
        assert 0 <= row["label"] < shown
    dm = TextClassificationDataModule(name, tokenizer, 512, data_dir=str(synthetic_data_dir))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", CHOICE_MASK}
    assert batch[CHOICE_MASK].shape == (batch["labels"].shape[0], 5)
    assert bool(batch["attention_mask"][:, -1].all()), "prompts must be left-padded"
    text = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert text.endswith("Answer:")


def test_arc_labels_cover_numeric_keys_and_five_choices(synthetic_data_dir: Path) -> None:
    """The synthetic ARC copy has the real copy's irregular rows (1-4 labels, 3 and 5 choices)."""
    raw = load_task_dataset(get_task("arc_e"), synthetic_data_dir)["train"]
    assert {len(r["choices"]["label"]) for r in raw} == {3, 4, 5}
    assert any(r["choices"]["label"][0] == "1" for r in raw)


def test_train_split_is_carved_and_test_is_the_test_split(
    synthetic_data_dir: Path,
    tokenizer,  # type: ignore[no-untyped-def]
) -> None:
    dm = TextClassificationDataModule("obqa", tokenizer, 512, data_dir=str(synthetic_data_dir))
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 43, "validation": 5, "test": 16}
    # boolq / winogrande report on the Hub's labelled validation split
    dm = TextClassificationDataModule("boolq", tokenizer, 512, data_dir=str(synthetic_data_dir))
    dm.setup()
    assert len(dm.datasets["test"]) == 16


def test_evaluation_only_tasks(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """ARC-Challenge without train (as in the copy here): scored as a shift set, not trained on."""
    write_synthetic_task(tmp_path, "arc_c", splits=("validation", "test"))
    dm = TextClassificationDataModule("arc_c", tokenizer, 512, data_dir=str(tmp_path))
    dm.setup("test")
    assert set(dm.datasets) == {"test"} and dm.num_train_examples is None
    fresh = TextClassificationDataModule("arc_c", tokenizer, 512, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"splits \['train'\] missing.*ood=/shift="):
        fresh.setup("fit")
    with pytest.raises(ValueError, match="'mmlu' is evaluation-only"):
        load_task_dataset(get_task("mmlu"), tmp_path)


def test_rows_without_an_answer_are_refused(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """WinoGrande's Hub test split hides its answers: label -1, refused with a clear message."""
    import dataclasses

    write_synthetic_task(tmp_path, "winogrande")
    spec = dataclasses.replace(get_task("winogrande"), test_split="test")
    dm = TextClassificationDataModule(spec, tokenizer, 512, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="have label -1"):
        dm.setup()


def test_long_prompts_are_cut_on_the_left(synthetic_data_dir: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    dm = TextClassificationDataModule("boolq", tokenizer, 40, data_dir=str(synthetic_data_dir))
    dm.setup("test")
    ids = dm.datasets["test"][0]["input_ids"]
    assert len(ids) == 40 and tokenizer.decode(ids).endswith("A. yes\nB. no\nAnswer:")
    assert torch.is_tensor(next(iter(dm.test_dataloader()))["labels"])
