"""The safety core's decisions at the edges the other example tests leave open: the exact words
and fields of refusals and events (SR-14, SR-15: a refusal names its reason for a person), the
boundaries of every range (SR-1, SR-3, SR-7), and the order of rules within one input. Found by
mutation testing of the core (benchmarks/bench_mutation.py); each test asserts a behaviour of
the requirements, through the core's decisions, events and snapshot.

The 50 ms world of test_safety_examples; expected values from docs/requirements.md,
docs/tablet-contract.md and the shipped programs (config/programs/)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from tests.test_safety_amended import _program
from tests.test_safety_examples import (
    CAP_WARNING_BEFORE_S,
    COUNTDOWN_S,
    DEBOUNCE_S,
    DRIVE_TIMEOUT_S,
    EPS,
    FEEDBACK_WINDOW_S,
    HEARTBEAT_GRACE_S,
    PERIOD_MS,
    PROGRAMS_DIR,
    SENSOR_TIMEOUT_S,
    World,
    at_speed,
    first_event,
    refusal,
    running_world,
)
from tests.test_stop_watch import CONTROLLED, EMERGENCY, Bench
from treadguard.config.loading import load_programs
from treadguard.safety.core import STOP_WATCH_FAULT, SafetyCore
from treadguard.safety.decisions import (
    Accepted,
    Cause,
    Decision,
    Event,
    EventType,
    RefusalCode,
    Refused,
    State,
)
from treadguard.safety.inputs import (
    BrakeFaultOnRecord,
    Commissioning,
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
    LoopOverrun,
    Reset,
    RivalDaemon,
    Sensor,
    SetSpeed,
    Shutdown,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.limits import STANDSTILL_MPH, SafetyLimits
from treadguard.safety.programs import Program
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.safety.stop_watch import StopMeasurement, StopWatch, Verdict, yardstick

# The shipped programs (config/programs/*.toml).
FIRST_CAP_MIN, FIRST_CAP_MAX = 180.0, 300.0
INTERVALS_START_MPH = 1.0


def _world(program: str = "first_session", **core: object) -> World:
    """A world whose core is built with these settings, a second into the session's world."""
    world = World(program)
    if core:
        settings: dict[str, object] = {"commissioned_until": math.inf, **core}
        world.core = SafetyCore(
            SafetyLimits(),
            world.programs,
            default_program=program,
            **settings,  # type: ignore[arg-type]
        )
    world.run(1.0)
    return world


# --------------------------------------------------------------------------- SR-15: refusals


def _started(world: World) -> dict[str, object]:
    (started,) = world.events(EventType.SESSION_STARTED)
    return dict(started.fields)


@pytest.mark.parametrize(
    ("start", "code", "message"),
    [
        ({"user": ""}, RefusalCode.INVALID_COMMAND, "user must be 1-64 characters"),
        ({"user": "   "}, RefusalCode.INVALID_COMMAND, "user must be 1-64 characters"),
        ({"user": "x" * 65}, RefusalCode.INVALID_COMMAND, "user must be 1-64 characters"),
        (
            {"program": "nope"},
            RefusalCode.INVALID_COMMAND,
            "unknown program 'nope'; known: first_session, intervals, reverse_walking",
        ),
        (
            {"program": "reverse_walking", "returning": False},
            RefusalCode.PRECONDITIONS_UNMET,
            "cannot start: pat has no first treadmill session on record (one that ran to "
            "its cap, or for its shortest cap), so this is still their first: a "
            "first-session program (first_session), not reverse_walking",
        ),
        (
            {"cap_s": FIRST_CAP_MIN - 1},
            RefusalCode.OUT_OF_RANGE,
            "cap_s 179 is outside first_session's limits 180-300 s",
        ),
        (
            {"cap_s": FIRST_CAP_MAX + 1},
            RefusalCode.OUT_OF_RANGE,
            "cap_s 301 is outside first_session's limits 180-300 s",
        ),
        (
            {"cap_s": math.nan},
            RefusalCode.OUT_OF_RANGE,
            "cap_s nan is outside first_session's limits 180-300 s",
        ),
        (
            {"target_mph": 0.79},
            RefusalCode.OUT_OF_RANGE,
            "0.79 mph is outside the band 0.8-1.2 mph",
        ),
        (
            {"target_mph": 1.25},
            RefusalCode.OUT_OF_RANGE,
            "1.25 mph is outside the band 0.8-1.2 mph",
        ),
    ],
)
def test_sr15_a_refused_start_says_why_in_words_and_changes_nothing(
    start: dict[str, object], code: RefusalCode, message: str
) -> None:
    world = _world()
    fields: dict[str, object] = {"user": "pat", **start}
    d = world.send(StartSession(world.t, **fields))  # type: ignore[arg-type]
    refused = refusal(d)
    assert (refused.code, refused.message) == (code, message)
    (event,) = [e for e in d.events if e.type is EventType.COMMAND_REFUSED]
    assert event.fields == {"command": "start_session", "code": code.value, "message": message}
    assert d.state is State.IDLE
    assert world.core.snapshot().session is None


def test_sr6_sr15_a_start_while_latched_or_under_way_is_refused_with_its_reason() -> None:
    world = _world()
    world.command(EStop)
    refused = refusal(world.start())
    assert (refused.code, refused.message) == (
        RefusalCode.LATCHED,
        "estop latched (remote_estop): reset first",
    )
    world = _world()
    assert isinstance(world.start().reply, Accepted)
    refused = refusal(world.start())
    assert (refused.code, refused.message) == (
        RefusalCode.NOT_ALLOWED,
        "a session is already countdown",
    )
    world = running_world()
    refused = refusal(world.start())
    assert (refused.code, refused.message) == (
        RefusalCode.NOT_ALLOWED,
        "a session is already running",
    )
    assert world.state is State.RUNNING


def test_sr3_an_uncommissioned_treadmill_says_so_first_among_the_unmet() -> None:
    """A start with two preconditions unmet names both, the commissioning first; a proof run
    (the commissioning tool's) is refused only for the grip."""
    world = _world(commissioned_until=None)
    world.hold[Hand.LEFT] = False
    world.run(0.1)
    refused = refusal(world.start())
    assert refused.code is RefusalCode.PRECONDITIONS_UNMET
    assert refused.message == (
        "cannot start: the treadmill is not commissioned (no passed commissioning on record): "
        "a technician must prove its stops with `treadguard commission` before patient "
        "sessions; left hand is not on the handrail"
    )
    refused = refusal(world.start(proof=True))
    assert refused.message == "cannot start: left hand is not on the handrail"
    world.hold[Hand.LEFT] = True
    world.run(0.1)
    assert isinstance(world.start(proof=True).reply, Accepted)


def test_sr7_a_first_session_refusal_names_every_first_session_program() -> None:
    world = World()
    gentle = world.programs["first_session"].model_copy(update={"name": "gentle_first"})
    world.core = SafetyCore(
        SafetyLimits(),
        {**world.programs, "gentle_first": gentle},
        default_program="first_session",
        commissioned_until=math.inf,
    )
    world.run(1.0)
    refused = refusal(world.start(program="reverse_walking", returning=False))
    assert refused.message == (
        "cannot start: pat has no first treadmill session on record (one that ran to its "
        "cap, or for its shortest cap), so this is still their first: a first-session "
        "program (first_session, gentle_first), not reverse_walking"
    )


# --------------------------------------------------------------------------- SR-3/SR-7: a start


@pytest.mark.parametrize("cap_s", [FIRST_CAP_MIN, FIRST_CAP_MAX])
def test_sr7_a_cap_at_either_end_of_the_programs_limits_is_accepted(cap_s: float) -> None:
    world = _world()
    assert isinstance(world.start(cap_s=cap_s).reply, Accepted)
    assert _started(world)["cap_s"] == cap_s
    session = world.core.snapshot().session
    assert session is not None
    assert (session.cap_s, session.remaining_s) == (cap_s, cap_s)


@pytest.mark.parametrize("target", [0.8, 1.2])
def test_sr1_a_target_at_either_edge_of_the_band_is_accepted(target: float) -> None:
    world = _world()
    assert isinstance(world.start(target_mph=target).reply, Accepted)
    assert _started(world)["target_mph"] == target
    world.run(COUNTDOWN_S + 10.0)
    assert world.commanded == pytest.approx(target)


def test_sr14_the_session_started_event_names_the_session_user_program_cap_and_target() -> None:
    """The user as typed less its surrounding blanks; 64 characters are allowed."""
    world = _world()
    assert isinstance(world.send(StartSession(world.t, "  pat  ")).reply, Accepted)
    assert _started(world) == {
        "session_id": "1",
        "user": "pat",
        "program": "first_session",
        "cap_s": FIRST_CAP_MIN,
        "target_mph": 0.8,
    }
    (countdown,) = world.events(EventType.COUNTDOWN)
    assert countdown.fields == {"seconds": COUNTDOWN_S}
    session = world.core.snapshot().session
    assert session is not None
    assert (session.id, session.user, session.program) == ("1", "pat", "first_session")
    world = _world()
    long_name = "x" * 64
    assert isinstance(world.send(StartSession(world.t, long_name)).reply, Accepted)
    assert _started(world)["user"] == long_name


def test_sr7_a_returning_user_gets_the_returning_program_and_a_new_one_the_default() -> None:
    for returning, program in ((True, "reverse_walking"), (False, "first_session")):
        world = _world(returning_program="reverse_walking")
        assert isinstance(world.start(returning=returning).reply, Accepted)
        assert _started(world)["program"] == program
    # Without a returning program a returning user gets the default program too.
    world = _world()
    assert isinstance(world.start(returning=True).reply, Accepted)
    assert _started(world)["program"] == "first_session"


def test_session_ids_count_up_one_start_at_a_time() -> None:
    world = _world()
    for expected in ("1", "2", "3"):
        mark = len(world.log)
        assert isinstance(world.start().reply, Accepted)
        world.command(Stop)
        world.run(0.1)
        (started,) = world.events(EventType.SESSION_STARTED, mark)
        assert started.fields["session_id"] == expected


@pytest.mark.parametrize(("cap_s", "intervals"), [(480.0, 8), (540.0, 9), (599.0, 9), (600.0, 10)])
def test_sr7_an_intervals_session_has_one_interval_per_full_interval_of_its_cap(
    cap_s: float, intervals: int
) -> None:
    world = _world("intervals")
    assert isinstance(world.start(cap_s=cap_s).reply, Accepted)
    assert _started(world)["target_mph"] == INTERVALS_START_MPH
    session = world.core.snapshot().session
    assert session is not None
    assert (session.interval, session.intervals) == (1, intervals)


def test_sr7_intervals_that_are_no_whole_number_of_seconds_are_counted_in_full() -> None:
    """597 s of 59.7 s intervals is ten intervals; floor division of the floats says nine."""
    world = World("intervals")
    odd = world.programs["intervals"].model_copy(
        update={"interval_s": 59.7, "cap_s_min": 597.0, "cap_s_default": 597.0, "cap_s_max": 597.0}
    )
    world.core = SafetyCore(
        SafetyLimits(),
        {**world.programs, "intervals": odd},
        default_program="intervals",
        commissioned_until=math.inf,
    )
    world.run(1.0)
    assert isinstance(world.start(cap_s=597.0).reply, Accepted)
    session = world.core.snapshot().session
    assert session is not None
    assert session.intervals == 10


# --------------------------------------------------------------------------- SR-1: set_speed


def test_sr1_sr15_a_refused_speed_change_says_why_in_words() -> None:
    world = _world()
    refused = refusal(world.command(lambda t: SetSpeed(t, 1.0)))
    assert (refused.code, refused.message) == (RefusalCode.NOT_ALLOWED, "no running session (idle)")
    world = at_speed(1.0)
    refused = refusal(world.command(lambda t: SetSpeed(t, 1.3)))
    assert (refused.code, refused.message) == (
        RefusalCode.OUT_OF_RANGE,
        "1.3 mph is outside the band 0.8-1.2 mph",
    )


def test_sr3_a_speed_set_during_the_countdown_waits_for_the_belt_start() -> None:
    """The belt does not move before the countdown ends (SR-3); then it goes to the speed set
    during the countdown."""
    world = _world()
    assert isinstance(world.start().reply, Accepted)
    d = world.command(lambda t: SetSpeed(t, 1.1))
    assert isinstance(d.reply, Accepted)
    assert (d.state, d.target_mph, d.speed_mph) == (State.COUNTDOWN, 0.0, 0.0)
    world.run(COUNTDOWN_S + 0.5, until=lambda: world.commanded > 0)
    (started,) = world.events(EventType.BELT_STARTED)
    assert started.fields == {"target_mph": 1.1, "interval": 1}
    world.run(10.0)
    assert world.commanded == pytest.approx(1.1)


def test_sr7_a_speed_set_by_the_clinician_ends_the_automatic_progression() -> None:
    world = running_world("reverse_walking")
    assert isinstance(world.command(lambda t: SetSpeed(t, 0.9)).reply, Accepted)
    world.run(150.0)  # past two of the program's 60 s steps
    assert not world.events(EventType.SPEED_STEP)
    assert world.commanded == pytest.approx(0.9)


# --------------------------------------------------------------------------- SR-6, SR-10: reset


def test_sr10_after_a_reset_a_new_mismatch_is_timed_from_its_own_start() -> None:
    """A feedback-mismatch fault, reset at standstill; then the belt creeps: a fault again, but
    only after the full window of the new mismatch (the old one is over)."""
    world = at_speed(1.0)
    world.belt = 0.5  # off by 0.5 mph
    world.run(FEEDBACK_WINDOW_S + 1.0)
    assert world.core.snapshot().latched is not None
    world.belt = 0.0
    world.run(1.0)
    assert isinstance(world.command(Reset).reply, Accepted)
    mark = len(world.log)
    world.belt = 0.2  # creeping while it should stand still
    world.run(FEEDBACK_WINDOW_S + 1.0)
    t_fault, fault = first_event(world, EventType.FAULT, mark)
    assert fault.fields["cause"] == "feedback_mismatch"
    assert t_fault - world.log[mark][0].t == pytest.approx(FEEDBACK_WINDOW_S, abs=0.05 + EPS)


def test_sr6_a_belt_at_the_standstill_bound_is_at_standstill_for_a_reset_and_a_start() -> None:
    world = _world()
    world.command(EStop)
    world.belt = STANDSTILL_MPH
    world.run(1.0)
    assert isinstance(world.command(Reset).reply, Accepted)
    assert isinstance(world.start().reply, Accepted)
    world = _world()
    world.command(EStop)
    world.belt = STANDSTILL_MPH + 0.01
    world.run(1.0)
    refused = refusal(world.command(Reset))
    assert refused.message == "cannot reset: belt is not at standstill"


# --------------------------------------------------------------------------- SR-13: deadlines


def test_sr13_the_commissioning_expiry_is_a_deadline_and_no_commissioning_is_none() -> None:
    core = SafetyCore(
        SafetyLimits(), load_programs(PROGRAMS_DIR), default_program="first_session",
        commissioned_until=100.0,
    )  # fmt: skip
    core.handle(Tick(1.0))
    assert core.next_deadline() == 100.0
    core.handle(GripReading(2.0, Hand.LEFT, True))
    assert core.next_deadline() == pytest.approx(2.0 + SENSOR_TIMEOUT_S)
    core.handle(Tick(99.0))
    assert core.next_deadline() == 100.0  # the reading is reported stale: its deadline is past
    d = core.handle(Tick(100.0))
    assert [e.type for e in d.events] == [EventType.COMMISSIONING_EXPIRED]
    assert core.next_deadline() is None
    for until in (None, math.inf):
        core = SafetyCore(
            SafetyLimits(), load_programs(PROGRAMS_DIR), default_program="first_session",
            commissioned_until=until,
        )  # fmt: skip
        core.handle(GripReading(1.0, Hand.LEFT, True))
        assert core.next_deadline() == pytest.approx(1.0 + SENSOR_TIMEOUT_S)


# --------------------------------------------------------------------------- the worn brake


def _slow_stop(wear: float, poll_s: float) -> tuple[Bench, dict[str, object], str]:
    """One emergency stop of a worn brake: the watch's verdict's figures and its warning."""
    bench = Bench(wear=wear, poll_s=poll_s)
    bench.start()
    bench.estop()
    (checked,) = bench.of(EventType.STOP_CHECKED)
    (warning,) = bench.of(EventType.MAINTENANCE_WARNING)
    assert checked.fields["verdict"] == "slow"
    return bench, dict(checked.fields), str(warning.fields["message"])


def _against(checked: dict[str, object]) -> str:
    return (
        f"from {checked['speed_mph']:.2f} mph; when commissioned it stopped at "
        f"{EMERGENCY.deceleration_mph_per_s:.2f} mph/s, "
        f"{checked['expected_standstill_s']:.2f} s from that speed"
    )


def test_a_slow_stop_that_reached_standstill_is_said_in_words_with_its_figures() -> None:
    """Statuses 0.2 s apart: the first one at standstill already comes after the slow limit."""
    _, checked, message = _slow_stop(wear=0.2, poll_s=0.2)
    assert checked["standstill_reached"] is True
    assert message == (
        f"emergency stop took {checked['standstill_s']:.2f} s to stop {_against(checked)}: "
        "slower by more than 30 % once; the brake may be worn"
    )


def test_a_slow_stop_still_moving_and_its_second_in_a_row_are_said_in_words() -> None:
    bench, checked, message = _slow_stop(wear=0.6, poll_s=0.05)
    assert checked["standstill_reached"] is False
    not_stopped = f"emergency stop was not at standstill after {checked['standstill_s']:.2f} s"
    assert message == (
        f"{not_stopped} {_against(checked)}: slower by more than 30 % once; the brake may be worn"
    )
    assert isinstance(bench.reset(), Accepted)
    bench.start()
    mark = len(bench.events)
    bench.estop()
    (fault,) = [e for e in bench.events[mark:] if e.type is EventType.FAULT]
    assert fault.fields == {
        "cause": "drive_fault",
        "detail": f"{STOP_WATCH_FAULT}: {not_stopped} {_against(checked)}: slower by more "
        "than 30 % twice in a row; the brake may be worn",
    }


def test_a_stop_whose_figures_cannot_be_read_is_said_to_count_as_slow() -> None:
    bench = Bench(wear=0.6)
    bench.start()
    t = bench.t
    bench.submit(EStop(t))
    t = round(t + bench.poll_s, 9)
    bench.submit(DriveFeedback(t, bench.belt.host_poll(t), DriveFailure.FAULT, "overcurrent"))
    bench.t = t
    bench.run(2.0)
    (warning,) = bench.of(EventType.MAINTENANCE_WARNING)
    assert warning.fields["message"] == (
        "emergency stop was not at standstill after inf s (its speed or time could not be "
        "read, so it counts as slow): slower by more than 30 % once; the brake may be worn"
    )


def test_sr6_a_worn_brake_on_record_latches_a_drive_fault_at_start_up() -> None:
    """Nothing latched: the record latches a drive_fault, an emergency stop like any fault."""
    world = _world()
    d = world.send(BrakeFaultOnRecord(world.t, "controlled", "slow twice"))
    assert (d.state, d.speed_mph, d.emergency_stop) == (State.FAULT, 0.0, True)
    (fault,) = [e for e in d.events if e.type is EventType.FAULT]
    detail = f"{STOP_WATCH_FAULT}: on record before this start: slow twice"
    assert fault.fields == {"cause": "drive_fault", "detail": detail}
    latch = world.core.snapshot().latched
    assert latch is not None
    assert (latch.kind, latch.cause, latch.since, latch.detail) == (
        State.FAULT,
        Cause.DRIVE_FAULT,
        world.t,
        detail,
    )


def test_sr6_a_worn_brake_fault_takes_over_an_emergency_stops_latch() -> None:
    """An emergency stop latched, then the worn brake: the stricter latch (a drive_fault) takes
    over, said in an event, the belt commanded to 0 by an emergency stop."""
    world = at_speed(1.0)
    world.command(EStop)
    world.run(0.5)
    t = world.t + 0.01
    d = world.send(BrakeFaultOnRecord(t, "emergency", "slow twice"))
    assert (d.state, d.speed_mph, d.target_mph, d.emergency_stop) == (State.FAULT, 0.0, 0.0, True)
    detail = f"{STOP_WATCH_FAULT}: on record before this start: slow twice"
    assert [(e.type, e.fields) for e in d.events] == [
        (EventType.FAULT, {"cause": "drive_fault", "detail": detail})
    ]
    latch = world.core.snapshot().latched
    assert latch is not None
    assert (latch.kind, latch.cause, latch.since, latch.detail) == (
        State.FAULT,
        Cause.DRIVE_FAULT,
        t,
        detail,
    )


def test_the_snapshot_shows_a_stop_the_drive_fell_silent_during_as_interrupted() -> None:
    bench = Bench()
    bench.start()
    bench.submit(EStop(bench.t))
    bench.linked = False
    bench.run(1.0)
    view = bench.core.snapshot().stop_watch
    assert view is not None
    assert view.last == {StopKind.EMERGENCY: "interrupted"}
    assert view.timing is None


# --------------------------------------------------------------------------- SR-11: stops


@pytest.mark.parametrize(
    ("make", "reason"),
    [(Shutdown, "shutdown"), (lambda t: LoopOverrun(t, "late"), "loop_overrun")],
)
def test_sr11_a_shutdown_during_a_controlled_stop_ends_the_session_for_that_reason(
    make: Callable[[float], Input], reason: str
) -> None:
    """The belt is slowing down for an operator stop; a shutdown (or a late loop) then ends
    the session in its own name, as the journal must say why the session ended."""
    world = at_speed(1.0)
    assert isinstance(world.command(Stop).reply, Accepted)
    world.run(0.5)
    assert world.state is State.STOPPING
    mark = len(world.log)
    world.command(make)
    world.run(5.0)
    (ended,) = world.events(EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == reason


# --------------------------------------------------------------------------- an exact clock


class Bed:
    """The core on an exact clock: every ``step`` seconds (a power of two, so that times and
    belt time add up without rounding) a reading of each grip sensor (``hold``; a hand left
    out: its sensor is silent), a fall reading, a drive status that follows the command, a
    heartbeat and a tick; the core's own deadlines in between, as the controller wakes it."""

    def __init__(
        self,
        program: str = "first_session",
        step: float = 0.25,
        programs: dict[str, Program] | None = None,
        **limits: float,
    ) -> None:
        self.core = SafetyCore(
            SafetyLimits(**limits),
            load_programs(PROGRAMS_DIR) if programs is None else programs,
            default_program=program,
            commissioned_until=math.inf,
        )
        self.step = step
        self.t = 0.0
        self.speed = 0.0
        self.hold: dict[Hand, bool] = {Hand.LEFT: True, Hand.RIGHT: True}
        self.silent: set[str] = set()  # "fall", "drive": that source sends nothing
        # Every event with the input's time and the session's belt time after it.
        self.events: list[tuple[float, Event, float | None]] = []

    def send(self, inp: Input) -> Decision:
        d = self.core.handle(inp)
        self.speed = d.speed_mph
        if d.events:
            session = self.core.snapshot().session
            elapsed = None if session is None else session.elapsed_s
            self.events.extend((inp.t, e, elapsed) for e in d.events)
        return d

    def tick(self) -> None:
        t = self.t + self.step
        due = self.core.next_deadline()
        if due is not None and due < t:
            self.send(Tick(due))
        self.t = t
        for hand, held in self.hold.items():
            self.send(GripReading(t, hand, held))
        if "fall" not in self.silent:
            self.send(FallReading(t, False))
        if "drive" not in self.silent:
            self.send(DriveFeedback(t, self.speed))
        self.send(Heartbeat(t))
        self.send(Tick(t))

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        end = self.t + seconds
        while self.t < end and not (until is not None and until()):
            self.tick()

    def start(self, **start: object) -> None:
        self.run(1.0)
        reply = self.send(StartSession(self.t, "pat", **start)).reply  # type: ignore[arg-type]
        assert isinstance(reply, Accepted), reply
        self.run(COUNTDOWN_S + 1.0, until=lambda: self.speed > 0)
        assert self.core.state is State.RUNNING

    def of(self, type_: EventType) -> list[tuple[float, Event, float | None]]:
        return [x for x in self.events if x[1].type is type_]


LIMITS = SafetyLimits()


def test_sr7_the_cap_warning_comes_once_at_cap_minus_30_s_and_the_stop_just_in_time() -> None:
    """Belt time on an exact clock: the warning at exactly cap - 30 s of belt time, once; the
    controlled stop from 0.8 mph begins exactly when the ramp down (0.8 / 0.4 mph/s) and the
    stop margin are all that is left of the cap."""
    bed = Bed()
    bed.start()
    bed.run(FIRST_CAP_MIN + 10.0)
    ((_, warning, warned_at),) = bed.of(EventType.CAP_WARNING)
    assert warned_at == FIRST_CAP_MIN - CAP_WARNING_BEFORE_S
    assert warning.fields == {"remaining_s": CAP_WARNING_BEFORE_S}
    ((_, stopping, stop_at),) = bed.of(EventType.STOPPING)
    assert stopping.fields == {"reason": "cap"}
    assert stop_at == FIRST_CAP_MIN - (0.8 / LIMITS.decel_mph_s + LIMITS.cap_stop_margin_s)
    ((_, ended, _),) = bed.of(EventType.SESSION_ENDED)
    assert ended.fields["reason"] == "cap"
    assert float(ended.fields["belt_moving_s"] or 0) <= FIRST_CAP_MIN


def test_sr7_an_intervals_session_runs_its_intervals_each_stopped_just_in_time() -> None:
    """Eight one-minute intervals at 1.0 mph: each stop begins exactly when the ramp down and
    the margin are all that is left of the interval; seven rests; then the session ends."""
    bed = Bed("intervals")
    bed.start()
    bed.run(20 * 60.0, until=lambda: bed.core.state is State.IDLE)
    stops = bed.of(EventType.STOPPING)
    assert [e.fields["reason"] for _, e, _ in stops] == ["completed"] * 8
    interval_stop = 60.0 - (INTERVALS_START_MPH / LIMITS.decel_mph_s + LIMITS.cap_stop_margin_s)
    assert stops[0][2] == interval_stop
    rests = bed.of(EventType.INTERVAL_REST)
    assert [e.fields for _, e, _ in rests] == [
        {"interval": i, "intervals": 8, "rest_s": 60.0} for i in range(1, 8)
    ]
    assert [e.fields["interval"] for _, e, _ in bed.of(EventType.BELT_STARTED)] == list(range(1, 9))
    ((_, ended, _),) = bed.of(EventType.SESSION_ENDED)
    assert ended.fields["reason"] == "completed"


def test_sr7_reverse_walking_steps_at_each_full_minute_of_belt_time() -> None:
    """Up to the top of the band, and no step said after it (the minutes at 1.2 mph)."""
    bed = Bed("reverse_walking")
    bed.start(cap_s=480.0)
    bed.run(6 * 60.0 + 30.0)
    steps = bed.of(EventType.SPEED_STEP)
    assert [(at, e.fields["target_mph"]) for _, e, at in steps] == [
        (60.0, 0.9),
        (120.0, 1.0),
        (180.0, 1.1),
        (240.0, 1.2),
    ]


def test_sr6_sr9_before_the_drive_s_first_status_only_its_silence_is_reported() -> None:
    """No status yet: a start is refused for the drive's silence alone (no fault is reported
    by a drive that has said nothing); a link failure before any status latches, and its
    reset waits for the drive to answer and report itself healthy."""
    world = World()
    world.silent.add("drive")
    world.run(0.5)
    start = world.start().reply
    assert isinstance(start, Refused)
    assert (start.code, start.message) == (
        RefusalCode.PRECONDITIONS_UNMET,
        "cannot start: drive is not answering",
    )
    world.send(DriveError(world.t, DriveFailure.LINK, "no port"))
    world.run(0.5)
    reset = world.command(Reset).reply
    assert isinstance(reset, Refused)
    assert reset.message == (
        "cannot reset: drive is not answering, standstill cannot be confirmed; "
        "drive has not reported a healthy status since its fault"
    )


def test_sr7_a_program_without_steps_never_steps_whatever_its_target() -> None:
    """A program with no automatic progression keeps the target it started at, also one
    asked for to the ten-thousandth (no step rounds it up to the thousandth above it)."""
    bed = Bed()
    bed.start(target_mph=0.8145)
    bed.run(60.0)
    assert bed.of(EventType.SPEED_STEP) == []
    assert bed.core.target == 0.8145


def test_sr7_a_step_of_a_fraction_of_a_hundredth_keeps_targets_to_the_thousandth() -> None:
    """A program's step may be any size up to 0.2 mph: each new target is kept to the
    thousandth of a mph, as every other speed is."""
    program = _program(name="fine", start_mph=0.8, step_mph=0.0125, step_every_s=30.0)
    bed = Bed("fine", programs={"fine": program})
    bed.start()
    bed.run(2 * 60.0)
    targets = [e.fields["target_mph"] for _, e, _ in bed.of(EventType.SPEED_STEP)]
    assert len(targets) == 4
    for target in targets:
        assert isinstance(target, float)
        assert target == round(target, 3)
    assert targets[-1] == pytest.approx(0.85, abs=0.002)


# --------------------------------------------------------------------------- SR-4, SR-5, SR-8


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ("fallen", {"cause": "fall", "detail": "fall signalled"}),
        ("fall silent", {"cause": "sensor_stale", "detail": "fall sensor silent"}),
        ("both released", {"cause": "grip_lost", "detail": "both hands off the handrails"}),
        ("grips silent", {"cause": "sensor_stale", "detail": "both hands off the handrails"}),
    ],
)
def test_sr14_an_emergency_stop_says_its_cause_and_what_happened(
    change: str, fields: dict[str, str]
) -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    if change == "fallen":
        world.fallen = True
    elif change == "fall silent":
        world.silent.add("fall")
    elif change == "both released":
        world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    else:
        world.silent |= {"left", "right"}
    world.run(2.0)
    _, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields == fields
    latch = world.core.snapshot().latched
    assert latch is not None
    assert (latch.kind, latch.cause.value, latch.detail) == (
        State.ESTOP,
        fields["cause"],
        fields["detail"],
    )


def test_sr4_a_hand_lost_is_warned_once_per_loss_and_says_how() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.hold[Hand.LEFT] = False
    world.run(1.0)
    world.hold[Hand.LEFT] = True
    world.run(1.0)
    world.hold[Hand.LEFT] = False
    world.run(1.0)
    world.hold[Hand.LEFT] = True
    world.silent.add("right")
    world.run(1.0)
    assert [e.fields for e in world.events(EventType.GRIP_WARNING, mark)] == [
        {"hand": "left", "cause": "released"},
        {"hand": "left", "cause": "released"},
        {"hand": "right", "cause": "sensor_stale"},
    ]
    assert world.state is State.RUNNING


def _resting(world: World) -> None:
    world.run(1.0)
    assert isinstance(world.start().reply, Accepted)
    world.run(COUNTDOWN_S + 70.0, until=lambda: world.events(EventType.INTERVAL_REST) != [])


def test_sr3_a_user_may_let_go_during_a_rest_but_not_in_its_final_countdown() -> None:
    """Between two intervals the belt stands still: letting go is allowed, until the last
    seconds before the next interval, which are a start (SR-3): a hand lost then ends the
    session at once."""
    world = World("intervals")
    _resting(world)
    mark = len(world.log)
    world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    world.run(20.0)
    assert world.state is State.COUNTDOWN
    world.hold = {Hand.LEFT: True, Hand.RIGHT: True}
    session = world.core.snapshot()
    assert session.countdown_s is not None
    world.run(session.countdown_s - COUNTDOWN_S + 1.0)  # one second into the final countdown
    assert world.state is State.COUNTDOWN
    world.hold[Hand.RIGHT] = False
    released = len(world.log)
    world.run(0.05)
    t_end, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == "start_aborted"
    assert t_end == world.log[released][0].t
    assert not world.events(EventType.BELT_STARTED, mark)


def test_sr3_a_hand_lost_at_the_first_instant_of_a_rest_s_final_countdown_ends_it() -> None:
    """The final countdown of a rest includes its first instant: a hand lost exactly
    countdown_s before the next interval ends the session there, not one reading later."""
    world = World("intervals")
    _resting(world)
    mark = len(world.log)
    left = world.core.snapshot().countdown_s
    assert left is not None
    final_ms = round((world.t + left - COUNTDOWN_S) * 1000)
    assert final_ms % PERIOD_MS == 0  # a reading falls on that instant
    world.run((final_ms - world.ms - PERIOD_MS) / 1000)
    assert world.state is State.COUNTDOWN
    world.hold[Hand.RIGHT] = False
    world.tick()
    assert world.ms == final_ms
    t_end, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == "start_aborted"
    assert t_end == final_ms / 1000


def test_sr4_a_late_release_of_a_hand_already_lost_counts_the_loss_once() -> None:
    """Both hands off, then a release of one of them that arrives late (stamped before the
    core's time): the hands were already counted as lost since they let go, so the late
    reading adds nothing, and the stop comes at the debounce, not before it."""
    world = at_speed(1.0)
    world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    world.tick()
    released = world.t
    mark = len(world.log)
    world.tick()
    world.tick()
    world.send(GripReading(world.t - PERIOD_MS / 2000, Hand.LEFT, False))
    while world.t < released + DEBOUNCE_S - 2 * PERIOD_MS / 1000:
        world.tick()
    assert world.core.latch is None
    world.run(2 * PERIOD_MS / 1000 + 0.001)
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == "grip_lost"
    assert t_stop == pytest.approx(released + DEBOUNCE_S)


class _ClockAtZero(World):
    """A world whose clock reads 0.0 twenty seconds in: near 0 a float time can step by
    exactly a nanosecond, the core's tolerance for comparing times."""

    @property
    def t(self) -> float:
        return self.ms / 1000.0 - 20.0


def test_sr4_both_hands_off_for_no_longer_than_the_time_tolerance_is_no_loss() -> None:
    """With a debounce shorter than the core's time tolerance (1 ns), both hands off for
    exactly that long and one back is no count to stop on: a count is a loss only once it is
    more than the tolerance (a longer one, a hand back or not, stops the belt)."""
    world = _ClockAtZero("first_session")
    world.core = SafetyCore(
        SafetyLimits(grip_debounce_s=1.5e-9),
        world.programs,
        default_program="first_session",
        commissioned_until=math.inf,
        t0=-20.0,
    )
    world.run(1.0)
    assert isinstance(world.start().reply, Accepted)
    world.run(19.0 - PERIOD_MS / 1000)
    assert world.state is State.RUNNING
    assert world.t < 0.0
    world.send(GripReading(0.0, Hand.LEFT, False))
    world.send(GripReading(0.0, Hand.RIGHT, False))
    assert world.state is State.RUNNING  # a count of 0
    world.send(GripReading(1e-9, Hand.LEFT, True))
    assert world.state is State.RUNNING  # a count of exactly 1 ns, one hand back
    world.send(GripReading(3e-9, Hand.LEFT, False))
    world.send(GripReading(5e-9, Hand.LEFT, True))
    latch = world.core.latch
    assert latch is not None
    assert (latch.kind, latch.cause) == (State.ESTOP, Cause.GRIP_LOST)


def test_sr3_a_hand_lost_at_the_instant_the_countdown_ends_ends_the_start() -> None:
    """The belt may start only while every start precondition holds: a hand reported lost at
    the very instant the countdown ended, before anything was commanded above 0, ends the
    start there (no latch: the belt never moved), even if the hand is back within that same
    instant."""
    world = World()
    world.run(1.0)
    assert isinstance(world.start().reply, Accepted)
    world.run(COUNTDOWN_S + 1.0, until=lambda: world.state is State.RUNNING)
    assert world.state is State.RUNNING
    assert world.commanded == 0.0  # the countdown ended at this instant: nothing moved yet
    mark = len(world.log)
    world.send(GripReading(world.t, Hand.LEFT, False))
    world.send(GripReading(world.t, Hand.LEFT, True))
    _, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == "start_aborted"
    after = world.core.snapshot()
    assert after.state is State.IDLE
    assert after.latched is None


def test_sr4_a_debounce_of_0_stops_on_any_loss_of_both_hands() -> None:
    bed = Bed(grip_debounce_s=0.0)
    bed.start()
    t = bed.t + 0.125
    bed.send(GripReading(t, Hand.LEFT, False))
    assert bed.core.state is State.RUNNING
    d = bed.send(GripReading(t, Hand.RIGHT, False))
    assert d.emergency_stop
    assert [e.fields["cause"] for e in d.events if e.type is EventType.ESTOP] == ["grip_lost"]


def test_sr4_a_late_wake_up_that_finds_a_hand_back_still_stops_the_belt() -> None:
    """Both hands off for longer than the debounce with no input in between (the controller
    woke late): the first input after it, a hand back, still brings the stop that was due."""
    bed = Bed()
    bed.start()
    t = bed.t + 0.0625
    bed.send(GripReading(t, Hand.LEFT, False))
    bed.send(GripReading(t, Hand.RIGHT, False))
    assert bed.core.state is State.RUNNING
    d = bed.send(GripReading(t + 0.375, Hand.LEFT, True))  # before the drive's time-out
    assert d.emergency_stop
    assert [e.fields["cause"] for e in d.events if e.type is EventType.ESTOP] == ["grip_lost"]


def _stop_time(bed: Bed, until: float, cause: str = "grip_lost") -> float:
    """Tick the core at its own deadlines (and every 10 ms, with fresh fall and drive
    readings, grips unchanged) until it stops the belt; the time of the stop."""
    t = bed.t
    while t < until:
        due = bed.core.next_deadline()
        nxt = round(t + 0.01, 9)
        if due is not None and due < nxt:
            nxt = due
        t = nxt
        for inp in (Tick(t), FallReading(t, False), DriveFeedback(t, bed.speed)):
            if bed.send(inp).emergency_stop:
                (estop,) = [e for _, e, _ in bed.of(EventType.ESTOP)]
                assert estop.fields["cause"] == cause
                return t
    raise AssertionError("no stop")


@pytest.mark.parametrize("late", [Hand.LEFT, Hand.RIGHT])
def test_sr8_a_late_release_counts_from_its_own_time(late: Hand) -> None:
    """One hand released on time; the other's release, stamped 60 ms before it arrives, is the
    one that makes both hands lost: counted from its stamp, and the time it was taken for held
    (and counted down) counted back up, failing closed by at most its lateness. With 50 ms of
    loss still on the count, the stop comes when the count reaches 0.3 s."""
    other = Hand.RIGHT if late is Hand.LEFT else Hand.LEFT
    bed = Bed()
    bed.start()
    t0 = bed.t
    for hand in Hand:
        bed.send(GripReading(t0 + 0.0625, hand, False))
    bed.send(Tick(t0 + 0.25))  # 187.5 ms of loss
    for hand in Hand:
        bed.send(GripReading(t0 + 0.25, hand, True))
    bed.send(Tick(t0 + 0.3125))  # back for 62.5 ms: 125 ms left on the count
    bed.send(GripReading(t0 + 0.3125, other, False))
    bed.send(Tick(t0 + 0.375))  # one hand held (as far as the core knows): 62.5 ms left
    d = bed.send(GripReading(t0 + 0.34375, late, False))  # 31.25 ms late
    assert not d.emergency_stop
    bed.t = t0 + 0.375
    # 62.5 ms + 2 x 31.25 ms = 125 ms on the count at t0 + 0.375: 175 ms to go.
    assert _stop_time(bed, t0 + 2.0) == pytest.approx(t0 + 0.375 + 0.175, abs=1e-9)


@pytest.mark.parametrize("late", [Hand.LEFT, Hand.RIGHT])
def test_sr8_a_late_release_while_the_other_sensor_fell_silent_counts_from_the_silence(
    late: Hand,
) -> None:
    """The other hand's sensor went silent (lost at its time-out); the late release came before
    that: both hands are lost only from the silence, and counted from then."""
    bed = Bed()
    bed.start()
    t0 = bed.t  # both grips read held at t0
    bed.send(GripReading(t0 + 0.25, late, True))
    bed.send(FallReading(t0 + 0.25, False))
    bed.send(DriveFeedback(t0 + 0.25, bed.speed))
    bed.send(Tick(t0 + 0.5625))  # the other's sensor silent since t0 + 0.5
    d = bed.send(GripReading(t0 + 0.375, late, False))
    assert not d.emergency_stop
    bed.t = t0 + 0.5625
    # Lost from t0 + 0.5: 62.5 ms taken for held, counted up twice: 125 ms, 175 ms to go.
    stop = _stop_time(bed, t0 + 2.0, cause="sensor_stale")
    assert stop == pytest.approx(t0 + 0.5625 + 0.175, abs=1e-8)


def test_sr8_a_late_release_of_a_hand_already_lost_adds_nothing() -> None:
    bed = Bed()
    bed.start()
    t0 = bed.t
    for hand in Hand:
        bed.send(GripReading(t0 + 0.125, hand, False))
    bed.send(Tick(t0 + 0.25))
    bed.send(GripReading(t0 + 0.1875, Hand.LEFT, False))  # late, but both were lost already
    bed.t = t0 + 0.25
    assert _stop_time(bed, t0 + 2.0) == pytest.approx(t0 + 0.125 + DEBOUNCE_S, abs=1e-9)


# --------------------------------------------------------------------------- a new core


def _core(**settings: object) -> SafetyCore:
    return SafetyCore(
        SafetyLimits(),
        load_programs(PROGRAMS_DIR),
        default_program=str(settings.pop("default_program", "first_session")),
        **settings,  # type: ignore[arg-type]
    )


def test_a_core_refuses_to_be_built_around_a_program_it_does_not_have() -> None:
    with pytest.raises(ValueError, match=r"^default program 'nope' is not among the programs$"):
        _core(default_program="nope")
    with pytest.raises(ValueError, match=r"^program 'nope' is not among the programs$"):
        _core(returning_program="nope")
    assert _core(returning_program="reverse_walking").snapshot().state is State.IDLE


def test_a_new_cores_clock_starts_at_0_and_nothing_is_latched_or_pending() -> None:
    core = _core(commissioned_until=math.inf)
    d = core.handle(EStop(0.5))
    (estop,) = [e for e in d.events if e.type is EventType.ESTOP]
    assert estop.t == 0.5
    core = _core()
    snap = core.snapshot()
    assert (snap.state, snap.commanded_mph, snap.target_mph, snap.latched) == (
        State.IDLE,
        0.0,
        0.0,
        None,
    )
    assert snap.stop_watch is not None
    assert not snap.stop_watch.fault_pending
    # No commissioning on record has nothing to expire.
    assert core.handle(Tick(1.0)).events == ()


@pytest.mark.parametrize("until", [math.nan, -math.inf])
def test_sr3_a_commissioning_that_expires_at_no_time_is_no_commissioning(until: float) -> None:
    world = _world(commissioned_until=until)
    refused = refusal(world.start())
    assert refused.message.startswith("cannot start: the treadmill is not commissioned")


def test_sr9_a_first_drive_status_stamped_at_no_time_is_no_status() -> None:
    world = _world()
    world.silent.add("drive")
    world.run(1.0)
    d = world.send(DriveFeedback(math.nan, 0.0))
    assert d.events == ()
    refused = refusal(world.start())
    assert refused.message == "cannot start: drive is not answering"


def test_sr6_a_drive_that_failed_before_it_ever_answered_healthy_is_not_cleared() -> None:
    world = _world()
    world.silent.add("drive")
    world.run(1.0)
    world.send(DriveError(world.t, DriveFailure.LINK, "port closed"))
    refused = refusal(world.command(Reset))
    assert refused.message == (
        "cannot reset: drive is not answering, standstill cannot be confirmed; "
        "drive has not reported a healthy status since its fault"
    )


# --------------------------------------------------------------------------- SR-3: preconditions


def _unmet(change: Callable[[World], None]) -> str:
    world = _world()
    change(world)
    world.run(1.0)
    return refusal(world.start()).message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.silent.add("left"), "cannot start: left grip sensor has no fresh reading"),
        (
            lambda w: w.hold.update({Hand.RIGHT: False}),
            "cannot start: right hand is not on the handrail",
        ),
        (lambda w: w.silent.add("fall"), "cannot start: fall sensor has no fresh reading"),
        (lambda w: setattr(w, "fallen", True), "cannot start: a fall is signalled"),
        (lambda w: setattr(w, "belt", 0.3), "cannot start: belt is not at standstill"),
    ],
)
def test_sr3_a_refused_start_names_the_precondition_that_failed(
    change: Callable[[World], None], message: str
) -> None:
    assert _unmet(change) == message


def test_sr3_a_refused_start_names_every_precondition_that_failed() -> None:
    """The journal failed while an emergency stop was latched (its first cause stands, and the
    reset clears that); the start after it finds it still unwritable, with four more."""
    world = _world()
    world.command(EStop)
    world.send(JournalHealth(world.t, writable=False, detail="disk full"))
    world.run(0.5)
    assert isinstance(world.command(Reset).reply, Accepted)
    world.silent |= {"left", "fall", "drive"}
    world.hold[Hand.RIGHT] = False
    world.run(1.0)
    assert refusal(world.start()).message == (
        "cannot start: left grip sensor has no fresh reading; right hand is not on the "
        "handrail; fall sensor has no fresh reading; drive is not answering; the session "
        "journal cannot be written (disk full)"
    )


def test_sr3_the_belt_starts_exactly_when_the_countdown_ends() -> None:
    bed = Bed()
    bed.run(1.0)
    t_start = bed.t
    assert isinstance(bed.send(StartSession(t_start, "pat")).reply, Accepted)
    bed.run(COUNTDOWN_S + 1.0)
    ((_, countdown, _),) = bed.of(EventType.COUNTDOWN)
    assert countdown.fields == {"seconds": COUNTDOWN_S}
    ((t_belt, started, _),) = bed.of(EventType.BELT_STARTED)
    assert t_belt == t_start + COUNTDOWN_S
    assert started.fields == {"target_mph": 0.8, "interval": 1}


def test_sr1_a_speed_set_during_an_interval_applies_at_once() -> None:
    world = World("intervals")
    world.run(1.0)
    world.start()
    world.run(COUNTDOWN_S + 10.0)
    assert world.commanded == pytest.approx(INTERVALS_START_MPH)
    assert isinstance(world.command(lambda t: SetSpeed(t, 1.2)).reply, Accepted)
    world.run(2.0)
    assert world.commanded == pytest.approx(1.2)


def test_sr12_sr14_a_remote_estop_says_so() -> None:
    world = at_speed(1.0)
    d = world.command(EStop)
    assert [(e.type, e.fields) for e in d.events if e.type is EventType.ESTOP] == [
        (EventType.ESTOP, {"cause": "remote_estop", "detail": "estop command"})
    ]


# --------------------------------------------------------------------------- faults in words


def _fault_fields(world: World, inp: Input) -> dict[str, object]:
    d = world.send(inp)
    assert d.emergency_stop
    (fault,) = [e for e in d.events if e.type is EventType.FAULT]
    return dict(fault.fields)


def test_sr9_sr14_a_fault_says_its_cause_and_what_the_drive_or_the_journal_said() -> None:
    world = at_speed(1.0)
    t = world.t + 0.01
    assert _fault_fields(world, DriveFeedback(t, 1.0, DriveFailure.FAULT, "error 7")) == {
        "cause": "drive_fault",
        "detail": "error 7",
    }
    world = at_speed(1.0)
    assert _fault_fields(world, DriveFeedback(world.t + 0.01, 1.0, DriveFailure.FAULT)) == {
        "cause": "drive_fault",
        "detail": "drive_fault",
    }
    world = at_speed(1.0)
    assert _fault_fields(world, DriveError(world.t + 0.01, DriveFailure.LINK, "timeout")) == {
        "cause": "drive_link",
        "detail": "timeout",
    }
    world = at_speed(1.0)
    assert _fault_fields(world, JournalHealth(world.t + 0.01, False, "disk full")) == {
        "cause": "journal",
        "detail": "journal: disk full",
    }
    world = at_speed(1.0)
    assert _fault_fields(world, RivalDaemon(world.t + 0.01)) == {
        "cause": "rival_daemon",
        "detail": "another daemon",
    }
    world = at_speed(1.0)
    assert _fault_fields(world, RivalDaemon(world.t + 0.01, "session taken over")) == {
        "cause": "rival_daemon",
        "detail": "session taken over",
    }


def test_sr14_an_unwritable_journal_with_no_reason_given_says_it_cannot_be_written() -> None:
    world = _world()
    world.command(EStop)
    world.send(JournalHealth(world.t, writable=False))
    world.run(0.5)
    assert isinstance(world.command(Reset).reply, Accepted)
    assert refusal(world.start()).message == (
        "cannot start: the session journal cannot be written (cannot be written)"
    )


def test_sr6_a_drive_fault_reported_twice_at_the_same_time_is_a_fault() -> None:
    """Two statuses stamped alike: the later one is the drive's word."""
    world = _world()
    world.silent.add("drive")
    t = world.t + 0.01
    world.send(DriveFeedback(t, 0.0))
    d = world.send(DriveFeedback(t, 0.0, DriveFailure.FAULT, "error 7"))
    assert d.state is State.FAULT


def test_sr11_a_belt_at_the_standstill_bound_at_start_up_is_not_found_moving() -> None:
    core = _core(commissioned_until=math.inf)
    assert core.handle(DriveFeedback(0.1, STANDSTILL_MPH)).events == ()
    core = _core(commissioned_until=math.inf)
    (found,) = core.handle(DriveFeedback(0.1, -0.5)).events
    assert (found.type, found.fields) == (EventType.BELT_FOUND_MOVING, {"speed_mph": 0.5})


def test_sr9_a_stop_under_way_when_the_drive_fails_says_how_it_failed() -> None:
    bench = Bench()
    bench.start()
    bench.submit(EStop(bench.t))
    bench.submit(DriveError(bench.t + 0.01, DriveFailure.LINK, "port closed"))
    (checked,) = bench.of(EventType.STOP_CHECKED)
    assert (checked.fields["verdict"], checked.fields["why"]) == (
        "interrupted",
        "the drive failed (drive_link)",
    )


def test_sr6_a_worn_brake_of_an_unknown_kind_on_record_counts_as_the_emergency_stops() -> None:
    """Fail closed: only a new emergency-stop baseline clears it."""
    world = _world()
    world.send(BrakeFaultOnRecord(world.t, "sideways", "slow twice"))
    world.core.set_stop_baselines({StopKind.CONTROLLED: CONTROLLED})
    world.run(0.5)
    assert "commission the treadmill again" in refusal(world.command(Reset)).message
    world.core.set_stop_baselines({StopKind.EMERGENCY: EMERGENCY})
    world.run(0.5)
    assert isinstance(world.command(Reset).reply, Accepted)


def test_sr3_a_commissioning_heard_of_later_says_until_when_and_why_not() -> None:
    world = _world(commissioned_until=None)
    world.send(Commissioning(world.t, until=math.nan, detail="record unreadable"))
    assert refusal(world.start()).message.startswith(
        "cannot start: the treadmill is not commissioned (record unreadable)"
    )
    world.send(Commissioning(world.t, until=None))
    assert refusal(world.start()).message.startswith(
        "cannot start: the treadmill is not commissioned (no passed commissioning on record)"
    )
    assert not world.events(EventType.COMMISSIONING_EXPIRED)
    expires = world.t + 2.0
    world.send(Commissioning(world.t, until=expires, detail="passed on 2026-12-01"))
    assert isinstance(world.start().reply, Accepted)
    world.command(Stop)
    world.run(3.0)
    ((t_expired, expired),) = [
        (inp.t, e)
        for inp, d in world.log
        for e in d.events
        if e.type is EventType.COMMISSIONING_EXPIRED
    ]
    assert t_expired >= expires
    assert expired.fields == {"detail": "passed on 2026-12-01"}
    assert refusal(world.start()).message.startswith(
        "cannot start: the treadmill's commissioning expired (passed on 2026-12-01)"
    )
    # A new commissioning that expires in turn is said again.
    world.send(Commissioning(world.t, until=world.t + 1.0, detail="passed again"))
    world.run(2.0)
    assert [e.fields for e in world.events(EventType.COMMISSIONING_EXPIRED)] == [
        {"detail": "passed on 2026-12-01"},
        {"detail": "passed again"},
    ]


def test_sr2_a_decision_gives_the_rate_the_command_changes_at() -> None:
    world = _world()
    world.start()
    world.run(COUNTDOWN_S + 1.0)
    ramp_up = world.send(Tick(world.t))
    assert ramp_up.rate_mph_s == LIMITS.accel_mph_s
    world.run(10.0)
    world.command(Stop)
    assert world.send(Tick(world.t)).rate_mph_s == LIMITS.decel_mph_s


@pytest.mark.parametrize(
    ("source", "event", "cause"),
    [
        ("drive", EventType.FAULT, "drive_link"),
        ("fall", EventType.ESTOP, "sensor_stale"),
    ],
)
def test_sr8_sr9_a_source_silent_for_exactly_its_time_out_is_lost_then(
    source: str, event: EventType, cause: str
) -> None:
    """Woken at its own deadline, the core stops the belt at the time-out to the instant."""
    bed = Bed()
    bed.start()
    last = bed.t
    bed.silent.add(source)
    bed.run(2.0)
    ((t_stop, stop, _),) = bed.of(event)
    assert stop.fields["cause"] == cause
    assert t_stop == last + 0.5


def test_sr10_a_stop_ends_the_session_only_once_the_belt_is_at_standstill() -> None:
    """The belt lags the command down; at the standstill bound it counts as stopped."""
    world = at_speed(1.0)
    world.command(Stop)
    world.run(5.0, until=lambda: world.commanded < 0.5)
    world.belt = 0.3
    world.run(5.0, until=lambda: world.commanded == 0.0)
    world.run(1.0)
    assert world.state is State.STOPPING
    world.belt = STANDSTILL_MPH
    world.run(0.1)
    assert world.state is State.IDLE  # type: ignore[comparison-overlap]  # it moved on
    (ended,) = world.events(EventType.SESSION_ENDED)
    assert ended.fields["reason"] == "operator_stop"


def test_sr12_a_tablet_that_falls_silent_during_a_rest_ends_the_session_before_it_starts() -> None:
    world = World("intervals")
    _resting(world)
    mark = len(world.log)
    world.silent.add("tablet")
    world.run(HEARTBEAT_GRACE_S + 2.0)
    (ended,) = world.events(EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == "tablet_lost"
    assert world.state is State.IDLE
    assert not world.events(EventType.BELT_STARTED, mark)


# --------------------------------------------------------------------------- the yardstick


@pytest.mark.parametrize("ramp", [None, math.nan, math.inf, 0.0, -0.2, 0.38, 0.5])
def test_a_controlled_stop_is_judged_against_its_baseline_unless_the_ramp_is_gentler(
    ramp: float | None,
) -> None:
    """No ramp, one that is no number or not above 0, or one at least as steep as the
    baseline's deceleration: the baseline itself."""
    assert yardstick(CONTROLLED, ramp) == CONTROLLED


def test_a_controlled_stop_under_a_gentler_ramp_is_judged_against_the_ramp() -> None:
    judged = yardstick(CONTROLLED, 0.2)
    assert (judged.kind, judged.deceleration_mph_per_s) == (StopKind.CONTROLLED, 0.2)
    # An emergency stop does not follow the ramp.
    assert yardstick(EMERGENCY, 0.2) == EMERGENCY


@pytest.mark.parametrize("bad", [0.0, -0.25, math.inf])
def test_a_baseline_time_that_is_no_time_is_refused_as_such(bad: float) -> None:
    """Zero, negative or endless: refused for what it is, not for the speed it implies."""
    for baseline in (
        StopBaseline(StopKind.EMERGENCY, bad, 3.2),
        StopBaseline(StopKind.EMERGENCY, 0.25, bad),
    ):
        with pytest.raises(ValueError, match=r"must be finite and > 0, not"):
            StopWatch().set_baselines({StopKind.EMERGENCY: baseline})


def test_a_stop_exactly_at_the_margin_is_not_slow() -> None:
    """Slow means slower than the baseline by more than the margin (0.25 here: 2.0 mph/s
    against 2.5 mph/s is exactly at it)."""
    w = StopWatch(0.25)
    w.set_baselines({StopKind.EMERGENCY: StopBaseline(StopKind.EMERGENCY, 0.4, 2.5)})
    assert w.judge(StopMeasurement(StopKind.EMERGENCY, 1.0, 0.5)).verdict is Verdict.GOOD
    w = StopWatch(0.25)
    w.set_baselines({StopKind.EMERGENCY: StopBaseline(StopKind.EMERGENCY, 0.4, 2.5)})
    assert w.judge(StopMeasurement(StopKind.EMERGENCY, 1.0, 0.5 + 1e-6)).verdict is Verdict.SLOW


def test_sr7_an_intervals_session_shorter_than_two_intervals_has_one() -> None:
    world = World()
    short = world.programs["intervals"].model_copy(
        update={"name": "short_intervals", "cap_s_min": 60.0, "cap_s_default": 90.0}
    )
    world.core = SafetyCore(
        SafetyLimits(),
        {**world.programs, "short_intervals": short},
        default_program="first_session",
        commissioned_until=math.inf,
    )
    world.run(1.0)
    assert isinstance(world.start(program="short_intervals", returning=True).reply, Accepted)
    session = world.core.snapshot().session
    assert session is not None
    assert (session.interval, session.intervals) == (1, 1)


def test_a_baseline_from_either_end_of_the_proof_speeds_is_accepted() -> None:
    """A proof stop is made from 0.5-12 mph, both ends included (0.25 s at 2 mph/s is a stop
    from 0.5 mph; 3 s at 4 mph/s one from 12 mph)."""
    for standstill_s, decel in ((0.25, 2.0), (3.0, 4.0)):
        baseline = StopBaseline(StopKind.EMERGENCY, standstill_s, decel)
        w = StopWatch()
        w.set_baselines({StopKind.EMERGENCY: baseline})
        assert w.baselines == {StopKind.EMERGENCY: baseline}


def test_sr15_a_stop_with_no_session_is_refused_with_its_reason() -> None:
    world = _world()
    refused = refusal(world.command(Stop))
    assert (refused.code, refused.message) == (RefusalCode.NOT_ALLOWED, "no session to stop (idle)")


def test_sr7_the_tablet_is_shown_the_belt_time_left_down_to_the_last_half_second() -> None:
    """With the smallest stop margin (0.5 s) the session, on a clock of quarter seconds, shows
    down to 0.5 s of the cap left during the cap stop from 0.8 mph, and ends within the cap."""
    bed = Bed(cap_stop_margin_s=0.5)
    bed.start()
    shown: list[float] = []
    for _ in range(20_000):  # bounded: a stop that never ends fails the test, never hangs it
        if bed.core.state is State.IDLE:
            break
        bed.tick()
        session = bed.core.snapshot().session
        if session is not None:
            shown.append(session.remaining_s)
    assert bed.core.state is State.IDLE
    assert min(shown) == 0.5
    ((_, ended, _),) = bed.of(EventType.SESSION_ENDED)
    assert float(ended.fields["belt_moving_s"] or 0) < FIRST_CAP_MIN


def test_a_controlled_stop_timed_on_through_a_feedback_mismatch_is_judged() -> None:
    """A worn brake lags a controlled stop from 1.0 mph so far that the feedback check latches
    a mismatch before the stop is over: that is the stop being slow, timed on and judged."""
    bench = Bench(wear=0.85)
    bench.start(target=1.0)
    assert isinstance(bench.submit(Stop(bench.t)), Accepted)
    bench.run(8.0)
    faults = [e.fields["cause"] for e in bench.of(EventType.FAULT)]
    assert faults == ["feedback_mismatch"]
    (checked,) = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["verdict"] == "slow"
    assert bench.of(EventType.FAULT)[0].t < checked.t  # the latch came first


def test_a_controlled_stop_cut_short_by_a_lost_drive_link_says_why_it_was_not_timed() -> None:
    bench = Bench()
    bench.start()
    assert isinstance(bench.submit(Stop(bench.t)), Accepted)
    bench.run(0.2)
    bench.submit(DriveError(bench.t + 0.01, DriveFailure.LINK, "port closed"))
    (checked,) = bench.of(EventType.STOP_CHECKED)
    assert checked.fields["verdict"] == "interrupted"
    assert "drive_link" in str(checked.fields["why"])


def test_the_snapshot_shows_the_watchs_margin_and_the_stop_being_timed() -> None:
    bench = Bench()
    bench.start()
    view = bench.core.snapshot().stop_watch
    assert view is not None
    assert (view.margin, view.timing) == (0.3, None)
    bench.submit(EStop(bench.t))
    view = bench.core.snapshot().stop_watch
    assert view is not None
    assert view.timing is StopKind.EMERGENCY
    bench.run(2.0)
    view = bench.core.snapshot().stop_watch
    assert view is not None
    assert (view.timing, view.last) == (None, {StopKind.EMERGENCY: "good"})


def test_sr14_a_sessions_belt_time_is_recorded_to_the_millisecond() -> None:
    """On a clock of sixteenths of a second belt times end in 0.0625: recorded to the ms."""
    bed = Bed(step=0.0625)
    bed.start()
    bed.run(1.0625)
    bed.send(Stop(bed.t))
    bed.run(5.0, until=lambda: bed.core.state is State.IDLE)
    ((_, ended, _),) = bed.of(EventType.SESSION_ENDED)
    moving = float(ended.fields["belt_moving_s"] or 0)
    assert moving == round(moving, 3)
    assert moving > 1.0


def test_a_stop_from_below_the_measured_speeds_is_not_judged_and_keeps_the_run() -> None:
    """An emergency stop during the ramp up (the belt at about 0.26 mph, below 0.5): no
    verdict, no expected time, the baseline it would have been judged by, and the run of slow
    stops as it stood (one, from the worn brake's first stop)."""
    bench = Bench(wear=0.6)
    bench.start()
    bench.estop()
    assert isinstance(bench.reset(), Accepted)
    bench.run(0.2)
    assert isinstance(bench.submit(StartSession(bench.t, "p-1")), Accepted)
    bench.run(COUNTDOWN_S + 1.5)
    assert 0.0 < bench.belt.speed_mph < 0.5
    bench.estop()
    checked = bench.of(EventType.STOP_CHECKED)[-1]
    assert checked.fields["verdict"] == "below_min_speed"
    assert checked.fields["expected_standstill_s"] is None
    assert checked.fields["baseline_deceleration_mph_per_s"] == EMERGENCY.deceleration_mph_per_s
    assert checked.fields["slow_in_a_row"] == 1


def test_sr7_the_cap_warning_says_the_belt_time_left_to_the_millisecond() -> None:
    """A cap of 180.0625 s on a clock of quarter seconds: the warning comes at the first belt
    time at or past 150.0625 s, 150.25 s, with 29.8125 s left, said to the millisecond."""
    bed = Bed()
    bed.start(cap_s=180.0625)
    bed.run(160.0)
    ((_, warning, warned_at),) = bed.of(EventType.CAP_WARNING)
    assert warned_at == 150.25
    remaining = float(warning.fields["remaining_s"] or 0)
    assert remaining == round(remaining, 3)
    assert remaining == pytest.approx(29.8125, abs=0.0005)


def test_sr7_the_first_session_limit_holds_for_a_first_session_program_whoever_starts_it() -> None:
    """A first-session program that slipped past the loader with an 8-minute cap (the core
    must hold SR-7 by itself): refused above 5 minutes even when the journal cannot say whether
    the user is new; a returning user's reverse walking keeps its own 8-minute limit."""
    world = World()
    loose = _program(name="loose_first", first_session=True)
    world.core = SafetyCore(
        SafetyLimits(),
        {**world.programs, "loose_first": loose},
        default_program="first_session",
        commissioned_until=math.inf,
    )
    world.run(1.0)
    refused = refusal(world.start(program="loose_first", cap_s=360.0))
    assert (
        refused.message == "cap_s 360 is above the first-session hard limit of 300 s of belt time"
    )
    world = _world()
    assert isinstance(
        world.start(program="reverse_walking", returning=True, cap_s=480.0).reply, Accepted
    )


# --------------------------------------------------------------------------- drive statuses


def _idle_with(statuses: list[DriveFeedback], seconds: float = 1.0) -> World:
    """An idle world whose drive sends nothing of its own: only ``statuses``, then time."""
    world = World()
    world.silent.add("drive")
    world.run(0.5)
    for status in statuses:
        world.send(status)
    world.run(seconds)
    return world


def test_sr8_a_drive_status_stamped_not_finite_or_before_the_newest_is_no_status() -> None:
    """A status with no finite time, or older than the newest, proves nothing: the drive is
    as silent as it was, and the newest status's speed stands."""
    world = World()
    world.silent.add("drive")
    world.run(0.5)
    world.send(DriveFeedback(math.nan, 0.0))
    world.send(DriveFeedback(math.inf, 0.0))
    assert world.core.snapshot().belt_mph == math.inf  # the drive has never answered
    world.send(DriveFeedback(world.t, 0.0))
    world.send(DriveFeedback(world.t - 0.2, 1.0))  # late, and would read as moving
    start = world.start().reply
    assert isinstance(start, Accepted), start


def test_sr6_a_drive_that_reports_a_speed_that_is_no_number_cannot_be_reset() -> None:
    world = at_speed(1.0)
    world.command(EStop)
    world.belt = math.nan
    world.run(1.0)
    reset = world.command(Reset).reply
    assert isinstance(reset, Refused)
    assert reset.message == "cannot reset: belt is not at standstill"


def test_sr6_sr9_a_drive_fault_status_latches_by_its_kind_and_a_healthy_one_clears_it() -> None:
    world = _idle_with([])
    world.send(DriveFeedback(world.t, 0.0, DriveFailure.LINK, "no answer on the bus"))
    latch = world.core.latch
    assert latch is not None
    assert (latch.cause, latch.detail) == (Cause.DRIVE_LINK, "no answer on the bus")
    world.tick()
    world.send(DriveFeedback(world.t, 0.0))  # one healthy status after it is enough
    assert isinstance(world.command(Reset).reply, Accepted)


def test_sr9_the_drive_gone_silent_in_a_session_is_a_fault_in_plain_words() -> None:
    world = at_speed(1.0)
    world.silent.add("drive")
    world.run(1.0)
    latch = world.core.latch
    assert latch is not None
    assert (latch.cause, latch.detail) == (Cause.DRIVE_LINK, "no answer from the drive")


def test_sr10_a_belt_read_at_the_standstill_bound_when_stopped_is_no_mismatch() -> None:
    world = World()
    world.belt = STANDSTILL_MPH
    world.run(FEEDBACK_WINDOW_S + 1.0)
    assert world.core.latch is None
    world.belt = STANDSTILL_MPH + 0.01
    world.run(FEEDBACK_WINDOW_S + 1.0)
    latch = world.core.latch
    assert latch is not None
    assert (latch.cause, latch.detail) == (
        Cause.FEEDBACK_MISMATCH,
        "belt at 0.06 mph, commanded 0.00 mph",
    )


def test_sr6_a_worn_controlled_brake_on_record_is_cleared_by_a_new_controlled_baseline() -> None:
    world = World()
    world.run(0.5)
    world.send(BrakeFaultOnRecord(world.t, "controlled", "slow twice"))
    world.core.set_stop_baselines({StopKind.CONTROLLED: CONTROLLED})
    world.run(0.5)
    assert isinstance(world.command(Reset).reply, Accepted)


def test_a_new_stop_watch_has_counted_no_slow_stop() -> None:
    j = StopWatch().judge(StopMeasurement(StopKind.EMERGENCY, 0.8, 5.0))
    assert (j.verdict, j.slow_in_a_row) == (Verdict.NO_BASELINE, 0)


def test_the_core_says_which_decisions_changed_nothing_but_a_stamp() -> None:
    """``unchanged`` is the controller's leave to skip acting on a decision: true exactly for
    an input that changed nothing but a stamp, never for one that decided something."""
    world = at_speed(1.0)
    world.send(GripReading(world.t, Hand.LEFT, True))  # the same value, at the same time
    assert world.core.unchanged is True
    world.send(Tick(world.t + 0.01))
    assert world.core.unchanged is False
    d = world.command(EStop)
    assert d.emergency_stop
    assert world.core.unchanged is False


def test_sr6_a_healthy_status_stamped_with_the_fault_s_own_time_does_not_clear_it() -> None:
    """Cleared means a status read after the fault that reports none: one with the fault's own
    stamp is not after it."""
    world = _idle_with([])
    world.send(DriveFeedback(world.t, 0.0, DriveFailure.FAULT, "overcurrent"))
    world.send(DriveFeedback(world.t, 0.0))
    reset = world.command(Reset).reply
    assert isinstance(reset, Refused)
    assert reset.message == "cannot reset: drive has not reported a healthy status since its fault"


# --------------------------------------------------------------------------- edges found later
# Each of these was once listed as an equivalent mutant; an input tells it apart after all.


def test_sr11_a_first_drive_status_without_a_time_says_no_belt_is_moving() -> None:
    """A first status whose time is not a number is no status: no belt found moving is said
    from a speed nobody reported (and the core does not fail on the value it starts from)."""
    world = World()
    d = world.send(DriveFeedback(math.nan, 0.0))
    assert [e.type for e in d.events if e.type is EventType.BELT_FOUND_MOVING] == []
    d = world.send(DriveFeedback(math.nan, 1.0))
    assert [e.type for e in d.events if e.type is EventType.BELT_FOUND_MOVING] == []


def test_sr1_a_program_without_steps_never_steps_a_target_finer_than_its_grid() -> None:
    """The first-session program has no steps: a start target of 0.8006 mph stays 0.8006,
    never rounded to the step's grid (0.801) by a step of 0 mph."""
    world = running_world("first_session", target_mph=0.8006)
    world.run(5.0)
    assert world.events(EventType.SPEED_STEP) == []
    assert world.core.snapshot().target_mph == 0.8006


@pytest.mark.parametrize("start_ms", [1400, 1150, 1650])
def test_sr3_a_hand_let_go_at_the_countdowns_first_instant_aborts_the_start(start_ms: int) -> None:
    """At these start times (t + 3.0) - t is a hair above 3.0 in floats: the countdown is not
    "final from its first moment", and a release then must still abort the start, even if
    the hand is back at the next reading."""
    world = World()
    world.run(start_ms / 1000.0)
    t = world.t
    assert isinstance(world.send(StartSession(t, "pat")).reply, Accepted)
    d = world.send(GripReading(t, Hand.LEFT, False))
    assert EventType.SESSION_ENDED in [e.type for e in d.events]
    world.run(COUNTDOWN_S + 1.0)  # the hand is back on at the next reading
    assert world.events(EventType.BELT_STARTED) == []
    assert world.state is State.IDLE


def test_sr3_the_countdown_ends_within_the_time_tolerance_of_its_end() -> None:
    """The core compares times within 1 ns (safety/core.py, _EPS): inputs 1 ns before the
    countdown's end are at its end."""
    world = World()
    world.run(1.0)
    start = world.t
    assert isinstance(world.send(StartSession(start, "pat")).reply, Accepted)
    world.run(COUNTDOWN_S - 0.05)
    t = (start + COUNTDOWN_S) - 1e-9
    assert world.t < t
    for hand in (Hand.LEFT, Hand.RIGHT):
        world.send(GripReading(t, hand, True))
    world.send(FallReading(t, False))
    world.send(DriveFeedback(t, 0.0))
    world.send(Tick(t))
    assert world.state is State.RUNNING


def test_sr9_a_drive_silent_for_its_time_out_within_the_tolerance_is_a_lost_link() -> None:
    """Times near 0 (the daemon's clock starts there), where 1 ns is seen: a drive silent for
    drive_timeout_s less 1 ns is silent for its time-out."""
    core = _near_zero_core()

    def sensors(t: float) -> None:
        _fresh_sensors(core, t)

    sensors(-0.5)
    core.handle(DriveFeedback(-0.5, 0.0))
    assert isinstance(core.handle(StartSession(-0.5, "pat")).reply, Accepted)
    sensors(-0.25)
    core.handle(DriveFeedback(-0.25, 0.0))
    core.handle(DriveFeedback(0.0, 0.0))
    sensors(0.0)
    sensors(0.25)
    assert core.state is State.COUNTDOWN
    t = DRIVE_TIMEOUT_S - 1e-9
    assert t - 0.0 == DRIVE_TIMEOUT_S - 1e-9  # exact here, where it would round away later
    d = core.handle(Tick(t))
    assert d.emergency_stop
    assert core.snapshot().state is State.FAULT


def test_stop_watch_a_stop_from_no_known_speed_expects_no_time() -> None:
    """A stop whose speed at the trigger is not a number has no expected standstill time
    (NaN: nothing to compare with), never an infinite one."""
    watch = StopWatch()
    watch.set_baselines({StopKind.EMERGENCY: StopBaseline(StopKind.EMERGENCY, 1.0, 1.0)})
    judged = watch.judge(StopMeasurement(StopKind.EMERGENCY, math.inf, 2.0))
    assert math.isnan(judged.expected_standstill_s)
    judged = watch.judge(StopMeasurement(StopKind.EMERGENCY, math.nan, 2.0))
    assert math.isnan(judged.expected_standstill_s)


def test_stop_watch_the_yardstick_under_a_gentler_ramp_keeps_the_proof_speed() -> None:
    """A controlled stop proved from 1.2 mph (2.0 s at 0.6 mph/s), judged under a ramp of
    0.4 mph/s: the same 1.2 mph brought down by the ramp, 3.0 s."""
    proof = StopBaseline(StopKind.CONTROLLED, 2.0, 0.6)
    assert yardstick(proof, 0.4) == StopBaseline(StopKind.CONTROLLED, 1.2 / 0.4, 0.4)
    watch = StopWatch()
    watch.set_baselines({StopKind.CONTROLLED: proof})
    assert watch.baseline(StopKind.CONTROLLED, 0.4) == StopBaseline(
        StopKind.CONTROLLED, 1.2 / 0.4, 0.4
    )
    assert watch.baseline(StopKind.CONTROLLED, 0.6) == proof  # not gentler: the proof itself


def test_a_repeated_drive_status_changes_nothing_but_its_stamp() -> None:
    """The controller acts on ``unchanged`` (it skips the drive's command and the deadline): a
    drive status that repeats the last one's speed at a settled instant changes nothing but
    its stamp, and one with another speed is not such a status."""
    world = running_world()
    world.run(1.0)
    t = world.t
    last = [inp for inp, _ in world.log if isinstance(inp, DriveFeedback)][-1]
    speed = last.speed_mph  # the drive's last status, which this one repeats
    world.send(Tick(t))  # a settled pass at t
    world.send(DriveFeedback(t, speed))
    assert world.core.unchanged is True
    world.send(DriveFeedback(t, speed + 0.1))
    assert world.core.unchanged is False


def test_a_drive_status_at_its_time_out_within_the_tolerance_is_a_change() -> None:
    """Idle, the drive silent for its time-out less 1 ns (at its time-out, by the core's
    tolerance), so not fresh: a status then freshens it, and the decision is not one that
    changed nothing but a stamp (the control loop would skip what it does for a change)."""
    core = _near_zero_core()

    def sensors(t: float) -> None:
        _fresh_sensors(core, t)

    core.handle(DriveFeedback(0.0, 0.0))
    sensors(0.0)
    sensors(0.25)
    t = DRIVE_TIMEOUT_S - 1e-9
    assert t - 0.0 == DRIVE_TIMEOUT_S - 1e-9  # exact here
    core.handle(Tick(t))  # a settled pass: idle, nothing to do
    assert core.snapshot().state is State.IDLE
    core.handle(DriveFeedback(t, 0.0))
    assert core.unchanged is False


# --------------------------------------------------------------------------- sensors going stale


def _near_zero_core() -> SafetyCore:
    """A core whose clock starts before 0, for inputs at times near 0, where 1 ns is exact."""
    return SafetyCore(
        SafetyLimits(),
        load_programs(PROGRAMS_DIR),
        default_program="first_session",
        t0=-1.0,
        commissioned_until=math.inf,
    )


def _fresh_sensors(core: SafetyCore, t: float) -> None:
    core.handle(FallReading(t, False))
    for hand in (Hand.LEFT, Hand.RIGHT):
        core.handle(GripReading(t, hand, True))


def _stale_said(d: Decision) -> list[dict[str, object]]:
    return [dict(e.fields) for e in d.events if e.type is EventType.SENSOR_STALE]


def test_sr8_a_sensor_gone_silent_is_said_once_by_name_and_again_after_it_came_back() -> None:
    """Idle: the left grip falls silent. sensor_stale names it once (not on every input after);
    once it reports again and falls silent again, it is said again. A sensor never heard is
    never said to be stale."""
    world = World()
    world.run(1.0)
    for _ in range(2):
        world.silent = {"left"}
        world.run(2.0)
        world.silent = set()
        world.run(1.0)
    assert [dict(e.fields) for e in world.events(EventType.SENSOR_STALE)] == [
        {"sensor": Sensor.GRIP_LEFT.value}
    ] * 2
    never = World()
    never.silent = {"fall"}
    never.run(2.0)
    assert never.events(EventType.SENSOR_STALE) == []


def test_sr8_a_reading_is_stale_at_its_time_out_within_the_tolerance() -> None:
    """sensor_timeout_s less 1 ns after its reading (exact near 0), a sensor is stale: at its
    time-out, by the core's tolerance."""
    core = _near_zero_core()
    core.handle(GripReading(0.0, Hand.LEFT, True))
    assert _stale_said(core.handle(Tick(SENSOR_TIMEOUT_S - 1e-6))) == []
    t = SENSOR_TIMEOUT_S - 1e-9
    assert t - 0.0 == SENSOR_TIMEOUT_S - 1e-9
    assert _stale_said(core.handle(Tick(t))) == [{"sensor": Sensor.GRIP_LEFT.value}]


def test_a_reading_at_its_sensors_time_out_within_the_tolerance_is_a_change() -> None:
    """A grip reading repeating the last one's value when that one is at its time-out (less
    1 ns: at it, by the core's tolerance) freshens the sensor: not a decision that changed
    nothing but a stamp."""
    core = _near_zero_core()
    core.handle(GripReading(0.0, Hand.LEFT, True))
    t = SENSOR_TIMEOUT_S - 1e-9
    assert t - 0.0 == SENSOR_TIMEOUT_S - 1e-9  # exact here
    core.handle(Tick(t))  # a settled pass
    core.handle(GripReading(t, Hand.LEFT, True))
    assert core.unchanged is False


# --------------------------------------------------------------------------- the drive's speed


def test_sr10_a_belt_moving_against_a_stop_for_the_window_within_the_tolerance_faults() -> None:
    """Idle, commanded 0, the drive reporting 1 mph from t = 0: a mismatch for
    feedback_window_s less 1 ns (exact near 0) is a mismatch for the window."""
    core = _near_zero_core()
    t = 0.0
    while t < FEEDBACK_WINDOW_S - 0.2:  # fresh statuses and sensors all the way
        core.handle(DriveFeedback(t, 1.0))
        core.handle(FallReading(t, False))
        for hand in (Hand.LEFT, Hand.RIGHT):
            core.handle(GripReading(t, hand, True))
        t += 0.25
    assert core.snapshot().state is State.IDLE
    end = FEEDBACK_WINDOW_S - 1e-9
    assert end - 0.0 == FEEDBACK_WINDOW_S - 1e-9
    core.handle(DriveFeedback(end, 1.0))
    assert core.snapshot().state is State.FAULT


# --------------------------------------------------------------------------- decisions' fields


def test_every_decision_says_the_ramp_rate_the_drive_should_use() -> None:
    """A decision's rate is the acceleration while the belt is asked to speed up, and the
    deceleration otherwise (at speed: the rate of whatever comes next, a stop), in decisions
    with events and in quiet ones alike; a quiet one's emergency_stop is False, not None."""
    limits = SafetyLimits()
    world = World()
    world.run(1.0)
    start = world.start()
    assert start.rate_mph_s == limits.decel_mph_s  # standing, the countdown ahead
    world.run(COUNTDOWN_S + 0.5)
    ramping = world.log[-1][1]
    assert world.core.snapshot().target_mph > ramping.speed_mph
    assert ramping.rate_mph_s == limits.accel_mph_s
    world.run(10.0)
    steady = world.log[-1][1]
    assert steady.speed_mph == steady.target_mph
    assert steady.events == ()
    assert steady.rate_mph_s == limits.decel_mph_s
    assert steady.emergency_stop is False
    stop = world.command(lambda t: Stop(t))
    assert stop.events
    assert stop.rate_mph_s == limits.decel_mph_s


def test_a_heartbeat_is_answered_though_it_changes_nothing() -> None:
    world = World()
    world.run(1.0)
    d = world.send(Heartbeat(world.t))
    assert d.events == ()
    assert isinstance(d.reply, Accepted)


def test_sr13_a_commissioning_that_expires_is_said_once() -> None:
    """A commissioning current until t + 1 s: commissioning_expired once it has passed, once;
    a commissioning given as already expired is said too."""
    world = World()
    world.run(0.5)
    world.send(Commissioning(world.t, until=world.t + 1.0, detail="passed, until soon"))
    world.run(2.0)
    assert len(world.events(EventType.COMMISSIONING_EXPIRED)) == 1
    world.run(1.0)
    assert len(world.events(EventType.COMMISSIONING_EXPIRED)) == 1
    expired = World()
    expired.run(0.5)
    expired.send(Commissioning(expired.t, until=expired.t - 10.0, detail="passed, long ago"))
    expired.run(0.2)
    said = expired.events(EventType.COMMISSIONING_EXPIRED)
    assert [e.fields["detail"] for e in said] == ["passed, long ago"]


# --------------------------------------------------------------------------- automatic steps


def test_sr1_an_automatic_step_due_again_is_not_skipped_by_a_repeated_reading() -> None:
    """A program stepping every 0.02 s of belt time, inputs 0.05 s apart: after a pass that
    stepped, another step is due at once; a grip reading repeating its value at that instant
    takes it (the short path for repeated readings never skips a due step)."""
    programs = load_programs(PROGRAMS_DIR)
    base = programs["reverse_walking"]
    fast = base.model_copy(update={"name": "fast_steps", "step_mph": 0.01, "step_every_s": 0.02})
    core = SafetyCore(
        SafetyLimits(),
        {**programs, "fast_steps": fast},
        default_program="fast_steps",
        commissioned_until=math.inf,
    )
    t = 0.0
    moving = False
    for _ in range(200):  # bounded: a belt that never starts fails the test, never hangs it
        if moving:
            break
        t = round(t + 0.05, 9)
        for hand in (Hand.LEFT, Hand.RIGHT):
            core.handle(GripReading(t, hand, True))
        core.handle(FallReading(t, False))
        core.handle(DriveFeedback(t, 0.0))
        core.handle(Heartbeat(t))
        if t == 0.5:
            assert isinstance(core.handle(StartSession(t, "pat", target_mph=0.8)).reply, Accepted)
        moving = core.handle(Tick(t)).speed_mph > 0
    assert moving
    t = round(t + 0.05, 9)
    core.handle(Tick(t))  # 0.05 s of belt time: a step, and another due
    steps = [
        e
        for e in core.handle(GripReading(t, Hand.LEFT, True)).events
        if e.type is EventType.SPEED_STEP
    ]
    assert len(steps) == 1


def test_sr1_a_step_due_exactly_again_is_not_skipped_by_a_repeated_reading() -> None:
    """Times in eighths of a second (exact in binary): a program stepping every 0.125 s of
    belt time, and 0.25 s between two passes, so that after the pass's step the next is due to
    the last bit (belt time equal to the next step's). A grip reading repeating its value at
    that instant takes it."""
    programs = load_programs(PROGRAMS_DIR)
    eighths = programs["reverse_walking"].model_copy(
        update={"name": "eighths", "step_mph": 0.01, "step_every_s": 0.125}
    )
    core = SafetyCore(
        SafetyLimits(),
        {**programs, "eighths": eighths},
        default_program="eighths",
        commissioned_until=math.inf,
    )

    def inputs(t: float) -> Decision:
        for hand in (Hand.LEFT, Hand.RIGHT):
            core.handle(GripReading(t, hand, True))
        core.handle(FallReading(t, False))
        core.handle(DriveFeedback(t, core.snapshot().commanded_mph))
        core.handle(Heartbeat(t))
        return core.handle(Tick(t))

    t = 0.0
    while t < 0.5:
        t += 0.125
        inputs(t)
    assert isinstance(core.handle(StartSession(t, "pat", target_mph=0.8)).reply, Accepted)
    for _ in range(80):  # bounded: a belt that never starts fails the test, never hangs it
        if inputs(t := t + 0.125).speed_mph > 0.0:
            break
    assert core.snapshot().commanded_mph > 0.0
    moving_since = t
    inputs(t := t + 0.125)  # 0.125 s of belt time: the first step, the next at 0.25
    t += 0.25  # nothing for 0.25 s (every sensor still fresh)
    core.handle(Tick(t))  # belt time 0.375: a step, and the next due at 0.375 exactly
    assert t - moving_since == 0.375
    steps = [
        e
        for e in core.handle(GripReading(t, Hand.LEFT, True)).events
        if e.type is EventType.SPEED_STEP
    ]
    assert len(steps) == 1


def test_a_quiet_decision_right_after_a_new_target_carries_that_target() -> None:
    """At speed, a lower speed is asked; a reading at the same instant (no time has passed,
    the belt's command not yet moved) is a decision with no event, and it carries the new
    target, not the one of the last such decision before the change."""
    world = at_speed(1.0)
    t = world.t
    assert isinstance(world.send(SetSpeed(t, 0.9)).reply, Accepted)
    quiet = world.send(GripReading(t, Hand.LEFT, True))
    assert quiet.events == ()
    assert quiet.reply is None
    assert quiet.target_mph == 0.9


def test_stop_watch_a_drive_that_falls_silent_during_a_stop_leaves_it_untimed_and_says_so() -> None:
    """The E-STOP timed from a fresh status; then no status at all while the control loop
    ticks on: the stop cannot be timed, and its check says why."""
    bench = Bench()
    bench.start()
    assert isinstance(bench.submit(EStop(bench.t)), Accepted)
    bench.linked = False
    bench.run(1.0)
    checked = [e for e in bench.of(EventType.STOP_CHECKED) if e.fields["verdict"] == "interrupted"]
    assert [e.fields["why"] for e in checked] == ["the drive stopped answering during the stop"]


def test_stop_watch_a_stop_from_exactly_the_lowest_measured_speed_is_judged_when_overdue() -> None:
    """MIN_MEASURED_MPH (0.5) is the lowest speed a stop is timed from, itself included: a
    belt that runs on after an E-STOP from exactly 0.5 mph is judged slow once the stop is
    overdue, not left unjudged until the drive's mismatch ends it."""
    bench = Bench()
    bench.start()
    bench.ignores = True  # the belt runs on, whatever is asked
    bench.step()
    t = bench.t
    bench.submit(DriveFeedback(t, 0.5))  # the drive's speed at the trigger
    assert isinstance(bench.submit(EStop(t)), Accepted)
    for _ in range(30):
        bench.t = round(bench.t + bench.poll_s, 9)
        bench.submit(DriveFeedback(bench.t, 0.5))
        bench.submit(Tick(bench.t))
    assert bench.verdicts()[:1] == ["slow"]


@pytest.mark.parametrize(
    ("why", "cause", "detail"),
    [
        (None, Cause.REMOTE_ESTOP, "estop command"),
        ("second signal", Cause.SHUTDOWN, "second signal"),
    ],
)
def test_an_estop_the_daemon_decides_is_recorded_as_its_own_not_the_tablets(
    why: str | None, cause: Cause, detail: str
) -> None:
    """The tablet's E-STOP is recorded as pressed on a tablet; one the daemon decided while
    shutting down says so and why, so the patient's record never blames a tablet for it."""
    core = _core(commissioned_until=math.inf)
    d = core.handle(EStop(0.5, why=why))
    (estop,) = [e for e in d.events if e.type is EventType.ESTOP]
    assert (estop.fields["cause"], estop.fields["detail"]) == (cause.value, detail)
    latch = core.snapshot().latched
    assert latch is not None
    assert latch.cause is cause
