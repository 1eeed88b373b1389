"""The safety core's short path decides exactly what its full pass would.

A reading that changes nothing but its sensor's stamp (the same value, the sensor fresh, no
time passing) skips the rule pass after one that made no transition
(``SafetyCore._restamped``). That must never change a decision: here the property tests'
random worlds (tests/test_safety_properties.py, with their oracle) drive two cores in
lockstep, the core as it ships and one with the short path switched off, and after every input
the two answers, the next deadlines and the snapshots must be the same to the bit (compared by
``repr``: -0.0 is not 0.0 there). Some worlds have every sensor and the drive report at the
same instants, as the simulator and the sensor hub do, so that most readings take the short
path.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import event, given

from tests.test_safety_properties import (
    LIMITS,
    PROGRAMS,
    PROPERTY_SETTINGS,
    SOURCES,
    Script,
    World,
    profile,
    scripts,
)
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import Accepted, Decision, State
from treadguard.safety.inputs import (
    DriveFailure,
    DriveFeedback,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    Reset,
    Sensor,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.programs import Program
from treadguard.safety.stop_baseline import StopKind


class _Counted(SafetyCore):
    """The core as it ships, counting the inputs that took the short path, by kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.short = 0
        self.by_kind: dict[type, int] = {}

    def _restamped(self, event: Input) -> bool:
        taken = super()._restamped(event)
        if taken:
            self.short += 1
            self.by_kind[type(event)] = self.by_kind.get(type(event), 0) + 1
        return taken


class _FullPass(SafetyCore):
    """The core with its short path off: every input through every rule."""

    def _restamped(self, event: Input) -> bool:
        return False


class _Lockstep(World):
    def __init__(self, script: Script, *, aligned: bool) -> None:
        super().__init__(script.default_program, script.seed, script.period_ms, script.tick_ms)
        self.core = self.counted = _Counted(
            LIMITS, PROGRAMS, default_program=script.default_program, commissioned_until=math.inf
        )
        self.reference = _FullPass(
            LIMITS, PROGRAMS, default_program=script.default_program, commissioned_until=math.inf
        )
        self.last: Decision | None = None
        self.last_deadline: float | None = None
        if aligned:
            # Sensors and drive due together from the start; with a fixed period they stay so.
            start = self.rng.randrange(0, script.period_ms[1])
            self.next_at = {src: start for src in SOURCES if src != "tablet"} | {
                "tablet": self.next_at["tablet"]
            }

    def feed(self, inp: Input) -> Decision:
        short_before = self.counted.short
        d = super().feed(inp)
        ref = self.reference.handle(inp)
        assert repr(d) == repr(ref), f"after {inp!r}"
        deadline = self.core.next_deadline()
        assert repr(deadline) == repr(self.reference.next_deadline())
        assert repr(self.core.snapshot()) == repr(self.reference.snapshot())
        # ``unchanged`` says the short path was taken, and then the Controller does nothing
        # (controller/control.py): so the speed is the one the decision before commanded, and
        # no deadline came earlier than the one armed before.
        assert self.counted.unchanged == (self.counted.short > short_before)
        if self.counted.unchanged:
            assert self.last is not None
            assert repr(d.speed_mph) == repr(self.last.speed_mph), f"after {inp!r}"
            assert (d.events, d.emergency_stop, d.reply) == ((), False, None)
            before = self.last_deadline
            assert before is None or deadline is None or deadline >= before, f"after {inp!r}"
        self.last, self.last_deadline = d, deadline
        return d


def _play(script: Script, *, aligned: bool) -> None:
    world = _Lockstep(script, aligned=aligned)
    world.run(world.rng.randint(0, 300))
    for action in script.actions:
        world.apply(action)
    event(f"short path taken: {world.counted.short > 0}")


@PROPERTY_SETTINGS
@given(scripts(profile(weights={"session": 4, "hold": 3, "silent": 2, "grip": 2, "fall": 2})))
def test_the_short_path_decides_as_the_full_pass_does(script: Script) -> None:
    _play(script, aligned=False)


@PROPERTY_SETTINGS
@given(
    scripts(
        profile(
            weights={"session": 4, "hold": 3, "silent": 2, "grip": 2, "fall": 2, "tick": 2},
            periods=((100, 100), (50, 50), (50, 50)),
        )
    )
)
def test_the_short_path_decides_as_the_full_pass_does_when_sensors_report_together(
    script: Script,
) -> None:
    _play(script, aligned=True)


class _Pair:
    """The shipped core and the full-pass one, fed the same inputs, compared after each."""

    def __init__(self, programs: dict[str, Program], default_program: str) -> None:
        self.short = _Counted(
            LIMITS, programs, default_program=default_program, commissioned_until=math.inf
        )
        self.full = _FullPass(
            LIMITS, programs, default_program=default_program, commissioned_until=math.inf
        )

    def feed(self, inp: Input) -> Decision:
        a, b = self.short.handle(inp), self.full.handle(inp)
        assert repr(a) == repr(b), f"after {inp!r}"
        assert repr(self.short.next_deadline()) == repr(self.full.next_deadline())
        assert repr(self.short.snapshot()) == repr(self.full.snapshot())
        return a

    def round_at(
        self,
        t: float,
        *,
        right: bool | None = True,
        speed: float | None = None,
        fault: DriveFailure | None = None,
        order: str = "tick",
    ) -> None:
        """One round at ``t``: the control tick, the drive's status (at ``speed``, by default
        the commanded one) and the three sensors, in the ``order`` given by what comes first
        (the tick, the status, or the sensors); the right hand holds on if ``right`` (None:
        its sensor is silent); a heartbeat every second."""
        sensors: list[Input] = [GripReading(t, Hand.LEFT, True), FallReading(t, False)]
        if right is not None:
            sensors.insert(1, GripReading(t, Hand.RIGHT, right))
        mph = self.full.commanded if speed is None else speed
        status = DriveFeedback(t, mph, fault, "" if fault is None else "injected")
        inputs = {
            "tick": [Tick(t), status, *sensors],
            "status": [status, Tick(t), *sensors],
            "sensors": [*sensors, Tick(t), status],
        }[order]
        for inp in inputs:
            self.feed(inp)
        if round(t * 10) % 10 == 0:
            self.feed(Heartbeat(t))

    def start(self, program: str, t0: float = 0.0) -> float:
        """A session started, its countdown run out and its belt at its speed for a few
        seconds: the time reached."""
        t = t0
        for k in range(5):
            t = t0 + k * 0.1
            self.round_at(t)
        self.feed(StartSession(t, "pat", program))
        for k in range(5, 100):
            t = t0 + k * 0.1
            self.round_at(t)
        assert self.full.state is State.RUNNING
        return t


def test_a_running_session_takes_the_short_path_for_most_inputs() -> None:
    """Not a path that is never taken: in a steady session most readings and drive statuses
    take it, and the decisions are still those of the full pass."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    before = dict(pair.short.by_kind)
    for k in range(300):
        # What comes first lets the time pass; what comes after it at that time is short.
        pair.round_at(t + (k + 1) * 0.1, order=("tick", "status", "sensors")[k % 3])
    assert pair.full.state is State.RUNNING
    after = pair.short.by_kind
    taken = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
    assert taken[GripReading] == 100 * 2 + 100 * 2 + 100 * 1
    assert taken[FallReading] == 100 + 100 + 100
    # The belt at its target: each status with the last one's speed, unless it came first.
    assert taken[DriveFeedback] == 100 + 100


def test_a_reading_that_changes_its_value_takes_the_full_pass() -> None:
    """A hand let go at an instant the core has already reached: a grip warning."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    pair.round_at(t + 0.1, right=False)
    assert pair.full.snapshot().grip == {Hand.LEFT: True, Hand.RIGHT: False}
    for k in range(2, 10):
        pair.round_at(t + k * 0.1)
    assert pair.full.state is State.RUNNING


def test_a_stale_sensor_that_reports_again_takes_the_full_pass() -> None:
    """The right grip's sensor silent for a second (stale: a grip warning, one hand), then
    back with the reading it last gave, at an instant the core has already reached: the view
    changes (the sensor is fresh again), so that reading is no mere stamp."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    for k in range(1, 11):
        pair.round_at(t + k * 0.1, right=None)
    assert Sensor.GRIP_RIGHT in pair.full.snapshot().stale
    for k in range(11, 20):
        pair.round_at(t + k * 0.1)
    assert pair.full.snapshot().stale == ()
    assert pair.full.state is State.RUNNING


def test_a_speed_step_still_due_after_a_pass_takes_the_full_pass() -> None:
    """Steps every 50 ms of belt time, inputs 200 ms apart: each pass makes one step and the
    next is already due, so the readings at the same instant are no mere stamps (each takes
    the next step)."""
    quick = Program(
        name="quick_steps",
        title="Test: a step every 50 ms",
        min_mph=0.8,
        max_mph=1.2,
        start_mph=0.8,
        step_mph=0.001,
        step_every_s=0.05,
        cap_s_default=60,
        cap_s_min=30,
        cap_s_max=120,
    )
    pair = _Pair({**PROGRAMS, "quick_steps": quick}, "quick_steps")
    t = pair.start("quick_steps")
    target = pair.full.target
    for k in range(1, 6):
        pair.round_at(t + k * 0.2)
    # Four steps due a round: the tick and the three inputs after it each take one.
    assert pair.full.target >= round(target + 5 * 4 * 0.001, 3) - 1e-9


def test_inputs_older_than_the_last_of_their_kind_take_the_full_pass() -> None:
    """A grip reading and a drive status overtaken on their way (stamped before the last of
    their kind, the same value): the full pass drops them, so the newer stamps (and their
    later deadlines) stand."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    for k in range(1, 10):
        now = t + k * 0.1
        pair.round_at(now)
        pair.feed(GripReading(now - 0.05, Hand.LEFT, True))
        pair.feed(DriveFeedback(now - 0.05, pair.full.commanded, None, ""))
    assert pair.full.state is State.RUNNING


def test_a_stop_being_timed_takes_every_drive_status_through_the_full_pass() -> None:
    """The stop-quality watch confirms a standstill by the status after the first that shows
    it, whatever its speed: the same (0), at an instant already reached, and no mere stamp."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    pair.feed(Stop(t))
    for k in range(1, 60):
        # The belt ahead of the ramp down: at 0 while the command still falls (within the
        # feedback tolerance), so that two statuses in a row show the same standstill.
        commanded = pair.full.commanded
        pair.round_at(t + k * 0.1, speed=commanded if commanded >= 0.25 else 0.0)
    assert pair.full.state is State.IDLE
    watch = pair.full.snapshot().stop_watch
    assert watch is not None
    assert watch.last == {StopKind.CONTROLLED: "no_baseline"}


def test_a_faulted_drive_status_takes_the_full_pass() -> None:
    """A status reporting a fault, at the speed of the last and an instant already reached:
    a fault latched (SR-9)."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    pair.round_at(t + 0.1, fault=DriveFailure.FAULT)
    assert pair.full.state is State.FAULT


def test_a_healthy_status_after_a_faulted_one_takes_the_full_pass() -> None:
    """At standstill, the drive reports a fault for a while, then none, at the same speed (0):
    the first status without it clears it (SR-6), so the reset that follows is accepted."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    for k in range(10):
        pair.round_at(k * 0.1)
    for k in range(10, 20):
        pair.round_at(k * 0.1, speed=0.0, fault=DriveFailure.FAULT)
    assert pair.full.state is State.FAULT
    for k in range(20, 30):
        pair.round_at(k * 0.1, speed=0.0)
    reset = pair.feed(Reset(3.0))
    assert isinstance(reset.reply, Accepted)
    assert reset.state is State.IDLE


class _FailsOnce(_Counted):
    """A rule pass that raises once when asked to (a bug in a rule, say)."""

    fail = False

    def _check(self) -> None:
        if self.fail:
            self.fail = False
            raise RuntimeError("a rule failed")
        super()._check()


def test_a_pass_cut_short_by_an_exception_settles_nothing() -> None:
    """The controller's callers log a failed input and go on (SR-15); the rules the failed
    pass did not finish run in full at the next input, however unremarkable it looks."""
    core = _FailsOnce(LIMITS, PROGRAMS, default_program="reverse_walking")
    for k in range(3):
        t = k * 0.1
        core.handle(Tick(t))
        core.handle(GripReading(t, Hand.LEFT, True))
        core.handle(GripReading(t, Hand.RIGHT, True))
    assert core.short > 0  # readings after a settled pass take the short path
    core.fail = True
    with pytest.raises(RuntimeError):
        core.handle(Tick(0.3))
    short = core.short
    core.handle(GripReading(0.2, Hand.LEFT, True))
    assert core.short == short
