"""What the safety core is told. Every input carries the time it happened (seconds on the
controller's monotonic clock): the core never reads a clock itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar


class Hand(StrEnum):
    LEFT = "left"
    RIGHT = "right"


class Sensor(StrEnum):
    GRIP_LEFT = "grip_left"
    GRIP_RIGHT = "grip_right"
    FALL = "fall"


GRIP_SENSOR = {Hand.LEFT: Sensor.GRIP_LEFT, Hand.RIGHT: Sensor.GRIP_RIGHT}


class CommandType(StrEnum):
    """The tablet's commands by their wire names (docs/tablet-contract.md): the one place they
    are spelled. The contract, the scenario format, the CLI tablet and the core's refusals take
    them from here."""

    START_SESSION = "start_session"
    SET_SPEED = "set_speed"
    STOP = "stop"
    ESTOP = "estop"
    RESET = "reset"
    HEARTBEAT = "heartbeat"
    # A guided commissioning run's (docs/commissioning.md): the technician confirms a step, or
    # gives the run up, from the tablet. The safety core never sees them: the run answers them.
    COMMISSION_CONFIRM = "commission_confirm"
    COMMISSION_ABORT = "commission_abort"
    # The clinician's record of a session (docs/reports.md): pain before it, and pain,
    # exertion and notes after it. Journaled; never needed for the belt to move, and the
    # safety core never sees them.
    OUTCOME_BEFORE = "outcome_before"
    OUTCOME_AFTER = "outcome_after"
    # The clinician's word that a short first session counts as the user's first (docs/plan.md),
    # and a user's measures (TUG, KOOS or WOMAC, 10 m walk). Journaled; the safety core never
    # sees them (the confirmation reaches it only as the user's history, at their next start).
    CONFIRM_FIRST_SESSION = "confirm_first_session"
    RECORD_MEASURE = "record_measure"


class DriveFailure(StrEnum):
    LINK = "drive_link"
    FAULT = "drive_fault"


@dataclass(frozen=True, slots=True)
class Tick:
    """The control loop's periodic tick (default 20 Hz); also used for timer deadlines."""

    t: float


@dataclass(frozen=True, slots=True)
class GripReading:
    t: float
    hand: Hand
    held: bool


@dataclass(frozen=True, slots=True)
class FallReading:
    t: float
    fallen: bool


@dataclass(frozen=True, slots=True)
class DriveFeedback:
    """A status answer from the drive: its arrival proves the link, its speed the belt, and
    ``fault`` its health: a status that reports a fault (``fault`` set, ``detail`` in words) is
    not a healthy one, however fresh (SR-3, SR-6)."""

    t: float
    speed_mph: float
    fault: DriveFailure | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DriveError:
    """The driver gave up on a command or the drive reported a fault."""

    t: float
    failure: DriveFailure
    detail: str


@dataclass(frozen=True, slots=True)
class JournalHealth:
    """Whether the session journal can be written (SR-14). A journal that cannot be written
    latches a fault and refuses starts until it can again: a session must leave a record."""

    t: float
    writable: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Commissioning:
    """Whether this treadmill's stop paths have been proven (``treadguard commission``) and
    until when, as the journal knows. ``until``: the core's time (the monotonic clock) at
    which the last passed commissioning expires; None: no passed commissioning on record, or
    the record could not be read (fail closed). ``detail`` says why in words. Until the core
    hears of a current one, no patient session starts."""

    t: float
    until: float | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LoopOverrun:
    """The control loop fell behind (several ticks in a row late): a session in progress gets a
    controlled stop, since every time-based rule now runs late too."""

    t: float
    detail: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The daemon is asked to stop (SR-11): a session in progress gets a controlled stop."""

    t: float


@dataclass(frozen=True, slots=True)
class StartSession:
    """``returning``: whether the user has had a treadmill session before, as the journal
    knows (None: not known, taken as a first session). A user on their first session gets
    the first-session program when none is named, and any other program is refused."""

    TYPE: ClassVar[CommandType] = CommandType.START_SESSION
    t: float
    user: str
    program: str | None = None
    cap_s: float | None = None
    target_mph: float | None = None
    returning: bool | None = None
    # What the tablet showed a start without a program would start (its program and cap), if
    # it showed one: the daemon refuses such a start if it would now start something else
    # (the user's record changed since). The core does not read it.
    shown: tuple[str, float] | None = None
    # A commissioning proof run (``treadguard commission``): the one start allowed on a
    # treadmill whose commissioning is not current, since proving the stops needs a moving
    # belt. Set only by the commissioning tool; System.execute clears it on every tablet
    # command. Nothing else is relaxed: SR-3's preconditions, the bands and caps all hold.
    proof: bool = False


@dataclass(frozen=True, slots=True)
class SetSpeed:
    TYPE: ClassVar[CommandType] = CommandType.SET_SPEED
    t: float
    mph: float
    # Who asked, as the tablet says (a clinician's code); None: not said.
    clinician: str | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    TYPE: ClassVar[CommandType] = CommandType.STOP
    t: float


@dataclass(frozen=True, slots=True)
class EStop:
    """An emergency stop: the tablet's (``why`` None), or one the daemon itself decided
    while shutting down (``why`` says why: a second signal, a standstill not reached)."""

    TYPE: ClassVar[CommandType] = CommandType.ESTOP
    t: float
    why: str | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    TYPE: ClassVar[CommandType] = CommandType.RESET
    t: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TYPE: ClassVar[CommandType] = CommandType.HEARTBEAT
    t: float


Command = StartSession | SetSpeed | Stop | EStop | Reset | Heartbeat


@dataclass(frozen=True, slots=True)
class CommissionConfirm:
    """The technician has done what a guided commissioning run asks (``treadguard
    commission``): ``step`` (the proof, e.g. ``grip_left``) and ``ask`` (what they were asked
    to do, e.g. ``release_left``) name the request it answers, so that a tap meant for one
    request never answers the next."""

    TYPE: ClassVar[CommandType] = CommandType.COMMISSION_CONFIRM
    t: float
    step: str
    ask: str


@dataclass(frozen=True, slots=True)
class CommissionAbort:
    """The technician gives a guided commissioning run up: the belt gets an emergency stop
    and the run is journaled as aborted."""

    TYPE: ClassVar[CommandType] = CommandType.COMMISSION_ABORT
    t: float


# Answered by a guided commissioning run beside the daemon, never by the safety core (outside
# a run they are refused): System.execute hands them over.
CommissioningCommand = CommissionConfirm | CommissionAbort


@dataclass(frozen=True, slots=True)
class OutcomeBefore:
    """Before a session (sent once it has started): the user's pain, 0-10."""

    TYPE: ClassVar[CommandType] = CommandType.OUTCOME_BEFORE
    t: float
    session_id: str
    pain: int
    notes: str | None = None
    clinician: str | None = None
    user: str | None = None  # whose session the tablet means; None: not said


@dataclass(frozen=True, slots=True)
class OutcomeAfter:
    """After a session: the user's pain, 0-10, and perceived exertion, 0-10 (optional)."""

    TYPE: ClassVar[CommandType] = CommandType.OUTCOME_AFTER
    t: float
    session_id: str
    pain: int
    exertion: int | None = None
    notes: str | None = None
    clinician: str | None = None
    user: str | None = None


# The clinician's record: System.execute journals them, the safety core never sees them.
OutcomeCommand = OutcomeBefore | OutcomeAfter


@dataclass(frozen=True, slots=True)
class ConfirmFirstSession:
    """A clinician confirms that a session of a first-session program counts as the user's
    first treadmill session, whatever its belt time (the clinic's rules permitting)."""

    TYPE: ClassVar[CommandType] = CommandType.CONFIRM_FIRST_SESSION
    t: float
    session_id: str
    clinician: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class RecordMeasure:
    """One of a user's measures: ``kind`` (contract/measures.py), its ``value``, the day it
    was measured (``date``, YYYY-MM-DD; None: today in the clinic's zone)."""

    TYPE: ClassVar[CommandType] = CommandType.RECORD_MEASURE
    t: float
    user: str
    kind: str
    value: float
    date: str | None = None
    clinician: str | None = None


# The patient's plan (docs/plan.md): System.execute journals them, the core never sees them.
PlanCommand = ConfirmFirstSession | RecordMeasure
# Everything a tablet may send on <p>/cmd.
TabletCommand = Command | CommissioningCommand | OutcomeCommand | PlanCommand


@dataclass(frozen=True, slots=True)
class RivalDaemon:
    """Another process took over this daemon's broker session (its account, so another
    daemon for this treadmill): two controllers may each believe they drive the belt, and a
    tablet's estop may reach the wrong one. The belt is stopped and the fault latched."""

    t: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CommandLinkLost:
    """The daemon's own connection to the broker, which carries the tablet's commands, was
    lost (a broker restarting, another client under the daemon's client id): whatever the
    tablet sent meanwhile reached nobody, an estop among them. As the tablet gone for longer
    than the grace (SR-12): a session stops under control, unlatched."""

    t: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BrakeFaultOnRecord:
    """At start-up: the journal's last worn-brake fault (the stop-quality watch's drive_fault)
    came after the treadmill's last passed commissioning, so the brake has not been proven
    since. A restart is no reset: the fault is latched again, and only new baselines of that
    kind of stop let it be reset. ``kind``: the stop kind that was too slow (StopKind's
    value)."""

    t: float
    kind: str
    detail: str = ""


SensorInput = GripReading | FallReading
Input = (
    Tick
    | GripReading
    | FallReading
    | DriveFeedback
    | DriveError
    | JournalHealth
    | Commissioning
    | RivalDaemon
    | CommandLinkLost
    | BrakeFaultOnRecord
    | LoopOverrun
    | Shutdown
    | Command
)
