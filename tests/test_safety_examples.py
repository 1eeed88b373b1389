"""Example tests of the safety core, one or more per requirement of docs/requirements.md.

Each test arranges a world (a user on the treadmill, sensors and drive answering every 50 ms,
a tablet sending a heartbeat every second), acts, and asserts on the decisions, events and
snapshot. Expected values come from docs/requirements.md (the constants below), not from the code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from treadguard.config.loading import ProgramError, load_program, load_programs
from treadguard.safety.core import SafetyCore, SessionView, Snapshot
from treadguard.safety.decisions import (
    Accepted,
    Cause,
    Decision,
    EndReason,
    Event,
    EventType,
    RefusalCode,
    Refused,
    State,
)
from treadguard.safety.inputs import (
    CommandLinkLost,
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
    Sensor,
    SetSpeed,
    Shutdown,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.limits import SafetyLimits
from treadguard.safety.programs import Program

PROGRAMS_DIR = Path(__file__).resolve().parents[1] / "config" / "programs"

# docs/requirements.md defaults.
BAND_MIN, BAND_MAX = 0.8, 1.2  # SR-1
ACCEL, DECEL = 0.2, 0.4  # SR-2, mph/s
COUNTDOWN_S = 3.0  # SR-3
DEBOUNCE_S = 0.3  # SR-4
CAP_WARNING_BEFORE_S = 30.0  # SR-7
FIRST_SESSION_CAP_DEFAULT_S, FIRST_SESSION_CAP_HARD_S = 3 * 60.0, 5 * 60.0  # SR-7
REVERSE_WALKING_CAP_DEFAULT_S = 5 * 60.0
SENSOR_TIMEOUT_S = 0.5  # SR-8
DRIVE_TIMEOUT_S = 0.5  # SR-9: no answer from the drive for this long is a lost link
FEEDBACK_TOLERANCE_MPH, FEEDBACK_WINDOW_S = 0.3, 2.0  # SR-10
HEARTBEAT_GRACE_S = 5.0  # SR-12

PERIOD_MS = 50  # the world: every sensor, the drive and the control loop every 50 ms
EPS = 1e-6


# --------------------------------------------------------------------------- the world


class World:
    """A treadmill, its user and the tablet around a SafetyCore, on an integer-ms clock.

    Every 50 ms: both grip readings (``hold``), a fall reading (``fallen``), drive feedback
    (the belt follows the last commanded speed, or ``belt`` if set) and a control tick; every
    second a tablet heartbeat. A source named in ``silent`` sends nothing.
    """

    def __init__(self, program: str = "first_session") -> None:
        self.programs = load_programs(PROGRAMS_DIR)
        self.core = SafetyCore(
            SafetyLimits(), self.programs, default_program=program, commissioned_until=math.inf
        )
        self.ms = 0
        self.hold = {Hand.LEFT: True, Hand.RIGHT: True}
        self.fallen = False
        self.silent: set[str] = set()
        self.belt: float | None = None
        self.commanded = 0.0
        self.log: list[tuple[Input, Decision]] = []
        self._next_heartbeat_ms = 0

    @property
    def t(self) -> float:
        return self.ms / 1000.0

    def send(self, inp: Input) -> Decision:
        d = self.core.handle(inp)
        self.log.append((inp, d))
        self.commanded = d.speed_mph
        return d

    def tick(self) -> None:
        self.ms += PERIOD_MS
        t = self.t
        belt = self.commanded if self.belt is None else self.belt
        for name, hand in (("left", Hand.LEFT), ("right", Hand.RIGHT)):
            if name not in self.silent:
                self.send(GripReading(t, hand, self.hold[hand]))
        if "fall" not in self.silent:
            self.send(FallReading(t, self.fallen))
        if "drive" not in self.silent:
            self.send(DriveFeedback(t, belt))
        if "tablet" not in self.silent and self.ms >= self._next_heartbeat_ms:
            self.send(Heartbeat(t))
            self._next_heartbeat_ms = self.ms + 1000
        self.send(Tick(t))

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        for _ in range(round(seconds * 1000 / PERIOD_MS)):
            self.tick()
            if until is not None and until():
                return

    def start(self, **kwargs: object) -> Decision:
        return self.send(StartSession(self.t, "pat", **kwargs))  # type: ignore[arg-type]

    def command(self, make: Callable[[float], Input]) -> Decision:
        return self.send(make(self.t))

    def events(self, type_: EventType | None = None, since: int = 0) -> list[Event]:
        return [
            e for _, d in self.log[since:] for e in d.events if type_ is None or e.type is type_
        ]

    def speeds(self, since: int = 0) -> list[tuple[float, float]]:
        return [(inp.t, d.speed_mph) for inp, d in self.log[since:]]

    def moving_s(self, since: int = 0, until: float = math.inf) -> float:
        """Belt-moving time up to ``until``: every step with a command above 0 at either end."""
        pts = [p for p in self.speeds(since) if p[0] <= until]
        return sum(t1 - t0 for (t0, v0), (t1, v1) in itertools.pairwise(pts) if v0 > 0 or v1 > 0)

    @property
    def state(self) -> State:
        return self.core.snapshot().state


def running_world(program: str = "first_session", **start: object) -> World:
    """A world whose session has started and whose belt has just begun to move."""
    world = World(program)
    world.run(1.0)
    assert isinstance(world.start(**start).reply, Accepted)
    world.run(COUNTDOWN_S + 1.0, until=lambda: world.commanded > 0)
    assert world.commanded > 0
    return world


def at_speed(mph: float, program: str = "first_session") -> World:
    world = running_world(program)
    if mph != world.core.snapshot().target_mph:
        assert isinstance(world.command(lambda t: SetSpeed(t, mph)).reply, Accepted)
    world.run(10.0, until=lambda: abs(world.commanded - mph) < EPS)
    assert world.commanded == pytest.approx(mph)
    return world


def _elapsed(world: World) -> float:
    session = world.core.snapshot().session
    return 0.0 if session is None else session.elapsed_s


def refusal(d: Decision) -> Refused:
    assert isinstance(d.reply, Refused), d
    return d.reply


def first_event(world: World, type_: EventType, since: int = 0) -> tuple[float, Event]:
    for inp, d in world.log[since:]:
        for e in d.events:
            if e.type is type_:
                return inp.t, e
    raise AssertionError(f"no {type_.value} event")


# --------------------------------------------------------------------------- SR-1


def test_sr14_every_accepted_speed_change_is_on_the_record_with_who_asked() -> None:
    """set_speed accepted: a speed_changed event with the session's target before and after,
    and the clinician when the command named one; refused: none (the refusal is on record)."""
    world = running_world()
    session = world.core.snapshot().session
    assert session is not None
    d = world.command(lambda t: SetSpeed(t, 1.0, clinician="c-12"))
    assert isinstance(d.reply, Accepted)
    assert [(e.type, e.fields) for e in d.events] == [
        (
            EventType.SPEED_CHANGED,
            {"session_id": session.id, "from_mph": 0.8, "to_mph": 1.0, "clinician": "c-12"},
        )
    ]
    d = world.command(lambda t: SetSpeed(t, 0.9))
    assert [e.fields for e in d.events] == [
        {"session_id": session.id, "from_mph": 1.0, "to_mph": 0.9}
    ]
    d = world.command(lambda t: SetSpeed(t, 1.5, clinician="c-12"))
    assert isinstance(d.reply, Refused)
    assert [e.type for e in d.events] == [EventType.COMMAND_REFUSED]


@pytest.mark.parametrize("mph", [0.79, 1.21, 0.0, -1.0, 2.0, math.nan, math.inf, -math.inf])
def test_sr1_set_speed_out_of_band_is_refused_never_clamped(mph: float) -> None:
    world = at_speed(1.0)
    d = world.command(lambda t: SetSpeed(t, mph))
    assert refusal(d).code is RefusalCode.OUT_OF_RANGE
    assert d.target_mph == pytest.approx(1.0)
    refused = [e for e in d.events if e.type is EventType.COMMAND_REFUSED]
    assert refused
    assert refused[0].fields["code"] == "out_of_range"
    world.run(5.0)
    # Not clamped to the nearest band edge: the belt stays where it was.
    assert {round(v, 9) for _, v in world.speeds(since=len(world.log) - 50)} == {1.0}


@pytest.mark.parametrize("target", [0.7, 1.3, 0.0, -0.8, math.nan, math.inf])
def test_sr1_start_with_target_out_of_band_is_refused(target: float) -> None:
    world = World()
    world.run(1.0)
    d = world.start(target_mph=target)
    assert refusal(d).code is RefusalCode.OUT_OF_RANGE
    assert d.state is State.IDLE
    assert world.core.snapshot().session is None
    world.run(COUNTDOWN_S + 1.0)
    assert max(v for _, v in world.speeds()) == 0.0


def test_sr1_below_the_band_only_while_ramping_from_zero() -> None:
    world = running_world()
    world.run(10.0)
    at = dict(world.speeds())  # the last command at each instant
    below = [v for v in at.values() if 0 < v < BAND_MIN - EPS]
    assert below
    assert below == sorted(below)
    assert len(set(below)) == len(below)  # strictly rising: never held below the band
    assert max(v for _, v in world.speeds()) == pytest.approx(BAND_MIN)


# --------------------------------------------------------------------------- SR-2


def _steps(world: World, since: int = 0) -> list[tuple[float, float, float]]:
    pts = world.speeds(since)
    return [(t1 - t0, v0, v1) for (t0, v0), (t1, v1) in itertools.pairwise(pts)]


def test_sr2_ramp_up_at_most_0_2_mph_per_s() -> None:
    world = World()
    world.run(1.0)
    world.start(target_mph=1.2)
    world.run(COUNTDOWN_S + 0.5, until=lambda: world.commanded > 0)
    t_move = world.t
    world.run(10.0)
    for dt, v0, v1 in _steps(world):
        assert v1 - v0 <= ACCEL * dt + EPS
    # 0 -> 1.2 mph at 0.2 mph/s takes 6 s (from the step before the first non-zero command).
    reached = next(t for t, v in world.speeds() if v >= 1.2 - EPS)
    assert reached - t_move == pytest.approx(1.2 / ACCEL, abs=2 * PERIOD_MS / 1000)


def test_sr2_controlled_stop_ramps_down_at_0_4_mph_per_s() -> None:
    world = at_speed(1.2)
    mark = len(world.log)
    t_stop = world.t
    assert isinstance(world.command(Stop).reply, Accepted)
    world.run(5.0)
    steps = _steps(world, mark)
    assert not any(d.emergency_stop for _, d in world.log[mark:])
    for dt, v0, v1 in steps:
        assert v0 - v1 <= DECEL * dt + EPS
    zero = next(t for t, v in world.speeds(mark) if v == 0.0)
    assert zero - t_stop == pytest.approx(1.2 / DECEL, abs=PERIOD_MS / 1000 + EPS)
    assert world.state is State.IDLE


def test_sr2_sr6_after_an_operator_stop_the_belt_only_slows_to_zero() -> None:
    """A stop from the tablet, then a speed change while the belt slows (a second tap, a
    command that was on its way): refused, and the belt never speeds up again; once at 0 the
    session is over and a speed change is still refused. (A field incident of this kind of
    product: a treadmill that sped up again after its on-screen stop.)"""
    world = at_speed(1.0)
    mark = len(world.log)
    assert isinstance(world.command(Stop).reply, Accepted)
    world.run(0.5)
    assert world.state is State.STOPPING
    assert refusal(world.command(lambda t: SetSpeed(t, 1.2))).code is RefusalCode.NOT_ALLOWED
    world.run(5.0)
    assert all(v1 <= v0 for _, v0, v1 in _steps(world, mark))
    assert world.commanded == 0.0
    # mypy keeps the narrowing of the assert above; the state has moved on since
    assert world.state is State.IDLE  # type: ignore[comparison-overlap]
    assert refusal(world.command(lambda t: SetSpeed(t, 1.0))).code is RefusalCode.NOT_ALLOWED
    world.run(2.0)
    assert world.commanded == 0.0


def test_sr6_a_stop_during_the_ramp_up_never_asks_for_more_than_was_asked_before_it() -> None:
    """A stop, or a lower speed, that arrives between two inputs of a ramp up: the decision
    that carries it asks the drive for at most the speed asked before it, never the ramp's
    step for the time since (which would be a Stop that speeds the belt up, if only by a
    hundredth of a mph); from there the belt only slows."""

    def from_rest() -> World:
        world = running_world("first_session")
        world.run(0.5)
        return world

    def speeding_up() -> World:
        world = at_speed(1.0, "reverse_walking")
        assert isinstance(world.command(lambda t: SetSpeed(t, 1.2)).reply, Accepted)
        world.run(0.5)
        return world

    cases: list[tuple[World, Callable[[float], Input]]] = [
        (from_rest(), Stop),
        (speeding_up(), Stop),
        (speeding_up(), lambda t: SetSpeed(t, 0.9)),
    ]
    for world, slower in cases:
        before = world.commanded
        assert 0.0 < before < world.core.snapshot().target_mph
        world.ms += PERIOD_MS // 2  # between two of the world's inputs
        d = world.command(slower)
        assert isinstance(d.reply, Accepted)
        assert d.speed_mph == before
        mark = len(world.log)
        world.run(1.0)
        assert all(v1 <= v0 for _, v0, v1 in _steps(world, mark - 1))


def test_sr1_a_lower_speed_just_above_the_last_ask_is_not_overshot() -> None:
    """Ramping from 1.0 to 1.2 mph, the clinician lowers the target to a speed a hair above
    the one last asked. The decision that carries it takes the ramp's step for the time since
    the last input first, and so asks for more than both the speed last asked and the
    target the clinician has just set."""
    world = at_speed(1.0, "reverse_walking")
    assert isinstance(world.command(lambda t: SetSpeed(t, 1.2)).reply, Accepted)
    world.run(0.5)
    before = world.commanded
    new_target = round(before + 0.002, 4)
    world.ms += 40  # between two of the world's inputs
    d = world.command(lambda t: SetSpeed(t, new_target))
    assert isinstance(d.reply, Accepted)
    assert d.speed_mph <= max(before, new_target) + 1e-12, (before, new_target, d.speed_mph)


def test_sr6_a_stop_at_the_instant_the_countdown_ends_never_asks_the_belt_to_move() -> None:
    """The countdown has ended and nothing is asked of the drive yet; a stop a few ms later
    asks for 0, not the ramp's first step (a Stop button that started the belt)."""
    world = World()
    world.run(1.0)
    assert isinstance(world.start().reply, Accepted)
    world.run(COUNTDOWN_S + 1.0, until=lambda: world.state is State.RUNNING)
    assert world.commanded == 0.0
    world.ms += 20
    d = world.command(Stop)
    assert isinstance(d.reply, Accepted)
    assert d.speed_mph == 0.0
    world.run(1.0)
    assert world.commanded == 0.0


def test_sr2_lower_set_speed_ramps_down_at_0_4_mph_per_s() -> None:
    world = at_speed(1.2)
    mark = len(world.log)
    world.command(lambda t: SetSpeed(t, 0.8))
    world.run(3.0)
    for dt, v0, v1 in _steps(world, mark):
        assert v0 - v1 <= DECEL * dt + EPS
    assert world.commanded == pytest.approx(0.8)


def test_sr2_emergency_stop_drops_to_zero_at_once() -> None:
    world = at_speed(1.2)
    d = world.command(EStop)
    assert d.emergency_stop
    assert d.speed_mph == 0.0
    assert d.state is State.ESTOP


# --------------------------------------------------------------------------- SR-3


def _start_refused(world: World) -> Refused:
    d = world.start()
    r = refusal(d)
    assert d.state in (State.IDLE, State.ESTOP, State.FAULT)
    assert world.core.snapshot().session is None
    return r


def test_sr3_start_refused_without_a_grip() -> None:
    world = World()
    world.hold[Hand.LEFT] = False
    world.run(1.0)
    r = _start_refused(world)
    assert r.code is RefusalCode.PRECONDITIONS_UNMET
    assert "left" in r.message
    assert "right" not in r.message


def test_sr3_start_refused_with_a_fall_signal() -> None:
    world = World()
    world.fallen = True
    world.run(1.0)
    r = _start_refused(world)
    assert r.code is RefusalCode.PRECONDITIONS_UNMET
    assert "fall" in r.message


def test_sr3_start_refused_with_a_stale_sensor() -> None:
    world = World()
    world.run(1.0)
    world.silent.add("right")
    world.run(SENSOR_TIMEOUT_S + 0.1)
    r = _start_refused(world)
    assert r.code is RefusalCode.PRECONDITIONS_UNMET
    assert "right grip sensor" in r.message
    assert "left" not in r.message


def test_sr3_start_refused_without_the_drive() -> None:
    world = World()
    world.run(1.0)
    world.silent.add("drive")
    world.run(SENSOR_TIMEOUT_S + 0.1)
    r = _start_refused(world)
    assert r.code is RefusalCode.PRECONDITIONS_UNMET
    assert "drive" in r.message


def test_sr3_start_refused_while_the_belt_moves() -> None:
    world = World()
    world.belt = 0.3
    world.run(1.0)
    r = _start_refused(world)
    assert r.code is RefusalCode.PRECONDITIONS_UNMET
    assert "standstill" in r.message


def test_sr3_start_refused_while_latched() -> None:
    world = World()
    world.run(1.0)
    world.command(EStop)
    world.run(1.0)
    r = _start_refused(world)
    assert r.code is RefusalCode.LATCHED


def test_sr3_countdown_is_announced_and_the_belt_stays_at_zero() -> None:
    world = World()
    world.run(1.0)
    mark = len(world.log)
    t_start = world.t
    d = world.start()
    assert isinstance(d.reply, Accepted)
    countdown = [e for e in d.events if e.type is EventType.COUNTDOWN]
    assert countdown
    assert countdown[0].fields["seconds"] == COUNTDOWN_S
    world.run(COUNTDOWN_S + 1.0)
    t_first = next(t for t, v in world.speeds(mark) if v > 0)
    assert t_first - t_start >= COUNTDOWN_S
    assert all(v == 0.0 for t, v in world.speeds(mark) if t < t_start + COUNTDOWN_S)
    t_started, _ = first_event(world, EventType.BELT_STARTED, mark)
    assert t_started == pytest.approx(t_start + COUNTDOWN_S)


def test_sr3_hand_released_during_the_countdown_aborts_the_start() -> None:
    world = World()
    world.run(1.0)
    world.start()
    world.run(1.5)
    world.hold[Hand.RIGHT] = False
    world.run(COUNTDOWN_S)
    assert max(v for _, v in world.speeds()) == 0.0
    _, ended = first_event(world, EventType.SESSION_ENDED)
    assert ended.fields["reason"] == EndReason.START_ABORTED.value


def test_sr3_hand_released_after_the_countdown_before_the_first_command_keeps_belt_at_0() -> None:
    # The countdown ends (belt_started, command still 0) and a hand lets go before the first
    # command above 0 goes out: the belt must not start with one hand off.
    world = World()
    world.run(1.0)
    world.start()
    world.run(COUNTDOWN_S + 1.0, until=lambda: world.state is State.RUNNING)
    assert world.commanded == 0.0
    world.send(GripReading(world.t, Hand.LEFT, False))
    world.hold[Hand.LEFT] = False
    world.run(2.0)
    assert max(v for _, v in world.speeds()) == 0.0
    assert world.state is State.IDLE


# --------------------------------------------------------------------------- SR-4


def test_sr4_one_hand_released_raises_a_warning_only() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.hold[Hand.LEFT] = False
    world.run(5.0)
    warnings = world.events(EventType.GRIP_WARNING, mark)
    assert [e.fields["hand"] for e in warnings] == ["left"]
    assert not world.events(EventType.ESTOP, mark)
    assert world.state is State.RUNNING
    assert world.commanded == pytest.approx(1.0)


def test_sr4_both_hands_released_shorter_than_debounce_does_not_stop() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    world.run(DEBOUNCE_S - 0.1)  # released readings for 200 ms
    world.hold = {Hand.LEFT: True, Hand.RIGHT: True}
    world.run(3.0)
    assert not any(d.emergency_stop for _, d in world.log[mark:])
    assert not world.events(EventType.ESTOP, mark)
    assert world.state is State.RUNNING
    assert world.commanded == pytest.approx(1.0)


def test_sr4_both_hands_released_longer_than_debounce_estops() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    world.run(1.0)
    t_release = world.log[mark][0].t  # the first released reading
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.GRIP_LOST.value
    assert DEBOUNCE_S - EPS <= t_stop - t_release <= DEBOUNCE_S + PERIOD_MS / 1000
    stop_decision = next(d for _, d in world.log[mark:] if d.emergency_stop)
    assert stop_decision.speed_mph == 0.0
    assert world.state is State.ESTOP


# --------------------------------------------------------------------------- SR-5


@pytest.mark.parametrize("when", ["running", "countdown", "stopping"])
def test_sr5_fall_estops_at_once_in_the_same_decision(when: str) -> None:
    if when == "countdown":
        world = World()
        world.run(1.0)
        world.start()
        world.run(1.0)
    else:
        world = at_speed(1.0)
        if when == "stopping":
            world.command(Stop)
            world.run(0.5)
    assert world.state.value == when
    d = world.send(FallReading(world.t + 0.01, True))
    assert d.emergency_stop
    assert d.speed_mph == 0.0
    assert d.state is State.ESTOP
    assert [e.fields["cause"] for e in d.events if e.type is EventType.ESTOP] == ["fall"]


# --------------------------------------------------------------------------- SR-6


def _estopped_by_a_fall() -> World:
    world = at_speed(1.0)
    world.fallen = True
    world.run(1.0)
    assert world.state is State.ESTOP
    return world


def test_sr6_latched_stop_refuses_start_and_keeps_the_belt_at_zero() -> None:
    world = _estopped_by_a_fall()
    world.fallen = False
    mark = len(world.log)
    assert refusal(world.start()).code is RefusalCode.LATCHED
    assert refusal(world.command(lambda t: SetSpeed(t, 1.0))).code is RefusalCode.NOT_ALLOWED
    world.run(10.0)
    assert all(v == 0.0 for _, v in world.speeds(mark))
    assert world.state is State.ESTOP


def test_sr6_reset_refused_while_the_cause_persists() -> None:
    world = _estopped_by_a_fall()
    d = world.command(Reset)
    assert refusal(d).code is RefusalCode.PRECONDITIONS_UNMET
    assert "fall" in refusal(d).message
    assert d.state is State.ESTOP


def test_sr6_reset_refused_while_the_belt_moves() -> None:
    world = _estopped_by_a_fall()
    world.fallen = False
    world.belt = 0.4  # still coasting
    world.run(0.5)
    d = world.command(Reset)
    assert refusal(d).code is RefusalCode.PRECONDITIONS_UNMET
    assert "standstill" in refusal(d).message
    assert d.state is State.ESTOP


def test_sr6_reset_refused_without_drive_feedback() -> None:
    world = _estopped_by_a_fall()
    world.fallen = False
    world.silent.add("drive")
    world.run(1.0)
    d = world.command(Reset)
    assert refusal(d).code is RefusalCode.PRECONDITIONS_UNMET
    assert "drive" in refusal(d).message


def test_sr6_reset_accepted_after_the_cause_cleared_and_never_moves_the_belt() -> None:
    world = _estopped_by_a_fall()
    world.fallen = False
    world.run(1.0)
    d = world.command(Reset)
    assert isinstance(d.reply, Accepted)
    assert d.state is State.IDLE
    assert d.speed_mph == 0.0
    assert [e.type for e in d.events] == [EventType.RESET]
    mark = len(world.log)
    world.run(10.0)
    assert all(v == 0.0 for _, v in world.speeds(mark))
    assert not world.events(EventType.BELT_STARTED, mark)
    assert world.core.latch is None


def test_sr6_a_new_start_after_reset_needs_the_countdown_again() -> None:
    world = _estopped_by_a_fall()
    world.fallen = False
    world.run(1.0)
    world.command(Reset)
    mark = len(world.log)
    t_start = world.t
    d = world.start()
    assert isinstance(d.reply, Accepted)
    assert any(e.type is EventType.COUNTDOWN for e in d.events)
    world.run(COUNTDOWN_S + 1.0)
    t_first = next(t for t, v in world.speeds(mark) if v > 0)
    assert t_first - t_start >= COUNTDOWN_S


def _estopped_by_grip_loss() -> World:
    world = at_speed(1.0)
    world.hold = {Hand.LEFT: False, Hand.RIGHT: False}
    world.run(1.0)
    assert world.core.latch is not None
    assert world.core.latch.cause is Cause.GRIP_LOST
    return world


def _faulted_by_the_drive() -> World:
    """A drive fault reported by a status (standstill), the drive then silent."""
    world = at_speed(1.0)
    world.silent.add("drive")
    world.send(DriveFeedback(world.t, 0.0, DriveFailure.FAULT, "overcurrent"))
    assert world.core.latch is not None
    assert world.core.latch.cause is Cause.DRIVE_FAULT
    return world


def _fall_then(change: Callable[[World], None]) -> World:
    world = _estopped_by_a_fall()
    world.fallen = False
    change(world)
    world.run(1.0)
    return world


def _grip_loss_then(hold: tuple[bool, bool]) -> World:
    world = _estopped_by_grip_loss()
    world.hold = {Hand.LEFT: hold[0], Hand.RIGHT: hold[1]}
    world.run(1.0)
    return world


def _fault_answered_again_by(feedback: Callable[[float], DriveFeedback | None]) -> World:
    world = _faulted_by_the_drive()
    answer = feedback(world.t)
    if answer is not None:
        world.send(answer)
    return world


def _driver_gave_up_then_answered_at_once() -> World:
    """The driver gives up on a command; a healthy status stamped the same instant is not a
    status read after the fault."""
    world = at_speed(1.0)
    world.silent.add("drive")
    world.send(DriveFeedback(world.t, 0.0))
    world.ms += 10
    world.send(DriveError(world.t, DriveFailure.FAULT, "no answer to the run command"))
    world.send(DriveFeedback(world.t, 0.0))
    return world


@pytest.mark.parametrize(
    ("arrange", "unmet"),
    [
        (_estopped_by_a_fall, ["a fall is still signalled"]),
        (lambda: _fall_then(lambda w: setattr(w, "belt", 0.4)), ["belt is not at standstill"]),
        (
            lambda: _fall_then(lambda w: w.silent.add("drive")),
            ["drive is not answering, standstill cannot be confirmed"],
        ),
        (
            lambda: _fall_then(lambda w: w.silent.add("fall")),
            ["fall sensor has no fresh reading"],
        ),
        (
            lambda: _grip_loss_then((False, True)),
            ["left grip is not held (or its sensor is silent)"],
        ),
        (
            lambda: _grip_loss_then((False, False)),
            [
                "left grip is not held (or its sensor is silent)",
                "right grip is not held (or its sensor is silent)",
            ],
        ),
        (
            lambda: _fault_answered_again_by(
                lambda t: DriveFeedback(t, 0.0, DriveFailure.FAULT, "overcurrent")
            ),
            ["drive still reports a fault"],
        ),
        (
            _driver_gave_up_then_answered_at_once,
            ["drive has not reported a healthy status since its fault"],
        ),
    ],
    ids=[
        "fall",
        "belt coasting",
        "drive silent",
        "fall sensor silent",
        "left grip",
        "both grips",
        "drive fault",
        "no healthy status since",
    ],
)
def test_sr6_a_refused_reset_names_exactly_what_is_unmet(
    arrange: Callable[[], World], unmet: list[str]
) -> None:
    """docs/tablet-contract.md: ``preconditions_unmet`` names which; the clinician reads it to
    know what to clear, so it names every unmet precondition and nothing else."""
    world = arrange()
    d = world.command(Reset)
    assert refusal(d) == Refused(
        RefusalCode.PRECONDITIONS_UNMET, "cannot reset: " + "; ".join(unmet)
    )
    assert d.state in (State.ESTOP, State.FAULT)


def test_sr6_after_a_fall_the_reset_does_not_ask_for_the_grips() -> None:
    """The cause of a fall's latch is the fall: once it is cleared, a user who let go of the
    grips (or was helped off the belt) does not keep the treadmill latched."""
    world = _fall_then(lambda w: setattr(w, "hold", {Hand.LEFT: False, Hand.RIGHT: False}))
    d = world.command(Reset)
    assert isinstance(d.reply, Accepted)
    assert d.state is State.IDLE


def test_sr6_a_drive_fault_is_reset_after_a_healthy_status() -> None:
    world = _fault_answered_again_by(lambda t: None)
    world.silent.discard("drive")
    world.run(0.2)
    d = world.command(Reset)
    assert isinstance(d.reply, Accepted)


# --------------------------------------------------------------------------- the snapshot


def test_the_snapshot_shows_the_session_as_it_stands() -> None:
    """What the tablet shows (docs/tablet-contract.md, the state): the countdown counting down, the
    session's user, program, belt time and what is left of the cap, and the belt unknown (not
    0) once the drive has gone silent."""
    world = World()
    world.run(1.0)
    held = {Hand.LEFT: True, Hand.RIGHT: True}
    # The stop-quality watch's part of it has tests of its own (tests/test_stop_watch.py).
    assert replace(world.core.snapshot(), stop_watch=None) == Snapshot(
        state=State.IDLE,
        commanded_mph=0.0,
        target_mph=0.0,
        belt_mph=0.0,
        session=None,
        grip=held,
        fall=False,
        stale=(),
        latched=None,
        countdown_s=None,
    )
    world.start()
    world.run(COUNTDOWN_S - 0.5)
    snap = world.core.snapshot()
    assert snap.state is State.COUNTDOWN
    assert snap.countdown_s == pytest.approx(0.5)
    assert snap.session == SessionView(
        id="1",
        user="pat",
        program="first_session",
        elapsed_s=0.0,
        cap_s=FIRST_SESSION_CAP_DEFAULT_S,
        remaining_s=FIRST_SESSION_CAP_DEFAULT_S,
        interval=None,
        intervals=None,
    )
    world.run(10.0)
    snap = world.core.snapshot()
    assert snap.state is State.RUNNING
    assert snap.countdown_s is None
    assert snap.target_mph == pytest.approx(BAND_MIN)
    assert snap.commanded_mph == world.commanded
    assert snap.belt_mph == world.commanded
    assert snap.session is not None
    assert snap.session.elapsed_s == pytest.approx(world.moving_s(), abs=0.06)
    assert snap.session.remaining_s == pytest.approx(
        FIRST_SESSION_CAP_DEFAULT_S - snap.session.elapsed_s
    )
    world.silent.add("drive")
    world.silent.add("fall")
    world.run(1.0)
    snap = world.core.snapshot()
    assert snap.belt_mph == math.inf
    assert snap.stale == (Sensor.FALL,)
    assert snap.latched is not None
    assert snap.state is snap.latched.kind


def test_the_snapshot_shows_a_fall_and_the_interval_under_way() -> None:
    world = World("intervals")
    world.run(1.0)
    assert isinstance(world.start(program="intervals").reply, Accepted)
    world.run(COUNTDOWN_S + 1.0)
    snap = world.core.snapshot()
    assert snap.session is not None
    assert (snap.session.interval, snap.session.intervals) == (1, 8)  # 480 s of 60 s
    world.fallen = True
    world.run(0.1)
    snap = world.core.snapshot()
    assert snap.fall is True
    assert snap.state is State.ESTOP


def test_sr14_the_events_say_what_stopped_the_belt_and_what_was_cleared() -> None:
    """The journal keeps the events (SR-14): a latch names its kind, cause and detail and when
    it came; the session it ended says which session, why, and its belt time; a reset says
    which cause it cleared."""
    world = running_world()
    world.run(5.3)  # a belt time with tenths: the record keeps them
    mark = len(world.log)
    assert refusal(world.command(Reset)) == Refused(
        RefusalCode.NOT_ALLOWED, "nothing is latched (running)"
    )
    world.send(DriveFeedback(world.t + 0.01, 0.0, DriveFailure.FAULT, "overcurrent"))
    t_fault = world.t + 0.01
    assert world.events(EventType.FAULT, mark)[0].fields == {
        "cause": Cause.DRIVE_FAULT.value,
        "detail": "overcurrent",
    }
    ended = world.events(EventType.SESSION_ENDED, mark)[0].fields
    assert ended["session_id"] == "1"
    assert ended["reason"] == EndReason.FAULT.value
    # Within a tick at either end: the world counts a step as moving if either end moved.
    assert ended["belt_moving_s"] == pytest.approx(world.moving_s(), abs=2 * PERIOD_MS / 1000)
    latch = world.core.latch
    assert latch is not None
    assert (latch.kind, latch.cause, latch.since, latch.detail) == (
        State.FAULT,
        Cause.DRIVE_FAULT,
        t_fault,
        "overcurrent",
    )
    world.run(1.0)
    assert isinstance(world.command(Reset).reply, Accepted)
    assert world.events(EventType.RESET, mark)[0].fields == {"cleared": Cause.DRIVE_FAULT.value}

    world = running_world()
    mark = len(world.log)
    world.fallen = True
    world.run(0.1)
    estop = world.events(EventType.ESTOP, mark)[0].fields
    assert estop["cause"] == Cause.FALL.value
    assert isinstance(estop["detail"], str)
    assert estop["detail"]
    assert world.events(EventType.SESSION_ENDED, mark)[0].fields["reason"] == EndReason.ESTOP.value


def test_sr7_the_rest_after_an_interval_says_which_interval_ended() -> None:
    world = World("intervals")
    world.run(1.0)
    assert isinstance(world.start(program="intervals").reply, Accepted)
    world.run(COUNTDOWN_S + 60.0 + 10.0, until=lambda: bool(world.events(EventType.INTERVAL_REST)))
    assert world.events(EventType.INTERVAL_REST)[0].fields == {
        "interval": 1,
        "intervals": 8,
        "rest_s": 60.0,
    }


# --------------------------------------------------------------------------- SR-7


def test_sr7_first_session_cap_default_3_min_settable_up_to_5_min() -> None:
    world = World("first_session")
    world.run(1.0)
    world.start()
    session = world.core.snapshot().session
    assert session is not None
    assert session.cap_s == FIRST_SESSION_CAP_DEFAULT_S
    world.command(Stop)
    for cap, ok in [(179.0, False), (180.0, True), (300.0, True), (301.0, False)]:
        world.run(0.5)
        d = world.start(cap_s=cap)
        if ok:
            assert isinstance(d.reply, Accepted), cap
            world.command(Stop)
        else:
            assert refusal(d).code is RefusalCode.OUT_OF_RANGE, cap
    assert world.programs["first_session"].cap_s_max <= FIRST_SESSION_CAP_HARD_S


def test_sr7_a_first_session_program_above_the_hard_limit_is_refused(tmp_path: Path) -> None:
    body = (
        'name = "too_long"\ntitle = "Too long"\nfirst_session = true\n'
        "cap_s_default = 180\ncap_s_min = 180\ncap_s_max = {cap}\n"
    )
    ok = tmp_path / "ok.toml"
    ok.write_text(body.format(cap=300), encoding="utf-8")
    assert isinstance(load_program(ok), Program)
    bad = tmp_path / "too_long.toml"
    bad.write_text(body.format(cap=301), encoding="utf-8")
    with pytest.raises(ProgramError) as info:
        load_program(bad)
    message = str(info.value)
    assert "too_long.toml" in message
    assert "cap_s_max" in message
    assert "300" in message


def test_sr7_cap_warning_at_cap_minus_30_s_then_controlled_stop_within_the_cap() -> None:
    world = World("first_session")
    world.run(1.0)
    world.start(target_mph=1.2)
    mark = len(world.log)
    world.run(FIRST_SESSION_CAP_DEFAULT_S + 30.0, until=lambda: world.state is State.IDLE)
    # The warning when the belt has moved cap - 30 s.
    t_warn, warning = first_event(world, EventType.CAP_WARNING, mark)
    moved_at_warning = world.moving_s(mark, until=t_warn)
    expected = FIRST_SESSION_CAP_DEFAULT_S - CAP_WARNING_BEFORE_S
    assert moved_at_warning == pytest.approx(expected, abs=2 * PERIOD_MS / 1000)
    assert float(warning.fields["remaining_s"] or 0) == pytest.approx(30.0, abs=0.1)
    # A controlled stop (no emergency stop, no faster than the deceleration) ...
    _, stopping = first_event(world, EventType.STOPPING, mark)
    assert stopping.fields["reason"] == EndReason.CAP.value
    assert not any(d.emergency_stop for _, d in world.log[mark:])
    for dt, v0, v1 in _steps(world, mark):
        assert v0 - v1 <= DECEL * dt + EPS
    # ... timed so that the belt-moving time stays within the cap.
    _, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == EndReason.CAP.value
    assert world.moving_s(mark) <= FIRST_SESSION_CAP_DEFAULT_S
    assert world.moving_s(mark) > FIRST_SESSION_CAP_DEFAULT_S - 5.0  # and not much earlier
    assert float(ended.fields["belt_moving_s"] or 0) <= FIRST_SESSION_CAP_DEFAULT_S


def test_sr7_reverse_walking_adds_0_1_mph_a_minute_up_to_1_2() -> None:
    world = World("reverse_walking")
    world.run(1.0)
    world.start()
    mark = len(world.log)
    session = world.core.snapshot().session
    assert session is not None
    assert session.cap_s == REVERSE_WALKING_CAP_DEFAULT_S
    world.run(COUNTDOWN_S + REVERSE_WALKING_CAP_DEFAULT_S + 10.0)
    steps = [
        (inp.t, e.fields["target_mph"])
        for inp, d in world.log[mark:]
        for e in d.events
        if e.type is EventType.SPEED_STEP
    ]
    assert [round(float(v or 0), 3) for _, v in steps] == [0.9, 1.0, 1.1, 1.2]
    # One step per minute of belt-moving time.
    for minute, (t_step, _) in enumerate(steps, start=1):
        moved = world.moving_s(mark, until=t_step)
        assert moved == pytest.approx(60.0 * minute, abs=2 * PERIOD_MS / 1000)
    assert max(v for _, v in world.speeds(mark)) == pytest.approx(BAND_MAX)
    assert max(d.target_mph for _, d in world.log[mark:]) == pytest.approx(BAND_MAX)


def test_sr7_reverse_walking_does_not_step_while_a_hand_is_off() -> None:
    world = World("reverse_walking")
    world.run(1.0)
    world.start()
    world.run(30.0)
    world.hold[Hand.LEFT] = False
    world.run(COUNTDOWN_S + 60.0)
    assert not world.events(EventType.SPEED_STEP)


# --------------------------------------------------------------------------- SR-8


def test_sr8_silent_grip_sensor_counts_as_released_then_estop_sensor_stale() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.silent.add("left")
    world.run(2.0)
    warnings = world.events(EventType.GRIP_WARNING, mark)
    assert [(e.fields["hand"], e.fields["cause"]) for e in warnings] == [("left", "sensor_stale")]
    assert world.state is State.RUNNING
    mark = len(world.log)
    world.hold[Hand.RIGHT] = False
    world.run(1.0)
    t_release = world.log[mark][0].t
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.SENSOR_STALE.value
    assert DEBOUNCE_S - EPS <= t_stop - t_release <= DEBOUNCE_S + PERIOD_MS / 1000


def test_sr8_released_hand_whose_sensor_then_goes_silent_counts_from_the_release() -> None:
    # The left hand lets go, its sensor goes silent a little later; the right hand lets go
    # just before the silence is noticed. Both hands are off from the right's release, so the
    # stop is due 300 ms after it, not 300 ms after the silence is noticed.
    world = at_speed(1.0)
    world.hold[Hand.LEFT] = False
    world.run(1.0)
    world.silent.add("left")
    last_left = max(
        inp.t for inp, _ in world.log if isinstance(inp, GripReading) and inp.hand is Hand.LEFT
    )
    world.run(0.3)  # the left sensor will be noticed silent at last_left + 0.5
    mark = len(world.log)
    world.hold[Hand.RIGHT] = False
    world.run(1.0)
    t_release = world.log[mark][0].t
    assert t_release < last_left + SENSOR_TIMEOUT_S
    t_stop, _ = first_event(world, EventType.ESTOP, mark)
    assert t_stop - t_release <= DEBOUNCE_S + PERIOD_MS / 1000


def test_sr8_silent_fall_sensor_estops_with_cause_sensor_stale() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.silent.add("fall")
    world.run(1.0)
    last_fall = max(inp.t for inp, _ in world.log[:mark] if isinstance(inp, FallReading))
    t_stop, estop = first_event(world, EventType.ESTOP, mark)
    assert estop.fields["cause"] == Cause.SENSOR_STALE.value
    assert SENSOR_TIMEOUT_S - EPS <= t_stop - last_fall <= SENSOR_TIMEOUT_S + PERIOD_MS / 1000


def test_sr8_next_deadline_is_the_debounce_expiry() -> None:
    world = at_speed(1.0)
    t = world.t + 0.01
    world.send(GripReading(t, Hand.LEFT, False))
    world.send(GripReading(t, Hand.RIGHT, False))
    world.send(FallReading(t, False))
    world.send(DriveFeedback(t, world.commanded))
    due = world.core.next_deadline()
    assert due == pytest.approx(t + DEBOUNCE_S)
    assert due is not None
    # Woken just before, nothing; woken at the deadline, the emergency stop.
    early = world.send(Tick(due - 0.001))
    assert not early.emergency_stop
    assert early.state is State.RUNNING
    on_time = world.send(Tick(due))
    assert on_time.emergency_stop
    assert on_time.speed_mph == 0.0


def test_sr8_sr9_next_deadline_is_the_first_rule_that_can_fire_without_input() -> None:
    """Asked after every input, so the control loop wakes no later than a rule: a sensor's
    time-out (SR-8), the drive's time-out while the belt is armed (SR-9), the countdown's end
    (SR-3); before any reading there is nothing to wait for."""
    world = World()
    assert world.core.next_deadline() is None
    world.run(1.0)
    world.silent.add("drive")
    world.run(0.1)
    # Idle: the drive's silence is no rule's business, the sensors' time-out is.
    assert world.core.next_deadline() == pytest.approx(world.t + SENSOR_TIMEOUT_S)
    world.silent.discard("drive")
    world.run(0.1)
    t_start = world.t
    world.start()
    world.run(COUNTDOWN_S - 0.05)
    assert world.state is State.COUNTDOWN
    assert world.core.next_deadline() == pytest.approx(t_start + COUNTDOWN_S)
    world.run(2.0)
    assert world.core.state is State.RUNNING
    world.silent.add("drive")
    world.run(0.1)
    last_drive = world.t - 0.1
    assert world.core.next_deadline() == pytest.approx(last_drive + DRIVE_TIMEOUT_S)


# --------------------------------------------------------------------------- SR-9 / SR-10


def test_sr10_belt_off_by_more_than_0_3_mph_for_2_s_faults_feedback_mismatch() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.belt = 1.0 - FEEDBACK_TOLERANCE_MPH - 0.1
    world.run(FEEDBACK_WINDOW_S + 1.0)
    t_off = world.log[mark][0].t
    t_fault, fault = first_event(world, EventType.FAULT, mark)
    assert fault.fields["cause"] == Cause.FEEDBACK_MISMATCH.value
    assert FEEDBACK_WINDOW_S - EPS <= t_fault - t_off <= FEEDBACK_WINDOW_S + PERIOD_MS / 1000
    assert world.state is State.FAULT
    assert world.commanded == 0.0


def test_sr10_belt_within_tolerance_is_no_fault() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.belt = 1.0 - FEEDBACK_TOLERANCE_MPH + 0.05
    world.run(3 * FEEDBACK_WINDOW_S)
    assert not world.events(EventType.FAULT, mark)
    assert world.state is State.RUNNING


@pytest.mark.parametrize("failure", list(DriveFailure))
def test_sr9_sr10_drive_error_latches_a_fault(failure: DriveFailure) -> None:
    world = at_speed(1.0)
    d = world.send(DriveError(world.t, failure, "no answer"))
    assert d.emergency_stop
    assert d.speed_mph == 0.0
    assert d.state is State.FAULT
    assert [e.fields["cause"] for e in d.events if e.type is EventType.FAULT] == [failure.value]
    world.run(2.0)
    assert refusal(world.start()).code is RefusalCode.LATCHED


# --------------------------------------------------------------------------- SR-12


def test_sr12_no_command_for_longer_than_5_s_is_a_controlled_stop_tablet_lost() -> None:
    world = at_speed(1.0)
    mark = len(world.log)
    world.silent.add("tablet")
    last_command = max(inp.t for inp, _ in world.log if isinstance(inp, Heartbeat))
    world.run(HEARTBEAT_GRACE_S + 5.0)
    t_stop, stopping = first_event(world, EventType.STOPPING, mark)
    assert stopping.fields["reason"] == EndReason.TABLET_LOST.value
    assert HEARTBEAT_GRACE_S < t_stop - last_command <= HEARTBEAT_GRACE_S + PERIOD_MS / 1000
    assert not any(d.emergency_stop for _, d in world.log[mark:])
    for dt, v0, v1 in _steps(world, mark):
        assert v0 - v1 <= DECEL * dt + EPS
    _, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == EndReason.TABLET_LOST.value
    assert world.state is State.IDLE  # not latched
    assert world.core.latch is None


def test_sr12_commands_within_the_grace_keep_the_session() -> None:
    world = at_speed(1.0)
    world.silent.add("tablet")
    world.command(Heartbeat)
    for _ in range(6):
        world.run(HEARTBEAT_GRACE_S - 0.5)
        world.command(Heartbeat)
    assert world.state is State.RUNNING
    assert world.commanded == pytest.approx(1.0)


def test_sr12_the_command_link_lost_stops_a_session_at_once_under_control() -> None:
    """The daemon's own link to the broker lost (the tablet's commands reached nobody since):
    as a tablet silent past the grace, at once, whatever the heartbeats before and after; a
    controlled stop, nothing latched. In the countdown the session ends before the belt
    moves; idle, nothing happens and the next start is accepted."""
    world = at_speed(1.0)
    mark = len(world.log)
    d = world.send(CommandLinkLost(world.t, "the daemon's connection to the broker was lost"))
    assert world.state is State.STOPPING
    assert not d.emergency_stop
    _, stopping = first_event(world, EventType.STOPPING, mark)
    assert stopping.fields["reason"] == EndReason.TABLET_LOST.value
    world.run(10.0)  # heartbeats again: the stop goes on
    _, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == EndReason.TABLET_LOST.value
    assert world.core.latch is None
    for dt, v0, v1 in _steps(world, mark):
        assert v0 - v1 <= DECEL * dt + EPS

    counting = World()
    counting.run(1.0)
    counting.start()
    counting.run(0.5)
    assert counting.state is State.COUNTDOWN
    counting.send(CommandLinkLost(counting.t))
    assert counting.state is State.IDLE  # type: ignore[comparison-overlap]
    _, ended = first_event(counting, EventType.SESSION_ENDED)
    assert ended.fields["reason"] == EndReason.TABLET_LOST.value
    assert counting.commanded == 0.0

    idle = World()
    idle.run(1.0)
    idle.send(CommandLinkLost(idle.t))
    assert idle.state is State.IDLE
    assert not idle.events(EventType.SESSION_ENDED)
    assert isinstance(idle.start().reply, Accepted)


def test_sr12_remote_estop_is_an_emergency_stop() -> None:
    world = at_speed(1.0)
    d = world.command(EStop)
    assert d.emergency_stop
    assert [e.fields["cause"] for e in d.events if e.type is EventType.ESTOP] == ["remote_estop"]


def test_sr12_tablet_lost_during_an_interval_stop_ends_the_session() -> None:
    # intervals: the belt stops after each one-minute interval; a tablet gone by then must
    # end the session rather than count down to the next interval.
    world = World("intervals")
    world.run(1.0)
    world.start()
    # The stop of the first interval begins when the belt has moved about 56.5 s (60 s less
    # the 2.5 s ramp from 1.0 mph and a margin); the tablet goes silent so that its grace
    # runs out during that stop.
    world.run(COUNTDOWN_S + 60.0, until=lambda: _elapsed(world) >= 53.5)
    assert world.state is State.RUNNING
    mark = len(world.log)
    world.silent.add("tablet")
    world.run(20.0)
    _, stopping = first_event(world, EventType.STOPPING, mark)
    assert stopping.fields["reason"] == EndReason.COMPLETED.value
    assert not world.events(EventType.COUNTDOWN, mark)
    _, ended = first_event(world, EventType.SESSION_ENDED, mark)
    assert ended.fields["reason"] == EndReason.TABLET_LOST.value
    # mypy keeps the narrowing of the assert above; the state has moved on since
    assert world.state is State.IDLE  # type: ignore[comparison-overlap]


# --------------------------------------------------------------------------- SR-14 journal


def test_sr14_an_unwritable_journal_stops_the_belt_and_refuses_starts_until_writable() -> None:
    world = at_speed(1.0)
    d = world.command(lambda t: JournalHealth(t, writable=False, detail="disk full"))
    assert d.emergency_stop
    assert world.state is State.FAULT
    latch = world.core.latch
    assert latch is not None
    assert latch.cause is Cause.JOURNAL
    world.run(5.0)  # the belt comes to standstill
    reset = refusal(world.command(Reset))
    assert "journal" in reset.message
    world.command(lambda t: JournalHealth(t, writable=True))
    assert isinstance(world.command(Reset).reply, Accepted)
    # mypy keeps the narrowing of the assert above; the state has moved on since
    assert world.state is State.IDLE  # type: ignore[comparison-overlap]


def test_sr14_no_start_while_the_journal_cannot_be_written() -> None:
    world = World()
    world.run(1.0)
    world.command(lambda t: JournalHealth(t, writable=False, detail="read-only file system"))
    assert world.state is State.FAULT  # latched even with the belt at rest
    assert refusal(world.start()).code is RefusalCode.LATCHED
    assert "read-only file system" in refusal(world.command(Reset)).message
    world.command(lambda t: JournalHealth(t, writable=True))
    assert isinstance(world.command(Reset).reply, Accepted)
    assert isinstance(world.start().reply, Accepted)


def test_session_ids_continue_after_the_sessions_the_journal_knows() -> None:
    core = SafetyCore(
        SafetyLimits(), load_programs(PROGRAMS_DIR), default_program="first_session",
        sessions_before=41, commissioned_until=math.inf,
    )  # fmt: skip
    assert core.handle(Tick(0.0)).events == ()
    world = World()
    world.core = core
    world.run(1.0)
    world.start()
    started = world.events(EventType.SESSION_STARTED)
    assert started[0].fields["session_id"] == "42"


def test_sr7_a_users_history_decides_the_first_session_program_and_its_cap() -> None:
    """The journal says whether the user has had a session (StartSession.returning): a first
    session gets the first-session program and its stricter cap; a later program is refused."""
    programs = load_programs(PROGRAMS_DIR)

    def world_for() -> World:
        world = World()
        world.core = SafetyCore(
            SafetyLimits(),
            programs,
            default_program="first_session",
            returning_program="reverse_walking",
            commissioned_until=math.inf,
        )
        world.run(1.0)
        return world

    world = world_for()
    world.start(returning=False)
    assert world.events(EventType.SESSION_STARTED)[0].fields["program"] == "first_session"
    world = world_for()
    refused = refusal(world.start(returning=False, program="reverse_walking"))
    assert refused.code is RefusalCode.PRECONDITIONS_UNMET
    assert "first" in refused.message
    world = world_for()
    world.start(returning=True)
    assert world.events(EventType.SESSION_STARTED)[0].fields["program"] == "reverse_walking"
    world = world_for()  # no journal: no history to go by, the program named is the program
    assert isinstance(world.start(program="reverse_walking").reply, Accepted)


def test_sr11_a_belt_found_moving_at_start_up_is_reported_and_stopped() -> None:
    world = World()
    world.belt = 0.9  # the drive says the belt runs before the controller ever commanded it
    world.tick()
    (found,) = world.events(EventType.BELT_FOUND_MOVING)
    assert found.fields["speed_mph"] == pytest.approx(0.9)
    assert world.commanded == 0.0
    assert refusal(world.start()).code is RefusalCode.PRECONDITIONS_UNMET
    world.belt = None  # it follows the stop command
    world.run(1.0)
    assert isinstance(world.start().reply, Accepted)
    assert len(world.events(EventType.BELT_FOUND_MOVING)) == 1


def test_sr11_shutdown_and_a_late_loop_stop_the_session_under_control() -> None:
    for make, reason in (
        (Shutdown, "shutdown"),
        (lambda t: LoopOverrun(t, "late"), "loop_overrun"),
    ):
        world = at_speed(1.0)
        d = world.command(make)
        assert not d.emergency_stop
        (stopping,) = world.events(EventType.STOPPING)
        assert stopping.fields["reason"] == reason
        world.run(5.0)
        assert world.state is State.IDLE  # not latched
        assert world.events(EventType.SESSION_ENDED)[-1].fields["reason"] == reason
    idle = World()
    idle.run(1.0)
    assert idle.command(Shutdown).events == ()  # nothing to stop


def test_sr6_a_stop_during_an_interval_rest_ends_the_session_there() -> None:
    """The belt is slowing down at the end of an interval; a stop (or a shutdown) then must end
    the session, not let it count down to the next interval and start the belt again."""
    for make in (Stop, Shutdown):
        world = World("intervals")
        world.run(1.0)
        world.start()

        def stopping(w: World = world) -> bool:
            return w.state is State.STOPPING

        world.run(COUNTDOWN_S + 70.0, until=stopping)
        assert world.state is State.STOPPING
        mark = len(world.log)
        assert isinstance(world.command(make).reply, (Accepted, type(None)))
        world.run(70.0)
        # mypy keeps the narrowing of the assert above; the state has moved on since
        assert world.state is State.IDLE  # type: ignore[comparison-overlap]
        assert not world.events(EventType.COUNTDOWN, mark)
        assert not world.events(EventType.BELT_STARTED, mark)
        assert all(v == 0.0 for _, v in world.speeds(len(world.log) - 20))
