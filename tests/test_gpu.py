"""CUDA paths (skipped without a GPU): bf16-mixed keeps the chain in float32, samples stay on device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.runs import load_samples
from tests.helpers import CHAIN, train_observed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Inspect(L.Callback):
    """Records dtypes and devices of what the chain touches, at the end of training."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        params = pl_module.sampled_parameters()
        sampler = trainer.optimizers[1]
        collector = next(c for c in trainer.callbacks if isinstance(c, SampleCollector))
        self.seen = {
            "param_dtypes": {p.dtype for p in params.values()},
            "param_devices": {p.device.type for p in params.values()},
            "buffer_devices": {t.device.type for t in collector.buffer.values()},
            "buffer_dtypes": {t.dtype for t in collector.buffer.values()},
            "generator_device": sampler._generator.device.type,
            "precision": trainer.precision,
        }


@pytest.mark.parametrize("sampler", ["sgld", "sghmc", "sam_sgld"])
def test_bf16_chain_keeps_float32_parameters_and_device_buffer(
    sampler: str, synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Inspect()
    train_observed(
        monkeypatch,
        probe,
        synthetic_data_dir,
        tmp_path,
        "data=mrpc",
        f"sampler={sampler}",
        *CHAIN,
        "trainer.accelerator=gpu",  # debug=smoke selects the CPU trainer: this is its GPU twin
        "trainer.precision=bf16-mixed",
    )
    seen = probe.seen
    assert seen["precision"] == "bf16-mixed"
    assert seen["param_dtypes"] == {torch.float32} and seen["param_devices"] == {"cuda"}
    assert seen["buffer_devices"] == {"cuda"} and seen["buffer_dtypes"] == {torch.float32}
    assert seen["generator_device"] == "cuda"
    samples, manifest = load_samples(tmp_path)
    assert manifest["num_samples"] == 3
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in samples.values())
