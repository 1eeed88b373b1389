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
from treadguard.safety.decisions import Decision, State
from treadguard.safety.inputs import (
    DriveFeedback,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    Sensor,
    StartSession,
    Tick,
)
from treadguard.safety.programs import Program


class _Counted(SafetyCore):
    """The core as it ships, counting the inputs that took the short path."""

    short = 0

    def _restamped(self, event: Input) -> bool:
        taken = super()._restamped(event)
        self.short += taken
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
        if aligned:
            # Sensors and drive due together from the start; with a fixed period they stay so.
            start = self.rng.randrange(0, script.period_ms[1])
            self.next_at = {src: start for src in SOURCES if src != "tablet"} | {
                "tablet": self.next_at["tablet"]
            }

    def feed(self, inp: Input) -> Decision:
        d = super().feed(inp)
        ref = self.reference.handle(inp)
        assert repr(d) == repr(ref), f"after {inp!r}"
        assert repr(self.core.next_deadline()) == repr(self.reference.next_deadline())
        assert repr(self.core.snapshot()) == repr(self.reference.snapshot())
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

    def round_at(self, t: float, *, right: bool = True) -> None:
        """The control tick (the drive's status at the commanded speed), then the sensors,
        all at ``t``: the right grip's sensor only if ``right``."""
        self.feed(Tick(t))
        self.feed(DriveFeedback(t, self.full.commanded, None, ""))
        self.feed(GripReading(t, Hand.LEFT, True))
        if right:
            self.feed(GripReading(t, Hand.RIGHT, True))
        self.feed(FallReading(t, False))
        if round(t * 10) % 10 == 0:
            self.feed(Heartbeat(t))

    def start(self, program: str, t0: float = 0.0) -> float:
        """A session started and its countdown run out: the time reached."""
        t = t0
        for k in range(5):
            t = t0 + k * 0.1
            self.round_at(t)
        self.feed(StartSession(t, "pat", program))
        for k in range(5, 45):
            t = t0 + k * 0.1
            self.round_at(t)
        assert self.full.state is State.RUNNING
        return t


def test_a_running_session_takes_the_short_path_for_most_readings() -> None:
    """Not a path that is never taken: in a steady session most readings take it, and the
    decisions are still those of the full pass."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    before = pair.short.short
    for k in range(1, 300):
        pair.round_at(t + k * 0.1)
    assert pair.full.state is State.RUNNING
    # Each round's tick lets the time pass; its three readings come at that time.
    assert pair.short.short - before >= 2 * 299


def test_a_stale_sensor_that_reports_again_takes_the_full_pass() -> None:
    """The right grip's sensor silent for a second (stale: a grip warning, one hand), then
    back with the reading it last gave, at an instant the core has already reached: the view
    changes (the sensor is fresh again), so that reading is no mere stamp."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    for k in range(1, 11):
        pair.round_at(t + k * 0.1, right=False)
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
        step_mph=0.01,
        step_every_s=0.05,
        cap_s_default=60,
        cap_s_min=30,
        cap_s_max=120,
    )
    pair = _Pair({**PROGRAMS, "quick_steps": quick}, "quick_steps")
    t = pair.start("quick_steps")
    for k in range(1, 20):
        pair.round_at(t + k * 0.2)
    assert pair.full.target > 0.9  # stepped more than once a round


def test_a_reading_older_than_its_sensors_last_takes_the_full_pass() -> None:
    """A grip reading overtaken on its way (stamped before the sensor's last one, the same
    value): the full pass drops it, a safe reading older than the newest being superseded, so
    the sensor keeps its newer stamp (and its later deadline)."""
    pair = _Pair(PROGRAMS, "reverse_walking")
    t = pair.start("reverse_walking")
    for k in range(1, 10):
        now = t + k * 0.1
        pair.round_at(now)
        pair.feed(GripReading(now - 0.05, Hand.LEFT, True))
    assert pair.full.state is State.RUNNING


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
