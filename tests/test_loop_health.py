"""The control loop's health (issue: loop health): each tick's lag, and three ticks in a row
more than two periods late as an overrun that stops the session (SR-11 daemon side)."""

from __future__ import annotations

from treadguard.controller.loop import LoopHealth

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


def test_three_late_ticks_within_twenty_periods_are_an_overrun() -> None:
    late = 3.5 * PERIOD  # more than two periods behind
    health = LoopHealth(PERIOD, late_ticks_to_stop=3)
    # Late now and then (once in 40 periods): logged, no overrun.
    ticks(health, ([late] + [PERIOD] * 40) * 3)
    assert health.late_ticks == 3
    assert not health.overrun
    health = LoopHealth(PERIOD, late_ticks_to_stop=3)
    ticks(health, [PERIOD, late, late, late])
    assert health.overrun
    assert health.as_json()["late_ticks"] == 3
    assert health.as_json()["max_lag_ms"] == round((late - PERIOD) * 1e3, 2)


def test_a_loop_held_up_again_and_again_is_an_overrun_despite_catch_up_ticks() -> None:
    """Blocked 250 ms of every 300: each late tick is followed by one on time (the loop skips
    what it missed), so the late ticks never come in a row."""
    health = LoopHealth(PERIOD, late_ticks_to_stop=3)
    ticks(health, [PERIOD, 0.25, 0.0, 0.05, 0.25, 0.0, 0.05, 0.25])
    assert health.overrun
