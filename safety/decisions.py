"""What the safety core answers: the speed to command, whether to stop at once, the events to
record and publish, and the reply to a command."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    IDLE = "idle"
    COUNTDOWN = "countdown"
    RUNNING = "running"
    STOPPING = "stopping"
    ESTOP = "estop"
    FAULT = "fault"


LATCHED_STATES = frozenset({State.ESTOP, State.FAULT})
# States in which the belt is moving or about to move: the inputs that stop it are armed.
ARMED_STATES = frozenset({State.COUNTDOWN, State.RUNNING, State.STOPPING})


class Cause(StrEnum):
    GRIP_LOST = "grip_lost"
    FALL = "fall"
    SENSOR_STALE = "sensor_stale"
    REMOTE_ESTOP = "remote_estop"
    DRIVE_LINK = "drive_link"
    DRIVE_FAULT = "drive_fault"
    FEEDBACK_MISMATCH = "feedback_mismatch"
    JOURNAL = "journal"
    RIVAL_DAEMON = "rival_daemon"
    SHUTDOWN = "shutdown"  # the daemon, shutting down, stopped the belt at once


class EventType(StrEnum):
    SESSION_STARTED = "session_started"
    COUNTDOWN = "countdown"
    BELT_STARTED = "belt_started"
    SPEED_STEP = "speed_step"
    # The clinician changed the target (set_speed accepted): from what, to what, who asked.
    SPEED_CHANGED = "speed_changed"
    # The clinician's record of a session (outcome_before, outcome_after), as it was entered.
    OUTCOME_RECORDED = "outcome_recorded"
    # A clinician confirmed that a first session counts (confirm_first_session), and a user's
    # measure was recorded (record_measure), as entered.
    FIRST_SESSION_CONFIRMED = "first_session_confirmed"
    MEASURE_RECORDED = "measure_recorded"
    CAP_WARNING = "cap_warning"
    STOPPING = "stopping"
    SESSION_ENDED = "session_ended"
    INTERVAL_REST = "interval_rest"
    ESTOP = "estop"
    FAULT = "fault"
    RESET = "reset"
    GRIP_WARNING = "grip_warning"
    SENSOR_STALE = "sensor_stale"
    COMMAND_REFUSED = "command_refused"
    JOURNAL_WARNING = "journal_warning"
    BELT_FOUND_MOVING = "belt_found_moving"
    COMMISSIONING_EXPIRED = "commissioning_expired"
    # The stop-quality watch (safety/stop_watch.py): every stop's verdict, and a stop slower
    # than the treadmill's baseline by more than the margin.
    STOP_CHECKED = "stop_checked"
    MAINTENANCE_WARNING = "maintenance_warning"


class RefusalCode(StrEnum):
    """The subset of the MQTT contract's error codes that the safety core decides."""

    INVALID_COMMAND = "invalid_command"
    OUT_OF_RANGE = "out_of_range"
    NOT_ALLOWED = "not_allowed"
    PRECONDITIONS_UNMET = "preconditions_unmet"
    LATCHED = "latched"


class EndReason(StrEnum):
    CAP = "cap"
    COMPLETED = "completed"
    OPERATOR_STOP = "operator_stop"
    TABLET_LOST = "tablet_lost"
    START_ABORTED = "start_aborted"
    ESTOP = "estop"
    FAULT = "fault"
    LOOP_OVERRUN = "loop_overrun"
    SHUTDOWN = "shutdown"


JsonScalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Event:
    """A safety event: journaled, logged and published. ``fields`` are JSON scalars."""

    type: EventType
    t: float
    fields: dict[str, JsonScalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    code: RefusalCode
    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    pass


ACCEPTED = Accepted()
Reply = Accepted | Refused


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one input.

    ``speed_mph`` is the speed the drive is to be commanded to now; it obeys SR-1 and SR-2.
    ``emergency_stop`` asks the driver for its fastest stop immediately (SR-13); it is set on
    the decision that latches the stop, once.
    """

    state: State
    speed_mph: float
    target_mph: float
    rate_mph_s: float
    emergency_stop: bool
    events: tuple[Event, ...]
    reply: Reply | None = None
