"""``RunFolder``: one run folder (paths, manifest, samples, config, lock) and their discovery.

Train, evaluate and report all find and open run folders here. A run folder is a folder with a
``samples.safetensors`` (the commit point, see :mod:`bayesian_lora.runs.store`); a folder of the
first format (``manifest.json`` only) is found too, so that opening it says how to migrate it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bayesian_lora.errors import MissingInputError
from bayesian_lora.runs import layout
from bayesian_lora.runs.lock import RunLock
from bayesian_lora.runs.manifest import Manifest, SampleFileError

if TYPE_CHECKING:  # the store imports torch; a run folder's names and lock do not need it
    import torch
    from torch import Tensor


#: the MAP method's name (``sampler=map``; ``bayesian_lora.methods.map``)
MAP = "map"
#: the sampler name of a Laplace run folder (``python -m bayesian_lora.laplace``)
LAPLACE = "laplace"


def run_method(manifest: Any) -> str:
    """The one answer to "which method wrote this run": its manifest's ``sampler.name``."""
    return str((manifest.get("sampler") or {}).get("name", ""))


@dataclass(frozen=True)
class RunFolder:
    path: Path

    # ------------------------------------------------------------ paths
    @property
    def samples_file(self) -> Path:
        return self.path / layout.SAMPLES_FILE

    @property
    def manifest_file(self) -> Path:
        return self.path / layout.MANIFEST_FILE

    @property
    def config_file(self) -> Path:
        return self.path / layout.CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / layout.METRICS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / layout.CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / layout.LAST_CHECKPOINT

    # ------------------------------------------------------------ state
    @property
    def has_samples(self) -> bool:
        return self.samples_file.is_file()

    @property
    def is_run_folder(self) -> bool:
        """Holds samples (or is a folder of the first format, which opening will explain)."""
        return self.has_samples or self.manifest_file.is_file()

    @cached_property
    def manifest(self) -> Manifest:
        from bayesian_lora.runs.store import read_manifest

        return read_manifest(self.path)

    @cached_property
    def config(self) -> Any:
        from omegaconf import OmegaConf

        if not self.config_file.is_file():
            self.manifest  # noqa: B018  (the clearer "not a run folder" error first)
            raise FileNotFoundError(f"{self.config_file} is missing")
        return OmegaConf.load(self.config_file)

    @property
    def sampler(self) -> str:
        return str(self.manifest["sampler"]["name"])

    @property
    def method(self) -> str:
        """The run's method as its manifest names it (``sampler.name``: map, sgld, swag, ...)."""
        return run_method(self.manifest)

    @property
    def is_map(self) -> bool:
        """A MAP run (one sample, the best checkpoint): deep-ensemble pooling, Laplace's base
        and ``warmup.from_run`` ask this."""
        return self.method == MAP

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    # ------------------------------------------------------------ samples
    def load_samples(
        self, device: str | torch.device = "cpu"
    ) -> tuple[dict[str, Tensor], Manifest]:
        from bayesian_lora.runs.store import load_samples

        return load_samples(self.path, device)

    def write_samples(self, samples: dict[str, Tensor], manifest: Manifest) -> Manifest:
        from bayesian_lora.runs.store import write_samples

        written = write_samples(self.path, samples, manifest)
        self.__dict__["manifest"] = written
        return written

    def lock(self, break_lock: bool = False) -> RunLock:
        return RunLock(self.path, break_lock=break_lock)


def open_run(path: str | Path) -> RunFolder:
    """A run folder with its manifest and config read, or a clear error for anything else."""
    run = RunFolder(Path(path).expanduser().resolve())
    if not run.path.is_dir():
        raise MissingInputError(f"run folder {run.path} does not exist")
    if not run.is_run_folder:
        inner = find_run_folders([run.path], required=False)
        hint = (
            f"; it holds {len(inner)} run folders (a sweep?): pool them with "
            f"'run_dirs=[{run.path}/*]' or evaluate each with -m run_dir=..."
            if inner
            else ""
        )
        raise SampleFileError(f"{run.path} is not a run folder (no {layout.SAMPLES_FILE}){hint}")
    run.manifest  # noqa: B018
    run.config  # noqa: B018
    return run


def _candidates(folder: Path) -> Iterable[Path]:
    for name in (layout.SAMPLES_FILE, layout.MANIFEST_FILE):
        yield from (p.parent for p in folder.rglob(name))


def find_run_folders(
    folders: Sequence[str | Path], with_metrics: bool = False, required: bool = True
) -> list[RunFolder]:
    """Run folders given directly or found anywhere below ``folders`` (sorted, de-duplicated);
    ``with_metrics``: only those whose test metrics were written (finished runs)."""
    found: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        run = RunFolder(folder.resolve())
        if run.is_run_folder:
            found.append(run.path)
        else:
            found += sorted({p.resolve() for p in _candidates(folder)})
    runs = [RunFolder(p) for p in dict.fromkeys(found)]
    if with_metrics:
        runs = [r for r in runs if r.metrics_file.is_file()]
    if required and not runs:
        what = (
            f"{layout.SAMPLES_FILE} and {layout.METRICS_FILE}"
            if with_metrics
            else layout.SAMPLES_FILE
        )
        raise FileNotFoundError(
            f"no run folders (with {what}) under {', '.join(map(str, folders))}"
        )
    return runs


def resolve_from_run(path: str | Path, seed: int) -> RunFolder:
    """A run folder, or a sweep folder: then its MAP run with this seed (chain s starts at MAP s)."""
    folder = Path(path).expanduser().resolve()
    if RunFolder(folder).is_run_folder:
        return RunFolder(folder)
    matches = [
        r
        for r in find_run_folders([folder], required=False)
        if r.manifest.get("seed") == seed and r.is_map
    ]
    if len(matches) != 1:
        found = ", ".join(m.path.name for m in matches) or "none"
        raise FileNotFoundError(
            f"warmup.from_run={str(path)!r} is not a run folder, and as a sweep folder it holds "
            f"{len(matches)} MAP runs with seed {seed} (need exactly one): {found}"
        )
    return matches[0]
