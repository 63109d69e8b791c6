"""Tiny synthetic copies of the tasks, laid out like their Hugging Face Hub repositories.

``write_synthetic_task(root, "mrpc")`` writes ``root/nyu-mll/glue/mrpc/{split}-00000-of-00001.parquet``
plus the repo's ``README.md`` (whose YAML ``configs:`` header is what lets
``datasets.load_dataset(str(root / "nyu-mll/glue"), "mrpc")`` find a config in a local folder), so
``TextClassificationDataModule(..., data_dir=root)`` reads it exactly as it reads a real copy.
Texts carry label-dependent cue words, so a small model can learn them in smoke tests. The
multiple-choice QA sets are written in each dataset's own Hub schema (ARC with 3-5 choices and
some ``1``-``4`` labels, OpenBookQA, MMLU, BoolQ, WinoGrande with hidden test answers), so the
prompt formatting of :mod:`bayesian_lora.data.mcqa` reads them as it reads the real ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import ClassLabel, Dataset, Features, Value

from bayesian_lora.data.tasks import TASKS, TaskSpec, get_task

_FILLER = (  # noqa: SIM905 - a word list reads better as one string
    "the a this that one some film story movie people city team market game plan report "
    "day week year man woman child house road river data model price player company news "
    "said will was is has had very quite rather often never always again later"
).split()

# Label-dependent cue words (one tuple per label); regression (stsb) uses "same" counts instead.
_CUES: dict[str, tuple[tuple[str, ...], ...]] = {
    "sst2": (("bad", "awful", "boring"), ("good", "great", "fun")),
    "cola": (("broken", "garbled"), ("fine", "proper")),
    "mrpc": (("different", "unrelated"), ("same", "identical")),
    "qnli": (("yes", "indeed"), ("no", "never")),
    "rte": (("yes", "indeed"), ("no", "never")),
    "imdb": (("terrible", "awful", "bad"), ("wonderful", "great", "good")),
    "ag_news": (("world", "war"), ("sports", "match"), ("business", "stocks"), ("science", "tech")),
}


@dataclass(frozen=True)
class _Layout:
    """Where a task's files live inside its Hub repo and which splits the repo has."""

    config_name: str
    folder: str
    splits: tuple[str, ...]
    default: bool = False


_MCQA_LAYOUTS = {  # the Hub repos' configs, folders and splits
    "obqa": _Layout("main", "main", ("train", "validation", "test")),
    "arc_e": _Layout("ARC-Easy", "ARC-Easy", ("train", "validation", "test")),
    "arc_c": _Layout("ARC-Challenge", "ARC-Challenge", ("train", "validation", "test")),
    "mmlu": _Layout("all", "all", ("test", "validation", "dev")),
    "boolq": _Layout("default", "data", ("train", "validation")),
    **{
        name: _Layout(config, config, ("train", "validation", "test"))
        for name, config in (
            ("winogrande", "winogrande_xl"),
            ("winogrande_s", "winogrande_s"),
            ("winogrande_m", "winogrande_m"),
        )
    },
}


def _layout(task: TaskSpec) -> _Layout:
    if task.is_mcqa:
        return _MCQA_LAYOUTS[task.name]
    if task.hub_id == "stanfordnlp/imdb":
        return _Layout("plain_text", "plain_text", ("train", "test", "unsupervised"), default=True)
    if task.hub_id == "fancyzhx/ag_news":
        return _Layout("default", "data", ("train", "test"))
    return _Layout(task.name, task.name, ("train", "validation", "test"))


def _is_glue(task: TaskSpec) -> bool:
    return task.hub_id == "nyu-mll/glue"


def _features(task: TaskSpec) -> Features:
    cols: dict = {field: Value("string") for field in task.text_fields}
    cols[task.label_field] = (
        Value("float32") if task.is_regression else ClassLabel(names=list(task.label_names))
    )
    if _is_glue(task):
        cols["idx"] = Value("int32")
    return Features(cols)


def _split_size(split: str, n_train: int, n_validation: int, n_test: int) -> int:
    return {"train": n_train, "validation": n_validation}.get(split, n_test)


def _hidden_labels(task: TaskSpec, split: str) -> bool:
    """GLUE test labels are hidden (-1) except MRPC's; IMDB's unsupervised split is unlabelled."""
    return (split == "test" and _is_glue(task) and task.name != "mrpc") or split == "unsupervised"


def _words(rng: np.random.Generator, lo: int = 3, hi: int = 8) -> list[str]:
    return list(rng.choice(_FILLER, size=int(rng.integers(lo, hi + 1))))


def _with_cue(rng: np.random.Generator, words: list[str], cues: tuple[str, ...]) -> str:
    words = list(words)
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cues)))
    return " ".join(words)


def _example(task: TaskSpec, rng: np.random.Generator) -> tuple[list[str], float | int]:
    """Texts (one per text field) and a label; the cue goes into the last text field."""
    texts = [" ".join(_words(rng)) for _ in task.text_fields]
    if task.is_regression:
        score = round(float(rng.uniform(0.0, 5.0)), 2)
        texts[-1] = " ".join(_words(rng, 2, 4) + ["same"] * int(round(score)))
        return texts, score
    label = int(rng.integers(0, task.num_labels))
    texts[-1] = _with_cue(rng, _words(rng), _CUES[task.name][label])
    return texts, label


def _split_dataset(task: TaskSpec, split: str, n: int, rng: np.random.Generator) -> Dataset:
    rows: dict[str, list] = {field: [] for field in task.text_fields}
    labels: list = []
    for _ in range(n):
        texts, label = _example(task, rng)
        for field, text in zip(task.text_fields, texts, strict=True):
            rows[field].append(text)
        labels.append(-1 if _hidden_labels(task, split) else label)
    rows[task.label_field] = labels
    if _is_glue(task):
        rows["idx"] = list(range(n))
    return Dataset.from_dict(rows, features=_features(task))


def _choices(rng: np.random.Generator, n: int, answer: int) -> list[str]:
    """``n`` short choice texts; the right one carries the cue word "right"."""
    return [
        " ".join(_words(rng, 1, 3) + (["right"] if i == answer else ["wrong"])) for i in range(n)
    ]


def _mcqa_row(task: TaskSpec, split: str, i: int, rng: np.random.Generator) -> dict[str, Any]:
    """One row in the dataset's own Hub schema (answers hidden where the Hub hides them)."""
    question = " ".join(_words(rng)) + "?"
    if task.template in ("arc", "obqa"):
        n = 3 if i % 11 == 5 else 5 if (i % 13 == 6 and task.template == "arc") else 4
        answer = int(rng.integers(0, n))
        labels = [str(k + 1) for k in range(n)] if i % 7 == 3 and task.template == "arc" else None
        labels = labels or ["A", "B", "C", "D", "E"][:n]
        row = {
            "id": f"{task.name}-{split}-{i}",
            "question" if task.template == "arc" else "question_stem": question,
            "choices": {"text": _choices(rng, n, answer), "label": labels},
            "answerKey": labels[answer],
        }
        return row
    if task.template == "mmlu":
        answer = int(rng.integers(0, 4))
        subject = ("anatomy", "virology", "high_school_physics")[i % 3]
        return {
            "question": question,
            "subject": subject,
            "choices": _choices(rng, 4, answer),
            "answer": answer,
        }
    if task.template == "boolq":
        yes = bool(rng.integers(0, 2))
        passage = _with_cue(rng, _words(rng, 6, 12), ("indeed", "true") if yes else ("never",))
        return {"question": question.rstrip("?"), "answer": yes, "passage": passage}
    answer = int(rng.integers(1, 3))  # winogrande
    names = ("Anna", "Maria") if i % 2 else ("Tom", "Sam")
    sentence = f"{names[0]} helped {names[1]} because _ was {'kind' if answer == 1 else 'sad'}."
    hidden = split == "test"
    return {
        "sentence": sentence,
        "option1": names[0],
        "option2": names[1],
        "answer": "" if hidden else str(answer),
    }


def _mcqa_dataset(task: TaskSpec, split: str, n: int, rng: np.random.Generator) -> Dataset:
    return Dataset.from_list([_mcqa_row(task, split, i, rng) for i in range(n)])


def _readme_entries(
    task: TaskSpec, layout: _Layout, tables: dict[str, pa.Table]
) -> tuple[dict, dict]:
    config: dict = {
        "config_name": layout.config_name,
        "data_files": [{"split": s, "path": f"{layout.folder}/{s}-*"} for s in tables],
    }
    if layout.default:
        config["default"] = True
    if task.is_mcqa:  # features as the parquet files store them
        return config, {}
    info = {
        "config_name": layout.config_name,
        "features": _features(task)._to_yaml_list(),
        "splits": [
            {"name": s, "num_bytes": t.nbytes, "num_examples": t.num_rows}
            for s, t in tables.items()
        ],
    }
    return config, info


def _write_readme(repo: Path, hub_id: str) -> None:
    """(Re)write the repo card's YAML header for every config present under ``repo``."""
    configs, infos = [], []
    for task in TASKS.values():
        layout = _layout(task)
        folder = repo / layout.folder
        if task.hub_id != hub_id or not folder.is_dir():
            continue
        present = [s for s in layout.splits if _shard(folder, s).is_file()]
        tables = {s: pq.read_table(_shard(folder, s)) for s in present}
        config, info = _readme_entries(task, layout, tables)
        configs.append(config)
        if info:
            infos.append(info)
    card: dict = {"configs": configs, **({"dataset_info": infos} if infos else {})}
    header = yaml.safe_dump(card, sort_keys=False)
    body = f"# {hub_id} (synthetic)\n\nTiny synthetic data in the schema of `{hub_id}`.\n"
    (repo / "README.md").write_text(f"---\n{header}---\n\n{body}")


def _shard(folder: Path, split: str) -> Path:
    return folder / f"{split}-00000-of-00001.parquet"


def write_synthetic_task(
    root: Path,
    task: str | TaskSpec,
    n_train: int = 48,
    n_validation: int = 16,
    n_test: int = 16,
    seed: int = 0,
    splits: Sequence[str] | None = None,
) -> Path:
    """Write one task's synthetic splits under ``root/<hub_id>/``; return that repo folder.

    Only the splits the Hub repo has are written (IMDB and AG News have no validation split, so
    ``n_validation`` is ignored there; IMDB's ``unsupervised`` split gets ``n_test`` rows), and
    of those only ``splits`` if given (e.g. ARC-Challenge without train, as in the copy here).
    """
    task = get_task(task) if isinstance(task, str) else task
    layout = _layout(task)
    repo = Path(root) / task.hub_id
    folder = repo / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    for split in layout.splits:
        if splits is not None and split not in splits:
            continue
        n = _split_size(split, n_train, n_validation, n_test)
        make = _mcqa_dataset if task.is_mcqa else _split_dataset
        make(task, split, n, rng).to_parquet(str(_shard(folder, split)))
    _write_readme(repo, task.hub_id)
    return repo


def write_all_synthetic(root: Path, **kwargs: Any) -> Path:
    """Write every task in ``TASKS`` under ``root`` (usable as ``data_dir``); return ``root``."""
    for name in TASKS:
        write_synthetic_task(root, name, **kwargs)
    return Path(root)


def main(argv: list[str] | None = None) -> None:
    """``python -m bayesian_lora.data.synthetic <folder>``: write every task there (GLUE, IMDB,
    AG News and the six MCQA sets)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path, help="becomes a paths.data_dir for debug runs")
    parser.add_argument("--n-train", type=int, default=48)
    args = parser.parse_args(argv)
    root = write_all_synthetic(args.folder, n_train=args.n_train)
    print(f"synthetic data for all tasks in {root}: use paths.data_dir={root}")


if __name__ == "__main__":
    main()
