"""The sample store: exact round trip, one atomic commit point, verified loads, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bayesian_lora.runs import (
    LegacyRunFolderError,
    Manifest,
    SampleFileError,
    layout,
    load_samples,
    read_manifest,
    store,
    write_samples,
)
from bayesian_lora.runs.__main__ import main as runs_main


def samples() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.lora_A.weight": torch.randn(3, 4, 8, generator=g),
        "classifier.bias": torch.randn(3, 2, generator=g),
    }


def manifest(**kw: object) -> Manifest:
    return Manifest(task="mrpc", seed=0, steps=[5, 10, 15], **kw)  # type: ignore[arg-type]


def test_round_trip_is_exact_and_records_shapes_and_hashes(tmp_path: Path) -> None:
    write_samples(tmp_path, samples(), manifest())
    loaded, m = load_samples(tmp_path)
    assert all(torch.equal(loaded[n], t) for n, t in samples().items())
    assert m.num_samples == 3 and m["steps"] == [5, 10, 15] and m.format == "bayesian-lora-run/2"
    assert m["parameters"] == {"a.lora_A.weight": [4, 8], "classifier.bias": [2]}
    assert set(m.sha256) == set(samples()) and m.dtypes["classifier.bias"] == "float32"
    assert b"pickle" not in (tmp_path / "samples.safetensors").read_bytes()[:64]


def test_unknown_manifest_keys_and_the_prior_block_survive(tmp_path: Path) -> None:
    m = manifest(prior={"name": "gaussian", "std": 0.1}).replace(future_key={"x": 1})
    write_samples(tmp_path, samples(), m)
    back = read_manifest(tmp_path)
    assert back.prior == {"name": "gaussian", "std": 0.1} and back["future_key"] == {"x": 1}
    assert json.loads((tmp_path / "manifest.json").read_text())["future_key"] == {"x": 1}


def test_the_embedded_manifest_is_trusted_and_the_copy_rewritten(tmp_path: Path) -> None:
    write_samples(tmp_path, samples(), manifest())
    copy = tmp_path / "manifest.json"
    copy.unlink()
    assert load_samples(tmp_path)[1].steps == [5, 10, 15]
    assert json.loads(copy.read_text())["steps"] == [5, 10, 15]  # rewritten
    copy.write_text(json.dumps({**json.loads(copy.read_text()), "task": "sst2"}))
    assert load_samples(tmp_path)[1].task == "mrpc"  # a stale copy is ignored...
    assert json.loads(copy.read_text())["task"] == "mrpc"  # ...and repaired


@pytest.mark.parametrize("site", ["samples.written", "manifest.written", "manifest.published"])
def test_a_crash_at_any_write_site_keeps_a_consistent_pair(
    site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_samples(tmp_path, samples(), manifest())
    before = (tmp_path / "samples.safetensors").read_bytes()

    def crash(at: str) -> None:
        if at == site:
            raise KeyboardInterrupt

    monkeypatch.setattr(layout, "crash_point", crash)
    one = {n: t[:1] for n, t in samples().items()}
    with pytest.raises(KeyboardInterrupt):
        write_samples(tmp_path, one, Manifest(task="mrpc", steps=[5]))
    monkeypatch.undo()
    loaded, m = load_samples(tmp_path)
    if site == "samples.written":  # not yet published: the old pair stands
        assert (tmp_path / "samples.safetensors").read_bytes() == before and m.steps == [5, 10, 15]
    else:  # published: the new pair, whatever manifest.json says
        assert m.steps == [5] and loaded["classifier.bias"].shape[0] == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_truncated_file_and_missing_folder_have_clear_errors(tmp_path: Path) -> None:
    write_samples(tmp_path, samples(), manifest())
    path = tmp_path / "samples.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SampleFileError, match="truncated or corrupt"):
        load_samples(tmp_path)
    with pytest.raises(SampleFileError, match="not a run folder"):
        load_samples(tmp_path / "nowhere")


def _payload_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_one_flipped_bit_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    write_samples(tmp_path, samples(), manifest())
    path = tmp_path / "samples.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte belongs to the last tensor in the file
    path.write_bytes(bytes(data))
    with pytest.raises(SampleFileError, match=r"tensor classifier\.bias does not match its sha256"):
        load_samples(tmp_path)


def test_nan_and_wrong_dtype_are_refused(tmp_path: Path) -> None:
    bad = samples()
    bad["a.lora_A.weight"][1, 0, 0] = float("nan")
    write_samples(tmp_path, bad, manifest())  # hashes match: only the finiteness check catches it
    with pytest.raises(SampleFileError, match=r"a\.lora_A\.weight holds non-finite .* \[1\]"):
        load_samples(tmp_path)
    # a float16 payload against a float32 manifest
    write_samples(tmp_path, samples(), manifest())
    m = read_manifest(tmp_path)
    half = {n: t.half() for n, t in samples().items()}
    meta = {store.MANIFEST_KEY: m.to_json()}
    save_file(half, str(tmp_path / "samples.safetensors"), metadata=meta)
    with pytest.raises(SampleFileError, match="is float16, manifest says float32"):
        load_samples(tmp_path)


def test_first_format_folders_are_refused_then_migrated(tmp_path: Path) -> None:
    old = {"format": "bayesian-lora-samples/1", "steps": [5, 10, 15], "num_samples": 3}
    old["parameters"] = {n: list(t.shape[1:]) for n, t in samples().items()}
    save_file(samples(), str(tmp_path / "samples.safetensors"), metadata={"num_samples": "3"})
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(LegacyRunFolderError, match="python -m bayesian_lora.runs migrate"):
        load_samples(tmp_path)
    assert runs_main(["migrate", str(tmp_path)]) == 0
    loaded, m = load_samples(tmp_path)
    assert m.steps == [5, 10, 15] and torch.equal(
        loaded["classifier.bias"], samples()["classifier.bias"]
    )


def test_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_samples(tmp_path, samples(), manifest())
    finally:
        os.umask(old)
    for name in ("samples.safetensors", "manifest.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
