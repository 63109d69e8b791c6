"""Checks of a task's data before training: each refusal names the file, the value and what is allowed.

Two stages. :func:`check_files` reads the Parquet footers and label columns of a local
Hub-layout copy before ``datasets`` converts anything, so a missing column, a zero-row split, a
train split too small for the validation carve, string labels, labels outside
``0..num_labels-1`` (classification) or non-finite targets (regression) are refused naming the
file and row, instead of surfacing as a ``DatasetGenerationError``, a ``KeyError`` or an
``IndexError`` mid-training. :func:`check_values` repeats the column, size and label checks on
the loaded splits (other file formats, the Hub) and warns about empty or null texts. :func:`content_fingerprint` keys the ``datasets`` cache on the files' bytes, so an
edited file is never served from an older cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayesian_lora.data.tasks import TaskSpec
from bayesian_lora.errors import InputError

log = logging.getLogger(__name__)

#: the validation carve needs one row for validation and one for training
MIN_TRAIN_ROWS = 2


class DataError(InputError, ValueError):
    """A data file does not fit its task."""


@dataclass
class SplitFiles:
    """The data files of one split of a local copy and their row counts (Parquet footers)."""

    split: str
    files: list[Path] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def where(self, row: int | None = None) -> str:
        """The file holding ``row`` of the split (the split's files when ``row`` is None)."""
        if not self.files:
            return f"split {self.split!r}"
        if row is not None and not self.rows and all(p.suffix == ".parquet" for p in self.files):
            import pyarrow.parquet as pq

            self.rows = [int(pq.read_metadata(p).num_rows) for p in self.files]
        if row is not None and len(self.rows) == len(self.files):
            start = 0
            for path, n in zip(self.files, self.rows, strict=True):
                if row < start + n:
                    return f"{path} (row {row - start})"
                start += n
        return ", ".join(str(p) for p in self.files)


# ---------------------------------------------------------------- which files
def _front_matter(repo: Path) -> dict[str, Any]:
    import yaml

    readme = repo / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    header = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    try:
        loaded = yaml.safe_load(header)
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def split_files(repo: Path, task: TaskSpec) -> dict[str, SplitFiles]:
    """Split -> its files, from the repo card's ``configs:`` header (empty if it has none)."""
    configs = _front_matter(repo).get("configs") or []
    chosen = [
        c
        for c in configs
        if isinstance(c, dict)
        and (
            c.get("config_name") == task.hub_config
            or (task.hub_config is None and (c.get("default") or len(configs) == 1))
        )
    ]
    if not chosen:
        return {}
    out: dict[str, SplitFiles] = {}
    for entry in chosen[0].get("data_files") or []:
        if not isinstance(entry, dict) or "split" not in entry:
            continue
        patterns = entry.get("path")
        patterns = [patterns] if isinstance(patterns, str) else list(patterns or [])
        files = sorted({p for pattern in patterns for p in repo.glob(pattern) if p.is_file()})
        out[str(entry["split"])] = SplitFiles(str(entry["split"]), files)
    return out


# ---------------------------------------------------------------- stage 1: the files
def _needed_columns(task: TaskSpec) -> list[str]:
    return [*task.text_fields, task.label_field]


def check_files(
    task: TaskSpec, repo: Path, val_fraction: float = 0.1, splits: Sequence[str] | None = None
) -> dict[str, SplitFiles]:
    """Columns, row counts and labels of the ``splits`` (train and test) of a local copy.

    MCQA files hold questions and choices, not the task's prompt column: they are checked once
    converted (:func:`check_values`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if task.is_mcqa:
        return {}
    files = split_files(repo, task)
    needed = _needed_columns(task)
    chosen = splits if splits is not None else [task.train_split, task.test_split]
    for split in dict.fromkeys(str(s) for s in chosen):
        info = files.get(split)
        if info is None or not info.files:
            continue  # load_task_dataset names a missing split
        if any(p.suffix != ".parquet" for p in info.files):
            continue  # other formats: check_values checks them once loaded
        info.rows = []
        for path in info.files:
            try:
                meta = pq.read_metadata(path)
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowInvalid) as err:
                raise DataError(
                    f"{path}: not a readable Parquet file ({err}); allowed: a Parquet file "
                    f"with columns {', '.join(needed)}"
                ) from err
            info.rows.append(int(meta.num_rows))
            missing = [c for c in needed if c not in schema.names]
            if missing:
                raise DataError(
                    f"{path}: column(s) {', '.join(missing)} missing (columns found: "
                    f"{', '.join(schema.names) or 'none'}); allowed: task {task.name} needs "
                    f"{', '.join(needed)}"
                )
            label_type = schema.field(task.label_field).type
            if not task.is_regression and not (
                pa.types.is_integer(label_type) or pa.types.is_dictionary(label_type)
            ):
                raise DataError(
                    f"{path}: column {task.label_field!r} has type {label_type}; allowed: "
                    f"integer class ids {_label_range(task)}"
                )
            if task.is_regression and not (
                pa.types.is_floating(label_type) or pa.types.is_integer(label_type)
            ):
                raise DataError(
                    f"{path}: column {task.label_field!r} has type {label_type}; allowed: "
                    "real-valued targets (float)"
                )
        check_sizes(task, info, sum(info.rows), val_fraction)
        for i, path in enumerate(info.files):
            column = pq.read_table(path, columns=[task.label_field]).column(0).to_pylist()
            one = SplitFiles(split, [path], [info.rows[i]])
            _check_labels(task, np.asarray(column, dtype=object), one, "", split)
    return files


def check_sizes(task: TaskSpec, info: SplitFiles, rows: int, val_fraction: float) -> None:
    """Zero-row splits, and a train split too small to carve a validation split from."""
    if rows == 0:
        raise DataError(
            f"{info.where()}: split {info.split!r} of task {task.name} has 0 rows; allowed: "
            "at least one row"
        )
    if info.split == task.train_split and rows < MIN_TRAIN_ROWS:
        raise DataError(
            f"{info.where()}: split {info.split!r} has {rows} row; allowed: at least "
            f"{MIN_TRAIN_ROWS} rows, one for the validation split carved from it "
            f"(data.val_fraction={val_fraction}) and one to train on"
        )


# ---------------------------------------------------------------- stage 2: the values
def _label_range(task: TaskSpec) -> str:
    names = ", ".join(f"{i} {n}" for i, n in enumerate(task.label_names))
    return f"0..{task.num_labels - 1} ({names})"


def check_values(
    task: TaskSpec,
    splits: Mapping[str, Any],
    files: Mapping[str, SplitFiles] | None = None,
    where: str = "",
    val_fraction: float = 0.1,
) -> None:
    """Labels and texts of the loaded ``splits`` (``datasets.Dataset`` per split name)."""
    files = files or {}
    for split, ds in splits.items():
        info = files.get(split) or SplitFiles(split)
        label_of = f"{where}: " if where and not info.files else ""
        names = list(ds.column_names)
        missing = [c for c in _needed_columns(task) if c not in names]
        if missing:
            raise DataError(
                f"{label_of}{info.where()}: column(s) {', '.join(missing)} missing (columns "
                f"found: {', '.join(names) or 'none'}); allowed: task {task.name} needs "
                f"{', '.join(_needed_columns(task))}"
            )
        check_sizes(task, info, len(ds), val_fraction)
        labels = _column(ds, task.label_field)
        _check_labels(task, labels, info, label_of, split)
        for text_field in task.text_fields:
            _warn_empty_texts(_column(ds, text_field), text_field, info, label_of)


def _column(ds: Any, name: str) -> np.ndarray:
    return np.asarray(ds.select_columns([name]).with_format("arrow")[:][name].to_pylist(), object)


def _check_labels(
    task: TaskSpec, labels: np.ndarray, info: SplitFiles, prefix: str, split: str
) -> None:
    if task.is_regression:
        bad = [i for i, v in enumerate(labels) if not _finite_number(v)]
        if bad:
            raise DataError(
                f"{prefix}{info.where(bad[0])}: {task.label_field}={labels[bad[0]]!r} in "
                f"{len(bad)} row(s) of split {split!r}; allowed: finite real-valued targets "
                f"(task {task.name})"
            )
        return
    # -1 (GLUE's hidden test labels) is refused by the datamodule with its own message
    bad = [i for i, v in enumerate(labels) if not _is_int(v) or not -1 <= v < task.num_labels]
    if bad:
        value = labels[bad[0]]
        kind = f" (a {type(value).__name__})" if not _is_int(value) else ""
        raise DataError(
            f"{prefix}{info.where(bad[0])}: {task.label_field}={value!r}{kind} in "
            f"{len(bad)} row(s) of split {split!r}; allowed: class ids {_label_range(task)} "
            f"for task {task.name}"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)


def _warn_empty_texts(texts: np.ndarray, name: str, info: SplitFiles, prefix: str) -> None:
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        log.warning(
            "%s%s: %d of %d %r texts of split %r are empty or null (first: row %d); they are "
            "tokenised as empty strings",
            prefix,
            info.where(empty[0]),
            len(empty),
            len(texts),
            name,
            info.split,
            empty[0],
        )


# ---------------------------------------------------------------- the cache key
def content_fingerprint(repo: Path, task: TaskSpec, chunk: int = 1 << 20) -> str:
    """sha256 over the relative paths and bytes of the task's files in a local copy.

    The files are the README and those its ``configs:`` header lists for the task's config
    (every file of the copy when it has no such header).
    """
    listed = [p for info in split_files(repo, task).values() for p in info.files]
    candidates = [repo / "README.md", *listed] if listed else list(repo.rglob("*"))
    digest = hashlib.sha256()
    for path in sorted(p for p in candidates if p.is_file() and not _hidden(p, repo)):
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def check_local_copy(cfg: Any) -> None:
    """:func:`check_files` on ``<paths.data_dir>/<hub id>`` of a run config, when it is there.

    Run by ``train`` before the run folder is created; the data module checks again on load
    (and covers ``$BAYESIAN_LORA_DATA_DIR`` and the Hub).
    """
    from bayesian_lora.data.tasks import TASKS

    data_dir, task = cfg.paths.get("data_dir"), TASKS.get(str(cfg.data.task))
    if not data_dir or task is None or task.train_split is None:
        return
    repo = Path(str(data_dir)).expanduser() / task.hub_id
    if repo.is_dir():
        check_files(task, repo, float(cfg.data.val_fraction))
