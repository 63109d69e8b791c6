"""Registry of the tasks: where each lives on the Hub and how to read it.

Two task types: text classification (GLUE, IMDB, AG News; encoders) and multiple-choice QA
(``template`` set; causal LMs read the answer letter, see :mod:`bayesian_lora.data.mcqa`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bayesian_lora.errors import InputError

GLUE_HUB_ID = "nyu-mll/glue"
IMDB_HUB_ID = "stanfordnlp/imdb"
AG_NEWS_HUB_ID = "fancyzhx/ag_news"


@dataclass(frozen=True)
class TaskSpec:
    """Static description of one task.

    ``test_split`` is the labelled split reported as "test": GLUE's own test labels are hidden
    (label -1), so GLUE tasks report on ``validation`` and carve their tuning split from train.
    """

    name: str
    hub_id: str
    hub_config: str | None
    text_fields: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric: str
    test_split: str
    label_field: str = "label"
    train_split: str | None = "train"  # None: evaluation only (no training split exists)
    template: str | None = None  # MCQA prompt template (bayesian_lora.data.mcqa); None: plain text

    @property
    def is_mcqa(self) -> bool:
        """True for multiple-choice QA: prompts with lettered choices, scored by a causal LM."""
        return self.template is not None

    @property
    def is_regression(self) -> bool:
        """True for real-valued targets (STS-B), which use a single output."""
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        """True when examples are sentence pairs (fed to the tokenizer as two segments)."""
        return len(self.text_fields) == 2


def _glue(name: str, fields: tuple[str, ...], labels: tuple[str, ...], metric: str) -> TaskSpec:
    num_labels = 1 if metric == "pearson_spearman" else len(labels)
    return TaskSpec(name, GLUE_HUB_ID, name, fields, num_labels, labels, metric, "validation")


_ENTAILMENT = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive"), "accuracy"),
    "mrpc": _glue(
        "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1_accuracy"
    ),
    "qnli": _glue("qnli", ("question", "sentence"), _ENTAILMENT, "accuracy"),
    "rte": _glue("rte", ("sentence1", "sentence2"), _ENTAILMENT, "accuracy"),
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable"), "mcc"),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), ("similarity",), "pearson_spearman"),
    "imdb": TaskSpec(
        "imdb", IMDB_HUB_ID, "plain_text", ("text",), 2, ("neg", "pos"), "accuracy", "test"
    ),
    "ag_news": TaskSpec(
        "ag_news",
        AG_NEWS_HUB_ID,
        None,
        ("text",),
        4,
        ("World", "Sports", "Business", "Sci/Tech"),
        "accuracy",
        "test",
    ),
}


def _mcqa(
    name: str, hub_id: str, config: str | None, template: str, test: str, train: str | None
) -> TaskSpec:
    """Every MCQA task has the same five answer letters (unused ones are masked per row)."""
    letters = ("A", "B", "C", "D", "E")
    return TaskSpec(
        name, hub_id, config, ("prompt",), 5, letters, "accuracy", test, "label", train, template
    )


# Multiple-choice QA (causal LMs). test = the labelled split reported; validation = a carve of
# train, as for the tasks above. arc_c, boolq and winogrande have train splits on the Hub, not in
# the offline copy here; mmlu is evaluation-only everywhere (its auxiliary_train is another task).
TASKS.update(
    {
        "obqa": _mcqa("obqa", "allenai/openbookqa", "main", "obqa", "test", "train"),
        "arc_e": _mcqa("arc_e", "allenai/ai2_arc", "ARC-Easy", "arc", "test", "train"),
        "arc_c": _mcqa("arc_c", "allenai/ai2_arc", "ARC-Challenge", "arc", "test", "train"),
        "mmlu": _mcqa("mmlu", "cais/mmlu", "all", "mmlu", "test", None),
        "boolq": _mcqa("boolq", "google/boolq", None, "boolq", "validation", "train"),
        **{
            name: _mcqa(name, "allenai/winogrande", config, "winogrande", "validation", "train")
            for name, config in (
                ("winogrande", "winogrande_xl"),  # train_xl, 40,398 rows
                ("winogrande_s", "winogrande_s"),  # train_s, 640 rows (Laplace-LoRA's WG-S)
                ("winogrande_m", "winogrande_m"),  # train_m, 2,558 rows (WG-M)
            )
        },
    }
)


class UnknownTaskError(InputError, ValueError):
    """A task name that is not in ``TASKS``."""


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names raise ``UnknownTaskError`` listing the choices."""
    try:
        return TASKS[name]
    except KeyError:
        choices = ", ".join(sorted(TASKS))
        raise UnknownTaskError(f"unknown task {name!r}; available: {choices}") from None
