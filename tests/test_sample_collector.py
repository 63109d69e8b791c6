"""The sample buffer: preallocated on the parameters' device, filled at the kept steps, exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.runs import load_samples
from tests.helpers import train_observed


class Observer(L.Callback):
    """Copies the sampled parameters after every step, and looks at the collector's buffer."""

    def __init__(self) -> None:
        self.params_after: dict[int, dict[str, torch.Tensor]] = {}
        self.buffer_at_start: dict[str, tuple[int, torch.device, tuple[int, ...]]] = {}
        self.buffer_at_end: dict[str, tuple[int, torch.device, tuple[int, ...]]] = {}
        self.param_devices: set[torch.device] = set()

    @staticmethod
    def _collector(trainer: L.Trainer) -> SampleCollector:
        return next(c for c in trainer.callbacks if isinstance(c, SampleCollector))

    @staticmethod
    def _describe(collector: SampleCollector) -> dict[str, Any]:
        return {n: (t.data_ptr(), t.device, tuple(t.shape)) for n, t in collector.buffer.items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.buffer_at_start = self._describe(self._collector(trainer))
        self.param_devices = {p.device for p in pl_module.sampled_parameters().values()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        params = pl_module.sampled_parameters()
        self.params_after[pl_module.chain_step - 1] = {
            n: p.detach().clone() for n, p in params.items()
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.buffer_at_end = self._describe(self._collector(trainer))


@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_buffer_holds_the_parameters_of_exactly_the_kept_steps(
    sampler: str, synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    observer = Observer()
    train_observed(
        monkeypatch,
        observer,
        synthetic_data_dir,
        tmp_path,
        "data=mrpc",
        f"sampler={sampler}",
        "sampler.warmup.steps=2",
        "sampler.burn_in=3",
        "sampler.thin=3",
        "sampler.num_samples=4",
        "callbacks.samples.flush_every=3",
    )
    samples, manifest = load_samples(tmp_path)

    # warm-up 2 + burn-in 3, then every 3rd step: steps 7, 10, 13, 16 (0-based global steps).
    assert manifest["steps"] == [7, 10, 13, 16]
    # Allocated once, before the first step, on the parameters' device, for all samples.
    assert observer.buffer_at_start == observer.buffer_at_end
    assert {d for _, d, _ in observer.buffer_at_start.values()} == observer.param_devices
    assert {shape[0] for _, _, shape in observer.buffer_at_start.values()} == {4}
    assert set(samples) == set(observer.buffer_at_start)
    for i, step in enumerate(manifest["steps"]):
        for name, value in observer.params_after[step].items():
            assert torch.equal(samples[name][i], value), (name, step)
    # Neighbouring (discarded) steps differ from the kept ones: the index is not off by one.
    head = next(n for n in samples if "classifier" in n and n.endswith("weight"))
    assert not torch.equal(samples[head][0], observer.params_after[6][head])
    assert not torch.equal(samples[head][0], observer.params_after[8][head])
