"""Randomised whole-system sessions, judged by an oracle that does not trust the safety core.

A campaign session is a scenario (the format of ``docs/scenarios.md``) whose steps are drawn at
random: tablet commands with any values, a user who lets go, falls and gets up, sensors that go
silent or stick, a drive that is unplugged, faults or ignores writes, a brake that wears. It
runs through the daemon's own assembly on the virtual clock (``ScenarioRun``, as ``treadguard
simulate`` does), with the in-process simulated drive.

The oracle reads three records of the run, none of them the core's own state:

- the steps as drawn (what the user, the sensors, the drive and the tablet did, and when),
- every call the controller made on the driver (``command_speed`` and ``emergency_stop``),
- the belt's speed as the simulated physics has it, sampled every 50 ms,

and the events the system published. From them it checks what the safety requirements ask
(docs/requirements.md), as an outsider would see it (each rule names its requirement): the belt
never sped up after a stop until a new session was accepted (the field incidents of a treadmill
that sped up again after an on-screen stop, or restarted after STOP); a fall stops the belt at
once; both grips lost stop it within the debounce; a silent sensor counts as unsafe after its
time-out; a tablet gone quiet ends the session; a failing drive leaves the belt standing; no
start while a hand is off, the user is down or a stop is latched; nothing above the band; no
handler failure.

The oracle's bounds are those the requirements give plus one control tick; where a bound can
only be known from the core's own view (when exactly it saw a sensor go stale), the later of
the possible times is used, so that a correct core never fails a check.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from treadguard.config.loading import LoadedConfig, load_config
from treadguard.config.schema import SimulatedDriveSection, TreadguardConfig
from treadguard.controller.drives import Rig, simulated_belt_params
from treadguard.controller.simulation import HEARTBEAT_S, ScenarioResult, ScenarioRun
from treadguard.drivers.simulated import SimulatedBelt, SimulatedDriver
from treadguard.safety.decisions import Event, EventType, Reply
from treadguard.safety.inputs import FallReading, GripReading, Hand, TabletCommand
from treadguard.safety.limits import HARD_MAX_MPH, STANDSTILL_MPH
from treadguard.simulator.belt import Belt
from treadguard.simulator.scenario import Scenario
from treadguard.simulator.virtual_loop import VirtualLoop

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "config" / "sim.toml"

EPS = 1e-6
BELT_SAMPLE_S = 0.05
USERS = ("p-001", "p-002")
GRIPS = ("grip_left", "grip_right")
SENSORS = (*GRIPS, "fall")
# The tablet's commands: each counts as the tablet being there (SR-12).
TABLET = frozenset({"start_session", "set_speed", "stop", "estop", "reset"})
# A stop that holds until a reset (SR-6).
LATCH_EVENTS = frozenset({EventType.ESTOP, EventType.FAULT})


# --------------------------------------------------------------------------- the run


class ObservedDriver(SimulatedDriver):
    """The in-process simulated driver, recording every call the controller makes on it."""

    def __init__(self, belt: SimulatedBelt, clock: Callable[[], float], log: list[Entry]) -> None:
        super().__init__(belt, clock)
        # (time, mph) for command_speed; (time, None) for emergency_stop.
        self.calls: list[tuple[float, float | None]] = []
        self._log = log

    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        call = (self._clock(), mph)
        self.calls.append(call)
        self._log.append(("call", *call))
        super().command_speed(mph, slowing=slowing)

    def emergency_stop(self) -> None:
        call = (self._clock(), None)
        self.calls.append(call)
        self._log.append(("call", *call))
        super().emergency_stop()


# What happened in the order it happened, within an instant too: ("call", t, mph or None),
# ("command", t, its type) as the tablet's command reaches the system, ("reading", t, the
# GripReading or FallReading a sensor reported), ("event", t, Event). The controller asks the
# driver before it publishes the events of the same decision: a decision's events follow its
# call.
Entry = tuple[str, float, Any]


@dataclass
class Record:
    scenario: Scenario
    result: ScenarioResult
    log: list[Entry]
    calls: list[tuple[float, float | None]]
    belt: list[tuple[float, float]]
    events: list[Event]
    config: TreadguardConfig


_LOADED: list[LoadedConfig] = []


def loaded_config() -> LoadedConfig:
    if not _LOADED:
        _LOADED.append(load_config(SIM_CONFIG))
    return _LOADED[0]


def run_session(scenario: Scenario, plant: Callable[[ScenarioRun], None] | None = None) -> Record:
    """The scenario through the daemon's assembly on the virtual clock, observed.
    ``plant``: a defect planted in the run before it starts (the oracle's own tests)."""
    loaded = loaded_config()
    loop = VirtualLoop()
    drive = loaded.config.drive
    assert isinstance(drive, SimulatedDriveSection)
    belt = Belt(simulated_belt_params(drive), t0=loop.time())
    log: list[Entry] = []
    driver = ObservedDriver(belt, loop.time, log)
    rig = Rig(belt=belt, driver=driver, unplug=driver.unplug, plug=driver.plug)
    run = ScenarioRun(scenario, "campaign", loaded, loop, rig=rig)
    samples: list[tuple[float, float]] = []
    # The defect first, then the observers around it: the log holds what the world did (the
    # readings the sensors reported, the commands the tablet sent), whatever a planted
    # defect then does with them.
    if plant is not None:
        plant(run)
    execute = run.system.execute
    submit_reading = run.system.submit_reading

    def observed_execute(command: TabletCommand, *, proof_run: bool = False) -> Reply | None:
        log.append(("command", loop.time(), command.TYPE.value))
        return execute(command, proof_run=proof_run)

    def observed_reading(reading: GripReading | FallReading) -> None:
        log.append(("reading", loop.time(), reading))
        submit_reading(reading)

    # Seen as the runner hands each over (observation only: the system's own methods do the
    # work).
    run.system.execute = observed_execute  # type: ignore[method-assign]
    run.system.submit_reading = observed_reading  # type: ignore[method-assign]
    run.system.subscribe(lambda ev: log.append(("event", ev.t, ev)), name="campaign")

    def sample() -> None:
        t = loop.time()
        belt.advance(t)
        samples.append((t, belt.speed_mph))
        loop.call_at(t + BELT_SAMPLE_S, sample)

    run.start()
    run.schedule_ticks()
    sample()
    loop.run_until(scenario.end)
    result = run.finish()
    return Record(scenario, result, log, driver.calls, samples, list(run.events), loaded.config)


# --------------------------------------------------------------------------- the oracle


@dataclass
class Truth:
    """What happened outside the daemon, replayed from the steps: per sensor, from when it
    was unsafe as the daemon could know it (a released grip or a fall as reported, stuck or
    not; a silent sensor once its time-out has run), as (time, unsafe) changes."""

    sensors: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    # Times the tablet was heard from (heartbeats and commands).
    presence: list[float] = field(default_factory=list)
    # Intervals during which the drive was failing (unplugged or faulty).
    drive_trouble: list[tuple[float, float]] = field(default_factory=list)
    # Intervals during which the drive ignored every write. The in-process simulated driver
    # delivers every poll, and so feeds the simulated drive's deadman whatever it ignores:
    # what a real driver does then (SR-9's silence) is proven over real wires instead
    # (tests/test_link_policy.py, the drivers' fault tests), not here.
    deaf: list[tuple[float, float]] = field(default_factory=list)

    # When a drive's fault could first be read in a status (the fault reported while the
    # cable is in, or the cable plugged back in while the fault stands).
    faults_reported: list[float] = field(default_factory=list)
    # When a drive's fault went away (drive_ok).
    faults_cleared: list[float] = field(default_factory=list)
    # When the drive's cable was out.
    unplugged: list[tuple[float, float]] = field(default_factory=list)
    # Per sensor, the stretches during which it has been silent past its time-out.
    stale: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def deaf_during(self, start: float, end: float) -> bool:
        return any(a <= end and start <= b for a, b in self.deaf)

    def silences_at(self, t: float) -> set[str]:
        """The sensors silent past their time-out at ``t``."""
        return {s for s, spans in self.stale.items() if any(a <= t < b for a, b in spans)}

    def unsafe_since(self, sensor: str, t: float) -> float | None:
        """The start of the unsafe stretch ``t`` is in, or None if safe at ``t``."""
        changes = self.sensors[sensor]
        i = bisect.bisect_right(changes, (t, True)) - 1
        if i < 0 or not changes[i][1]:
            return None
        while i > 0 and changes[i - 1][1]:
            i -= 1
        return changes[i][0]

    def stretches(self, sensor: str, end: float) -> list[tuple[float, float]]:
        """Unsafe stretches as (from, until)."""
        out: list[tuple[float, float]] = []
        start: float | None = None
        for t, unsafe in self.sensors[sensor]:
            if unsafe and start is None:
                start = t
            elif not unsafe and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, end))
        return out


def replay(scenario: Scenario, timeout_s: float) -> Truth:
    world = scenario.world
    held = {"grip_left": world.left_hand, "grip_right": world.right_hand}
    fallen = world.fallen
    stuck: dict[str, bool] = {}
    silent_since: dict[str, float] = {}
    unplugged = fault = False
    unplugged_from = 0.0
    deaf_from: float | None = None
    trouble_from: float | None = None
    truth = Truth(sensors={s: [] for s in SENSORS})
    commands: list[float] = []

    def reported_unsafe(sensor: str) -> bool:
        value = stuck.get(sensor)
        if sensor == "fall":
            return fallen if value is None else value
        return (not held[sensor]) if value is None else (not value)

    # Every moment something may change: the steps, and each silence's time-out.
    steps = sorted(enumerate(scenario.step), key=lambda pair: (pair[1].at, pair[0]))
    moments: list[tuple[float, int, Any]] = [(s.at, i, s) for i, s in steps]
    silences: list[tuple[float, str, float]] = []  # (time-out at, sensor, silent since)
    state_at: dict[str, bool] = dict.fromkeys(SENSORS, False)

    def heard_again(sensor: str, t: float) -> None:
        since = silent_since.pop(sensor, None)
        if since is not None and t > since + timeout_s:
            truth.stale.setdefault(sensor, []).append((since + timeout_s, t))

    def note(sensor: str, t: float, unsafe: bool) -> None:
        changes = truth.sensors[sensor]
        if not changes or changes[-1][1] != unsafe:
            changes.append((t, unsafe))

    def settle(t: float) -> None:
        for sensor in SENSORS:
            since = silent_since.get(sensor)
            if since is not None and t >= since + timeout_s:
                unsafe = True
            elif since is not None:
                unsafe = state_at[sensor]  # what it last said stands until its time-out
            else:
                unsafe = reported_unsafe(sensor)
            state_at[sensor] = unsafe
            note(sensor, t, unsafe)

    for sensor in SENSORS:
        state_at[sensor] = reported_unsafe(sensor)
        note(sensor, 0.0, state_at[sensor])
    for at, _, step in moments:
        # Time-outs of silences that ran before this step.
        for due, sensor, since in sorted(silences):
            if due <= at and silent_since.get(sensor) == since:
                settle(due)
        silences = [x for x in silences if x[0] > at]
        do = step.do.value if step.do is not None else None
        if do in TABLET:
            commands.append(at)
        match do:
            case "release" | "grip":
                hands = GRIPS if step.hand == "both" else (f"grip_{step.hand}",)
                for sensor in hands:
                    held[sensor] = do == "grip"
            case "fall" | "get_up":
                fallen = do == "fall"
            case "sensor_silent":
                assert step.sensor is not None
                if step.sensor not in silent_since:
                    silent_since[step.sensor] = at
                    silences.append((at + timeout_s, step.sensor, at))
            case "sensor_back":
                assert step.sensor is not None
                heard_again(step.sensor, at)
                stuck.pop(step.sensor, None)
            case "sensor_stuck":
                assert step.sensor is not None
                assert step.value is not None
                stuck[step.sensor] = step.value
                heard_again(step.sensor, at)
            case "tablet_returns":
                commands.append(at)
            case "drive_unplug":
                if not unplugged:
                    unplugged_from = at
                unplugged = True
            case "drive_plug":
                if unplugged:
                    truth.unplugged.append((unplugged_from, at))
                    if fault:
                        truth.faults_reported.append(at)
                unplugged = False
            case "drive_fault":
                if not fault and not unplugged:
                    truth.faults_reported.append(at)
                fault = True
            case "drive_ignores_writes":
                if deaf_from is None:
                    deaf_from = at
            case "drive_ok":
                if fault:
                    truth.faults_cleared.append(at)
                fault = False
                if deaf_from is not None:
                    truth.deaf.append((deaf_from, at))
                    deaf_from = None
            case _:
                pass
        settle(at)
        # A drive that only ignores writes is no trouble while the belt does what it was
        # last asked; the stop it then ignores is judged by check_stops_stop.
        troubled = unplugged or fault
        if troubled and trouble_from is None:
            trouble_from = at
        elif not troubled and trouble_from is not None:
            truth.drive_trouble.append((trouble_from, at))
            trouble_from = None
    for due, sensor, since in sorted(silences):
        if silent_since.get(sensor) == since and due <= scenario.end:
            settle(due)
    if unplugged:
        truth.unplugged.append((unplugged_from, math.inf))
    for sensor, since in silent_since.items():
        truth.stale.setdefault(sensor, []).append((since + timeout_s, math.inf))
    if trouble_from is not None:
        truth.drive_trouble.append((trouble_from, math.inf))
    if deaf_from is not None:
        truth.deaf.append((deaf_from, math.inf))
    # Heartbeats: one a second while the tablet is there (the runner's, from time 0).
    present = world.tablet
    changes = [
        (s.at, s.do.value)
        for _, s in steps
        if s.do is not None and s.do.value in ("tablet_leaves", "tablet_returns")
    ]
    k = 0
    j = 0
    while k * HEARTBEAT_S <= scenario.end:
        t = k * HEARTBEAT_S
        # A change at the heartbeat's own instant counts after it: the later deadline.
        while j < len(changes) and changes[j][0] < t:
            present = changes[j][1] == "tablet_returns"
            j += 1
        if present:
            commands.append(t)
        k += 1
    truth.presence = sorted(commands)
    return truth


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.violations.append(text)


# After one of these the speed asked must not rise until a start is made again (a session
# accepted, or the countdown of an interval after its rest).
STOP_TRIGGERS = frozenset(
    {EventType.STOPPING, EventType.SESSION_ENDED, EventType.ESTOP, EventType.FAULT}
)
RESTARTS = frozenset({EventType.SESSION_STARTED, EventType.COUNTDOWN})


class Oracle:
    def __init__(self, record: Record) -> None:
        self.r = record
        cfg = record.config
        self.safety = cfg.safety
        assert isinstance(cfg.drive, SimulatedDriveSection)  # the in-process drive
        self.drive = cfg.drive
        self.tick = 1.0 / cfg.control.tick_hz
        self.truth = replay(record.scenario, self.safety.sensor_timeout_s)
        self.belt_t = [t for t, _ in record.belt]
        self.call_t = [t for t, _ in record.calls]
        self.events = record.events
        self.verdict = Verdict()
        programs = loaded_config().programs
        # A first session counts once it has run its program's shortest cap (SR-7, the
        # progression rules' default; the campaign draws no clinician's confirmation).
        self.first_minimum = min(
            (p.cap_s_min for p in programs.values() if p.first_session), default=0.0
        )

    # ----------------------------------------------------------- reading the records

    def belt_at(self, t: float) -> float:
        i = bisect.bisect_right(self.belt_t, t + EPS) - 1
        return self.r.belt[i][1] if i >= 0 else 0.0

    def moving_at(self, t: float) -> bool:
        return self.belt_at(t) > STANDSTILL_MPH

    def commanded_at(self, t: float) -> float:
        """The speed last asked of the drive at ``t`` (0 after an emergency stop)."""
        i = bisect.bisect_right(self.call_t, t + EPS) - 1
        if i < 0:
            return 0.0
        mph = self.r.calls[i][1]
        return 0.0 if mph is None else mph

    def estopped_by(self, deadline: float) -> bool:
        """The last word to the drive by ``deadline`` was an emergency stop (or a speed of 0
        after one): nothing has asked the belt to move since."""
        stopped = False
        for when, mph in self.r.calls:
            if when > deadline + EPS:
                break
            if mph is None:
                stopped = True
            elif mph > 0.0:
                stopped = False
        return stopped

    def events_of(self, kinds: Iterable[EventType]) -> list[Event]:
        wanted = frozenset(kinds)
        return [ev for ev in self.events if ev.type in wanted]

    def latched_at(self, t: float) -> bool:
        latched = False
        for ev in self.events:
            if ev.t > t + EPS:
                break
            if ev.type in LATCH_EVENTS:
                latched = True
            elif ev.type is EventType.RESET:
                latched = False
        return latched

    def open_sessions_at(self, t: float) -> bool:
        opened: set[object] = set()
        for ev in self.events:
            if ev.t > t + EPS:
                break
            if ev.type is EventType.SESSION_STARTED:
                opened.add(ev.fields.get("session_id"))
            elif ev.type is EventType.SESSION_ENDED:
                opened.discard(ev.fields.get("session_id"))
        return bool(opened)

    def _decisions(self) -> list[tuple[int, float, float | None, list[Event]]]:
        """Every driver call with the events of its decision (those logged right after it)."""
        log = self.r.log
        out: list[tuple[int, float, float | None, list[Event]]] = []
        for i, (kind, when, what) in enumerate(log):
            if kind != "call":
                continue
            events: list[Event] = []
            for later_kind, _, later in log[i + 1 :]:
                if later_kind != "event":
                    break
                events.append(later)
            out.append((i, when, what, events))
        return out

    # ----------------------------------------------------------- the checks

    def check(self) -> list[str]:
        self.check_handled()
        self.check_envelope()
        self.check_band()
        self.check_no_speed_up_after_a_stop()
        self.check_starts()
        self.check_latch()
        self.check_fall()
        self.check_grips()
        self.check_tablet()
        self.check_drive()
        self.check_stops_stop()
        self.check_first_session()
        return self.verdict.violations

    def check_handled(self) -> None:
        """SR-15: every command answered, none by a failure; the runner's own checks (SR-1,
        SR-2, SR-7 as ``finish`` measures them) hold."""
        if "internal_error" in self.r.result.refusals:
            self.verdict.fail("a command was answered internal_error (SR-15)")
        for failure in self.r.result.failures:
            self.verdict.fail(f"the run's own check: {failure}")

    def check_envelope(self) -> None:
        """SR-1: every speed asked is a number between 0 and the hard limit; the belt never
        runs above it."""
        for when, mph in self.r.calls:
            if mph is not None and not (0.0 <= mph <= HARD_MAX_MPH + EPS):
                self.verdict.fail(f"{when:.3f} s: commanded {mph!r} mph (SR-1)")
        top = max((v for _, v in self.r.belt), default=0.0)
        if top > HARD_MAX_MPH + 1e-3:
            self.verdict.fail(f"the belt ran at {top:.3f} mph, above {HARD_MAX_MPH} (SR-1)")

    def check_band(self) -> None:
        """SR-1: below the band only on a ramp from 0 or to 0: a speed below it is never held
        from one moment to the next, except by the one decision that turns a ramp up into a
        ramp down (which then falls)."""
        low = self.safety.min_mph
        calls = [(t, 0.0 if v is None else v) for t, v in self.r.calls]
        i = 0
        while i < len(calls):
            t0, v = calls[i]
            j = i
            while j + 1 < len(calls) and calls[j + 1][1] == v:
                j += 1
            if 0.0 < v < low - EPS:
                moments = sorted({t for t, _ in calls[i : j + 1]})
                after = calls[j + 1][1] if j + 1 < len(calls) else None
                held_long = len(moments) > 2
                turned = len(moments) == 2 and after is not None and after < v
                if held_long or (len(moments) == 2 and not turned and after is not None):
                    self.verdict.fail(
                        f"{t0:.3f} s: {v:.3f} mph, below the band, held until "
                        f"{moments[-1]:.3f} s (SR-1)"
                    )
            i = j + 1

    def check_no_speed_up_after_a_stop(self) -> None:
        """SR-6, SR-12 and the field incidents: after a tablet stop or E-STOP (accepted or
        not), a controlled stop of any cause, an emergency stop, a fault or a session's end,
        the speed asked of the drive never rises until a start is made again (a session
        accepted, or an interval's countdown after its rest); and the decision that makes a
        stop never asks for more than the one before it. Read in the order things happened,
        so that a command and a stop at the same instant are told apart."""
        stopped_at: float | None = None
        previous = 0.0
        decisions = {i: events for i, _, _, events in self._decisions()}
        for i, (kind, when, what) in enumerate(self.r.log):
            if (kind == "command" and what in ("stop", "estop")) or (
                kind == "event" and what.type in STOP_TRIGGERS
            ):
                stopped_at = when
            elif kind == "event" and what.type in RESTARTS:
                stopped_at = None
            elif kind == "call":
                value = 0.0 if what is None else what
                own = [ev for ev in decisions[i] if ev.type in STOP_TRIGGERS]
                if value > previous + EPS and (stopped_at is not None or own):
                    at = when if stopped_at is None else stopped_at
                    self.verdict.fail(
                        f"{when:.3f} s: the speed asked rose from {previous:.3f} to "
                        f"{value:.3f} mph in or after a stop at {at:.3f} s, with no start "
                        "made since (SR-6, SR-12)"
                    )
                previous = value

    def check_starts(self) -> None:
        """SR-3: the belt is asked to move from rest only after the countdown, with both
        grips held and no fall as last reported, every sensor reporting, and the drive
        answering."""
        previous = 0.0
        last: dict[str, bool] = {}  # per sensor, unsafe as last reported
        countdown: Event | None = None
        for kind, when, what in self.r.log:
            if kind == "reading":
                if isinstance(what, FallReading):
                    last["fall"] = what.fallen
                else:
                    sensor = "grip_left" if what.hand is Hand.LEFT else "grip_right"
                    last[sensor] = not what.held
                continue
            if kind == "event":
                if what.type is EventType.COUNTDOWN:
                    countdown = what
                elif what.type in (EventType.SESSION_ENDED, EventType.ESTOP, EventType.FAULT):
                    countdown = None
                continue
            if kind != "call":
                continue
            value = 0.0 if what is None else what
            if previous <= 0.0 < value:
                self._judge_start(when, last, countdown)
            previous = value

    def _judge_start(self, when: float, last: dict[str, bool], countdown: Event | None) -> None:
        for sensor in SENSORS:
            if last.get(sensor, True):
                self.verdict.fail(
                    f"{when:.3f} s: the belt was asked to move with {sensor} last reported "
                    "unsafe, or never reported (SR-3)"
                )
            since = self.truth.unsafe_since(sensor, when)
            stale = sensor in self.truth.silences_at(when)
            if stale and since is not None and since < when - EPS:
                self.verdict.fail(
                    f"{when:.3f} s: the belt was asked to move with {sensor} silent past its "
                    f"time-out since {since:.3f} s (SR-3, SR-8)"
                )
        if countdown is None:
            self.verdict.fail(f"{when:.3f} s: the belt was asked to move with no countdown (SR-3)")
        elif when - countdown.t < self.safety.countdown_s - EPS:
            self.verdict.fail(
                f"{when:.3f} s: the belt was asked to move {when - countdown.t:.3f} s after "
                f"the countdown began, not {self.safety.countdown_s:g} s (SR-3)"
            )
        for start, end in self.truth.drive_trouble:
            # A dead link is known after its time-out; a fault at the next status.
            if start + self.safety.drive_timeout_s + self.tick < when < end - EPS:
                self.verdict.fail(
                    f"{when:.3f} s: the belt was asked to move while the drive had "
                    f"been failing since {start:.3f} s (SR-3, SR-9)"
                )

    def check_latch(self) -> None:
        """SR-6: no session starts while a stop is latched; a reset only at standstill."""
        latched_since: float | None = None
        for ev in self.events:
            if ev.type in LATCH_EVENTS and latched_since is None:
                latched_since = ev.t
            elif ev.type is EventType.RESET:
                if self.belt_at(ev.t) > 2 * STANDSTILL_MPH:
                    self.verdict.fail(
                        f"{ev.t:.3f} s: reset accepted with the belt at "
                        f"{self.belt_at(ev.t):.3f} mph (SR-6)"
                    )
                latched_since = None
            elif ev.type is EventType.SESSION_STARTED and latched_since is not None:
                self.verdict.fail(
                    f"{ev.t:.3f} s: a session started while a stop was latched since "
                    f"{latched_since:.3f} s (SR-6)"
                )

    def check_fall(self) -> None:
        """SR-5, SR-13: a fall reported while the belt moves (or is asked to) is an emergency
        stop in the same instant, before anything else is asked of the drive; SR-8: a silent
        fall sensor's time-out is one within a tick."""
        log = self.r.log
        for i, (kind, when, what) in enumerate(log):
            if not (kind == "reading" and isinstance(what, FallReading) and what.fallen):
                continue
            if not (self.moving_at(when) or self.commanded_at(when) > 0.0):
                continue
            if self.estopped_by(when - EPS) and not self.moving_at(when):
                continue
            following = next((e for e in log[i + 1 :] if e[0] == "call"), None)
            already = self.estopped_by(when - EPS)
            if not already and (
                following is None or following[2] is not None or following[1] > when + EPS
            ):
                self.verdict.fail(
                    f"{when:.3f} s: a fall reported with the belt moving, and the next word "
                    "to the drive was not an emergency stop at once (SR-5, SR-13)"
                )
        end = self.r.scenario.end
        for start, _until in self.truth.stretches("fall", end):
            if "fall" not in self.truth.silences_at(start):
                continue
            if self.moving_at(start) or self.commanded_at(start) > 0.0:
                deadline = start + self.tick
                if not self.estopped_by(deadline):
                    self.verdict.fail(
                        f"{start:.3f} s: fall sensor silent past its time-out with the belt "
                        f"moving, no emergency stop by {deadline:.3f} s (SR-5, SR-8)"
                    )

    def check_grips(self) -> None:
        """SR-4 as amended: the time both grips are lost (or silent past their time-out)
        counts up, the time they hold counts down (never below 0), while the belt is asked to
        move; when the count passes the debounce with the belt moving, an emergency stop."""
        end = self.r.scenario.end
        left = self.truth.stretches("grip_left", end)
        right = self.truth.stretches("grip_right", end)
        lost: list[tuple[float, float]] = []
        for a0, a1 in left:
            for b0, b1 in right:
                lo, hi = max(a0, b0), min(a1, b1)
                if lo <= hi:
                    lost.append((lo, hi))
        moments = sorted(
            {0.0, end, *(t for pair in lost for t in pair), *(t for t, _ in self.r.calls)}
        )
        debounce = self.safety.grip_debounce_s
        count = 0.0
        for t0, t1 in itertools.pairwise(moments):
            if t1 <= t0:
                continue
            asked = self.commanded_at(t0) > 0.0
            both = any(lo <= t0 + EPS and t1 <= hi + EPS for lo, hi in lost)
            if not asked:
                count = 0.0  # (lenient: the core may carry it on; never counts more)
                continue
            if not both:
                count = max(0.0, count - (t1 - t0))
                continue
            if count + (t1 - t0) > debounce:
                crossing = t0 + max(0.0, debounce - count)
                deadline = crossing + self.tick
                if self.moving_at(crossing) and not self.estopped_by(deadline):
                    self.verdict.fail(
                        f"{crossing:.3f} s: both grips lost for the debounce (counted as "
                        f"SR-4 says) with the belt moving, no emergency stop by "
                        f"{deadline:.3f} s (SR-4)"
                    )
                    return
            count += t1 - t0

    def check_tablet(self) -> None:
        """SR-12: a session the tablet has not been heard from for the grace period is
        stopped (a stop for the tablet's loss, or one already under way that then ends it), the
        speed asked reaches 0, and nothing starts again until the tablet is heard from."""
        grace = self.safety.heartbeat_grace_s
        presence = self.truth.presence
        end = self.r.scenario.end
        ramp_s = HARD_MAX_MPH / self.safety.decel_mph_s + 2 * self.tick + 1.0
        for i, heard in enumerate(presence):
            following = presence[i + 1] if i + 1 < len(presence) else math.inf
            deadline = heard + grace + self.tick
            if following <= deadline or deadline > end or not self.open_sessions_at(heard):
                continue
            window = [ev for ev in self.events if heard - EPS <= ev.t <= deadline + EPS]
            told = any(
                ev.type in (EventType.SESSION_ENDED, EventType.ESTOP, EventType.FAULT)
                or (ev.type is EventType.STOPPING and ev.fields.get("reason") == "tablet_lost")
                for ev in window
            )
            stopping = False
            for ev in self.events:
                if ev.t > deadline + EPS:
                    break
                if ev.type is EventType.STOPPING:
                    stopping = True
                elif ev.type in RESTARTS:
                    stopping = False
            if not (told or stopping):
                self.verdict.fail(
                    f"{heard:.3f} s: tablet last heard, and the session not stopped by "
                    f"{deadline:.3f} s (SR-12)"
                )
                continue
            for ev in self.events:
                if deadline + EPS < ev.t < following - EPS and ev.type in RESTARTS:
                    self.verdict.fail(
                        f"{ev.t:.3f} s: {ev.type.value} with the tablet not heard since "
                        f"{heard:.3f} s (SR-12)"
                    )
            settled = deadline + ramp_s
            if settled < min(following, end) and self.commanded_at(settled) > 0.0:
                self.verdict.fail(
                    f"{heard:.3f} s: tablet last heard; still asking "
                    f"{self.commanded_at(settled):.3f} mph at {settled:.3f} s (SR-12)"
                )

    def check_drive(self) -> None:
        """SR-9: a drive that reports a fault is latched within a status read; one that stops
        answering or faults leaves the belt at standstill (treadguard's stop, or the drive's
        own deadman) within a bound."""
        end = self.r.scenario.end
        for at in self.truth.faults_reported:
            deadline = at + self.tick + EPS
            # (A cable pulled before the next status read hides the fault: the link's loss
            # is judged instead.)
            cut = any(a <= deadline and at <= b for a, b in self.truth.unplugged)
            # (And a fault gone again before a status read is one no status carried.)
            gone = any(at <= c <= deadline for c in self.truth.faults_cleared)
            if deadline < end and not cut and not gone and not self.latched_at(deadline):
                self.verdict.fail(
                    f"{at:.3f} s: the drive reported a fault, nothing latched by "
                    f"{deadline:.3f} s (SR-9)"
                )
        for start, until in self.truth.drive_trouble:
            deadline = start + self._stop_bound(self.drive.decel_mph_s)
            if self.truth.deaf_during(start, deadline):
                continue
            if deadline < min(until, end) and self.moving_at(deadline):
                self.verdict.fail(
                    f"{start:.3f} s: the drive failing, the belt still at "
                    f"{self.belt_at(deadline):.3f} mph at {deadline:.3f} s (SR-9)"
                )

    def check_stops_stop(self) -> None:
        """SR-9: an emergency stop stops the belt, whatever the drive does with it: if the drive
        ignores it, treadguard falls silent and the drive's own deadman stops the belt."""
        d = self.drive
        end = self.r.scenario.end
        calls = self.r.calls
        for i, (when, mph) in enumerate(calls):
            if mph is not None:
                continue
            moved_again = next((t for t, v in calls[i + 1 :] if v is not None and v > 0.0), None)
            deadline = when + self._stop_bound(d.estop_decel_mph_s)
            if self.truth.deaf_during(when, deadline):
                continue
            still_stopped = moved_again is None or moved_again > deadline
            if deadline < end and still_stopped and self.moving_at(deadline):
                self.verdict.fail(
                    f"{when:.3f} s: emergency stop sent, the belt still at "
                    f"{self.belt_at(deadline):.3f} mph at {deadline:.3f} s (SR-9)"
                )

    def _stop_bound(self, decel_mph_s: float) -> float:
        """From a stop's trigger to standstill at worst: the link's time-out and the stop's
        confirmation bound before treadguard falls silent, the drive's deadman, its lag, and
        braking from the top speed with the brake as worn as it ever is in the run (on the
        drive's own ramp, if slower)."""
        d = self.drive
        scenario = self.r.scenario
        wears = [scenario.world.brake_wear, *(s.wear for s in scenario.step if s.wear is not None)]
        decel = min(decel_mph_s, d.decel_mph_s) * (1.0 - max(wears))
        return (
            self.safety.drive_timeout_s
            + 0.3
            + d.deadman_s
            + d.lag_s * 5
            + HARD_MAX_MPH / decel
            + 2 * self.tick
        )

    def check_first_session(self) -> None:
        """SR-7: until a user's first session counts (it ran its program's shortest cap), each
        of their sessions is held to the first-session limit (300 s)."""
        history = self.r.scenario.world.history
        counted: set[str] = {user for user, n in history.items() if n > 0}
        for ev in self.events_of({EventType.SESSION_STARTED, EventType.SESSION_ENDED}):
            user = str(ev.fields.get("user"))
            if ev.type is EventType.SESSION_ENDED:
                belt = ev.fields.get("belt_moving_s")
                if isinstance(belt, int | float) and belt >= self.first_minimum - EPS:
                    counted.add(self._user_of(ev))
                continue
            cap = ev.fields.get("cap_s")
            if user not in counted and isinstance(cap, int | float) and cap > 300.0 + EPS:
                self.verdict.fail(
                    f"{ev.t:.3f} s: {user}, whose first session has not counted yet, "
                    f"started with a cap of {cap} s (SR-7)"
                )

    def _user_of(self, ended: Event) -> str:
        for ev in self.events_of({EventType.SESSION_STARTED}):
            if ev.fields.get("session_id") == ended.fields.get("session_id"):
                return str(ev.fields.get("user"))
        return ""


# --------------------------------------------------------------------------- drawing


def _times(end: float) -> st.SearchStrategy[float]:
    # On the sensors' and the tick's grid (where orderings within an instant matter), or
    # anywhere.
    return st.one_of(
        st.integers(0, int(end * 20) - 1).map(lambda k: k / 20),
        st.floats(0.0, end - 0.001, allow_nan=False),
    )


_ODD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1.0])
_SPEEDS = st.one_of(
    st.floats(0.7, 1.3, allow_nan=False), st.sampled_from([0.8, 1.0, 1.2]), _ODD_NUMBERS
)
_CAPS = st.one_of(
    st.sampled_from([180.0, 300.0, 480.0, 60.0, 5.0]), st.floats(0.0, 700.0), _ODD_NUMBERS
)
_PROGRAMS = st.sampled_from([None, None, "first_session", "reverse_walking", "intervals", "x"])
_USER = st.one_of(st.sampled_from(USERS), st.text(max_size=8))
_HAND = st.sampled_from(["left", "right", "both"])
_SENSOR = st.sampled_from(list(SENSORS))


def _step(do: str, **params: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"do": st.just(do), **params})


# Built once: a strategy made afresh for every draw (flatmap) cost more than the session.
_ACTIONS = st.one_of(
    st.fixed_dictionaries(
        {"do": st.just("start_session"), "user": _USER},
        optional={"program": _PROGRAMS.filter(bool), "cap_s": _CAPS, "target_mph": _SPEEDS},
    ),
    _step("set_speed", mph=_SPEEDS),
    _step("stop"),
    _step("estop"),
    _step("reset"),
    _step("tablet_leaves"),
    _step("tablet_returns"),
    _step("release", hand=_HAND),
    _step("grip", hand=_HAND),
    _step("fall"),
    _step("get_up"),
    _step("sensor_silent", sensor=_SENSOR),
    _step("sensor_back", sensor=_SENSOR),
    _step("sensor_stuck", sensor=_SENSOR, value=st.booleans()),
    _step("drive_unplug"),
    _step("drive_plug"),
    _step("drive_fault"),
    _step("drive_ignores_writes"),
    _step("drive_ok"),
    _step("brake_wear", wear=st.floats(0.0, 0.6)),
)


@st.composite
def sessions(draw: st.DrawFn) -> Scenario:
    """One campaign session: a start by a known user early on (most runs), then up to 12
    random steps anywhere in the run."""
    end = float(draw(st.integers(8, 90)))
    steps: list[dict[str, Any]] = []
    if draw(st.integers(0, 9)) > 0:
        steps.append(
            {
                # (Not at 0: the drive's first status is read then; a start needs it.)
                "at": draw(st.sampled_from([0.5, 1.0, 2.05])),
                "do": "start_session",
                "user": draw(st.sampled_from(USERS)),
            }
        )
    for _ in range(draw(st.integers(0, 12))):
        steps.append({"at": draw(_times(end)), **draw(_ACTIONS)})
    world = {
        "left_hand": draw(st.sampled_from([True, True, True, False])),
        "right_hand": draw(st.sampled_from([True, True, True, False])),
        "history": draw(
            st.dictionaries(st.sampled_from(USERS), st.sampled_from([0, 1, 3]), max_size=2)
        ),
        "commissioned": draw(st.sampled_from([True, True, True, True, False])),
    }
    return Scenario.model_validate(
        {"name": "campaign session", "end": end, "world": world, "step": steps}
    )


def describe(scenario: Scenario) -> str:
    """The drawn session as the steps a person reads (and can write into a scenario file)."""
    lines = [f"end = {scenario.end:g}; world = {scenario.world.model_dump(exclude_defaults=True)}"]
    for step in scenario.step:
        fields = step.model_dump(exclude_none=True)
        at = fields.pop("at")
        lines.append(f"  at {at:g}: {fields}")
    return "\n".join(lines)
