"""Step-size schedules and the warm-up / burn-in / thinning arithmetic of ChainPlan."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bayesian_lora.samplers import (
    ChainPlan,
    ConstantSchedule,
    CyclicalCosine,
    PolynomialDecay,
    build_schedule,
)


# ----------------------------------------------------------------------------- schedules
def test_constant() -> None:
    s = ConstantSchedule(0.3)
    assert [s.lr(k) for k in (0, 1, 1000)] == [0.3, 0.3, 0.3]
    assert all(s.noise(k) and s.collects(k) for k in range(10))


def test_polynomial_hand_values() -> None:
    s = PolynomialDecay(0.1, tau=10, gamma=0.5)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(30) == pytest.approx(0.1 * 4**-0.5)  # (1 + 30/10)^-0.5 = 1/2
    assert s.lr(90) == pytest.approx(0.1 / math.sqrt(10))
    s1 = PolynomialDecay(2.0, tau=1, gamma=1.0)
    assert [s1.lr(k) for k in range(4)] == pytest.approx([2.0, 1.0, 2 / 3, 0.5])
    assert PolynomialDecay(0.5, tau=3, gamma=0.0).lr(1000) == pytest.approx(0.5)
    assert all(s.noise(k) and s.collects(k) for k in range(10))


def test_cyclical_cosine_values_and_stages() -> None:
    s = CyclicalCosine(0.2, cycle_length=8, exploration_fraction=0.5)
    # cos(pi * r / 8): r = 0 -> lr, r = 4 -> lr/2, r = 7 -> lr/2 (cos(7 pi/8) + 1)
    assert s.lr(0) == pytest.approx(0.2)
    assert s.lr(4) == pytest.approx(0.1)
    assert s.lr(2) == pytest.approx(0.1 * (math.cos(math.pi / 4) + 1))
    assert s.lr(7) == pytest.approx(0.1 * (math.cos(7 * math.pi / 8) + 1))
    assert s.lr(8) == pytest.approx(0.2)  # new cycle restarts at lr
    assert s.lr(12) == pytest.approx(0.1)
    # exploration = first half of each cycle: no noise, no collection
    flags = [(s.noise(k), s.collects(k)) for k in range(16)]
    expected = [(False, False)] * 4 + [(True, True)] * 4
    assert flags == expected * 2
    assert s.collection_period == 8
    assert s.sampling_steps_per_cycle() == 4


def test_cyclical_fraction_edges() -> None:
    s = CyclicalCosine(1.0, cycle_length=10, exploration_fraction=0.0)
    assert all(s.collects(k) and s.noise(k) for k in range(20))
    s = CyclicalCosine(1.0, cycle_length=10, exploration_fraction=0.25)
    # r/L < 0.25 <=> r in {0, 1, 2}
    assert [s.collects(k) for k in range(10)] == [False] * 3 + [True] * 7


def test_build_schedule() -> None:
    assert build_schedule("constant", 0.1) == ConstantSchedule(0.1)
    assert build_schedule("polynomial", 0.1, tau=5, gamma=0.55) == PolynomialDecay(0.1, 5, 0.55)
    assert build_schedule("cyclical", 0.1, cycle_length=4) == CyclicalCosine(0.1, 4, 0.5)
    with pytest.raises(ValueError, match="constant.*cyclical.*polynomial"):
        build_schedule("cosine", 0.1)
    with pytest.raises(ValueError, match="tau"):
        build_schedule("constant", 0.1, tau=3)


@pytest.mark.parametrize(
    ("factory", "arg"),
    [
        (lambda: ConstantSchedule(0.0), "lr"),
        (lambda: PolynomialDecay(0.1, tau=0, gamma=1), "tau"),
        (lambda: PolynomialDecay(0.1, tau=1, gamma=-1), "gamma"),
        (lambda: CyclicalCosine(0.1, cycle_length=0), "cycle_length"),
        (lambda: CyclicalCosine(0.1, cycle_length=10, exploration_fraction=1.0), "exploration"),
    ],
)
def test_schedule_bad_arguments(factory: Any, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        factory()


# ----------------------------------------------------------------------------- ChainPlan
def test_plan_constant_arithmetic() -> None:
    plan = ChainPlan(warmup_steps=10, burn_in=5, thin=3, num_samples=4)
    # sampler steps s = 5, 6, ... eligible; keep the 3rd, 6th, 9th, 12th: s = 7, 10, 13, 16
    assert plan.kept_steps() == [17, 20, 23, 26]
    assert plan.total_steps() == 27 == 10 + 5 + 4 * 3
    assert [t for t in range(60) if plan.is_kept(t)] == plan.kept_steps()
    assert plan.phase(0) == plan.phase(9) == "warmup"
    assert plan.phase(10) == plan.phase(14) == "burn_in"
    assert plan.phase(15) == plan.phase(100) == "sampling"
    plan.validate()  # no max_steps: always fine


def test_plan_thin_one_no_warmup() -> None:
    plan = ChainPlan(warmup_steps=0, burn_in=0, thin=1, num_samples=3, schedule=ConstantSchedule(1))
    assert plan.kept_steps() == [0, 1, 2]
    assert plan.total_steps() == 3
    assert plan.phase(0) == "sampling"


def test_plan_large_closed_form() -> None:
    plan = ChainPlan(2000, 500, 100, 10, max_steps=3500, schedule=PolynomialDecay(1, 10, 0.5))
    kept = plan.kept_steps()
    assert kept[0] == 2599 and kept[-1] == 3499 and len(kept) == 10
    assert plan.total_steps() == 3500
    plan.validate()
    assert plan.is_kept(2699) and not plan.is_kept(2700) and not plan.is_kept(3599)


def test_plan_validate_message_constant() -> None:
    plan = ChainPlan(warmup_steps=2000, burn_in=500, thin=100, num_samples=10, max_steps=3000)
    with pytest.raises(ValueError) as info:
        plan.validate()
    msg = str(info.value)
    assert "2000 warm-up + 500 burn-in + 10 samples x thin 100 = 3500 steps" in msg
    assert "max_steps=3000" in msg
    assert "only 5 samples fit" in msg


def test_plan_cyclical_arithmetic() -> None:
    sched = CyclicalCosine(0.1, cycle_length=10, exploration_fraction=0.5)
    plan = ChainPlan(warmup_steps=10, burn_in=5, thin=3, num_samples=4, schedule=sched)
    # eligible sampler steps >= 5: 5..9, 15..19, 25..29, ...; every 3rd: 7, 15, 18, 26
    assert plan.kept_steps() == [17, 25, 28, 36]
    assert plan.total_steps() == 37
    assert [t for t in range(200) if plan.is_kept(t)] == plan.kept_steps()


def test_plan_cyclical_burn_in_mid_cycle() -> None:
    sched = CyclicalCosine(0.1, cycle_length=4, exploration_fraction=0.5)
    plan = ChainPlan(warmup_steps=3, burn_in=7, thin=2, num_samples=3, schedule=sched)
    # collectable s: 2,3,6,7,10,11,14,15,...; s >= 7: 7,10,11,14,15,18 -> keep 10, 14, 18
    assert plan.kept_steps() == [13, 17, 21]
    assert plan.total_steps() == 22
    assert [t for t in range(100) if plan.is_kept(t)] == [13, 17, 21]


def test_plan_eligible_steps_and_cycles() -> None:
    sched = CyclicalCosine(0.1, cycle_length=4, exploration_fraction=0.5)
    plan = ChainPlan(warmup_steps=2, burn_in=3, thin=2, num_samples=3, schedule=sched)
    # s = t - 2 >= 3 with s % 4 in {2, 3}: s = 3, 6, 7, 10, 11, 14 -> t = 5, 8, 9, 12, 13, 16
    eligible = [t for t in range(plan.total_steps()) if plan.is_eligible(t)]
    assert eligible == [5, 8, 9, 12, 13, 16]
    assert plan.kept_steps() == eligible[1::2] == [8, 12, 16]
    assert [plan.cycle(t) for t in (0, 1, 2, 5, 6, 8, 12, 16)] == [None, None, 0, 0, 1, 1, 2, 3]
    assert [sched.cycle(s) for s in (0, 3, 4, 7, 8)] == [0, 0, 1, 1, 2]
    assert ChainPlan(warmup_steps=0, burn_in=0, thin=1, num_samples=2).cycle(5) is None


def test_plan_validate_message_cyclical() -> None:
    sched = CyclicalCosine(0.1, cycle_length=50, exploration_fraction=0.5)
    plan = ChainPlan(
        warmup_steps=100, burn_in=0, thin=5, num_samples=20, max_steps=400, schedule=sched
    )
    # 100 collectable steps at 25 per cycle of 50 -> 4 cycles -> last kept s = 199
    assert plan.total_steps() == 300
    plan.validate()
    tight = ChainPlan(100, 0, 5, 20, max_steps=250, schedule=sched)
    with pytest.raises(ValueError) as info:
        tight.validate()
    msg = str(info.value)
    assert "20 samples x thin 5 = 100 collectable steps" in msg
    assert "25 sampling-stage steps per cycle" in msg
    assert "= 300 steps but max_steps=250" in msg


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"burn_in": -1}, "burn_in"),
        ({"thin": 0}, "thin"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_steps": 0}, "max_steps"),
        ({"thin": 2.5}, "thin"),
    ],
)
def test_plan_bad_arguments(kwargs: dict[str, Any], arg: str) -> None:
    base: dict[str, Any] = {"warmup_steps": 0, "burn_in": 0, "thin": 1, "num_samples": 1}
    with pytest.raises(ValueError, match=arg):
        ChainPlan(**{**base, **kwargs})


def test_plan_phase_negative_step() -> None:
    with pytest.raises(ValueError):
        ChainPlan(0, 0, 1, 1).phase(-1)
