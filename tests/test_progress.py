"""The chain's status line: what it shows, and that a chain prints it instead of an epoch bar."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import pytest

from bayesian_lora.callbacks.progress import ChainProgress, format_seconds, status_line
from bayesian_lora.train import train
from tests.helpers import CHAIN, compose_train, smoke_overrides


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0, 59.4, 75, 3725)] == ["0s", "59s", "1m15s", "1h02m"]


def test_status_line_shows_phase_steps_kept_lr_temperature_and_eta() -> None:
    line = status_line(
        sampler="sgld",
        phase="burn-in",
        step=40,
        total=100,
        kept=0,
        num_samples=10,
        lr=0.03,
        temperature=0.1,
        u=0.5123,
        elapsed=20.0,
        seconds_per_step=0.5,
    )
    assert line == (
        "chain sgld | burn-in | step 40/100 | kept 0/10 | lr 0.03 | T 0.1 | u 0.5123 | 20s, eta 30s"
    )
    done = status_line(
        sampler="sgld",
        phase="done",
        step=100,
        total=100,
        kept=10,
        num_samples=10,
        lr=None,
        temperature=None,
        u=None,
        elapsed=61.0,
        seconds_per_step=0.5,
    )
    assert done == "chain sgld | done | step 100/100 | kept 10/10 | 1m01s"  # no eta at the end


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the chains' status lines print, as a log would see it (not a terminal)."""
    out = io.StringIO()
    original = ChainProgress.__init__

    @functools.wraps(original)  # keeps the signature train completes the callback by
    def capture(self: ChainProgress, *args: object, **kwargs: object) -> None:
        original(self, *args, stream=out, tty=False, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ChainProgress, "__init__", capture)
    return out


def test_the_last_line_is_printed_once(
    synthetic_data_dir: Path, tmp_path: Path, stream: io.StringIO
) -> None:
    extra = ["sampler=sgld", "data=mrpc", *CHAIN, "callbacks.progress.every_n_steps=11"]
    train(compose_train(smoke_overrides(synthetic_data_dir, tmp_path, *extra)))
    assert [ln.split(" | ")[2] for ln in stream.getvalue().splitlines()] == ["step 11/11"]


def test_a_chain_prints_its_status_lines_and_no_epoch_bar(
    synthetic_data_dir: Path,
    tmp_path: Path,
    stream: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    extra = ["sampler=sgld", "data=mrpc", *CHAIN, "callbacks.progress.every_n_steps=2"]
    cfg = compose_train(smoke_overrides(synthetic_data_dir, tmp_path, *extra))
    train(cfg)
    lines = stream.getvalue().splitlines()
    # warm-up 3, burn-in 2, 3 samples thinned by 2: 11 steps; a line at 2, 4, ..., 10 and the end
    # (once: an end that falls on a printed step is not printed twice)
    assert [ln.split(" | ")[2] for ln in lines] == [f"step {t}/11" for t in (2, 4, 6, 8, 10, 11)]
    assert [ln.split(" | ")[1] for ln in lines] == [
        "warmup",
        "burn-in",
        "sampling",
        "sampling",
        "sampling",
        "done",
    ]
    assert lines[-1].split(" | ")[3] == "kept 3/3"
    temperature = f" | T {cfg.sampler.temperature:g} | "  # the sampler's T, not AdamW's
    assert temperature in lines[2] and " | T " not in lines[0]
    assert "eta" in lines[0] and "eta" not in lines[-1]
    assert "Epoch" not in capfd.readouterr().err  # Lightning's epoch bar ("Epoch 0/-2") is off
