"""Under DDP only rank zero logs the package's INFO lines; warnings and errors pass everywhere."""

from __future__ import annotations

import logging

import pytest

from bayesian_lora.rank_zero import RankZeroFilter, install_rank_zero_logging, process_rank


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}:{record.levelname}:{record.getMessage()}")


def _log_everything() -> None:
    log = logging.getLogger("bayesian_lora.train")  # a child: its records propagate to root
    log.setLevel(logging.DEBUG)
    log.info("info line")
    log.warning("warning line")
    log.error("error line")
    logging.getLogger("lightning.pytorch").warning("not ours")


def _run(monkeypatch: pytest.MonkeyPatch, rank: int) -> list[str]:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", rank, raising=False)
    handler = _Collect()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])  # as Hydra's job logging: handlers on root
    install_rank_zero_logging()
    _log_everything()
    return handler.lines


def test_rank_one_logs_no_info_but_keeps_warnings_and_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _run(monkeypatch, 1) == [
        "bayesian_lora.train:WARNING:warning line",
        "bayesian_lora.train:ERROR:error line",
        "lightning.pytorch:WARNING:not ours",
    ]


def test_rank_zero_logs_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(monkeypatch, 0) == [
        "bayesian_lora.train:INFO:info line",
        "bayesian_lora.train:WARNING:warning line",
        "bayesian_lora.train:ERROR:error line",
        "lightning.pytorch:WARNING:not ours",
    ]


def test_installing_twice_adds_one_filter() -> None:
    handler = _Collect()
    install_rank_zero_logging([handler])
    install_rank_zero_logging([handler])
    assert sum(isinstance(f, RankZeroFilter) for f in handler.filters) == 1


def test_rank_is_lightnings_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 3, raising=False)
    assert process_rank() == 3
    # before Lightning is imported: the variables Lightning reads, in its order
    monkeypatch.delitem(sys.modules, "lightning_utilities.core.rank_zero")
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert process_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert process_rank() == 2
