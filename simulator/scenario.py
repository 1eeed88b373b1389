"""The scenario format: a TOML file of timed steps a clinician can read.

    name = "Both hands released"
    end = "1:00"

    [[step]]
    at = "0:01"
    do = "start_session"
    user = "p-001"
    expect_reply = "ok"

    [[step]]
    at = "0:30"
    do = "release"
    hand = "both"

    [[step]]
    at = "0:32"
    expect_state = "estop"
    expect_latched = "grip_lost"

    [expect]
    estops = ["grip_lost"]

Times are seconds (``12.5``) or minutes and seconds (``"2:30"``, ``"2:30.5"``) from the start.
docs/scenarios.md documents every action and expectation.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from treadguard.drivers.regular_file import read_regular_text
from treadguard.safety.decisions import Cause, EndReason, EventType, RefusalCode, State
from treadguard.safety.inputs import CommandType
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.safety.stop_watch import baseline_problem

_MMSS = re.compile(r"^(\d+):([0-5]?\d(?:\.\d+)?)$")


def parse_time(value: Any) -> float:
    """``12.5`` or ``"12.5"`` -> 12.5 s; ``"2:30"`` -> 150 s."""
    if isinstance(value, bool):
        raise ValueError("a time is seconds (12.5) or minutes:seconds ('2:30')")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _MMSS.match(value.strip())
        if match:
            seconds = int(match.group(1)) * 60 + float(match.group(2))
        else:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a time: use seconds (12.5) or minutes:seconds ('2:30')"
                ) from None
    else:
        raise ValueError("a time is seconds (12.5) or minutes:seconds ('2:30')")
    if not 0 <= seconds < 24 * 3600:
        raise ValueError(f"time {value!r} must be between 0 and 24 hours")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_time)]


class Action(StrEnum):
    # The tablet (MQTT contract commands, by their wire names).
    START_SESSION = CommandType.START_SESSION.value
    SET_SPEED = CommandType.SET_SPEED.value
    STOP = CommandType.STOP.value
    ESTOP = CommandType.ESTOP.value
    RESET = CommandType.RESET.value
    # The clinician's record and the user's plan (docs/plan.md): ``session_id`` left out is
    # the newest session of the run.
    OUTCOME_BEFORE = CommandType.OUTCOME_BEFORE.value
    OUTCOME_AFTER = CommandType.OUTCOME_AFTER.value
    CONFIRM_FIRST_SESSION = CommandType.CONFIRM_FIRST_SESSION.value
    TABLET_LEAVES = "tablet_leaves"
    TABLET_RETURNS = "tablet_returns"
    # The user on the belt.
    RELEASE = "release"
    GRIP = "grip"
    FALL = "fall"
    GET_UP = "get_up"
    # The sensors and the drive.
    SENSOR_SILENT = "sensor_silent"
    SENSOR_STUCK = "sensor_stuck"
    SENSOR_BACK = "sensor_back"
    DRIVE_UNPLUG = "drive_unplug"
    DRIVE_PLUG = "drive_plug"
    DRIVE_FAULT = "drive_fault"
    DRIVE_IGNORES_WRITES = "drive_ignores_writes"
    DRIVE_OK = "drive_ok"
    # The belt's brake wears: from now on it loses ``wear`` of every deceleration.
    BRAKE_WEAR = "brake_wear"


TABLET_COMMANDS = frozenset(
    {
        Action.START_SESSION,
        Action.SET_SPEED,
        Action.STOP,
        Action.ESTOP,
        Action.RESET,
        Action.OUTCOME_BEFORE,
        Action.OUTCOME_AFTER,
        Action.CONFIRM_FIRST_SESSION,
    }
)
_NEEDS: dict[Action, tuple[str, ...]] = {
    Action.START_SESSION: ("user",),
    Action.SET_SPEED: ("mph",),
    Action.RELEASE: ("hand",),
    Action.GRIP: ("hand",),
    Action.SENSOR_SILENT: ("sensor",),
    Action.SENSOR_STUCK: ("sensor", "value"),
    Action.SENSOR_BACK: ("sensor",),
    Action.BRAKE_WEAR: ("wear",),
    Action.OUTCOME_BEFORE: ("pain",),
    Action.OUTCOME_AFTER: ("pain",),
}
_ALLOWED: dict[Action, frozenset[str]] = {
    Action.START_SESSION: frozenset({"user", "program", "cap_s", "target_mph"}),
    Action.SET_SPEED: frozenset({"mph"}),
    Action.RELEASE: frozenset({"hand"}),
    Action.GRIP: frozenset({"hand"}),
    Action.SENSOR_SILENT: frozenset({"sensor"}),
    Action.SENSOR_STUCK: frozenset({"sensor", "value"}),
    Action.SENSOR_BACK: frozenset({"sensor"}),
    Action.DRIVE_FAULT: frozenset({"detail"}),
    Action.BRAKE_WEAR: frozenset({"wear"}),
    Action.OUTCOME_BEFORE: frozenset({"session_id", "pain", "clinician"}),
    Action.OUTCOME_AFTER: frozenset({"session_id", "pain", "clinician"}),
    Action.CONFIRM_FIRST_SESSION: frozenset({"session_id", "clinician"}),
}
_PARAMS = (
    "user",
    "program",
    "cap_s",
    "target_mph",
    "mph",
    "hand",
    "sensor",
    "value",
    "detail",
    "wear",
    "session_id",
    "pain",
    "clinician",
)
# The actions that need the in-process simulated drive (a wire drive's device is not reached).
IN_PROCESS_DRIVE_ACTIONS = frozenset(
    {Action.DRIVE_FAULT, Action.DRIVE_IGNORES_WRITES, Action.DRIVE_OK}
)

Reply = Literal["ok"] | RefusalCode


class ProposalExpectation(BaseModel):
    """What the proposal for a user's next session must be (controller/plan.py), as the
    clinic's rules make it from the run's journal at that moment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1, max_length=64)
    program: str | None = None
    cap_s: float | None = None
    held: bool | None = None
    # Words the proposal's reason must contain ("pain rose 3 points").
    reason_has: str | None = Field(default=None, min_length=1, max_length=200)


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: Seconds
    # Counts ``at`` from the first event of this type instead of from the start: "2 s after
    # the emergency stop". A step whose event never comes (or comes too late to fit before
    # ``end``) fails the run.
    after: EventType | None = None
    do: Action | None = None
    # Parameters of the action.
    user: str | None = None
    program: str | None = None
    cap_s: float | None = None
    target_mph: float | None = None
    # Any number, even a bad one: the scenario may test that it is refused.
    mph: float | None = None
    hand: Literal["left", "right", "both"] | None = None
    sensor: Literal["grip_left", "grip_right", "fall"] | None = None
    # sensor_stuck: what the sensor reports from now on, fresh, whatever the user does
    # (true: the hand holds on / the user has fallen).
    value: bool | None = None
    # drive_fault: the fault the drive reports on every status.
    detail: str | None = Field(default=None, min_length=1, max_length=200)
    # brake_wear: the fraction of every deceleration the brake loses from now on (0: as new).
    wear: float | None = Field(default=None, ge=0.0, lt=1.0, allow_inf_nan=False)
    # outcome_before, outcome_after, confirm_first_session: the session (left out: the newest
    # session of the run), the pain (0-10) and who enters it.
    session_id: int | None = Field(default=None, ge=1)
    pain: int | None = Field(default=None, ge=0, le=10)
    clinician: str | None = Field(default=None, min_length=1, max_length=64)
    # Expectations, checked at ``at`` after the action (if any). expect_reply may list
    # several replies, any of which passes.
    expect_reply: Reply | Annotated[list[Reply], Field(min_length=1, max_length=8)] | None = None
    expect_state: State | None = None
    expect_speed_mph: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    expect_latched: Cause | Literal["none"] | None = None
    # The belt does not move from ``at`` until this time (a time on the same footing as
    # ``at``: from the start, or from the ``after`` event).
    expect_still_until: Seconds | None = None
    # The proposal for a user's next session (docs/plan.md).
    expect_proposal: ProposalExpectation | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = {name for name in _PARAMS if getattr(self, name) is not None}
        # Checked for every step, with or without an action.
        if (
            self.expect_speed_mph is not None
            and self.expect_speed_mph[0] > self.expect_speed_mph[1]
        ):
            raise ValueError("expect_speed_mph is [lowest, highest]")
        if self.expect_still_until is not None and self.expect_still_until <= self.at:
            raise ValueError(
                f"expect_still_until ({self.expect_still_until:g} s) must come after at "
                f"({self.at:g} s)"
            )
        if self.do is None:
            if given:
                raise ValueError(f"{', '.join(sorted(given))} given without an action (do = ...)")
            if self.expect_reply is not None:
                raise ValueError("expect_reply needs a tablet command (do = ...)")
            if not (
                self.expect_state
                or self.expect_speed_mph
                or self.expect_latched
                or self.expect_still_until is not None
                or self.expect_proposal is not None
            ):
                raise ValueError("a step needs an action (do) or an expectation (expect_...)")
            return self
        missing = [name for name in _NEEDS.get(self.do, ()) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"do = {self.do.value!r} needs {', '.join(missing)}")
        extra = given - _ALLOWED.get(self.do, frozenset())
        if extra:
            raise ValueError(f"do = {self.do.value!r} does not take {', '.join(sorted(extra))}")
        if self.expect_reply is not None and self.do not in TABLET_COMMANDS:
            raise ValueError(f"expect_reply needs a tablet command, not {self.do.value!r}")
        return self


class BaselineSetup(BaseModel):
    """A commissioned stop, as commissioning would record it (safety/stop_baseline.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    standstill_s: float = Field(gt=0.0, allow_inf_nan=False)
    deceleration_mph_per_s: float = Field(gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _a_stop_some_proof_could_give(self) -> BaselineSetup:
        # The watch's own rule (safety/stop_watch.py): refused here, with the scenario's words,
        # rather than when the run sets it.
        problem = baseline_problem(StopKind.EMERGENCY, self.baseline(StopKind.EMERGENCY))
        if problem is not None:
            raise ValueError(problem.replace("the emergency baseline", "this baseline"))
        return self

    def baseline(self, kind: StopKind) -> StopBaseline:
        return StopBaseline(kind, self.standstill_s, self.deceleration_mph_per_s)


class WorldSetup(BaseModel):
    """How things stand at time 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    left_hand: bool = True
    right_hand: bool = True
    fallen: bool = False
    tablet: bool = True
    # Earlier treadmill sessions per user, as the journal holds them: {"p-001" = 2}. A user
    # not named here has none, so first-session rules apply to them (SR-7).
    history: dict[
        Annotated[str, Field(min_length=1, max_length=64)], Annotated[int, Field(ge=0, le=1000)]
    ] = Field(default_factory=dict)
    # Whether the treadmill's stops have been proven (``treadguard commission``), as its
    # journal holds it: a passed commissioning ``commissioned_days_ago`` days before time 0
    # (past ``commissioning.every_days`` it has expired). False: none on record, so every
    # start is refused.
    commissioned: bool = True
    commissioned_days_ago: float = Field(1.0, ge=0.0, le=3650.0)
    # The treadmill's commissioned stops, per kind ("emergency", "controlled"), as
    # commissioning would set them: every stop of a kind is compared with its baseline. A kind
    # not given has none, and its stops are not compared.
    stop_baselines: dict[StopKind, BaselineSetup] = Field(default_factory=dict)
    # The brake's wear at time 0 (see the brake_wear action).
    brake_wear: float = Field(0.0, ge=0.0, lt=1.0, allow_inf_nan=False)


class Expectations(BaseModel):
    """Whole-run expectations, checked at the end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    final_state: State | None = None
    # Causes of every emergency stop / fault, in order ([] = none may happen).
    estops: list[Cause] | None = None
    faults: list[Cause] | None = None
    # How every session ended, in order.
    sessions: list[EndReason] | None = None
    max_speed_mph: float | None = None
    events_include: list[EventType] = Field(default_factory=list)
    events_exclude: list[EventType] = Field(default_factory=list)
    refusals: list[RefusalCode] | None = None
    # The program of every session, in order (the one the daemon chose, for a start that
    # named none).
    programs: list[str] | None = None


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    # Configuration to run with, relative to the scenario file; default: the built-in simulator.
    config: Path | None = None
    end: Seconds
    world: WorldSetup = WorldSetup()
    step: list[Step] = Field(default_factory=list)
    expect: Expectations = Expectations()

    @model_validator(mode="after")
    def _steps_in_time(self) -> Self:
        for i, step in enumerate(self.step):
            last = step.at if step.expect_still_until is None else step.expect_still_until
            if step.after is None and last > self.end:
                raise ValueError(f"step {i + 1} at {last:g} s is after end ({self.end:g} s)")
        return self


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names the file and field."""


def load_scenario(path: Path) -> Scenario:
    try:
        data = tomllib.loads(read_regular_text(path))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) if not isinstance(p, int) else f"[{p + 1}]" for p in err["loc"]]
            problems.append(f"{'.'.join(loc).replace('.[', '[') or '(file)'}: {err['msg']}")
        raise ScenarioError(f"{path}: " + "; ".join(problems)) from exc
