"""The wired-input filter (polarity, debounce) and the combination of several inputs per role
(SR-4, SR-5, SR-8): unsafe readings pass at once, safe ones only once settled, and a role is
only as safe and as fresh as its least safe, stalest input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadguard.config.schema import GpioInputSection, MqttInputSection, SensorInput
from treadguard.controller.sensors import SensorHub
from treadguard.drivers.input_filter import LevelFilter, Sample
from treadguard.safety.inputs import FallReading, GripReading, Hand, Sensor

DEBOUNCE_S = 0.02


def grip_filter(active_high: bool = True, debounce_s: float = DEBOUNCE_S) -> LevelFilter:
    return LevelFilter(active_high=active_high, asserted_is_safe=True, debounce_s=debounce_s)


def fall_filter(active_high: bool = True, debounce_s: float = DEBOUNCE_S) -> LevelFilter:
    return LevelFilter(active_high=active_high, asserted_is_safe=False, debounce_s=debounce_s)


def test_sr4_grip_counts_as_held_only_after_the_debounce() -> None:
    f = grip_filter()
    assert f.update(Sample(0.000, high=True)) is False  # first touch: not yet held
    assert f.update(Sample(0.010, high=True)) is False
    assert f.update(Sample(0.020, high=True)) is True


def test_sr4_grip_release_counts_at_once() -> None:
    f = grip_filter()
    f.update(Sample(0.0, high=True))
    assert f.update(Sample(0.05, high=True)) is True
    assert f.update(Sample(0.051, high=False)) is False


def test_sr4_a_bounce_restarts_the_debounce() -> None:
    f = grip_filter()
    f.update(Sample(0.000, high=True))
    f.update(Sample(0.015, high=False))  # contact bounce
    assert f.update(Sample(0.025, high=True)) is False
    assert f.update(Sample(0.040, high=True)) is False  # 15 ms since the bounce
    assert f.update(Sample(0.045, high=True)) is True


def test_active_low_inverts_the_level() -> None:
    f = grip_filter(active_high=False, debounce_s=0.0)
    assert f.update(Sample(0.0, high=False)) is True  # pulled low: held
    assert f.update(Sample(0.1, high=True)) is False


def test_sr5_fall_counts_at_once_and_clears_only_after_the_debounce() -> None:
    f = fall_filter(active_high=False)
    assert f.update(Sample(0.000, high=True)) is True  # not yet known clear: fallen
    assert f.update(Sample(0.020, high=True)) is False  # clear for the debounce
    assert f.update(Sample(0.021, high=False)) is True  # a fall: at once
    assert f.update(Sample(0.030, high=True)) is True  # still within the debounce


@given(
    active_high=st.booleans(),
    asserted_is_safe=st.booleans(),
    debounce_ms=st.integers(0, 50),
    steps=st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=60),
)
def test_sr4_sr5_filter_fails_closed_for_any_sequence(
    active_high: bool, asserted_is_safe: bool, debounce_ms: int, steps: list[tuple[int, bool]]
) -> None:
    """After every sample: an unsafe level is reported unsafe at once; a safe report means the
    level has been safe, without a break, for the whole debounce."""
    f = LevelFilter(
        active_high=active_high, asserted_is_safe=asserted_is_safe, debounce_s=debounce_ms / 1e3
    )
    t_ms = 0
    safe_since: int | None = None
    for dt, high in steps:
        t_ms += dt
        asserted = f.update(Sample(t_ms / 1e3, high))
        level_safe = (high == active_high) == asserted_is_safe
        reported_safe = asserted == asserted_is_safe
        safe_since = (safe_since if safe_since is not None else t_ms) if level_safe else None
        if not level_safe:
            assert not reported_safe
        else:
            assert safe_since is not None
            assert reported_safe == (t_ms - safe_since >= debounce_ms)


def gpio(role: Sensor, name: str, line: int) -> GpioInputSection:
    return GpioInputSection(
        kind="gpio", role=role, name=name, line=line, active="high", bias="pull_down"
    )


def hub_with(*inputs: SensorInput) -> tuple[SensorHub, list[GripReading | FallReading]]:
    got: list[GripReading | FallReading] = []
    return SensorHub(inputs, got.append), got


def test_sr8_role_has_no_reading_until_every_input_answered() -> None:
    hub, got = hub_with(
        gpio(Sensor.FALL, "fall_mat", 1), MqttInputSection(kind="mqtt", role=Sensor.FALL)
    )
    hub.reading("fall", 1.0, False)
    assert got == []  # the mat has not answered: no reading at all, the core sees it stale
    hub.level("fall_mat", 1.1, False)
    # The mat has not been clear for its debounce yet: it still counts as a fall.
    assert got == [FallReading(t=1.0, fallen=True)]
    hub.level("fall_mat", 1.13, False)  # clear for the debounce (20 ms), at the poll's pace
    assert got[-1] == FallReading(t=1.0, fallen=False)


def test_sr5_any_fall_input_signals_a_fall() -> None:
    hub, got = hub_with(
        gpio(Sensor.FALL, "fall_mat", 1), MqttInputSection(kind="mqtt", role=Sensor.FALL)
    )
    hub.reading("fall", 1.0, False)
    hub.level("fall_mat", 1.0, True)
    assert got[-1] == FallReading(t=1.0, fallen=True)


def test_sr4_a_grip_is_held_only_while_all_its_inputs_say_so() -> None:
    hub, got = hub_with(
        gpio(Sensor.GRIP_LEFT, "grip_left", 1), gpio(Sensor.GRIP_LEFT, "grip_left_2", 2)
    )
    for t in (0.0, 0.05):
        hub.level("grip_left", t, True)
        hub.level("grip_left_2", t, True)
    assert got[-1] == GripReading(t=0.05, hand=Hand.LEFT, held=True)
    hub.level("grip_left_2", 0.06, False)
    assert got[-1] == GripReading(t=0.05, hand=Hand.LEFT, held=False)


def test_sr8_the_combined_reading_is_as_old_as_its_stalest_input() -> None:
    hub, got = hub_with(
        gpio(Sensor.GRIP_RIGHT, "grip_right", 1), gpio(Sensor.GRIP_RIGHT, "grip_right_2", 2)
    )
    hub.level("grip_right_2", 0.0, True)  # answers once, then falls silent
    for t in (0.0, 0.2, 0.4, 0.6):
        hub.level("grip_right", t, True)
    assert got[-1].t == 0.0


def test_a_topic_never_stands_in_for_a_wired_input() -> None:
    hub, _ = hub_with(gpio(Sensor.GRIP_LEFT, "grip_left", 1))
    assert not hub.is_mqtt("grip_left")
    assert hub.mqtt_names == []


def test_sr4_a_gap_in_the_samples_restarts_a_debounce_in_progress() -> None:
    f = LevelFilter(active_high=True, asserted_is_safe=True, debounce_s=0.02, max_gap_s=0.06)
    assert f.update(Sample(0.00, high=True)) is False
    # Unwatched for a second (a reconnect): the next sample starts the settling again.
    assert f.update(Sample(1.00, high=True)) is False
    assert f.update(Sample(1.02, high=True)) is True


def test_sr4_a_gap_of_exactly_max_gap_keeps_the_debounce() -> None:
    """Only samples *more* than max_gap_s apart restart a debounce (binary-fraction times, so
    the gap is exact)."""
    f = LevelFilter(active_high=True, asserted_is_safe=True, debounce_s=0.25, max_gap_s=0.125)
    assert f.update(Sample(0.0, high=True)) is False
    assert f.update(Sample(0.125, high=True)) is False
    assert f.update(Sample(0.25, high=True)) is True
    f = LevelFilter(active_high=True, asserted_is_safe=True, debounce_s=0.25, max_gap_s=0.125)
    assert f.update(Sample(0.0, high=True)) is False
    assert f.update(Sample(0.125 + 1 / 1024, high=True)) is False  # restarted here
    assert f.update(Sample(0.25, high=True)) is False


def test_a_negative_debounce_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^debounce must be 0 or more, not -0\.01$"):
        LevelFilter(active_high=True, asserted_is_safe=True, debounce_s=-0.01)


def test_a_gap_does_not_turn_a_settled_reading_unsafe() -> None:
    """A late sample after a stall is no fall: the core judges the gap as staleness."""
    f = LevelFilter(active_high=False, asserted_is_safe=False, debounce_s=0.02, max_gap_s=0.06)
    f.update(Sample(0.00, high=True))
    assert f.update(Sample(0.02, high=True)) is False  # clear: no fall
    assert f.update(Sample(0.50, high=True)) is False


def test_sr5_a_reading_older_than_the_inputs_last_is_dropped() -> None:
    """A camera reading overtaken on the network (or a clock stepped back) must not drag the
    fall role's time back: the core ignores readings older than its last, and the mat's fresh
    'fallen' would be lost with it."""
    hub, got = hub_with(
        gpio(Sensor.FALL, "fall_mat", 1), MqttInputSection(kind="mqtt", role=Sensor.FALL)
    )
    hub.reading("fall", 2.0, False)
    hub.level("fall_mat", 2.0, False)
    hub.level("fall_mat", 2.05, False)
    assert got[-1] == FallReading(t=2.0, fallen=False)
    hub.reading("fall", 1.7, False)  # older than the camera's last: dropped
    hub.level("fall_mat", 2.1, True)
    assert got[-1] == FallReading(t=2.0, fallen=True)


@given(
    asserted_is_safe=st.booleans(),
    max_gap_ms=st.integers(1, 100),
    steps=st.lists(st.tuples(st.integers(1, 200), st.booleans()), min_size=1, max_size=60),
)
def test_sr4_sr5_with_gaps_an_unsafe_level_is_always_reported_at_once(
    asserted_is_safe: bool, max_gap_ms: int, steps: list[tuple[int, bool]]
) -> None:
    f = LevelFilter(
        active_high=True,
        asserted_is_safe=asserted_is_safe,
        debounce_s=0.02,
        max_gap_s=max_gap_ms / 1e3,
    )
    t_ms = 0
    for dt, high in steps:
        t_ms += dt
        reported_safe = f.update(Sample(t_ms / 1e3, high)) == asserted_is_safe
        if high != asserted_is_safe:  # the level is unsafe
            assert not reported_safe


def test_a_level_steady_for_its_debounce_within_the_time_tolerance_passes() -> None:
    """Times compare within 1 ns (drivers/input_filter.py, _EPS): a level safe from t = 0 and
    still safe at debounce_s less 1 ns has been steady for its debounce (exact near 0)."""
    grip = LevelFilter(active_high=True, asserted_is_safe=True, debounce_s=0.02)
    assert grip.update(Sample(0.0, True)) is False
    t = 0.02 - 1e-9
    assert t - 0.0 == 0.02 - 1e-9
    assert grip.update(Sample(t, True)) is True
