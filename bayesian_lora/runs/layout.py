"""File names of a run folder, and the one durable way to publish a file in it.

Every file in a run folder is published by :func:`atomic_write`: written to a temporary file in
the same folder, ``fsync``-ed, renamed over the target with ``os.replace`` (atomic on POSIX) and
the folder ``fsync``-ed, so a crash at any moment leaves either the old or the new file, never a
torn one. :func:`crash_point` marks each write site for fault-injection tests (a no-op here).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

SAMPLES_FILE = "samples.safetensors"  # tensors + the embedded manifest: the commit point
MANIFEST_FILE = "manifest.json"  # a human-readable copy of the embedded manifest
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOCK_FILE = "run.lock"
TMP_SUFFIX = ".tmp"


def crash_point(site: str) -> None:
    """Called at every write site of a run folder; tests replace it to crash right there.

    Sites: ``samples.written`` (temporary file complete), ``samples.published`` (renamed into
    place), ``manifest.written``, ``manifest.published``, ``checkpoint.written``,
    ``checkpoint.published``.
    """


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None], site: str) -> None:
    """Publish ``path`` durably: ``write(tmp)``, fsync, rename over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        crash_point(f"{site}.written")
        os.replace(tmp, path)
        fsync_dir(path.parent)
        crash_point(f"{site}.published")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files a killed writer left behind (call only while holding the lock)."""
    stale = [
        p
        for sub in (folder, folder / CHECKPOINT_DIR)
        if sub.is_dir()
        for p in sub.iterdir()
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
