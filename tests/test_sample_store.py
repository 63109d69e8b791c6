"""Run-folder sample files: exact round trip, atomic writes, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bayesian_lora.callbacks import sample_store
from bayesian_lora.callbacks.sample_store import SampleFileError, load_samples, write_samples


def samples() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.lora_A.weight": torch.randn(3, 4, 8, generator=g),
        "classifier.bias": torch.randn(3, 2, generator=g),
    }


def test_round_trip_is_exact_and_records_shapes(tmp_path: Path) -> None:
    write_samples(tmp_path, samples(), {"steps": [5, 10, 15], "seed": 0})
    loaded, manifest = load_samples(tmp_path)
    assert all(torch.equal(loaded[n], t) for n, t in samples().items())
    assert manifest["num_samples"] == 3 and manifest["steps"] == [5, 10, 15]
    assert manifest["parameters"] == {"a.lora_A.weight": [4, 8], "classifier.bias": [2]}
    assert b"pickle" not in (tmp_path / "samples.safetensors").read_bytes()[:64]


def test_a_crash_mid_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_samples(tmp_path, samples(), {"steps": [1, 2, 3]})
    before = (tmp_path / "samples.safetensors").read_bytes()

    def crash(tensors: object, path: str, metadata: object = None) -> None:
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_store, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        write_samples(tmp_path, {n: t[:1] for n, t in samples().items()}, {"steps": [1]})
    assert (tmp_path / "samples.safetensors").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_truncated_file_and_missing_folder_have_clear_errors(tmp_path: Path) -> None:
    write_samples(tmp_path, samples(), {})
    path = tmp_path / "samples.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SampleFileError, match="truncated or corrupt"):
        load_samples(tmp_path)
    with pytest.raises(SampleFileError, match="not a run folder"):
        load_samples(tmp_path / "nowhere")


def test_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_samples(tmp_path, samples(), {})
    finally:
        os.umask(old)
    for name in ("samples.safetensors", "manifest.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
