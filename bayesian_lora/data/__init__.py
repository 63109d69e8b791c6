"""Tasks, data loading and synthetic datasets for text classification."""

from bayesian_lora.data.datamodule import (
    DATA_DIR_ENV,
    ResumableRandomSampler,
    TextClassificationDataModule,
    load_task_dataset,
    resolve_data_dir,
)
from bayesian_lora.data.synthetic import write_all_synthetic, write_synthetic_task
from bayesian_lora.data.tasks import TASKS, TaskSpec, get_task

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
