"""Multiple-choice QA as classification over answer letters (the Laplace-LoRA / BLoB protocol).

Every row of a dataset becomes one prompt in its own template, e.g. for OpenBookQA

    Question: <question stem>
    A. <choice 1>
    B. <choice 2>
    C. <choice 3>
    D. <choice 4>
    Answer:

with ``label`` = the index of the right letter and ``choice_mask`` = which of the five letters
A-E the row shows (ARC has 3 to 5 choices; BoolQ and WinoGrande 2). A causal LM scores the
next-token logits of the letters at the prompt's last position (:mod:`bayesian_lora.models.causal`),
with the letters a row does not show masked out, so the rest of the framework sees an ordinary
5-class classifier: the potential is u = mean NLL over the letters + prior / N, and accuracy,
NLL, ECE and Brier are unchanged by the masked letters (their probability is exactly 0).

Source schemas (Hub layout): ARC ``question``, ``choices.{text,label}``, ``answerKey`` (labels
``A``-``E`` or ``1``-``5``); OpenBookQA the same with ``question_stem``; MMLU ``question``,
``subject``, ``choices`` (list), ``answer`` (int); BoolQ ``passage``, ``question``, ``answer``
(bool); WinoGrande ``sentence`` (with one ``_``), ``option1``, ``option2``, ``answer``
(``"1"``/``"2"``, ``""`` when hidden). A row whose answer is missing gets label -1, which the
data module refuses to train on or score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets

from bayesian_lora.data.tasks import TaskSpec

LETTERS = ("A", "B", "C", "D", "E")
PROMPT = "prompt"
LABEL = "label"
CHOICE_MASK = "choice_mask"
ANSWER_CUE = "Answer:"

#: (context lines, choices, answer index or -1) of one raw row
Parsed = tuple[list[str], list[str], int]


def lettered_prompt(context: Sequence[str], choices: Sequence[str]) -> str:
    """Context lines, one ``<letter>. <choice>`` line per choice, then ``Answer:``."""
    if not 1 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{len(choices)} choices; MCQA supports 1 to {len(LETTERS)}")
    lines = [*context, *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)), ANSWER_CUE]
    return "\n".join(lines)


def _keyed(question: str, choices: dict[str, Sequence[str]], key: str | None) -> Parsed:
    """ARC / OpenBookQA: the answer is the position of ``answerKey`` among the choice labels."""
    labels = list(choices["label"])
    label = labels.index(key) if key in labels else -1
    return [f"Question: {question}"], list(choices["text"]), label


def _arc(row: dict[str, Any]) -> Parsed:
    return _keyed(row["question"], row["choices"], row["answerKey"])


def _obqa(row: dict[str, Any]) -> Parsed:
    return _keyed(row["question_stem"], row["choices"], row["answerKey"])


def _mmlu(row: dict[str, Any]) -> Parsed:
    subject = str(row.get("subject") or "").replace("_", " ")
    head = [f"The following is a multiple choice question about {subject}."] if subject else []
    answer = row["answer"]
    return [*head, f"Question: {row['question']}"], list(row["choices"]), int(answer)


def _boolq(row: dict[str, Any]) -> Parsed:
    question = str(row["question"]).rstrip("?")
    answer = row["answer"]
    label = -1 if answer is None else (0 if answer else 1)
    return [f"Passage: {row['passage']}", f"Question: {question}?"], ["yes", "no"], label


def _winogrande(row: dict[str, Any]) -> Parsed:
    answer = str(row["answer"] or "")
    label = int(answer) - 1 if answer in ("1", "2") else -1
    context = [f"Sentence: {row['sentence']}", "Which option fills the blank _?"]
    return context, [row["option1"], row["option2"]], label


TEMPLATES: dict[str, Callable[[dict[str, Any]], Parsed]] = {
    "arc": _arc,
    "obqa": _obqa,
    "mmlu": _mmlu,
    "boolq": _boolq,
    "winogrande": _winogrande,
}


def format_row(template: str, row: dict[str, Any]) -> dict[str, Any]:
    """One raw row -> ``{prompt, label, choice_mask}`` (label -1 when the answer is unknown)."""
    context, choices, label = TEMPLATES[template](row)
    mask = [1 if i < len(choices) else 0 for i in range(len(LETTERS))]
    return {PROMPT: lettered_prompt(context, choices), LABEL: label, CHOICE_MASK: mask}


def _format_batch(batch: dict[str, list], template: str) -> dict[str, list]:
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    out = [format_row(template, row) for row in rows]
    return {key: [o[key] for o in out] for key in (PROMPT, LABEL, CHOICE_MASK)}


def to_classification(task: TaskSpec, dsd: datasets.DatasetDict) -> datasets.DatasetDict:
    """Every split of an MCQA task as ``prompt`` / ``label`` / ``choice_mask`` rows."""
    if task.template not in TEMPLATES:
        raise ValueError(
            f"task {task.name!r}: unknown MCQA template {task.template!r}; "
            f"available: {', '.join(sorted(TEMPLATES))}"
        )
    features = datasets.Features(
        {
            PROMPT: datasets.Value("string"),
            LABEL: datasets.Value("int64"),
            CHOICE_MASK: datasets.Sequence(datasets.Value("int8"), length=len(LETTERS)),
        }
    )
    return datasets.DatasetDict(
        {
            split: ds.map(
                _format_batch,
                batched=True,
                fn_kwargs={"template": task.template},
                remove_columns=ds.column_names,
                features=features,
                desc=f"Formatting {task.name} {split} as prompts",
            )
            for split, ds in dsd.items()
        }
    )
