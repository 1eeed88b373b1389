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
from treadguard.safety.inputs import TabletCommand
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
# After one of these the belt must not speed up until a new session is accepted.
STOP_EVENTS = frozenset({EventType.ESTOP, EventType.FAULT, EventType.SESSION_ENDED})
LATCH_EVENTS = frozenset({EventType.ESTOP, EventType.FAULT})
# A session told to end (SR-12's controlled stop, or harder).
ENDING_EVENTS = frozenset({EventType.STOPPING, *STOP_EVENTS})


# --------------------------------------------------------------------------- the run


class ObservedDriver(SimulatedDriver):
    """The in-process simulated driver, recording every call the controller makes on it."""

    def __init__(self, belt: SimulatedBelt, clock: Callable[[], float], log: list[Entry]) -> None:
        super().__init__(belt, clock)
        # (time, mph) for command_speed; (time, None) for emergency_stop.
        self.calls: list[tuple[float, float | None]] = []
        self._log = log

    def command_speed(self, mph: float) -> None:
        call = (self._clock(), mph)
        self.calls.append(call)
        self._log.append(("call", *call))
        super().command_speed(mph)

    def emergency_stop(self) -> None:
        call = (self._clock(), None)
        self.calls.append(call)
        self._log.append(("call", *call))
        super().emergency_stop()


# What happened in the order it happened, within an instant too: ("call", t, mph or None),
# ("command", t, its type) as the tablet's command reaches the system, ("event", t, Event).
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
    execute = run.system.execute

    def observed_execute(command: TabletCommand, *, proof_run: bool = False) -> Reply | None:
        log.append(("command", loop.time(), command.TYPE.value))
        return execute(command, proof_run=proof_run)

    # Seen as the runner hands each command over (observation only: the system's own
    # method does the work).
    run.system.execute = observed_execute  # type: ignore[method-assign]
    run.system.subscribe(lambda ev: log.append(("event", ev.t, ev)), name="campaign")
    if plant is not None:
        plant(run)

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

    def deaf_during(self, start: float, end: float) -> bool:
        return any(a <= end and start <= b for a, b in self.deaf)

    tablet_stops: list[float] = field(default_factory=list)

    def unsafe(self, sensor: str, t: float) -> bool:
        changes = self.sensors[sensor]
        i = bisect.bisect_right(changes, (t, True)) - 1
        return changes[i][1] if i >= 0 else False

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
            if do in ("stop", "estop"):
                truth.tablet_stops.append(at)
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
                silent_since.pop(step.sensor, None)
                stuck.pop(step.sensor, None)
            case "sensor_stuck":
                assert step.sensor is not None
                assert step.value is not None
                stuck[step.sensor] = step.value
                silent_since.pop(step.sensor, None)
            case "tablet_returns":
                commands.append(at)
            case "drive_unplug":
                unplugged = True
            case "drive_plug":
                unplugged = False
            case "drive_fault":
                fault = True
            case "drive_ignores_writes":
                if deaf_from is None:
                    deaf_from = at
            case "drive_ok":
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
        self.events = record.events
        self.verdict = Verdict()

    # ----------------------------------------------------------- reading the records

    def belt_at(self, t: float) -> float:
        i = bisect.bisect_right(self.belt_t, t + EPS) - 1
        return self.r.belt[i][1] if i >= 0 else 0.0

    def moving_at(self, t: float) -> bool:
        return self.belt_at(t) > STANDSTILL_MPH

    def commanded_at(self, t: float) -> float:
        """The speed last asked of the drive at ``t`` (0 after an emergency stop)."""
        last = 0.0
        for when, mph in self.r.calls:
            if when > t + EPS:
                break
            last = 0.0 if mph is None else mph
        return last

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

    # ----------------------------------------------------------- the checks

    def check(self) -> list[str]:
        self.check_handled()
        self.check_envelope()
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

    def check_no_speed_up_after_a_stop(self) -> None:
        """SR-6, SR-12 and the field incidents: after a tablet stop or E-STOP (accepted or
        not), an emergency stop, a fault or a session's end, the speed asked of the drive never
        rises until a new session has been accepted. Read in the order things happened, so
        that a command and a stop at the same instant are told apart."""
        stopped_at: float | None = None
        previous = 0.0
        for kind, when, what in self.r.log:
            if (kind == "command" and what in ("stop", "estop")) or (
                kind == "event" and what.type in STOP_EVENTS
            ):
                stopped_at = when
            elif kind == "event" and what.type is EventType.SESSION_STARTED:
                stopped_at = None
            elif kind == "call":
                value = 0.0 if what is None else what
                if value > previous + EPS and stopped_at is not None:
                    self.verdict.fail(
                        f"{when:.3f} s: the speed asked rose from {previous:.3f} to "
                        f"{value:.3f} mph after a stop at {stopped_at:.3f} s, with no session "
                        "started since (SR-6, SR-12)"
                    )
                previous = value

    def check_starts(self) -> None:
        """SR-3: the belt is asked to move from rest only with both grips held, no fall, every
        sensor reporting, and the drive answering."""
        previous = 0.0
        for when, mph in self.r.calls:
            value = 0.0 if mph is None else mph
            if previous <= 0.0 < value:
                for sensor in SENSORS:
                    since = self.truth.unsafe_since(sensor, when - EPS)
                    if since is not None and since < when - EPS:
                        self.verdict.fail(
                            f"{when:.3f} s: the belt was asked to move with {sensor} unsafe "
                            f"since {since:.3f} s (SR-3)"
                        )
                for start, end in self.truth.drive_trouble:
                    # A dead link is known after its time-out; a fault at the next status.
                    if start + self.safety.drive_timeout_s + self.tick < when < end - EPS:
                        self.verdict.fail(
                            f"{when:.3f} s: the belt was asked to move while the drive had "
                            f"been failing since {start:.3f} s (SR-3, SR-9)"
                        )
            previous = value

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
        """SR-5 (and SR-8 for a silent fall sensor): an emergency stop at once, if the belt
        moves or is asked to."""
        end = self.r.scenario.end
        for start, _until in self.truth.stretches("fall", end):
            if self.moving_at(start) or self.commanded_at(start) > 0.0:
                # The reading is handed to the core at that instant (the fast path, SR-13); a
                # sensor's time-out is found by the core's own deadline, within a tick.
                # A fall is latched on sight, however short: no exception for a short one.
                deadline = start + self.tick
                if not self.estopped_by(deadline):
                    self.verdict.fail(
                        f"{start:.3f} s: fall input unsafe with the belt moving, no emergency "
                        f"stop by {deadline:.3f} s (SR-5)"
                    )

    def check_grips(self) -> None:
        """SR-4 (and SR-8): both grips lost for longer than the debounce while the belt moves
        is an emergency stop."""
        end = self.r.scenario.end
        lost: list[tuple[float, float]] = []
        left = self.truth.stretches("grip_left", end)
        right = self.truth.stretches("grip_right", end)
        for a0, a1 in left:
            for b0, b1 in right:
                lo, hi = max(a0, b0), min(a1, b1)
                if lo < hi:
                    lost.append((lo, hi))
        for start, until in lost:
            deadline = start + self.safety.grip_debounce_s + self.tick
            if (
                deadline + EPS < until
                and self.moving_at(deadline)
                and not self.estopped_by(deadline)
            ):
                self.verdict.fail(
                    f"{start:.3f} s: both grips lost with the belt moving, no emergency "
                    f"stop by {deadline:.3f} s (SR-4)"
                )

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

    def check_tablet(self) -> None:
        """SR-12: a session the tablet has not been heard from for the grace period is told to
        stop (also while it counts down or rests between intervals)."""
        grace = self.safety.heartbeat_grace_s
        presence = self.truth.presence
        end = self.r.scenario.end
        ending = [ev.t for ev in self.events_of(ENDING_EVENTS)]
        for i, heard in enumerate(presence):
            following = presence[i + 1] if i + 1 < len(presence) else math.inf
            deadline = heard + grace + self.tick
            if following <= deadline or deadline > end:
                continue
            if not self.open_sessions_at(heard):
                continue
            if not any(heard - EPS <= t <= deadline + EPS for t in ending):
                self.verdict.fail(
                    f"{heard:.3f} s: tablet last heard, and the session not told to stop by "
                    f"{deadline:.3f} s (SR-12)"
                )

    def check_drive(self) -> None:
        """SR-9: a drive that stops answering, faults or ignores writes leaves the belt at
        standstill (treadguard's stop, or the drive's own deadman) within a bound."""
        end = self.r.scenario.end
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
        wear = max(
            [scenario.world.brake_wear] + [s.wear for s in scenario.step if s.wear is not None]
        )
        decel = min(decel_mph_s, d.decel_mph_s) * (1.0 - wear)
        return (
            self.safety.drive_timeout_s
            + 0.3
            + d.deadman_s
            + d.lag_s * 5
            + HARD_MAX_MPH / decel
            + 2 * self.tick
        )

    def check_first_session(self) -> None:
        """SR-7: a user with no session on record starts with at most the first-session limit."""
        history = self.r.scenario.world.history
        seen: set[str] = set()
        for ev in self.events_of({EventType.SESSION_STARTED}):
            user = str(ev.fields.get("user"))
            cap = ev.fields.get("cap_s")
            first = user not in seen and history.get(user, 0) == 0
            if first and isinstance(cap, int | float) and cap > 300.0 + EPS:
                self.verdict.fail(
                    f"{ev.t:.3f} s: first session of {user} with a cap of {cap} s (SR-7)"
                )
            seen.add(user)


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
