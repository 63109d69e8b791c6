"""Run folders: file names, the versioned manifest, the sample store, the lock, discovery.

One owner for everything a run folder holds; train, evaluate and report go through it.
"""

from bayesian_lora.runs.folder import RunFolder, find_run_folders, open_run, resolve_from_run
from bayesian_lora.runs.lock import RunFolderLockedError, RunLock
from bayesian_lora.runs.manifest import (
    SCHEMA,
    LegacyRunFolderError,
    Manifest,
    SampleFileError,
)
from bayesian_lora.runs.store import load_samples, read_manifest, write_samples

__all__ = [
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
    "write_samples",
]
