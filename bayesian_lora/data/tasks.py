"""Registry of the text-classification tasks: where each lives on the Hub and how to read it."""

from __future__ import annotations

from dataclasses import dataclass

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
    train_split: str = "train"

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


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names raise ``ValueError`` listing the choices."""
    try:
        return TASKS[name]
    except KeyError:
        choices = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; available: {choices}") from None
