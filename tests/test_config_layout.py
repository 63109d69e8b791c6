"""The config groups' layout: shared fragments live in <group>/base/, never among the options."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bayesian_lora.config import CONFIG_DIR
from tests.helpers import compose_train

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
