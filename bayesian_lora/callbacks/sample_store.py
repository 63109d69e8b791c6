"""Posterior samples on disk: ``samples.safetensors`` (no pickle) plus ``manifest.json``.

Layout: one tensor per sampled parameter name, shaped ``[num_samples, *param_shape]``. The
manifest says what the samples are (model id, LoRA config, task, sampler and hyperparameters,
seed, the step of each sample, parameter names and shapes, library versions). Both files are
written atomically (temporary file + ``os.replace``), so a crash mid-write never leaves a torn
file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

SAMPLES_FILE = "samples.safetensors"
MANIFEST_FILE = "manifest.json"


class SampleFileError(RuntimeError):
    """A samples file is missing, truncated, corrupt, or does not match its manifest."""


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def library_versions() -> dict[str, str]:
    import lightning
    import peft
    import transformers

    import bayesian_lora

    return {
        "bayesian_lora": bayesian_lora.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def write_manifest(run_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    _atomic_write(Path(run_dir) / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(text))


def write_samples(
    run_dir: str | Path, samples: Mapping[str, Tensor], manifest: Mapping[str, Any]
) -> None:
    """Write ``samples`` (name -> [S, ...]) and the manifest, the samples file first."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in samples.items()}
    sizes = {t.shape[0] for t in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"all sampled tensors need the same leading sample count, got {sizes}")
    full = dict(manifest)
    full["num_samples"] = sizes.pop()
    full["parameters"] = {n: list(t.shape[1:]) for n, t in tensors.items()}
    full["dtypes"] = {n: str(t.dtype).removeprefix("torch.") for n, t in tensors.items()}
    meta = {"num_samples": str(full["num_samples"])}
    _atomic_write(Path(run_dir) / SAMPLES_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_manifest(run_dir, full)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        raise SampleFileError(f"no {MANIFEST_FILE} in {Path(run_dir).resolve()}: not a run folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SampleFileError(f"{path} is not valid JSON ({err})") from err


def load_samples(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and check a run folder's samples against its manifest."""
    manifest = read_manifest(run_dir)
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        raise SampleFileError(f"no {SAMPLES_FILE} in {Path(run_dir).resolve()}")
    try:
        samples = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise SampleFileError(f"{path} is truncated or corrupt: {err}") from err
    expected = manifest.get("parameters", {})
    if set(samples) != set(expected):
        raise SampleFileError(
            f"{path} holds parameters {sorted(set(samples) ^ set(expected))} that do not match "
            f"its manifest"
        )
    for name, t in samples.items():
        if list(t.shape) != [manifest["num_samples"], *expected[name]]:
            raise SampleFileError(
                f"{path}: {name} has shape {list(t.shape)}, manifest says "
                f"[{manifest['num_samples']}, {', '.join(map(str, expected[name]))}]"
            )
    return samples, manifest
