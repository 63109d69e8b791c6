"""Crash consistency of run folders, by fault injection (tiny model, synthetic data, CPU).

A crash (``os._exit``, no clean-up at all) at every write site of the run folder (samples,
manifest, checkpoint: before and after each rename), and SIGKILL at random steps, each followed
by ``resume=``: the final samples are bit-identical to the uninterrupted chain every time, and
after each crash every row on disk is a kept sample of that chain. The crashing runs are forked
children of the test process (everything is imported already, so a child costs no start-up).
"""

from __future__ import annotations

import os
import random
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import bayesian_lora.train as train_module
from bayesian_lora.callbacks.sample_collector import ResumeMismatchError
from bayesian_lora.errors import InputError
from bayesian_lora.runs import RunFolderLockedError, layout, load_samples, write_samples
from tests.helpers import (
    AtStep,
    BeforeUpdate,
    compose_train,
    inject,
    smoke_overrides,
    steps_per_epoch_of,
)

pytestmark = pytest.mark.slow

CHAIN = [
    "data=mrpc",
    "sampler=sgld",
    "sampler.warmup.steps=2",
    "sampler.burn_in=1",
    "sampler.thin=2",
    "sampler.num_samples=5",
    "callbacks.checkpoint.every_n_train_steps=3",
    "callbacks.samples.flush_every=2",
    "evaluate_on_fit_end=false",
]
SITES = [
    f"{f}.{s}" for f in ("samples", "manifest", "checkpoint") for s in ("written", "published")
]
CRASHED = 86


def run(data_dir: Path, out: Path, *extra: str) -> None:
    train_module.train(compose_train(smoke_overrides(data_dir, out, *CHAIN, *extra)))


def resume(out: Path, *extra: str) -> None:
    train_module.train(compose_train([f"resume={out}", "paths.output_dir=unused", *extra]))


def with_callbacks(*callbacks: Any) -> None:
    """In a child: add callbacks to the trainer that train() builds."""
    inject(None, *callbacks)


def in_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns into pytest
        code = 0
        try:
            body()
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class Reference:
    def __init__(self, folder: Path, sites: list[str]) -> None:
        self.folder = folder
        self.sites = sites
        self.samples, self.manifest = load_samples(folder)
        self.rows = {
            step: {n: t[i] for n, t in self.samples.items()}
            for i, step in enumerate(self.manifest.steps)
        }


@pytest.fixture(scope="module")
def reference(synthetic_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    out = tmp_path_factory.mktemp("reference")
    sites: list[str] = []
    original = layout.crash_point
    layout.crash_point = sites.append  # type: ignore[assignment]
    try:
        run(synthetic_data_dir, out)
    finally:
        layout.crash_point = original  # type: ignore[assignment]
    return Reference(out, sites)


def assert_only_kept_rows(folder: Path, ref: Reference) -> None:
    """Whatever a crash left: every row on disk is the kept sample of its step."""
    if not (folder / layout.SAMPLES_FILE).exists():
        return
    samples, manifest = load_samples(folder)  # verified: hashes, dtypes, finiteness
    assert manifest.steps == ref.manifest.steps[: len(manifest.steps)]
    for i, step in enumerate(manifest.steps):
        for name, row in ref.rows[step].items():
            assert torch.equal(samples[name][i], row), (step, name)


def assert_finished_like(folder: Path, ref: Reference) -> None:
    samples, manifest = load_samples(folder)
    assert manifest.status == "complete" and manifest.steps == ref.manifest.steps
    for name, t in ref.samples.items():
        assert torch.equal(samples[name], t), name
    leftovers = [p for p in folder.rglob(f"*{layout.TMP_SUFFIX}")]
    assert not leftovers and not (folder / layout.LOCK_FILE).exists()


def crash_at(site: str, occurrence: int) -> Callable[[str], None]:
    seen = {"n": 0}

    def crash(at: str) -> None:
        if at == site:
            seen["n"] += 1
            if seen["n"] == occurrence:
                os._exit(CRASHED)

    return crash


@pytest.mark.parametrize("which", ["first", "later"])
@pytest.mark.parametrize("site", SITES)
def test_a_crash_at_any_write_site_then_resume_gives_the_same_chain(
    site: str, which: str, reference: Reference, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    count = reference.sites.count(site)
    assert count >= 2, (site, reference.sites)
    occurrence = 1 if which == "first" else random.Random(site).randint(2, count)

    def body() -> None:
        layout.crash_point = crash_at(site, occurrence)  # type: ignore[assignment]
        run(synthetic_data_dir, tmp_path)

    assert in_child(body) == CRASHED, f"no crash at {site} #{occurrence}"
    assert_only_kept_rows(tmp_path, reference)
    resume(tmp_path, "break_lock=true")  # the killed writer's lock is stale
    assert_finished_like(tmp_path, reference)


STEPS = 2 + 1 + 5 * 2


def killed_at(step: int, inside: bool, data_dir: Path, out: Path) -> int:
    """The exit status of a run SIGKILLed at chain step ``step``: right after it, or inside it
    (gradients computed, update not applied)."""

    def kill(module: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def body() -> None:
        with_callbacks(BeforeUpdate(step, kill) if inside else AtStep(step, kill))
        run(data_dir, out)

    return in_child(body)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_step_then_resume_gives_the_same_chain(
    seed: int, reference: Reference, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    step = rng.randint(1, STEPS - 1)
    inside = rng.random() < 0.5  # between steps, or inside one (gradients computed, no update)

    assert killed_at(step, inside, synthetic_data_dir, tmp_path) == -signal.SIGKILL
    assert_only_kept_rows(tmp_path, reference)
    if seed == 0:  # the dead writer's lock is reported, and kept until broken explicitly
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        with pytest.raises(RunFolderLockedError, match=r"stale lock .*no longer runs.*break_lock"):
            resume(tmp_path)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    resume(tmp_path, "break_lock=true")
    assert_finished_like(tmp_path, reference)


@pytest.mark.parametrize(
    ("epochs", "inside"),
    [(1, False), (1, True), (2, True)],
    ids=["1-after", "1-inside", "2-inside"],
)
def test_sigkill_at_an_epoch_boundary_then_resume_gives_the_same_chain(
    epochs: int, inside: bool, reference: Reference, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    """Killed right after the last step of an epoch, or inside the first step of the next one
    (resuming from the checkpoint written at the boundary: checkpoints every 3 steps)."""
    step = epochs * steps_per_epoch_of(reference.folder)
    assert step < STEPS

    assert killed_at(step, inside, synthetic_data_dir, tmp_path) == -signal.SIGKILL
    assert_only_kept_rows(tmp_path, reference)
    resume(tmp_path, "break_lock=true")
    assert_finished_like(tmp_path, reference)


def test_a_second_training_into_a_folder_in_use_is_refused_with_the_first_ones_pid(
    reference: Reference, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def hold(module: Any) -> None:
        os.write(ready_w, b"1")
        os.read(go_r, 1)

    def body() -> None:
        with_callbacks(AtStep(4, hold))
        run(synthetic_data_dir, tmp_path)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns into pytest
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"1"
        with pytest.raises(RunFolderLockedError, match=rf"in use by PID {pid} on host") as err:
            run(synthetic_data_dir, tmp_path)
        assert isinstance(err.value, InputError)  # the CLI prints one error line, exit 2
        with pytest.raises(RunFolderLockedError, match=rf"PID {pid}"):
            resume(tmp_path)
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the first one was not disturbed
    assert_finished_like(tmp_path, reference)


def test_resume_refuses_a_samples_file_that_disagrees_and_leaves_it_alone(
    reference: Reference, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    """The checkpoint lists more kept steps than the file holds (the old data-loss bug)."""

    def stop(module: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def body() -> None:
        with_callbacks(AtStep(9, stop))
        run(synthetic_data_dir, tmp_path)

    assert in_child(body) == 143
    samples, manifest = load_samples(tmp_path)
    assert len(manifest.steps) >= 2
    fewer = {n: t[:1] for n, t in samples.items()}
    write_samples(tmp_path, fewer, manifest.replace(steps=manifest.steps[:1]))
    before = (tmp_path / layout.SAMPLES_FILE).read_bytes()
    with pytest.raises(ResumeMismatchError, match=r"refused, nothing was written.*kept steps"):
        resume(tmp_path)
    assert (tmp_path / layout.SAMPLES_FILE).read_bytes() == before
    # Rows that differ from what the checkpoint recorded (same steps, other values):
    other = {n: t.clone() + 1 for n, t in samples.items()}
    write_samples(tmp_path, other, manifest)
    with pytest.raises(ResumeMismatchError, match="differ from those the checkpoint recorded"):
        resume(tmp_path)
