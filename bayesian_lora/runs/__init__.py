"""Run folders: file names, the versioned manifest, the sample store, the lock, discovery.

One owner for everything a run folder holds; train, evaluate and report go through it. The
sample store (torch, safetensors) is imported on first use, so that checking a run folder's
names, config and lock (e.g. refusing a bad ``resume=``) stays light.
"""

from typing import TYPE_CHECKING, Any

from bayesian_lora.runs.folder import (
    LAPLACE,
    MAP,
    RunFolder,
    find_run_folders,
    open_run,
    resolve_from_run,
    run_method,
)
from bayesian_lora.runs.lock import RunFolderLockedError, RunLock
from bayesian_lora.runs.manifest import (
    SCHEMA,
    LegacyRunFolderError,
    Manifest,
    SampleFileError,
)

__all__ = [
    "LAPLACE",
    "MAP",
    "SCHEMA",
    "LegacyRunFolderError",
    "Manifest",
    "RunFolder",
    "RunFolderLockedError",
    "RunLock",
    "SampleFileError",
    "find_run_folders",
    "load_samples",
    "open_run",
    "read_manifest",
    "resolve_from_run",
    "run_method",
    "write_samples",
]

if TYPE_CHECKING:
    from bayesian_lora.runs.store import load_samples, read_manifest, write_samples

_STORE = ("load_samples", "read_manifest", "write_samples")


def __getattr__(name: str) -> Any:
    if name in _STORE:
        from bayesian_lora.runs import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
