"""The stop-quality watch (safety/stop_watch.py, and its measuring in safety/core.py): every
stop compared with its kind's commissioned baseline; slow once warns, twice in a row latches a
drive_fault; a missing or non-finite measurement is never a good stop. Sans-I/O: the pure
judge, then the safety core against the simulator's belt physics, no sockets, no clock."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadguard.config.loading import load_programs
from treadguard.controller.journal import Journal
from treadguard.safety.core import STOP_WATCH_FAULT, SafetyCore
from treadguard.safety.decisions import (
    Accepted,
    Cause,
    Event,
    EventType,
    RefusalCode,
    Refused,
    State,
)
from treadguard.safety.inputs import (
    DriveError,
    DriveFailure,
    DriveFeedback,
    EStop,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    JournalHealth,
    Reset,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.limits import STANDSTILL_MPH, SafetyLimits
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.safety.stop_watch import (
    MIN_MEASURED_MPH,
    StopMeasurement,
    StopWatch,
    Verdict,
    is_slow,
    slow_after_s,
)
from treadguard.simulator.belt import Belt, BeltParams

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = load_programs(ROOT / "config" / "programs")

EMERGENCY = StopBaseline(StopKind.EMERGENCY, standstill_s=0.25, deceleration_mph_per_s=3.2)
CONTROLLED = StopBaseline(StopKind.CONTROLLED, standstill_s=2.1, deceleration_mph_per_s=0.38)
BASELINES = {StopKind.EMERGENCY: EMERGENCY, StopKind.CONTROLLED: CONTROLLED}


def watch(margin: float = 0.3) -> StopWatch:
    w = StopWatch(margin)
    w.set_baselines(BASELINES)
    return w


def emergency(speed: float, seconds: float) -> StopMeasurement:
    return StopMeasurement(StopKind.EMERGENCY, speed, seconds)


# --------------------------------------------------------------------------- the pure judge


def test_a_stop_slower_than_its_baseline_by_more_than_the_margin_is_slow() -> None:
    w = watch()
    # 3.2 mph/s over 1.3 is 2.4615 mph/s: the edge of the margin.
    within = w.judge(emergency(0.8, 0.8 / 2.47))
    assert within.verdict is Verdict.GOOD
    beyond = w.judge(emergency(0.8, 0.8 / 2.45))
    assert beyond.verdict is Verdict.SLOW
    assert beyond.warn
    assert not beyond.fault


def test_the_time_is_compared_at_the_stops_own_speed() -> None:
    """A stop from 1.2 mph with the commissioned brake takes longer than the baseline's 0.25 s
    (from 0.8 mph) by more than 30 %: it is still a good stop."""
    w = watch()
    j = w.judge(emergency(1.2, 1.2 / 3.2))
    assert j.verdict is Verdict.GOOD
    assert j.measurement.standstill_s > EMERGENCY.standstill_s * 1.3
    assert j.expected_standstill_s == pytest.approx(0.375)


def test_slow_once_warns_twice_in_a_row_faults_and_a_good_stop_ends_the_run() -> None:
    w = watch()
    slow = emergency(0.8, 0.6)
    good = emergency(0.8, 0.25)
    first = w.judge(slow)
    assert (first.warn, first.fault, first.slow_in_a_row) == (True, False, 1)
    ended = w.judge(good)
    assert (ended.verdict, ended.slow_in_a_row) == (Verdict.GOOD, 0)
    again = w.judge(slow)
    assert (again.fault, again.slow_in_a_row) == (False, 1)
    second = w.judge(slow)
    assert (second.warn, second.fault, second.slow_in_a_row) == (True, True, 2)


def test_consecutive_means_of_the_same_kind_and_judged() -> None:
    """A stop of the other kind, one from a crawl and one of a kind without a baseline neither
    count nor end a run of slow stops."""
    w = watch()
    assert w.judge(emergency(0.8, 0.6)).slow_in_a_row == 1
    assert w.judge(StopMeasurement(StopKind.CONTROLLED, 0.8, 2.1)).verdict is Verdict.GOOD
    crawl = w.judge(emergency(MIN_MEASURED_MPH / 2, 5.0))
    assert crawl.verdict is Verdict.BELOW_MIN_SPEED
    assert not crawl.warn
    assert w.judge(emergency(0.8, 0.6)).fault


def test_a_controlled_stop_is_judged_by_the_ramp_in_force_where_it_is_gentler() -> None:
    """A clinic that made the controlled ramp gentler after commissioning: a stop that ramp
    made longer is what a brake as new does, not a worn brake; the same stop judged against
    the commissioned deceleration is slow."""
    w = watch()
    by_the_ramp = StopMeasurement(StopKind.CONTROLLED, 0.8, 0.8 / 0.25)
    assert w.judge(by_the_ramp, ramp_mph_per_s=0.25).verdict is Verdict.GOOD
    assert w.judge(by_the_ramp).verdict is Verdict.SLOW
    yard = w.baseline(StopKind.CONTROLLED, 0.25)
    assert yard is not None
    assert yard.deceleration_mph_per_s == 0.25


def test_no_baseline_no_comparison_and_nothing_counted() -> None:
    w = StopWatch()
    w.set_baselines({StopKind.CONTROLLED: CONTROLLED})
    for _ in range(3):
        j = w.judge(emergency(0.8, 5.0))
        assert j.verdict is Verdict.NO_BASELINE
        assert not j.warn
        assert not j.fault
    assert w.slow_in_a_row[StopKind.EMERGENCY] == 0


def test_a_restart_carries_a_run_of_slow_stops_of_whole_counts_of_at_least_one() -> None:
    """The journal's runs of slow stops since commissioning go on after a restart: one slow
    stop before it and one after is twice in a row. A count that is not a whole number of at
    least one (a flag, a fraction, 0, a negative) is none: it neither starts a run nor ends
    one under way."""
    w = watch()
    w.carry({StopKind.EMERGENCY: 1})
    assert w.judge(emergency(0.8, 0.6)).fault  # the carried one and this one
    for odd in (True, 1.5, -1):
        w = watch()
        w.carry({StopKind.EMERGENCY: odd})  # type: ignore[dict-item]
        assert w.slow_in_a_row[StopKind.EMERGENCY] == 0
        assert not w.judge(emergency(0.8, 0.6)).fault
        assert w.judge(emergency(0.8, 0.6)).fault  # counted from none, not from the odd count
    w = watch()
    assert w.judge(emergency(0.8, 0.6)).slow_in_a_row == 1
    w.carry({StopKind.EMERGENCY: 0, StopKind.CONTROLLED: 2})
    assert w.slow_in_a_row == {StopKind.EMERGENCY: 1, StopKind.CONTROLLED: 2}


def test_new_baselines_start_every_count_again() -> None:
    w = watch()
    w.judge(emergency(0.8, 0.6))
    w.set_baselines(BASELINES)
    assert not w.judge(emergency(0.8, 0.6)).fault


@pytest.mark.parametrize(
    "bad",
    [
        StopBaseline(StopKind.EMERGENCY, math.nan, 3.2),
        StopBaseline(StopKind.EMERGENCY, 0.25, math.inf),
        StopBaseline(StopKind.EMERGENCY, 0.0, 3.2),
        StopBaseline(StopKind.EMERGENCY, 0.25, -3.2),
        StopBaseline(StopKind.CONTROLLED, 2.1, 0.38),  # filed under the wrong kind
    ],
)
def test_a_baseline_that_cannot_be_one_is_refused_and_the_old_ones_stay(
    bad: StopBaseline,
) -> None:
    w = watch()
    with pytest.raises(ValueError, match="emergency baseline"):
        w.set_baselines({StopKind.EMERGENCY: bad})
    assert w.baselines == BASELINES


@pytest.mark.parametrize("margin", [0.0, -0.3, math.nan, math.inf])
def test_a_margin_must_be_finite_and_above_0(margin: float) -> None:
    with pytest.raises(ValueError, match="finite and > 0"):
        StopWatch(margin)


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
GOOD_FLOAT = st.floats(min_value=1e-3, max_value=100.0)


@given(speed=ANY_FLOAT, seconds=ANY_FLOAT, margin=st.floats(0.01, 1.0))
def test_property_a_non_finite_or_missing_measurement_is_never_a_good_stop(
    speed: float, seconds: float, margin: float
) -> None:
    j = watch(margin).judge(emergency(speed, seconds))
    if not (math.isfinite(speed) and math.isfinite(seconds) and seconds > 0.0):
        assert j.verdict is not Verdict.GOOD
        if not (math.isfinite(speed) and speed < MIN_MEASURED_MPH):
            # Judged at all (not from a known crawl): slow, fail closed.
            assert j.verdict is Verdict.SLOW
            assert j.warn


@given(
    speed=st.floats(MIN_MEASURED_MPH, 1.2),
    seconds=GOOD_FLOAT,
    longer=st.floats(0.0, 10.0),
    margin=st.floats(0.01, 1.0),
)
def test_property_slow_is_the_deceleration_test_and_longer_is_never_better(
    speed: float, seconds: float, longer: float, margin: float
) -> None:
    w = watch(margin)
    j = w.judge(emergency(speed, seconds))
    expected_slow = speed / seconds < EMERGENCY.deceleration_mph_per_s / (1.0 + margin)
    # The same test read as a time: longer than the baseline's own time at this speed.
    as_time = seconds > speed / EMERGENCY.deceleration_mph_per_s * (1.0 + margin)
    if abs(speed / seconds * (1.0 + margin) - EMERGENCY.deceleration_mph_per_s) > 1e-9:
        assert (j.verdict is Verdict.SLOW) is expected_slow is as_time
    if j.verdict is Verdict.SLOW:
        assert is_slow(EMERGENCY, emergency(speed, seconds + longer), margin)


MEASUREMENTS = st.tuples(
    st.sampled_from(list(StopKind)),
    st.one_of(st.floats(0.0, 1.5), st.sampled_from([math.nan, math.inf])),
    st.one_of(st.floats(0.01, 5.0), st.sampled_from([math.nan, math.inf, 0.0, -1.0])),
)


@given(st.lists(MEASUREMENTS, max_size=30), st.booleans())
def test_property_fault_exactly_at_two_slow_judged_stops_of_a_kind_in_a_row(
    stops: list[tuple[StopKind, float, float]], controlled_baseline: bool
) -> None:
    """Against a reference count: per kind, judged stops only; a good one ends the run."""
    w = StopWatch()
    w.set_baselines(BASELINES if controlled_baseline else {StopKind.EMERGENCY: EMERGENCY})
    run = dict.fromkeys(StopKind, 0)
    for kind, speed, seconds in stops:
        j = w.judge(StopMeasurement(kind, speed, seconds))
        if j.verdict is Verdict.SLOW:
            run[kind] += 1
        elif j.verdict is Verdict.GOOD:
            run[kind] = 0
        else:
            assert j.verdict in (Verdict.NO_BASELINE, Verdict.BELOW_MIN_SPEED)
            assert not j.warn
        assert j.fault is (j.verdict is Verdict.SLOW and run[kind] >= 2)
        assert j.warn is (j.verdict is Verdict.SLOW)
        if kind is StopKind.CONTROLLED and not controlled_baseline:
            assert j.verdict is Verdict.NO_BASELINE


# --------------------------------------------------------------------------- the core measures


@dataclass
class Bench:
    """The safety core and the simulator's belt physics, driven by hand: every ``poll_s`` the
    sensors, the tablet's heartbeat and a drive status, as the daemon's loop would."""

    wear: float = 0.0
    baselines: dict[StopKind, StopBaseline] | None = None
    poll_s: float = 0.05
    t: float = 0.0
    linked: bool = True
    held: bool = True
    # A drive that ignores every command: the belt runs on whatever the core decides.
    ignores: bool = False
    events: list[Event] = field(default_factory=list)
    # The controlled stops' ramp (safety.decel_mph_s); None: the default.
    decel_mph_s: float | None = None

    def __post_init__(self) -> None:
        # Commissioned for good: these tests are about the stops, not the record.
        limits = (
            SafetyLimits()
            if self.decel_mph_s is None
            else SafetyLimits(decel_mph_s=self.decel_mph_s)
        )
        self.core = SafetyCore(
            limits,
            PROGRAMS,
            default_program="first_session",
            commissioned_until=math.inf,
        )
        self.core.set_stop_baselines(BASELINES if self.baselines is None else self.baselines)
        self.belt = Belt(BeltParams(brake_wear=self.wear))

    def submit(self, event: Input) -> Accepted | Refused | None:
        d = self.core.handle(event)
        self.events.extend(d.events)
        if self.linked and not self.ignores:
            if d.emergency_stop:
                self.belt.host_emergency_stop(event.t)
            self.belt.host_command(event.t, d.speed_mph)
        return d.reply

    def status(self, t: float, speed: float | None = None) -> None:
        mph = self.belt.host_poll(t) if speed is None else speed
        self.submit(DriveFeedback(t, mph))

    def step(self) -> None:
        self.t = round(self.t + self.poll_s, 9)
        t = self.t
        for hand in Hand:
            self.submit(GripReading(t, hand, self.held))
        self.submit(FallReading(t, False))
        self.submit(Heartbeat(t))
        if self.linked:
            self.status(t)
        self.submit(Tick(t))

    def run(self, seconds: float) -> None:
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.step()

    def start(self, target: float = 0.8) -> None:
        self.run(0.2)
        reply = self.submit(StartSession(self.t, "p-1", target_mph=target))
        assert isinstance(reply, Accepted), reply
        self.run(3.0 + target / 0.2 + 3.0)  # countdown, ramp, a few seconds at speed
        assert self.core.state is State.RUNNING
        assert self.belt.speed_mph == pytest.approx(target, abs=0.01)

    def estop(self) -> None:
        assert isinstance(self.submit(EStop(self.t)), Accepted)
        self.run(2.0)

    def reset(self) -> Accepted | Refused | None:
        self.held = True
        self.run(0.2)
        return self.submit(Reset(self.t))

    def of(self, type_: EventType) -> list[Event]:
        return [e for e in self.events if e.type is type_]

    def verdicts(self) -> list[str]:
        return [str(e.fields["verdict"]) for e in self.of(EventType.STOP_CHECKED)]


def test_a_worn_brake_warns_on_its_first_slow_stop_and_faults_on_its_second() -> None:
    bench = Bench()
    bench.start()
    bench.estop()
    assert bench.verdicts() == ["good"]
    (good,) = bench.of(EventType.STOP_CHECKED)
    assert good.fields["baseline_deceleration_mph_per_s"] == EMERGENCY.deceleration_mph_per_s
    assert good.fields["expected_standstill_s"] == 0.25
    assert "why" not in good.fields  # a stop that stood still has nothing to explain
    assert isinstance(bench.reset(), Accepted)
    bench.belt.wear_brake(0.6)
    bench.start()
    bench.estop()
    assert bench.verdicts() == ["good", "slow"]
    [warning] = bench.of(EventType.MAINTENANCE_WARNING)
    assert warning.fields["kind"] == "emergency"
    assert warning.fields["slow_in_a_row"] == 1
    # The warning says how slow, as the stop's own check measured it.
    checked = bench.of(EventType.STOP_CHECKED)[-1]
    standstill = warning.fields["standstill_s"]
    expected = warning.fields["expected_standstill_s"]
    assert isinstance(standstill, float)
    assert isinstance(expected, float)
    assert standstill == checked.fields["standstill_s"]
    assert expected == checked.fields["expected_standstill_s"]
    assert standstill > expected * 1.3
    decel = checked.fields["deceleration_mph_per_s"]
    assert isinstance(decel, float)
    assert decel < EMERGENCY.deceleration_mph_per_s / 1.3
    # Figures to the thousandth, as the journal and the tablet show them.
    for name in ("speed_mph", "standstill_s", "deceleration_mph_per_s", "expected_standstill_s"):
        value = checked.fields[name]
        assert isinstance(value, float)
        assert value == round(value, 3), (name, value)
    speed, took = checked.fields["speed_mph"], checked.fields["standstill_s"]
    assert isinstance(speed, float)
    assert isinstance(took, float)
    assert decel == round(speed / took, 3)  # 0.8 mph in 0.35 s: 2.286, not 2.2857
    assert bench.core.state is State.ESTOP  # a warning only
    assert isinstance(bench.reset(), Accepted)
    bench.start()
    bench.held = False  # both hands off: an emergency stop of another cause, the same kind
    bench.run(2.0)
    assert bench.verdicts() == ["good", "slow", "slow"]
    latch = bench.core.latch
    assert latch is not None
    assert (latch.kind, latch.cause) == (State.FAULT, Cause.DRIVE_FAULT)
    assert latch.detail.startswith(STOP_WATCH_FAULT)
    assert "twice in a row" in latch.detail
    faults = bench.of(EventType.FAULT)
    assert [f.fields["cause"] for f in faults] == ["drive_fault"]


def test_a_restarted_core_given_one_slow_stop_on_record_faults_on_the_next() -> None:
    """The daemon hands the core the journal's runs with the baselines (a restart is no
    reset): one slow emergency stop on record, and the first slow one after it latches."""
    bench = Bench(wear=0.6)
    bench.core.set_stop_baselines(BASELINES, {StopKind.EMERGENCY: 1})
    bench.start()
    bench.estop()
    assert bench.verdicts() == ["slow"]
    latch = bench.core.latch
    assert latch is not None
    assert (latch.kind, latch.cause) == (State.FAULT, Cause.DRIVE_FAULT)


def test_an_emergency_stop_of_a_belt_not_meant_to_move_has_nothing_to_time() -> None:
    """Idle, the drive silent (or reading the belt at the edge of standstill): an E-STOP has
    no stop to time, and no stop check says one was lost."""
    silent = Bench(linked=False)
    silent.run(0.2)
    assert isinstance(silent.submit(EStop(silent.t)), Accepted)
    silent.run(1.0)
    assert silent.of(EventType.STOP_CHECKED) == []
    edge = Bench()
    edge.run(0.2)
    edge.status(edge.t, STANDSTILL_MPH)
    assert isinstance(edge.submit(EStop(edge.t)), Accepted)
    for _ in range(10):
        edge.t = round(edge.t + edge.poll_s, 9)
        edge.status(edge.t, 0.0)
    assert edge.of(EventType.STOP_CHECKED) == []


def _worn_brake_faulted() -> Bench:
    """A worn brake's two slow emergency stops in a row: the watch's drive_fault latched."""
    bench = Bench(wear=0.6)
    for _ in range(2):
        bench.start()
        bench.estop()
        if bench.core.latch is not None and bench.core.latch.cause is Cause.REMOTE_ESTOP:
            assert isinstance(bench.reset(), Accepted)
    assert bench.core.snapshot().state is State.FAULT
    return bench


def test_a_worn_emergency_brake_is_not_cleared_by_a_controlled_baseline_alone() -> None:
    bench = _worn_brake_faulted()
    bench.core.set_stop_baselines({StopKind.CONTROLLED: CONTROLLED})
    bench.run(1.0)
    refused = bench.reset()
    assert isinstance(refused, Refused)
    assert "commission the treadmill again" in refused.message


def test_a_controlled_stop_at_a_ramp_made_gentler_after_commissioning_is_good() -> None:
    """safety.decel_mph_s made 0.25 mph/s after the controlled stop was commissioned at 0.38:
    the stop follows the ramp, as a brake as new would, and is judged against it."""
    bench = Bench(decel_mph_s=0.25)
    bench.start()
    assert isinstance(bench.submit(Stop(bench.t)), Accepted)
    bench.run(6.0)
    (checked,) = bench.of(EventType.STOP_CHECKED)
    assert (checked.fields["kind"], checked.fields["verdict"]) == ("controlled", "good")
    assert checked.fields["baseline_deceleration_mph_per_s"] == 0.25


def test_a_worn_brake_fault_is_reset_only_after_new_baselines() -> None:
    """Fail closed: the drive reports itself healthy all along, so a healthy status (what a
    reset needs after any other drive fault) proves nothing about the brake."""
    bench = _worn_brake_faulted()
    bench.run(2.0)  # healthy statuses at standstill
    refused = bench.reset()
    assert isinstance(refused, Refused)
    assert refused.code is RefusalCode.PRECONDITIONS_UNMET
    assert "commission the treadmill again" in refused.message
    snap = bench.core.snapshot().stop_watch
    assert snap is not None
    assert snap.fault_pending
    bench.core.set_stop_baselines(BASELINES)  # the brake serviced, commissioned again
    assert isinstance(bench.reset(), Accepted)
    assert bench.core.snapshot().state is State.IDLE


@settings(max_examples=15, deadline=None)
@given(
    stops=st.lists(
        st.tuples(st.sampled_from(["estop", "stop", "release"]), st.sampled_from([0.8, 1.0, 1.2])),
        min_size=1,
        max_size=4,
    )
)
def test_property_a_brake_as_commissioned_never_warns(stops: list[tuple[str, float]]) -> None:
    bench = Bench()
    for how, mph in stops:
        bench.start(mph)
        if how == "estop":
            bench.estop()
        elif how == "stop":
            assert isinstance(bench.submit(Stop(bench.t)), Accepted)
            bench.run(5.0)
        else:
            bench.held = False
            bench.run(2.0)
        if bench.core.latch is not None:
            assert isinstance(bench.reset(), Accepted)
    assert set(bench.verdicts()) == {"good"}
    assert len(bench.verdicts()) == len(stops)
    assert bench.of(EventType.MAINTENANCE_WARNING) == []


def test_a_stop_whose_drive_goes_silent_is_not_measured_and_does_not_end_a_run() -> None:
    bench = Bench(wear=0.6)
    bench.start()
    bench.estop()
    assert bench.verdicts() == ["slow"]
    assert isinstance(bench.reset(), Accepted)
    bench.start()
    bench.submit(EStop(bench.t))
    bench.linked = False  # the cable pulled at the trigger: no status until the belt stood
    bench.run(2.0)
    bench.linked = True
    bench.run(1.0)
    assert bench.verdicts() == ["slow", "interrupted"]
    [interrupted] = [
        e for e in bench.of(EventType.STOP_CHECKED) if e.fields["verdict"] == "interrupted"
    ]
    assert "answer" in str(interrupted.fields["why"])
    assert bench.core.snapshot().stop_watch.slow_in_a_row[StopKind.EMERGENCY] == 1  # type: ignore[union-attr]
    assert bench.core.latch is not None
    assert bench.core.latch.cause is Cause.REMOTE_ESTOP  # no fault from an unmeasured stop


@pytest.mark.parametrize(
    "failure",
    [DriveFailure.FAULT, DriveFailure.LINK],
)
def test_a_stop_the_drive_itself_caused_is_not_a_measurement_of_its_brake(
    failure: DriveFailure,
) -> None:
    bench = Bench(wear=0.6)
    bench.start()
    bench.submit(DriveError(bench.t, failure, "the drive gave up"))
    bench.run(3.0)
    assert bench.verdicts() == []
    assert bench.of(EventType.MAINTENANCE_WARNING) == []


def test_a_stop_with_no_baseline_for_its_kind_says_so_and_is_not_compared() -> None:
    bench = Bench(wear=0.6, baselines={StopKind.CONTROLLED: CONTROLLED})
    bench.start()
    bench.estop()
    [checked] = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["verdict"] == "no_baseline"
    assert "no emergency baseline" in str(checked.fields["why"])
    assert bench.of(EventType.MAINTENANCE_WARNING) == []
    view = bench.core.snapshot().stop_watch
    assert view is not None
    assert view.baselines == {StopKind.EMERGENCY: False, StopKind.CONTROLLED: True}
    assert view.last == {StopKind.EMERGENCY: "no_baseline"}


def test_a_controlled_stop_that_becomes_an_emergency_is_timed_from_the_emergency() -> None:
    bench = Bench()
    bench.start()
    assert isinstance(bench.submit(Stop(bench.t)), Accepted)
    bench.run(0.5)
    bench.held = False
    bench.run(2.0)
    [checked] = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["kind"] == "emergency"
    assert checked.fields["verdict"] == "good"
    assert float(checked.fields["speed_mph"] or 0.0) < 0.8  # from where the belt was then


def test_a_belt_that_never_stops_is_judged_slow_when_overdue() -> None:
    """A latched state watches no feedback mismatch: the watch judges a stop still under way
    by the first status that shows the belt moving when it cannot be anything but slow."""
    bench = Bench()
    bench.start()
    bench.ignores = True
    trigger = bench.t
    bench.submit(EStop(trigger))
    bench.run(1.0)
    [checked] = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["verdict"] == "slow"
    assert checked.fields["standstill_reached"] is False
    # The first status at or after the slow limit (0.8 mph at 3.2 mph/s, plus 30 %).
    limit = 0.8 / 3.2 * 1.3
    assert limit <= checked.t - trigger < limit + bench.poll_s
    assert checked.fields["standstill_s"] == pytest.approx(checked.t - trigger, abs=1e-3)
    assert len(bench.of(EventType.MAINTENANCE_WARNING)) == 1


def test_a_controlled_stop_the_belt_lags_is_judged_not_dropped() -> None:
    """A worn brake lags a controlled stop until the feedback check latches a mismatch: the
    stop under way is still timed, and judged slow."""
    bench = Bench(wear=0.75)
    bench.start()
    assert isinstance(bench.submit(Stop(bench.t)), Accepted)
    bench.run(6.0)
    assert bench.verdicts() == ["slow"]


@settings(max_examples=60, deadline=None)
@given(
    corruptions=st.lists(
        st.sampled_from(["ok", "nan", "inf", "back", "forward", "drop", "late"]),
        min_size=40,
        max_size=40,
    ),
    at_trigger=st.sampled_from(["ok", "nan", "inf"]),
)
def test_property_corrupt_statuses_and_clock_steps_never_make_a_worn_brake_good(
    corruptions: list[str], at_trigger: str
) -> None:
    """Statuses with a speed that is not a number, stamps stepped back or forward, statuses
    lost or late, during the stop of a brake that has lost 60 %: whatever the verdict, it is
    never "good"."""
    bench = Bench(wear=0.6)
    bench.start()
    t = bench.t
    if at_trigger != "ok":
        bench.status(t, math.nan if at_trigger == "nan" else math.inf)
    bench.submit(EStop(t))
    for how in corruptions:
        t = round(t + bench.poll_s, 9)
        real = bench.belt.host_poll(t)
        bench.submit(Tick(t))
        match how:
            case "ok":
                bench.submit(DriveFeedback(t, real))
            case "nan" | "inf":
                bench.submit(DriveFeedback(t, math.nan if how == "nan" else math.inf))
            case "back":
                bench.submit(DriveFeedback(t - 5.0, real))
            case "forward":
                bench.submit(DriveFeedback(t + 5.0, real))
            case "late":
                bench.submit(DriveFeedback(t - bench.poll_s / 2, real))
            case "drop":
                pass
    assert "good" not in bench.verdicts()


def test_a_drive_fault_reported_during_a_stop_is_a_slow_stop() -> None:
    """An emergency stop under way, and the drive reports a fault of its own (a VFD tripping
    while it brakes lets the belt coast): a worse stop, not no stop. Judged as one that never
    stood still, fail closed, with the fault as its reason."""
    bench = Bench(wear=0.6)
    bench.start()
    t = bench.t
    bench.submit(EStop(t))
    t = round(t + bench.poll_s, 9)
    bench.submit(DriveFeedback(t, bench.belt.host_poll(t), DriveFailure.FAULT, "overcurrent"))
    bench.t = t
    bench.run(2.0)
    assert bench.verdicts() == ["slow"]
    (checked,) = bench.of(EventType.STOP_CHECKED)
    assert "the drive reported a fault during the stop" in str(checked.fields["why"])
    assert checked.fields["standstill_reached"] is False
    assert len(bench.of(EventType.MAINTENANCE_WARNING)) == 1


def test_a_stop_triggered_while_the_drive_is_silent_cannot_be_timed() -> None:
    """No fresh status at the trigger: no speed to time the stop from. Not a measurement
    (neither good nor slow), and it says so."""
    bench = Bench(wear=0.6)
    bench.start()
    bench.linked = False
    # The next input after the drive has gone stale is the E-STOP itself (no tick between).
    bench.t = round(bench.t + SafetyLimits().drive_timeout_s + 0.1, 9)
    bench.submit(EStop(bench.t))
    assert bench.verdicts() == ["interrupted"]
    [checked] = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["why"] == "no fresh drive status at the trigger"
    assert "speed_mph" not in checked.fields
    snap = bench.core.snapshot().stop_watch
    assert snap is not None
    assert snap.last == {StopKind.EMERGENCY: "interrupted"}
    assert snap.slow_in_a_row == dict.fromkeys(StopKind, 0)
    assert bench.of(EventType.MAINTENANCE_WARNING) == []


def test_a_fault_already_latched_stays_and_its_reset_needs_new_baselines_too() -> None:
    """A journal fault latched during the second slow stop keeps its cause (and its own reset
    condition); the worn brake is still in the way of a reset."""
    bench = Bench(wear=0.6)
    bench.start()
    bench.estop()
    assert isinstance(bench.reset(), Accepted)
    bench.start()
    t = bench.t
    bench.submit(JournalHealth(t, writable=False, detail="disk full"))
    bench.run(2.0)
    assert bench.verdicts() == ["slow", "slow"]
    latch = bench.core.latch
    assert latch is not None
    assert latch.cause is Cause.JOURNAL
    bench.submit(JournalHealth(bench.t, writable=True))
    refused = bench.reset()
    assert isinstance(refused, Refused)
    assert "commission the treadmill again" in refused.message
    bench.core.set_stop_baselines(BASELINES)
    assert isinstance(bench.reset(), Accepted)


def test_a_measured_stop_is_its_kinds_baseline_and_an_unreadable_one_is_refused() -> None:
    """Commissioning's seam: a proof stop, measured as every later stop is, as the baseline."""
    baseline = emergency(0.8, 0.25).as_baseline()
    assert (baseline.kind, baseline.standstill_s) == (StopKind.EMERGENCY, 0.25)
    assert baseline.deceleration_mph_per_s == pytest.approx(3.2)
    w = StopWatch()
    w.set_baselines({StopKind.EMERGENCY: baseline})
    assert w.judge(emergency(0.8, 0.25)).verdict is Verdict.GOOD
    for bad in (emergency(math.nan, 0.25), emergency(0.8, math.inf), emergency(0.8, 0.0)):
        with pytest.raises(ValueError, match="finite and > 0"):
            bad.as_baseline()


# ------------------------------------------------------------- a stop timed on an exact clock


def _stop_timed(statuses: Callable[[float], list[tuple[float, float]]]) -> list[Event]:
    """An emergency stop from 0.8 mph, then only drive statuses, each (time, mph), made from
    the trigger's time: the stop checks they give."""
    bench = Bench()
    bench.start()
    trigger = bench.t
    assert isinstance(bench.submit(EStop(trigger)), Accepted)
    mark = len(bench.events)
    for t, mph in statuses(trigger):
        bench.status(t, mph)
    return [e for e in bench.events[mark:] if e.type is EventType.STOP_CHECKED]


def test_a_status_stamped_at_the_trigger_s_own_instant_is_no_evidence_of_the_stop() -> None:
    (checked,) = _stop_timed(lambda t: [(t, 0.0), (t + 0.05, 0.0), (t + 0.1, 0.0)])
    assert checked.fields["standstill_s"] == 0.05


def test_a_reading_at_the_standstill_bound_is_standstill() -> None:
    (checked,) = _stop_timed(
        lambda t: [(t + 0.05, 0.3), (t + 0.1, STANDSTILL_MPH), (t + 0.15, STANDSTILL_MPH)]
    )
    assert checked.fields["standstill_s"] == 0.1


def test_a_gap_of_the_drive_time_out_between_two_statuses_ends_the_timing() -> None:
    """The drive's time-out (0.5 s) between two statuses of a stop, to the last bit: the
    stop cannot be timed, and its check says why."""
    gap = 0.5

    def statuses(trigger: float) -> list[tuple[float, float]]:
        # A first status from which the gap adds up exactly on this clock.
        first = next(f for k in range(1, 200) if ((f := trigger + k / 1000) + gap) - f == gap)
        return [(first, 0.6), (first + gap, 0.0), (first + gap + 0.05, 0.0)]

    (checked,) = _stop_timed(statuses)
    assert checked.fields["verdict"] == "interrupted"
    assert checked.fields["why"] == "the drive did not answer during the stop"


@pytest.mark.parametrize("early", [0.0, 1e-9])
def test_a_belt_still_moving_when_its_stop_is_overdue_is_judged_slow_then(early: float) -> None:
    """Overdue to the core's 1 ns tolerance, the belt still moving: judged at that status, and
    slow (it stands still later than that), also where the time to it alone is within the
    margin by that nanosecond."""
    (checked,) = _stop_timed(
        lambda t: [(t + 0.1, 0.6), (t + slow_after_s(EMERGENCY, 0.8, 0.3) - early, 0.5)]
    )
    assert checked.fields["verdict"] == "slow"
    assert checked.fields["standstill_reached"] is False


def test_a_slow_stop_that_stood_still_says_so_in_its_fault() -> None:
    """The first status after the stop became overdue already shows standstill: the stop is
    timed to it, slow, and the worn-brake fault says how long it took (one slow stop on record
    before it: the second in a row)."""
    bench = Bench()
    bench.core.set_stop_baselines(BASELINES, {StopKind.EMERGENCY: 1})
    bench.start()
    trigger = bench.t
    assert isinstance(bench.submit(EStop(trigger)), Accepted)
    for after, mph in [(0.1, 0.6), (0.4, 0.0), (0.45, 0.0)]:
        bench.status(trigger + after, mph)
    (checked,) = bench.of(EventType.STOP_CHECKED)
    assert (checked.fields["verdict"], checked.fields["standstill_reached"]) == ("slow", True)
    latch = bench.core.latch
    assert latch is not None
    assert (latch.kind, latch.cause) == (State.FAULT, Cause.DRIVE_FAULT)
    assert "emergency stop took 0.40 s to stop from 0.80 mph" in latch.detail


def test_a_stop_checked_after_the_next_start_names_the_session_it_stopped() -> None:
    """Standstill is confirmed by the status after the one that showed it; a start in
    between is allowed (the belt stands), so the check comes during the next session. It
    names the session whose stop it judged, and the journal files it there."""
    bench = Bench()
    bench.start()
    bench.submit(Stop(bench.t))
    while bench.belt.speed_mph > STANDSTILL_MPH:
        bench.step()
    assert not bench.of(EventType.STOP_CHECKED)  # one status of standstill: a candidate
    bench.run(0.2)  # the countdown's grips and heartbeat before a start
    started = bench.of(EventType.SESSION_STARTED)
    assert isinstance(bench.submit(StartSession(bench.t, "p-2")), Accepted)
    bench.run(1.0)
    [checked] = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["session_id"] == started[0].fields["session_id"]
    journal = Journal.in_memory()
    for n, event in enumerate(bench.events):
        journal.record(event, 1_000.0 + n)
    first = int(str(started[0].fields["session_id"]))
    assert "stop_checked" in [e.type for e in journal.events(first)]
    assert "stop_checked" not in [e.type for e in journal.events(first + 1)]
