"""The sample store: ``samples.safetensors`` holds the kept samples AND their manifest.

Commit point: the manifest (JSON) is embedded in the safetensors header metadata, so one atomic
``os.replace`` publishes samples and manifest together; a crash leaves the previous pair or the
new one, never a mix. ``manifest.json`` is a derived, human-readable copy written afterwards;
loaders trust the embedded manifest, and a missing or stale ``manifest.json`` is rewritten, never
fatal. Layout: one tensor per sampled parameter, ``[num_samples, *param_shape]``; only rows that
were filled are ever written. The manifest records per-tensor sha256 of the raw bytes, checked on
every load together with names, shapes, dtypes and finiteness.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from bayesian_lora.runs.layout import MANIFEST_FILE, SAMPLES_FILE, atomic_write
from bayesian_lora.runs.manifest import SCHEMA, Manifest, SampleFileError

log = logging.getLogger(__name__)

MANIFEST_KEY = "bayesian_lora.manifest"  # the safetensors metadata key of the embedded manifest


def tensor_sha256(t: Tensor) -> str:
    """sha256 of a tensor's raw bytes (C order), whatever its dtype."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def row_sha256(samples: Mapping[str, Tensor], index: int) -> str:
    """One hash of sample ``index`` over all parameters (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(samples):
        row = samples[name][index].detach().to("cpu").contiguous().reshape(-1)
        h.update(name.encode())
        h.update(row.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def row_hashes(samples: Mapping[str, Tensor], rows: Sequence[int]) -> list[str]:
    return [row_sha256(samples, i) for i in rows]


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def write_samples(
    run_dir: str | Path, samples: Mapping[str, Tensor], manifest: Manifest | Mapping[str, Any]
) -> Manifest:
    """Publish ``samples`` (name -> [S, ...]) with their manifest in one atomic replace."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_dict({"format": SCHEMA, **manifest})
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in samples.items()}
    sizes = {t.shape[0] for t in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"all sampled tensors need the same leading sample count, got {sizes}")
    full = manifest.replace(
        num_samples=sizes.pop(),
        parameters={n: list(t.shape[1:]) for n, t in tensors.items()},
        dtypes={n: _dtype_name(t) for n, t in tensors.items()},
        sha256={n: tensor_sha256(t) for n, t in tensors.items()},
    )
    run_dir = Path(run_dir)
    meta = {MANIFEST_KEY: full.to_json()}
    atomic_write(
        run_dir / SAMPLES_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta), "samples"
    )
    write_manifest_copy(run_dir, full)
    return full


def write_manifest_copy(run_dir: Path, manifest: Manifest) -> None:
    """The human-readable ``manifest.json`` (derived from the samples file; never trusted)."""
    text = manifest.to_json()

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(run_dir / MANIFEST_FILE, write, "manifest")


def read_manifest(run_dir: str | Path) -> Manifest:
    """The manifest embedded in the samples file (only the header is read)."""
    run_dir = Path(run_dir)
    path = run_dir / SAMPLES_FILE
    if not path.is_file():
        if (run_dir / MANIFEST_FILE).is_file():  # a folder of the first format?
            Manifest.from_json((run_dir / MANIFEST_FILE).read_text(), str(run_dir / MANIFEST_FILE))
        raise SampleFileError(f"no {SAMPLES_FILE} in {run_dir.resolve()}: not a run folder")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise SampleFileError(f"{path} is truncated or corrupt: {err}") from err
    if MANIFEST_KEY not in meta:
        legacy = run_dir / MANIFEST_FILE
        source = str(legacy if legacy.is_file() else path)
        text = legacy.read_text() if legacy.is_file() else "{}"
        Manifest.from_json(text, source)  # raises the old-format message
        raise SampleFileError(f"{path} holds no manifest")
    return Manifest.from_json(meta[MANIFEST_KEY], f"the manifest embedded in {path}")


def verify(path: Path, samples: Mapping[str, Tensor], manifest: Manifest) -> None:
    """Names, shapes, dtypes, sha256 and finiteness of every tensor against the manifest."""
    expected = manifest.parameters
    if set(samples) != set(expected):
        raise SampleFileError(
            f"{path} holds parameters {sorted(set(samples) ^ set(expected))} that do not match "
            f"its manifest"
        )
    for name, t in samples.items():
        if list(t.shape) != [manifest.num_samples, *expected[name]]:
            raise SampleFileError(
                f"{path}: {name} has shape {list(t.shape)}, manifest says "
                f"[{manifest.num_samples}, {', '.join(map(str, expected[name]))}]"
            )
        if manifest.dtypes.get(name) != _dtype_name(t):
            raise SampleFileError(
                f"{path}: {name} is {_dtype_name(t)}, manifest says {manifest.dtypes.get(name)}"
            )
        if manifest.sha256.get(name) != tensor_sha256(t):
            raise SampleFileError(
                f"{path}: tensor {name} does not match its sha256 in the manifest (the file "
                "was altered or corrupted after it was written)"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1).nonzero().flatten()
            raise SampleFileError(
                f"{path}: tensor {name} holds non-finite values (NaN/inf) in sample(s) "
                f"{bad.tolist()}"
            )


def load_samples(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], Manifest]:
    """Read and verify a run folder's samples; rewrites a missing or stale ``manifest.json``."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    path = run_dir / SAMPLES_FILE
    try:
        samples = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise SampleFileError(f"{path} is truncated or corrupt: {err}") from err
    verify(path, samples, manifest)
    _refresh_manifest_copy(run_dir, manifest)
    if str(device) != "cpu":
        samples = {n: t.to(device) for n, t in samples.items()}
    return samples, manifest


def _refresh_manifest_copy(run_dir: Path, manifest: Manifest) -> None:
    copy = run_dir / MANIFEST_FILE
    try:
        if copy.is_file() and copy.read_text() == manifest.to_json():
            return
        write_manifest_copy(run_dir, manifest)
        log.warning("%s was missing or stale; rewritten from the samples file", copy)
    except OSError as err:  # a read-only folder: the embedded manifest is what counts
        log.warning("%s is missing or stale and could not be rewritten (%s)", copy, err)


def migrate_legacy(run_dir: str | Path) -> Manifest:
    """Rewrite a first-format folder (manifest.json + bare samples) in the current format.

    The old files are checked as far as they can be (names, shapes) and rehashed; there is no
    older hash to compare with.
    """
    import json

    from bayesian_lora.runs.manifest import LEGACY_SCHEMAS

    run_dir = Path(run_dir)
    data: dict[str, Any] = json.loads((run_dir / MANIFEST_FILE).read_text())
    if data.get("format", LEGACY_SCHEMAS[0]) not in LEGACY_SCHEMAS:
        raise SampleFileError(f"{run_dir} is not in an old format ({data.get('format')!r})")
    samples = load_file(str(run_dir / SAMPLES_FILE))
    for name, t in samples.items():
        if list(t.shape[1:]) != list(data.get("parameters", {}).get(name, [])):
            raise SampleFileError(f"{run_dir}: {name} does not match its old manifest")
    for key in ("num_samples", "parameters", "dtypes", "sha256"):
        data.pop(key, None)
    manifest = Manifest.from_dict({**data, "format": SCHEMA})
    return write_samples(run_dir, samples, manifest)
