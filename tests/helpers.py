"""What the test modules share: composing the real configs, smoke runs, watching a run.

Test modules import from here (and ``tests/wandb_offline.py``), never from each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from bayesian_lora.config import CONFIG_DIR

if TYPE_CHECKING:
    import torch

    from bayesian_lora.models.lora import ModelSettings
#: A short chain: 3 warm-up steps, 2 burn-in steps, 3 samples kept 2 steps apart.
CHAIN = ["sampler.warmup.steps=3", "sampler.burn_in=2", "sampler.thin=2", "sampler.num_samples=3"]


def compose_config(
    name: str, overrides: list[str] | tuple[str, ...] = (), *, hydra_config: bool = False
) -> DictConfig:
    """``bayesian_lora/conf/<name>.yaml`` composed with ``overrides``, as the entry point does.

    The one way tests compose a config (Hydra's public ``compose``); ``hydra_config=True`` keeps
    the ``hydra`` node (sweeper params, run dir).
    """
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name=name, overrides=list(overrides), return_hydra_config=hydra_config
        )


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    return compose_config("train", overrides)


def compose_eval(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    return compose_config("evaluate", overrides)


def model_settings(name: str, **overrides: Any) -> ModelSettings:
    """``conf/model/<name>.yaml`` as :class:`ModelSettings`, top-level keys replaced by ``overrides``."""
    from omegaconf import OmegaConf

    from bayesian_lora.models.lora import ModelSettings

    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"))
    assert isinstance(cfg, dict)
    return ModelSettings.from_config({**cfg, **overrides})


def mcqa_rows(n: int = 3) -> list[dict[str, Any]]:
    """ARC-style MCQA rows of different lengths showing 3, 4, 5, 3, ... letters (so left padding
    and masked letters are exercised); the answer is B."""
    from bayesian_lora.data.mcqa import LETTERS, format_row

    rows = []
    for i in range(n):
        k = 3 + i % 3
        choices = {"text": [f"option {j} " * (i + 1) for j in range(k)], "label": list(LETTERS[:k])}
        rows.append(
            format_row("arc", {"question": "Why?" * (i + 1), "choices": choices, "answerKey": "B"})
        )
    return rows


def mcqa_batch(tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``rows`` of :func:`mcqa_rows` as one padded batch (with ``choice_mask`` and ``labels``)."""
    import torch

    from bayesian_lora.data.mcqa import CHOICE_MASK

    batch = dict(tokenizer([r["prompt"] for r in rows], padding=True, return_tensors="pt"))
    batch[CHOICE_MASK] = torch.tensor([r[CHOICE_MASK] for r in rows])
    batch["labels"] = torch.tensor([r["label"] for r in rows])
    return batch


def smoke_overrides(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """A few steps of the tiny model on the synthetic data, written to ``out``."""
    return [
        "model=tiny",
        "debug=smoke",
        "logger=csv",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out}",
        *extra,
    ]


def train_run(data_dir: Path, out: Path, *extra: str) -> Path:
    """A quiet smoke run (no logger) of the tiny model on synthetic MRPC; returns its folder."""
    from bayesian_lora.train import train

    base = ["model=tiny", "debug=smoke", "logger=none", "data=mrpc"]  # a later data= wins
    train(compose_train([*base, f"paths.data_dir={data_dir}", f"paths.output_dir={out}", *extra]))
    return out


def steps_per_epoch_of(run_dir: Path) -> int:
    """Optimizer steps per epoch of the run in ``run_dir``: its saved (composed) config and the
    number of training examples its manifest records (the synthetic data's size after the
    validation carve and ``max_train_samples``)."""
    from omegaconf import OmegaConf

    from bayesian_lora.config import steps_per_epoch
    from bayesian_lora.runs import load_samples

    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert isinstance(cfg, DictConfig)
    num_data = load_samples(run_dir)[1].num_data
    assert num_data, f"{run_dir}: the manifest records no num_data"
    return steps_per_epoch(cfg, int(num_data))


def run_eval(*overrides: str) -> dict[str, Any]:
    """``python -m bayesian_lora.evaluate <overrides>``, in-process; returns its result."""
    from bayesian_lora.evaluate import evaluate

    return evaluate(compose_eval(list(overrides)))


def sweep_first_job(experiment: str) -> list[str]:
    """The overrides of the first job of ``experiment``'s ``-m`` sweep (none if it sweeps nothing)."""
    cfg = compose_config("train", [f"experiment={experiment}"], hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    parser = OverridesParser.create()
    first = []
    for key, values in params.items():
        (override,) = parser.parse_overrides([f"{key}={values}"])
        first.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
    return first


class AtStep(L.Callback):
    """Runs ``action(pl_module)`` once, right after chain step ``step`` has been taken."""

    def __init__(self, step: int, action: Any) -> None:
        self.step, self.action, self.done = step, action, False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if not self.done and pl_module.chain_step == self.step:
            self.done = True
            self.action(pl_module)


class BeforeUpdate(L.Callback):
    """Runs ``action(pl_module)`` inside step ``step`` (gradients computed, update not applied),
    at most ``times`` times (a retried step comes back with the same chain step)."""

    def __init__(self, step: int, action: Any, times: int = 1) -> None:
        self.step, self.action, self.times = step, action, times

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        if self.times and pl_module.chain_step == self.step:
            self.times -= 1
            self.action(pl_module)


def inject(monkeypatch: pytest.MonkeyPatch | None, *callbacks: L.Callback) -> None:
    """Adds ``callbacks`` to the trainer that ``bayesian_lora.train`` builds next (for good when
    ``monkeypatch`` is None: in a forked child that is about to die)."""
    import bayesian_lora.train as train_module

    original = train_module.build_trainer

    def build_with_callback(*args: Any, **kwargs: Any) -> Any:
        trainer, collector = original(*args, **kwargs)
        trainer.callbacks.extend(callbacks)
        return trainer, collector

    if monkeypatch is None:
        train_module.build_trainer = build_with_callback  # type: ignore[assignment]
        return

    monkeypatch.setattr(train_module, "build_trainer", build_with_callback)


def train_observed(
    monkeypatch: pytest.MonkeyPatch, callback: L.Callback, data_dir: Path, out: Path, *extra: str
) -> None:
    """A smoke run of the real config with ``callback`` watching the trainer."""
    import bayesian_lora.train as train_module

    inject(monkeypatch, callback)
    train_module.train(compose_train(smoke_overrides(data_dir, out, *extra)))


def fake_run_folder(
    folder: Path,
    preds: Any,
    labels: Any,
    *,
    sampler: str = "map",
    seed: int = 0,
    task: str = "mrpc",
    model: str = "tiny",
    temperature: float = 1.0,
    lr: float = 0.1,
    compute: dict[str, Any] | None = None,
    trace: dict[str, Any] | None = None,
    sampler_config: dict[str, Any] | None = None,
    steps: list[int] | None = None,
    samples: dict[str, Any] | None = None,
    posterior: dict[str, Any] | None = None,
) -> Path:
    """A finished run folder without training: ``config.yaml``, samples and manifest (the run
    folder writers), the training-end ``predictions.safetensors`` (``preds`` ``[M, N, C]``) and
    ``metrics.json``, and a ``trace.safetensors`` of the per-step ``trace`` arrays (``step``
    unless given: 0, 1, ...; ``kept`` unless given: every 10th step from the first).
    ``sampler_config`` adds keys to the config's ``sampler`` block (a schedule, the chain
    lengths; a Laplace run's ``structure``, ``from_run``, ...), ``steps`` are the manifest's
    kept steps, ``samples`` replace the made-up ``lora_A`` samples, and ``posterior`` is the
    manifest's block of a method whose samples are independent draws (SWAG, Laplace, BLoB)."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from bayesian_lora.callbacks.trace import TRACE_FILE, TRACE_FORMAT
    from bayesian_lora.data.tasks import get_task
    from bayesian_lora.evaluation.metrics import ensemble_metrics
    from bayesian_lora.evaluation.write import METRICS_FILE, save_predictions, write_json
    from bayesian_lora.runs import write_samples

    preds = np.asarray(preds, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": seed,
        "model": {"name": model},
        "data": {"task": task},
        "sampler": {
            "name": sampler,
            "lr": lr,
            "temperature": temperature,
            "warmup": {},
            **(sampler_config or {}),
        },
        "paths": {"output_dir": str(folder)},
    }
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    if samples is None:
        samples = {"lora_A": torch.arange(preds.shape[0] * 2, dtype=torch.float32).view(-1, 2)}
    samples = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in samples.items()}
    manifest = {"task": task, "sampler": {"name": sampler}, "seed": seed, "status": "complete"}
    if steps is not None:
        manifest["steps"] = list(steps)
    if posterior is not None:
        manifest["posterior"] = posterior
    write_samples(folder, samples, {**manifest, "compute": compute or {}})
    save_predictions(folder / "predictions.safetensors", preds, np.asarray(labels))
    metrics = ensemble_metrics(preds, np.asarray(labels), get_task(task).metric)
    write_json(folder / METRICS_FILE, {"ensemble": metrics, "num_samples": int(preds.shape[0])})
    if trace is not None:
        n = len(next(iter(trace.values())))
        tensors = {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float32)
            for k, v in trace.items()
            if k not in ("kept", "step")
        }
        tensors["step"] = torch.as_tensor(
            np.asarray(trace.get("step", np.arange(n))), dtype=torch.int64
        )
        kept = trace.get("kept", np.arange(n) % 10 == 0)
        tensors["kept"] = torch.as_tensor(np.asarray(kept)).to(torch.uint8)
        save_file(tensors, str(folder / TRACE_FILE), metadata={"format": TRACE_FORMAT})
    return folder
