"""What the safety core is told. Every input carries the time it happened (seconds on the
controller's monotonic clock): the core never reads a clock itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Hand(StrEnum):
    LEFT = "left"
    RIGHT = "right"


class Sensor(StrEnum):
    GRIP_LEFT = "grip_left"
    GRIP_RIGHT = "grip_right"
    FALL = "fall"


GRIP_SENSOR = {Hand.LEFT: Sensor.GRIP_LEFT, Hand.RIGHT: Sensor.GRIP_RIGHT}


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
    knows (None: no journal, e.g. a simulation). A user without one is on their first session:
    a program left out is the first-session program, and any other program is refused."""

    t: float
    user: str
    program: str | None = None
    cap_s: float | None = None
    target_mph: float | None = None
    returning: bool | None = None


@dataclass(frozen=True, slots=True)
class SetSpeed:
    t: float
    mph: float


@dataclass(frozen=True, slots=True)
class Stop:
    t: float


@dataclass(frozen=True, slots=True)
class EStop:
    t: float


@dataclass(frozen=True, slots=True)
class Reset:
    t: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    t: float


Command = StartSession | SetSpeed | Stop | EStop | Reset | Heartbeat


@dataclass(frozen=True, slots=True)
class RivalDaemon:
    """Another process took over this daemon's broker session (its account, so another
    daemon for this treadmill): two controllers may each believe they drive the belt, and a
    tablet's estop may reach the wrong one. The belt is stopped and the fault latched."""

    t: float
    detail: str = ""


SensorInput = GripReading | FallReading
Input = (
    Tick
    | GripReading
    | FallReading
    | DriveFeedback
    | DriveError
    | JournalHealth
    | RivalDaemon
    | LoopOverrun
    | Shutdown
    | Command
)
