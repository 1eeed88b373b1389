"""The control loop's health (issue: loop health): each tick's lag, and three ticks in a row
more than two periods late as an overrun that stops the session (SR-11 daemon side)."""

from __future__ import annotations

from controller.loop import LoopHealth

PERIOD = 0.05


def ticks(health: LoopHealth, intervals: list[float]) -> None:
    """Ticks this far apart, after one at 0."""
    t = 0.0
    health.observe(t)
    for interval in intervals:
        t += interval
        health.observe(t)


def test_ticks_on_time_are_not_late() -> None:
    health = LoopHealth(PERIOD, late_ticks_to_stop=3)
    ticks(health, [PERIOD, PERIOD + 0.004, PERIOD - 0.001] * 20)
    assert health.late_ticks == 0
    assert not health.overrun
    assert 0.0039 < health.max_lag_s < 0.0041


def test_three_late_ticks_in_a_row_are_an_overrun_and_two_are_not() -> None:
    late = 3.5 * PERIOD  # more than two periods behind
    health = LoopHealth(PERIOD, late_ticks_to_stop=3)
    ticks(health, [PERIOD, late, late, PERIOD, late, late, PERIOD])
    assert health.late_ticks == 4
    assert not health.overrun
    health = LoopHealth(PERIOD, late_ticks_to_stop=3)
    ticks(health, [PERIOD, late, late, late])
    assert health.overrun
    assert health.as_json()["late_ticks"] == 3
    assert health.as_json()["max_lag_ms"] == round((late - PERIOD) * 1e3, 2)
