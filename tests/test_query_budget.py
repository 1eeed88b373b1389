"""The query connection's read budget (controller/query_link.py), on a clock the test moves:
a burst is read at once, then one query per 1/per_s; a budget spent without refilling for
``shed_after_s`` says so, and a quiet spell (the bucket full again) forgets it."""

from __future__ import annotations

import pytest

from treadguard.controller.query_link import QueryBudget, ReadBudget


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_is_read_at_once_then_one_query_per_period() -> None:
    clock = Clock()
    reads = ReadBudget(QueryBudget(per_s=10.0, burst=3, shed_after_s=5.0), clock)
    for _ in range(3):
        assert reads.wait_s() == 0.0
        reads.charge()
    assert reads.wait_s() == pytest.approx(0.1)
    clock.t += 0.05
    assert reads.wait_s() == pytest.approx(0.05)
    clock.t += 0.05
    assert reads.wait_s() == 0.0
    # A read of several packets can take more than the budget has: the wait grows with it.
    reads.charge()
    reads.charge()
    assert reads.wait_s() == pytest.approx(0.2)


def test_a_budget_spent_without_refilling_is_over_until_a_quiet_spell() -> None:
    clock = Clock()
    reads = ReadBudget(QueryBudget(per_s=10.0, burst=2, shed_after_s=5.0), clock)
    assert reads.over_for() == 0.0
    reads.charge()
    reads.charge()
    assert reads.wait_s() > 0.0  # spent: over from now
    for _ in range(60):  # a flood: every query the budget allows is read at once
        clock.t += 0.1
        assert reads.wait_s() == 0.0
        reads.charge()
    assert reads.over_for() == pytest.approx(6.0)
    reads.forgive()  # a new connection starts afresh
    assert reads.over_for() == 0.0
    assert reads.wait_s() > 0.0
    clock.t += 0.3  # a quiet spell long enough to fill the bucket again
    assert reads.over_for() == 0.0
    assert reads.wait_s() == 0.0


@pytest.mark.parametrize(
    "budget", [{"per_s": 0.0}, {"burst": 0}, {"shed_after_s": 0.0}, {"per_s": -1.0}]
)
def test_a_budget_without_a_positive_rate_burst_or_shedding_time_is_refused(
    budget: dict[str, float],
) -> None:
    with pytest.raises(ValueError, match="positive"):
        QueryBudget(**budget)  # type: ignore[arg-type]
