"""What the command-line entry points share: bad input is refused with one clean message.

``python -m bayesian_lora.train`` and ``python -m bayesian_lora.evaluate`` import only Hydra,
OmegaConf and the light config modules before their config is checked; torch, Lightning,
transformers, peft and ``datasets`` are imported by the functions that build things. A refusal
(:class:`~bayesian_lora.config_validation.InputError`) prints ``error: <message>`` on stderr and
exits with status 2, and removes the output folder Hydra made for the job when it holds nothing
but Hydra's own files and was made by this process (so a refused command leaves no stray
``outputs/<task>/<time>_...`` folder).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from bayesian_lora.errors import InputError
from bayesian_lora.rank_zero import install_rank_zero_logging

#: exit status of a refused command (a crash exits 1, SIGTERM 143)
REFUSED = 2
STARTED = time.time()  # this module is imported before Hydra makes the job's folder

T = TypeVar("T")


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (none outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def run_or_refuse(task: Callable[[DictConfig, Sequence[str]], T], cfg: DictConfig) -> T:
    """Run ``task(cfg, overrides)``; on bad input print the reason and exit with ``REFUSED``.

    Under DDP only rank zero logs the package's INFO lines (:mod:`bayesian_lora.rank_zero`)."""
    install_rank_zero_logging()
    try:
        return task(cfg, task_overrides())
    except InputError as err:
        remove_own_output_dir()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(REFUSED)


def hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def remove_own_output_dir(folder: Path | None = None) -> bool:
    """Remove Hydra's job folder if this process made it and it holds only Hydra's files.

    Hydra's files are ``.hydra/`` and the job log ``<job name>.log``; empty parent folders inside
    the working directory (``outputs/train``) go too. Returns True when the folder was removed.
    """
    folder = folder or hydra_output_dir()
    if folder is None or not folder.is_dir() or not made_by_this_process(folder):
        return False
    own = {".hydra", *(p.name for p in folder.glob("*.log"))}
    if any(p.name not in own for p in folder.iterdir()):
        return False
    shutil.rmtree(folder)
    cwd = Path.cwd().resolve()
    for parent in folder.resolve().parents:
        if parent == cwd or cwd not in parent.parents:
            break  # only empty folders inside the working directory (outputs/train)
        try:
            parent.rmdir()  # fails unless empty
        except OSError:
            break
    return True


def made_by_this_process(path: Path) -> bool:
    """The folder (or its ``.hydra``) was created after this process started."""
    marker = path / ".hydra" if (path / ".hydra").is_dir() else path
    try:
        return os.stat(marker).st_mtime >= STARTED - 1.0
    except OSError:
        return False
