"""The log's budget for a flood (SR-15), without a clock: lines let through plus the numbers
told always add up to everything that came, whenever the flood stops."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadguard.controller.log_budget import LogBudget


def test_past_the_budget_a_flood_is_counted_and_told_once_its_window_is_over() -> None:
    budget = LogBudget(per_window=2)
    assert [budget.admit(10.0 + n / 100) for n in range(5)] == [True, True, False, False, False]
    assert budget.due(10.5) == 0  # the window still runs
    assert budget.due(11.0) == 3  # over: told, with nothing after the flood to carry it
    assert budget.due(12.0) == 0  # and told once


def test_a_new_window_lets_lines_through_again() -> None:
    budget = LogBudget(per_window=1)
    assert budget.admit(0.0)
    assert not budget.admit(0.5)
    assert budget.due(1.0) == 1
    assert budget.admit(1.0)
    assert not budget.admit(1.2)
    assert budget.flush() == 1  # stopping: told though the window has not ended
    assert budget.flush() == 0


@pytest.mark.parametrize(("per_window", "window_s"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_a_budget_that_would_let_nothing_through_is_refused(
    per_window: int, window_s: float
) -> None:
    with pytest.raises(ValueError, match="at least one line a window"):
        LogBudget(per_window, window_s)


@given(
    per_window=st.integers(1, 30),
    steps=st.lists(st.floats(0.0, 3.0, allow_nan=False), max_size=300),
    ticks=st.lists(st.booleans(), max_size=300),
)
def test_lines_and_numbers_add_up_to_everything_that_came(
    per_window: int, steps: list[float], ticks: list[bool]
) -> None:
    """Any arrival times (bursts, gaps longer than a window), with the owner's tick asking
    ``due`` between some of them: nothing is lost and nothing counted twice, and no window lets
    more than its budget through (any stretch a window long, at most twice it)."""
    budget = LogBudget(per_window)
    now, logged, told = 0.0, [], 0
    for n, step in enumerate(steps):
        now += step
        if n < len(ticks) and ticks[n]:
            told += budget.due(now)
        if budget.admit(now):
            logged.append(now)
    told += budget.flush()
    assert len(logged) + told == len(steps)
    for t in logged:  # a stretch a window long meets at most two windows
        assert sum(1 for u in logged if t <= u < t + budget.window_s) <= 2 * per_window
