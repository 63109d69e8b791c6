"""The manifest: what a run folder's samples are, versioned.

``Manifest`` is a dataclass with a schema version (``format``). Fields it does not know (added by
a newer writer, or by other parts of the project) are kept in ``extra`` and written back
unchanged. It reads like a mapping (``manifest["task"]``, ``manifest.get("seed")``) over the same
keys that are written to JSON. Samplers are named by their registry names (``sgld``), never by
import paths.

Folders written in the first format (``bayesian-lora-samples/1``: a ``manifest.json`` beside a
samples file without hashes) are refused with :class:`LegacyRunFolderError`, whose message gives
the command that migrates them (``python -m bayesian_lora.runs migrate <folder>``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bayesian_lora.errors import InputError

SCHEMA = "bayesian-lora-run/2"
LEGACY_SCHEMAS = ("bayesian-lora-samples/1",)


class SampleFileError(InputError, RuntimeError):
    """A samples file is missing, truncated, corrupt, or does not match its manifest."""


class LegacyRunFolderError(SampleFileError):
    """A run folder written by an older format."""


@dataclass(eq=False)
class Manifest(Mapping[str, Any]):
    task: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)  # name, algorithm: registry names
    seed: int | None = None
    num_data: int | None = None
    prior_std: float | None = None
    prior: dict[str, Any] = field(default_factory=dict)  # free-form description of the prior
    kept_steps_planned: list[int] | None = None
    # What the samples file holds, filled in by the writer:
    steps: list[int] = field(default_factory=list)
    step_size_scales: list[float] = field(default_factory=list)  # per kept sample (back-offs)
    compute: dict[str, Any] = field(default_factory=dict)  # bayesian_lora.compute: what it cost
    status: str = "running"
    num_samples: int = 0
    parameters: dict[str, list[int]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # per tensor, of its raw bytes
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: str = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, preserved

    # ------------------------------------------------------------ dict view
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    def replace(self, **changes: Any) -> Manifest:
        known = {f.name for f in dataclasses.fields(self)}
        extra = {k: v for k, v in changes.items() if k not in known}
        fields = {k: v for k, v in changes.items() if k in known}
        return dataclasses.replace(self, **fields, extra={**self.extra, **extra})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "the manifest") -> Manifest:
        fmt = data.get("format", LEGACY_SCHEMAS[0])
        if fmt in LEGACY_SCHEMAS:
            raise LegacyRunFolderError(
                f"{source} was written in the old format {fmt!r} (samples without hashes); "
                f"migrate it with: python -m bayesian_lora.runs migrate <run folder>"
            )
        if fmt != SCHEMA:
            raise SampleFileError(
                f"{source} has format {fmt!r}; this version reads {SCHEMA!r} (a newer "
                "bayesian_lora wrote it?)"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_json(cls, text: str, source: str = "the manifest") -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SampleFileError(f"{source} is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise SampleFileError(f"{source} is not a JSON object")
        return cls.from_dict(data, source)
