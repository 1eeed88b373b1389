"""The safety core against the amended rows of docs/requirements.md: SR-3 (intervals), SR-4
(the grip-loss count), SR-6 (a drive fault is cleared only by a healthy status), SR-7 (the
first-session limit whatever the program) and SR-8 (non-finite and out-of-order readings).

Examples use the 50 ms world of test_safety_examples; the properties drive the core directly,
waking it at its own deadlines as the controller does, so that a stop's time can be checked to
the millisecond.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from tests.test_safety_examples import (
    COUNTDOWN_S,
    DEBOUNCE_S,
    FIRST_SESSION_CAP_HARD_S,
    SENSOR_TIMEOUT_S,
    World,
    _elapsed,
    at_speed,
    first_event,
    refusal,
)
from tests.test_safety_properties import EXAMPLES, PROGRAMS
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import (
    Accepted,
    Cause,
    Decision,
    EndReason,
    EventType,
    Refused,
    State,
)
from treadguard.safety.inputs import (
    DriveFailure,
    DriveFeedback,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    Reset,
    RivalDaemon,
    StartSession,
    Tick,
)
from treadguard.safety.limits import SafetyLimits
from treadguard.safety.programs import Program, ProgramKind

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- SR-4


def test_sr4_a_user_who_keeps_letting_go_is_stopped() -> None:
    """250 ms off, 100 ms on, again and again: the count climbs 150 ms a round and passes the
    300 ms debounce in the second release, where a timer restarting on every touch never
    would."""
    world = at_speed(1.0)
    mark = len(world.log)
    for _ in range(5):
        world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
        world.run(0.25)
        world.hold = {Hand.LEFT: True, Hand.RIGHT: True}
        world.run(0.1)
    t_first_release = world.log[mark][0].t
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.GRIP_LOST.value
    # 250 off, 100 on (count 0.15), then 150 ms into the second release (count 0.30).
    assert t_stop - t_first_release == pytest.approx(0.25 + 0.1 + 0.15, abs=0.05 + 1e-9)


def test_sr4_holding_on_again_counts_the_loss_back_down() -> None:
    """Short releases with long grips in between never add up to a stop."""
    world = at_speed(1.0)
    mark = len(world.log)
    for _ in range(20):
        world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
        world.run(0.2)
        world.hold = {Hand.LEFT: True, Hand.RIGHT: True}
        world.run(0.2)
    assert not world.events(EventType.ESTOP, mark)
    assert world.state is State.RUNNING


@dataclass
class _Drive:
    """A core on a millisecond clock with a user, a drive and a tablet that always answer,
    woken at its own deadlines like the controller does."""

    core: SafetyCore
    ms: int = 0
    speed: float = 0.0
    next_beat_ms: int = 0
    stop_t: float | None = None
    stop_cause: str | None = None

    def send(self, inp: Input) -> Decision:
        d = self.core.handle(inp)
        self.speed = d.speed_mph
        if d.emergency_stop and self.stop_t is None:
            self.stop_t = inp.t
            self.stop_cause = next(
                str(e.fields["cause"])
                for e in d.events
                if e.type in (EventType.ESTOP, EventType.FAULT)
            )
        return d

    def readings(self, left: bool, right: bool, fallen: bool = False) -> None:
        t = self.ms / 1000
        self.send(GripReading(t, Hand.LEFT, left))
        self.send(GripReading(t, Hand.RIGHT, right))
        self.send(FallReading(t, fallen))
        self.send(DriveFeedback(t, self.speed))
        if self.ms >= self.next_beat_ms:
            self.send(Heartbeat(t))
            self.next_beat_ms = self.ms + 1000
        self.send(Tick(t))

    def advance(self, to_ms: int, left: bool, right: bool) -> None:
        """Readings every 50 ms (and at ``to_ms``) with these grips; the core's deadlines in
        between."""
        while self.ms < to_ms:
            nxt = min(to_ms, self.ms + 50)
            due = self.core.next_deadline()
            if due is not None and due < nxt / 1000:
                self.send(Tick(due))
            self.ms = nxt
            self.readings(left, right)

    def start(self) -> None:
        self.readings(True, True)
        assert isinstance(self.send(StartSession(self.ms / 1000, "pat")).reply, Accepted)
        for _ in range(200):  # 10 s: the countdown is 3 (bounded, so a fault fails, not hangs)
            if self.speed > 0.0:
                break
            self.advance(self.ms + 50, True, True)
        assert self.speed > 0.0
        assert self.core.state is State.RUNNING


segments = st.lists(
    st.tuples(st.integers(1, 40).map(lambda n: n * 10), st.booleans(), st.booleans()),
    min_size=1,
    max_size=16,
)
_RUNNING: list[_Drive] = []


def running_drive() -> _Drive:
    """A session whose belt has just started (a copy of one made once: the countdown is the
    slow part of an example)."""
    if not _RUNNING:
        drive = _Drive(
            SafetyCore(
                SafetyLimits(),
                PROGRAMS,
                default_program="first_session",
                commissioned_until=math.inf,
            )
        )
        drive.start()
        _RUNNING.append(drive)
    return copy.deepcopy(_RUNNING[0])


@PROPERTY
@given(pattern=segments)
@example(pattern=[(250, False, False), (100, True, True)] * 4)
@example(pattern=[(200, False, False), (10, True, False), (200, False, False)])
def test_sr4_property_never_more_than_the_debounce_of_net_loss_without_a_stop(
    pattern: list[tuple[int, bool, bool]],
) -> None:
    """Any pattern of each hand on and off: the stop comes exactly when the count (up while
    both hands are off, down while one holds, never below 0) reaches the debounce, and never
    without it."""
    drive = running_drive()
    count, crossing = 0.0, None
    t = drive.ms
    for duration, left, right in pattern:
        lost = not left and not right
        if crossing is None:
            if lost and count + duration / 1000 >= DEBOUNCE_S - 1e-9:
                crossing = (t + (DEBOUNCE_S - count) * 1000) / 1000
            count = count + duration / 1000 if lost else max(0.0, count - duration / 1000)
        drive.readings(left, right)  # the change is read at once
        t += duration
        drive.advance(t, left, right)
    drive.readings(True, True)  # both hands back, read at once
    drive.advance(t + 1000, True, True)
    note(f"expected stop at {crossing}, got {drive.stop_t} ({drive.stop_cause})")
    if crossing is None:
        assert drive.stop_t is None
    else:
        assert drive.stop_cause == Cause.GRIP_LOST.value
        assert drive.stop_t == pytest.approx(crossing, abs=1e-6)


def test_sr4_a_continuous_release_stops_at_exactly_the_debounce() -> None:
    drive = _Drive(
        SafetyCore(
            SafetyLimits(), PROGRAMS, default_program="first_session", commissioned_until=math.inf
        )
    )
    drive.start()
    released = drive.ms / 1000
    drive.readings(False, False)
    drive.advance(drive.ms + 1000, False, False)
    assert drive.stop_cause == Cause.GRIP_LOST.value
    assert drive.stop_t == pytest.approx(released + DEBOUNCE_S, abs=1e-9)


# --------------------------------------------------------------------------- SR-7


def _program(**fields: object) -> Program:
    """A program as a file might describe it, without the loader's checks: the core must hold
    SR-7 by itself too."""
    base = Program.model_construct(
        name="p",
        title="p",
        kind=ProgramKind.CONTINUOUS,
        first_session=False,
        min_mph=0.8,
        max_mph=1.2,
        start_mph=1.0,
        step_mph=0.0,
        step_every_s=0.0,
        cap_s_default=180.0,
        cap_s_min=60.0,
        cap_s_max=600.0,
        interval_s=60.0,
        rest_s=10.0,
    )
    return base.model_copy(update=fields)


def test_sr7_a_first_session_intervals_program_is_refused_when_loaded() -> None:
    with pytest.raises(ValueError, match="first-session"):
        Program(
            name="first_intervals",
            title="First session, intervals",
            kind=ProgramKind.INTERVALS,
            first_session=True,
            cap_s_default=480,
            cap_s_min=480,
            cap_s_max=600,
        )


def test_sr7_a_first_session_never_gets_ten_minutes_of_intervals() -> None:
    """An intervals program marked first_session with a 10-minute cap (past the loader): the
    start is refused; at the 5-minute limit it is accepted and the belt stops by it."""
    programs = {
        "first_intervals": _program(
            name="first_intervals", kind=ProgramKind.INTERVALS, first_session=True
        )
    }
    world = World()
    world.core = SafetyCore(
        SafetyLimits(), programs, default_program="first_intervals", commissioned_until=math.inf
    )
    world.run(1.0)
    d = world.start(cap_s=600.0, returning=False)
    assert "first-session" in refusal(d).message
    d = world.start(cap_s=FIRST_SESSION_CAP_HARD_S, returning=False)
    assert isinstance(d.reply, Accepted)
    world.run(15 * 60.0, until=lambda: world.core.snapshot().session is None)
    assert world.moving_s() <= FIRST_SESSION_CAP_HARD_S


@PROPERTY
@given(
    kind=st.sampled_from(ProgramKind),
    first_session=st.booleans(),
    returning=st.sampled_from([False, None, True]),
    cap_s_max=st.floats(1.0, 2000.0),
    cap_s=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    interval_s=st.floats(1.0, 60.0),
)
def test_sr7_property_a_first_session_never_has_a_cap_above_the_first_session_limit(
    kind: ProgramKind,
    first_session: bool,
    returning: bool | None,
    cap_s_max: float,
    cap_s: float | None,
    interval_s: float,
) -> None:
    """Whatever program (even one the loader would refuse) and whatever cap is asked: a first
    session (a first-session program, or a user with no session on record) that is accepted
    has at most 5 minutes of belt time."""
    program = _program(
        kind=kind,
        first_session=first_session,
        cap_s_min=1.0,
        cap_s_default=min(cap_s_max, 180.0),
        cap_s_max=cap_s_max,
        interval_s=interval_s,
    )
    core = SafetyCore(
        SafetyLimits(), {"p": program}, default_program="p", commissioned_until=math.inf
    )
    for inp in (
        GripReading(0.0, Hand.LEFT, True),
        GripReading(0.0, Hand.RIGHT, True),
        FallReading(0.0, False),
        DriveFeedback(0.0, 0.0),
    ):
        core.handle(inp)
    d = core.handle(StartSession(0.0, "pat", cap_s=cap_s, returning=returning))
    first = first_session or returning is False
    session = core.snapshot().session
    if first and isinstance(d.reply, Accepted):
        assert session is not None
        assert session.cap_s <= FIRST_SESSION_CAP_HARD_S
    if not isinstance(d.reply, Accepted):
        assert session is None


# --------------------------------------------------------------------------- SR-8


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf])
def test_sr8_a_reading_stamped_non_finite_is_no_reading(stamp: float) -> None:
    """Stored as is, a NaN stamp never went stale, and after +inf every later reading was
    dropped as out of order: a real fall 12 s later was ignored."""
    world = at_speed(1.0)
    mark = len(world.log)
    world.send(FallReading(stamp, False))
    world.send(GripReading(stamp, Hand.LEFT, True))
    world.run(12.0)
    assert world.state is State.RUNNING
    world.fallen = True
    world.run(0.05)
    _, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.FALL.value


def test_sr8_a_sensor_that_only_sends_non_finite_stamps_goes_stale() -> None:
    world = at_speed(1.0)
    world.silent.add("fall")
    mark = len(world.log)
    last_real = world.t
    for _ in range(20):
        world.send(FallReading(math.nan, False))
        world.tick()
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.SENSOR_STALE.value
    assert t_stop - last_real <= SENSOR_TIMEOUT_S + 0.05 + 1e-9


def test_sr8_an_unsafe_reading_is_never_thrown_away_for_arriving_out_of_order() -> None:
    world = at_speed(1.0)
    d = world.send(FallReading(world.t - 0.2, True))  # older than the last "no fall"
    assert d.emergency_stop
    assert [e.fields["cause"] for e in d.events if e.type is EventType.ESTOP] == ["fall"]


def test_sr8_a_late_release_counts_and_a_late_grip_is_superseded() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    t = world.t
    # A "held" older than the newest reading changes nothing.
    world.send(GripReading(t - 0.2, Hand.LEFT, False))
    world.send(GripReading(t - 0.2, Hand.RIGHT, False))
    world.send(GripReading(t - 0.1, Hand.LEFT, True))
    assert not world.core.snapshot().grip[Hand.LEFT]
    world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    world.run(1.0)
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.GRIP_LOST.value
    # Counted from the release's own time (failing closed by at most its lateness).
    assert t_stop - (t - 0.2) <= DEBOUNCE_S + 1e-9


stamps = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0]),
)


@PROPERTY
@given(
    odd=st.lists(
        st.tuples(st.sampled_from(["left", "right", "fall"]), stamps, st.booleans()),
        min_size=1,
        max_size=6,
    ),
)
def test_sr8_property_odd_stamps_never_hide_a_fall(odd: list[tuple[str, float, bool]]) -> None:
    """Readings with any stamp (non-finite, huge, far back) amid a running session: a real
    fall afterwards is an emergency stop in the same decision, unless a stop came first."""
    drive = running_drive()
    for name, stamp, value in odd:
        if name == "fall":
            drive.send(FallReading(stamp, value))
        else:
            drive.send(GripReading(stamp, Hand(name), value))
    drive.advance(drive.ms + 200, True, True)
    t = drive.ms / 1000 + 0.01
    d = drive.send(FallReading(t, True))
    assert drive.core.state in (State.ESTOP, State.FAULT)
    if drive.stop_t == t:
        assert d.emergency_stop


# --------------------------------------------------------------------------- SR-6 / SR-3


def test_sr6_a_reset_is_refused_while_the_drive_still_reports_its_fault() -> None:
    world = at_speed(1.0)
    d = world.send(DriveFeedback(world.t + 0.01, 1.0, DriveFailure.FAULT, "error code 7"))
    assert d.emergency_stop
    assert d.state is State.FAULT
    world.belt = 0.0
    # Statuses keep coming, fresh, at standstill, still reporting the fault.
    for _ in range(10):
        world.ms += 50
        world.send(DriveFeedback(world.t, 0.0, DriveFailure.FAULT, "error code 7"))
        world.send(Tick(world.t))
    assert "fault" in refusal(world.command(Reset)).message
    d = world.send(StartSession(world.t, "pat"))
    assert refusal(d).code.value == "latched"
    world.run(0.2)  # healthy statuses again
    assert isinstance(world.command(Reset).reply, Accepted)
    assert isinstance(world.start().reply, Accepted)


def test_sr12_a_rival_daemon_stops_the_belt_and_latches_a_fault() -> None:
    """Another daemon publishing this treadmill's state: the belt stops at once (an emergency
    stop) and the fault stays latched until a reset at standstill."""
    world = at_speed(1.0)
    d = world.send(RivalDaemon(world.t + 0.01, "another daemon (abc) publishes the state"))
    assert d.emergency_stop
    assert d.speed_mph == 0.0
    assert d.state is State.FAULT
    latch = world.core.latch
    assert latch is not None
    assert latch.cause is Cause.RIVAL_DAEMON
    world.belt = 0.0
    world.run(0.5)
    assert isinstance(world.command(Reset).reply, Accepted)


def test_sr3_no_start_while_the_drive_reports_a_fault_even_unlatched() -> None:
    world = World()
    world.run(1.0)
    world.send(DriveFeedback(world.t + 0.01, 0.0, DriveFailure.FAULT, "error code 7"))
    world.ms += 10
    world.send(DriveFeedback(world.t + 0.01, 0.0, DriveFailure.FAULT, "error code 7"))
    d = world.send(StartSession(world.t + 0.01, "pat"))
    assert isinstance(d.reply, Refused)


def _at_rest(world: World) -> None:
    """Run the first interval of an intervals session through to its rest."""
    world.run(1.0)
    assert isinstance(world.start().reply, Accepted)
    world.run(COUNTDOWN_S + 70.0, until=lambda: world.events(EventType.INTERVAL_REST) != [])
    assert world.events(EventType.INTERVAL_REST)


@pytest.mark.parametrize("failure", ["grips", "belt"])
def test_sr3_the_next_interval_is_a_start_and_a_failed_precondition_ends_the_session(
    failure: str,
) -> None:
    """After a rest every precondition is checked again, with the countdown announced again;
    one that fails ends the session and the belt never moves."""
    world = World("intervals")
    _at_rest(world)
    mark = len(world.log)
    countdown = world.events(EventType.COUNTDOWN)[-1]
    rest_s = float(countdown.fields["seconds"] or 0)
    assert rest_s >= COUNTDOWN_S
    world.run(rest_s - 1.0)
    if failure == "grips":
        world.hold = {Hand.LEFT: False, Hand.RIGHT: True}
    else:
        world.belt = 0.2  # the drive reports the belt creeping
    world.run(5.0)
    _, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == EndReason.START_ABORTED.value
    assert all(d.speed_mph == 0.0 for _, d in world.log[mark:])
    assert not world.events(EventType.BELT_STARTED, mark)
    assert _elapsed(world) == 0.0


def test_sr3_the_next_interval_starts_after_its_countdown_when_all_holds() -> None:
    world = World("intervals")
    _at_rest(world)
    mark = len(world.log)
    world.run(80.0, until=lambda: world.commanded > 0)
    t_started, started = first_event(world, EventType.BELT_STARTED, mark)
    assert started.fields["interval"] == 2
    assert t_started - world.log[mark][0].t >= COUNTDOWN_S
