"""A sensor's stamps and its arrival (SR-8, SR-16: safety/stamps.py), two sources on one sensor
(safety/flips.py), and how the sensor inputs combine them (controller/sensors.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadguard.config.schema import MqttInputSection
from treadguard.controller.sensors import SensorHub
from treadguard.safety.flips import MAX_CHANGES, SETTLE_S, WINDOW_S, FlipGuard
from treadguard.safety.inputs import FallReading, GripReading, Hand, Sensor
from treadguard.safety.stamps import MAX_AHEAD_S, SensorClock
from treadguard.safety.stamps import WINDOW_S as STAMP_WINDOW_S

SENSOR_TIMEOUT_S = 0.5  # SR-8
UNIX = 1_760_000_000.0  # a sensor's wall clock, somewhere in 2025


# --------------------------------------------------------------------------- SensorClock


def test_sr8_a_reading_counts_from_its_arrival() -> None:
    clock = SensorClock()
    assert clock.reading_time(UNIX, 10.0) == 10.0
    assert clock.reading_time(UNIX + 0.1, 10.1) == 10.1


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf])
def test_sr8_a_stamp_that_is_not_finite_is_no_reading(stamp: float) -> None:
    clock = SensorClock()
    assert clock.reading_time(stamp, 10.0) is None
    clock.reading_time(UNIX, 10.0)
    assert clock.reading_time(stamp, 10.1) is None


def test_sr16_a_stamp_in_the_future_is_no_reading_not_now() -> None:
    """Ahead of the monotonic time since the sensor's previous reading by more than 1 s: no
    reading (it used to count as "now")."""
    clock = SensorClock()
    clock.reading_time(UNIX, 10.0)
    assert clock.reading_time(UNIX + 0.1 + MAX_AHEAD_S + 0.01, 10.1) is None
    # Within the bound (a sensor whose clock runs a little fast): taken, at its arrival.
    clock = SensorClock()
    clock.reading_time(UNIX, 10.0)
    assert clock.reading_time(UNIX + 0.1 + MAX_AHEAD_S - 0.01, 10.1) == 10.1


def test_sr16_a_clock_stepped_forward_costs_one_reading() -> None:
    clock = SensorClock()
    clock.reading_time(UNIX, 10.0)
    assert clock.reading_time(UNIX + 3600.0, 10.1) is None
    assert clock.reading_time(UNIX + 3600.1, 10.2) == 10.2


def test_sr8_a_reading_that_waited_in_a_buffer_counts_that_much_older() -> None:
    clock = SensorClock()
    clock.reading_time(UNIX, 10.0)
    # Stamped 0.1 s after the first, arrived 0.4 s after it: it waited 0.3 s.
    assert clock.reading_time(UNIX + 0.1, 10.4) == pytest.approx(10.1)


def test_sr16_a_clock_stepped_back_makes_the_readings_old_not_new() -> None:
    """Stamps 10 s back: each reading looks 10 s old, stale on arrival (unsafe), until the
    measure of the sensor's delivery has renewed itself."""
    clock = SensorClock()
    for i in range(10):
        clock.reading_time(UNIX + i * 0.1, 10.0 + i * 0.1)
    t = clock.reading_time(UNIX + 1.0 - 10.0, 11.0)
    assert t is not None
    assert 11.0 - t == pytest.approx(10.0)
    late = 11.0 + STAMP_WINDOW_S + 0.1
    assert clock.reading_time(UNIX + late - 10.0 - 10.0, late) == pytest.approx(late)


steps = st.lists(
    st.tuples(
        st.floats(0.0, 2.0),  # monotonic time between two readings
        st.one_of(  # what the sensor's clock did meanwhile
            st.floats(-1e12, 1e12),
            st.floats(-2.0, 2.0),
            st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300]),
        ),
    ),
    min_size=1,
    max_size=40,
)


@given(steps=steps, offset=st.floats(-1e9, 1e9))
def test_sr16_property_stamps_never_make_a_reading_newer_than_its_arrival(
    steps: list[tuple[float, float]], offset: float
) -> None:
    """Clock steps of any size both ways: a reading is never newer than its arrival and never
    taken with a stamp that ran ahead by more than the bound; and where the sensor's clock
    stands against ours (the daemon's wall clock, stepped or not) changes nothing."""
    a, b = SensorClock(), SensorClock()
    arrival, stamp = 100.0, UNIX
    prev: tuple[float, float] | None = None
    for gap, jump in steps:
        arrival += gap
        stamp = stamp + gap + jump if math.isfinite(jump) else jump
        got = a.reading_time(stamp, arrival)
        shifted = b.reading_time(stamp + offset, arrival)
        if got is not None:
            assert got <= arrival
            assert math.isfinite(got)
            assert prev is None or stamp - prev[0] - (arrival - prev[1]) <= MAX_AHEAD_S + 1e-6
        ahead = math.nan if prev is None else stamp - prev[0] - (arrival - prev[1])
        if math.isfinite(stamp) and abs(stamp) < 1e13 and not abs(ahead - MAX_AHEAD_S) < 1e-3:
            # The same answer with every stamp moved by one constant (to float precision).
            assert (got is None) == (shifted is None)
            if got is not None and shifted is not None:
                assert got == pytest.approx(shifted, abs=1e-3)
        prev = (stamp, arrival)


@given(back=st.floats(SENSOR_TIMEOUT_S, 1e9), gap=st.floats(0.01, 0.2))
def test_sr8_property_a_clock_stepped_back_is_never_fresh(back: float, gap: float) -> None:
    clock = SensorClock()
    clock.reading_time(UNIX, 50.0)
    t = clock.reading_time(UNIX + gap - back, 50.0 + gap)
    assert t is not None
    assert (50.0 + gap) - t >= SENSOR_TIMEOUT_S - 1e-6


# --------------------------------------------------------------------------- FlipGuard


@given(gaps=st.lists(st.floats(WINDOW_S / MAX_CHANGES + 1e-3, 5.0), max_size=60))
def test_sr4_a_hand_changing_at_a_human_pace_is_never_taken_for_two_sources(
    gaps: list[float],
) -> None:
    guard = FlipGuard()
    t, value = 0.0, True
    for gap in gaps:
        # Readings every 20 ms in between, the value changes after each gap.
        for k in range(int(gap / 0.02)):
            assert not guard.update(t + k * 0.02, value)
        t += gap
        value = not value
        assert not guard.update(t, value)


@given(
    real_period=st.sampled_from([0.02, 0.05, 0.1]),
    forged_period=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
    phase=st.floats(0.0, 0.1),
)
def test_sr16_two_sources_on_one_grip_make_it_unsafe_within_half_a_second(
    real_period: float, forged_period: float, phase: float
) -> None:
    """A real "released" and a forged "held", each at a sensor's pace: unsafe within the
    window (plus a report period), then until steady for SETTLE_S."""
    arrivals = sorted(
        [(i * real_period, False) for i in range(100)]
        + [(phase + i * forged_period, True) for i in range(int(100 * real_period / forged_period))]
    )
    guard = FlipGuard()
    flagged_at = None
    for t, value in arrivals:
        if guard.update(t, value) and flagged_at is None:
            flagged_at = t
    assert flagged_at is not None
    assert flagged_at <= WINDOW_S + max(real_period, forged_period) + phase + 1e-9
    last, value = arrivals[-1]
    assert guard.update(last + SETTLE_S / 2, value)
    assert not guard.update(last + SETTLE_S + 0.01, value)


def hub(*roles: Sensor) -> tuple[SensorHub, list[GripReading | FallReading]]:
    got: list[GripReading | FallReading] = []
    return SensorHub([MqttInputSection(kind="mqtt", role=r) for r in roles], got.append), got


def test_sr16_a_forged_held_against_a_real_release_is_a_release_and_says_why() -> None:
    h, got = hub(Sensor.GRIP_LEFT)
    t = 0.0
    for i in range(20):  # real: released every 50 ms; forged: held 25 ms later
        h.stamped("grip_left", UNIX + t, t, False)
        h.stamped("grip_left", UNIX + t + 0.025, t + 0.025, True)
        t += 0.05
        if i > 8:
            assert got[-1].held is False  # type: ignore[union-attr]
    assert "two sources" in h.problems()["grip_left"]
    # Only the real sensor from now on: unsafe until steady for SETTLE_S, then itself again.
    end = t + SETTLE_S + 0.1
    while t < end:
        h.stamped("grip_left", UNIX + t, t, True)
        t += 0.05
    assert got[-1] == GripReading(t=pytest.approx(t - 0.05), hand=Hand.LEFT, held=True)  # type: ignore[arg-type]
    assert "grip_left" not in h.problems()


def test_sr8_an_unsafe_reading_arriving_out_of_order_is_passed_on() -> None:
    h, got = hub(Sensor.FALL)
    h.reading("fall", 2.0, False)
    h.reading("fall", 1.9, False)  # safe and older: superseded
    assert got == [FallReading(t=2.0, fallen=False)]
    h.reading("fall", 1.8, True)  # unsafe and older: never thrown away
    assert got[-1] == FallReading(t=1.8, fallen=True)
    h.reading("fall", 2.05, False)
    assert got[-1] == FallReading(t=2.05, fallen=False)


def test_sr16_a_stamp_that_is_no_reading_is_reported_and_not_passed_on() -> None:
    h, got = hub(Sensor.GRIP_RIGHT)
    assert h.stamped("grip_right", UNIX, 1.0, True) is None
    assert h.stamped("grip_right", UNIX + 60.0, 1.1, True) is not None
    assert len(got) == 1
