"""Tiny synthetic copies of the tasks, laid out like their Hugging Face Hub repositories.

``write_synthetic_task(root, "mrpc")`` writes ``root/nyu-mll/glue/mrpc/{split}-00000-of-00001.parquet``
plus the repo's ``README.md`` (whose YAML ``configs:`` header is what lets
``datasets.load_dataset(str(root / "nyu-mll/glue"), "mrpc")`` find a config in a local folder), so
``TextClassificationDataModule(..., data_dir=root)`` reads it exactly as it reads a real copy.
Texts carry label-dependent cue words, so a small model can learn them in smoke tests.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

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


def _layout(task: TaskSpec) -> _Layout:
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


def _readme_entries(
    task: TaskSpec, layout: _Layout, tables: dict[str, pa.Table]
) -> tuple[dict, dict]:
    config: dict = {
        "config_name": layout.config_name,
        "data_files": [{"split": s, "path": f"{layout.folder}/{s}-*"} for s in layout.splits],
    }
    if layout.default:
        config["default"] = True
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
        tables = {s: pq.read_table(_shard(folder, s)) for s in layout.splits}
        config, info = _readme_entries(task, layout, tables)
        configs.append(config)
        infos.append(info)
    header = yaml.safe_dump({"configs": configs, "dataset_info": infos}, sort_keys=False)
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
) -> Path:
    """Write one task's synthetic splits under ``root/<hub_id>/``; return that repo folder.

    Only the splits the Hub repo has are written (IMDB and AG News have no validation split, so
    ``n_validation`` is ignored there; IMDB's ``unsupervised`` split gets ``n_test`` rows).
    """
    task = get_task(task) if isinstance(task, str) else task
    layout = _layout(task)
    repo = Path(root) / task.hub_id
    folder = repo / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    for split in layout.splits:
        n = _split_size(split, n_train, n_validation, n_test)
        _split_dataset(task, split, n, rng).to_parquet(str(_shard(folder, split)))
    _write_readme(repo, task.hub_id)
    return repo


def write_all_synthetic(root: Path, **kwargs: int) -> Path:
    """Write every task in ``TASKS`` under ``root`` (usable as ``data_dir``); return ``root``."""
    for name in TASKS:
        write_synthetic_task(root, name, **kwargs)
    return Path(root)


def main(argv: list[str] | None = None) -> None:
    """``python -m bayesian_lora.data.synthetic <folder>``: write all eight tasks there."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path, help="becomes a paths.data_dir for debug runs")
    parser.add_argument("--n-train", type=int, default=48)
    args = parser.parse_args(argv)
    root = write_all_synthetic(args.folder, n_train=args.n_train)
    print(f"synthetic data for all tasks in {root}: use paths.data_dir={root}")


if __name__ == "__main__":
    main()
