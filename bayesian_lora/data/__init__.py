"""Tasks, data loading and synthetic datasets for text classification.

Imported lazily (PEP 562): ``bayesian_lora.data.tasks`` is read by the config validation before
torch, ``datasets`` or transformers may be imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bayesian_lora.data.datamodule import (
        DATA_DIR_ENV,
        ResumableRandomSampler,
        TextClassificationDataModule,
        load_task_dataset,
        resolve_data_dir,
    )
    from bayesian_lora.data.synthetic import write_all_synthetic, write_synthetic_task
    from bayesian_lora.data.tasks import TASKS, TaskSpec, get_task

_MODULES = {
    "DATA_DIR_ENV": "datamodule",
    "ResumableRandomSampler": "datamodule",
    "TextClassificationDataModule": "datamodule",
    "load_task_dataset": "datamodule",
    "resolve_data_dir": "datamodule",
    "write_all_synthetic": "synthetic",
    "write_synthetic_task": "synthetic",
    "TASKS": "tasks",
    "TaskSpec": "tasks",
    "get_task": "tasks",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "ResumableRandomSampler",
    "TaskSpec",
    "TextClassificationDataModule",
    "get_task",
    "load_task_dataset",
    "resolve_data_dir",
    "write_all_synthetic",
    "write_synthetic_task",
]
