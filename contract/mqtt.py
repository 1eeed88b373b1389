"""The tablet contract over MQTT, version 1 (``docs/tablet-contract.md``), as pure functions.

No I/O, no clock reads: the caller supplies the time a command arrived (monotonic seconds, the
safety core's clock) and a function that maps monotonic seconds to unix seconds for what goes out.

- :func:`parse_command` turns a raw ``<p>/cmd`` payload into a :class:`ParsedCommand` (a
  ``safety.inputs`` command and its id) or a :class:`CommandReply` refusal. It never raises.
- :class:`DuplicateFilter` remembers the replies to recent ids so that a repeated command is
  answered with its original reply and not run twice (``stop`` and ``estop`` excepted: they
  are carried out every time, SR-12).
- :func:`answer_command` is the whole pipeline: parse, de-duplicate, execute, reply. Nothing
  that ``execute`` raises leaves it: an unexpected failure is answered ``internal_error``
  (SR-15).
- :func:`encode_state`, :func:`encode_event` and :func:`encode_reply` build the outgoing JSON.
- :func:`parse_sensor_payload` reads ``<p>/sensors/<name>``.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from treadguard.contract.codes import code_problem
from treadguard.contract.measures import MeasureKind
from treadguard.safety.core import Snapshot
from treadguard.safety.decisions import Event, RefusalCode, Refused, Reply, State
from treadguard.safety.inputs import (
    CommandType,
    CommissionAbort,
    CommissionConfirm,
    ConfirmFirstSession,
    EStop,
    Hand,
    Heartbeat,
    OutcomeAfter,
    OutcomeBefore,
    RecordMeasure,
    Reset,
    SetSpeed,
    StartSession,
    Stop,
    TabletCommand,
)
from treadguard.safety.limits import STANDSTILL_MPH, SafetyLimits
from treadguard.safety.programs import Program, ProgramKind

MAX_PAYLOAD_BYTES = 4096
# A stamped start or speed change older than this (or this far ahead of our clock) is refused:
# delivered late, after a broker that hung or a link that stalled, it is no longer what the
# clinician pressed. Stops, emergency stops and resets are obeyed however late they arrive.
MAX_COMMAND_AGE_S = 3.0
# How far ahead of our clock a stamp may be (a sender that stamps in its own clock, a little
# fast): more, and a late command could pass for a fresh one. The tablet page stamps in the
# daemon's clock, estimated from the state's ts, so it is never far ahead.
MAX_COMMAND_AHEAD_S = 1.0
# A heartbeat too: a backlog of them, delivered at once after a stall, must not count as
# someone watching the session now (SR-12). And a commissioning step's confirmation: the
# technician confirms what they see now, not what they saw before the broker stalled. (Its
# abort, like a stop, is obeyed however late.) And the entries of the clinician's record: the
# last entry of a session's pain or a day's measure stands, so one delivered late, or sent
# again after a restart (when the daemon no longer remembers its id), would stand over the
# correction entered since.
_AGE_CHECKED = frozenset(
    {
        CommandType.START_SESSION,
        CommandType.SET_SPEED,
        CommandType.HEARTBEAT,
        CommandType.COMMISSION_CONFIRM,
        CommandType.OUTCOME_BEFORE,
        CommandType.OUTCOME_AFTER,
        CommandType.CONFIRM_FIRST_SESSION,
        CommandType.RECORD_MEASURE,
    }
)
# The entries of the record are treadguard's own commands (extensions of contract v1): there
# a stamp is required, not optional, so that no entry escapes the age check (a tablet that
# left it out would have its late delivery stand over the correction entered since).
_STAMP_REQUIRED = frozenset(
    {
        CommandType.OUTCOME_BEFORE,
        CommandType.OUTCOME_AFTER,
        CommandType.CONFIRM_FIRST_SESSION,
        CommandType.RECORD_MEASURE,
    }
)
STAMP_REQUIRED_MESSAGE = (
    "invalid command: ts: Field required: the stamp (when it was sent, in the daemon's clock) "
    "is required for entries of the record"
)
_UNIX_TS_MAX = 1e11  # year 5138: anything larger is no time stamp
ID_MAX_CHARS = 64
# A clinician's notes on a session: a few sentences (the payload itself is at most 4 KiB).
NOTES_MAX_CHARS = 1000
DEFAULT_DUPLICATE_MEMORY = 1024

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = dict[str, JsonValue]
ToUnix = Callable[[float], float]


class ErrorCode(StrEnum):
    """Every refusal code of the contract (the core decides the last five besides duplicate)."""

    INVALID_JSON = "invalid_json"
    INVALID_COMMAND = "invalid_command"
    UNKNOWN_TYPE = "unknown_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    OUT_OF_RANGE = "out_of_range"
    NOT_ALLOWED = "not_allowed"
    PRECONDITIONS_UNMET = "preconditions_unmet"
    LATCHED = "latched"
    DUPLICATE = "duplicate"
    # More commands than the daemon answers one by one; never for stop or estop (the link's).
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"


# The core's codes are a subset of the contract's, by name: built at import, so a code the core
# gains without one here fails every start of the daemon and every test, not a refusal later.
ERROR_OF_REFUSAL: dict[RefusalCode, ErrorCode] = {
    code: ErrorCode(code.value) for code in RefusalCode
}


# ------------------------------------------------------------------------------- topics


def default_prefix(treadmill_id: str) -> str:
    return f"treadmill/{treadmill_id}"


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/cmd"

    @property
    def reply(self) -> str:
        return f"{self.prefix}/reply"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    def sensor(self, name: str) -> str:
        return f"{self.prefix}/sensors/{name}"


# ------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class CommandReply:
    """One ``<p>/reply`` message. ``id`` is None when the command's id could not be read."""

    id: str | None
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> JsonObject:
        if self.error is None:
            return {"id": self.id, "ok": True}
        return {
            "id": self.id,
            "ok": False,
            "error": {"code": self.error.value, "message": self.message},
        }


def encode_reply(reply: CommandReply) -> bytes:
    return to_payload(reply.to_json())


def reply_from_core(command_id: str | None, reply: Reply | None) -> CommandReply:
    """The contract reply for the safety core's answer to a command."""
    if reply is None:
        # The core answers every command; a missing reply is a wiring bug, never an "ok".
        return CommandReply(command_id, ErrorCode.NOT_ALLOWED, "the command was not answered")
    if isinstance(reply, Refused):
        return CommandReply(command_id, ERROR_OF_REFUSAL[reply.code], reply.message)
    return CommandReply(command_id)


# ------------------------------------------------------------------------------- commands

CommandId = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS)]


def _printable(value: str) -> str:
    """Text a person reads and the journal stores (a user name, a program name) holds neither
    lone surrogates (valid JSON, but no Unicode text: they cannot be stored, encoded or shown)
    nor control characters (they would garble a report or a log line). Refused here, at the
    contract, as ``invalid_command`` (SR-15)."""
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cs":
            raise ValueError(f"a lone surrogate (U+{ord(char):04X}) at position {position}")
        if category == "Cc":
            raise ValueError(f"a control character (U+{ord(char):04X}) at position {position}")
    return value


PrintableText = Annotated[str, AfterValidator(_printable)]

# The type of a refusal whose message names its field itself ("user contains ..."): the
# refusal's words give it without the field again in front (describe_invalid).
CODE_ERROR = "person_code"


def _person_code(value: str, info: ValidationInfo) -> str:
    """A code a person types for a person (a user's, a clinician's): refused, never changed,
    when it holds a character that would not show as itself or a space at either end, or is
    not 1-64 characters (contract/codes.py, the one check of every such code)."""
    problem = code_problem(value, info.field_name or "code")
    if problem is not None:
        raise PydanticCustomError(CODE_ERROR, problem)
    return value


PersonCode = Annotated[str, AfterValidator(_person_code)]


class _CommandModel(BaseModel):
    # strict: a string "1.0" or a boolean is not a number; no silent coercion.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: CommandId
    # An extension of contract v1: when the sender stamps a command (unix seconds), a start or
    # a speed change that arrives late is refused (MAX_COMMAND_AGE_S).
    ts: Annotated[float, Field(ge=0.0, le=_UNIX_TS_MAX, allow_inf_nan=False)] | None = None


class ShownStartModel(BaseModel):
    """What a tablet showed a start without a program would start (a history answer's
    ``proposal.from_history``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    program: PrintableText
    cap_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class StartSessionModel(_CommandModel):
    type: Literal["start_session"]
    # Checked here, as every code is; the safety core's own check (1-64 once trimmed) stays.
    user: PersonCode
    program: PrintableText | None = None
    cap_s: float | None = None
    target_mph: float | None = None
    # An extension of contract v1: with no program, what the tablet showed it would start.
    shown: ShownStartModel | None = None


class SetSpeedModel(_CommandModel):
    type: Literal["set_speed"]
    mph: float
    # An extension of contract v1: who asks (a clinician's code, never a name), for the record.
    clinician: PersonCode | None = None


class StopModel(_CommandModel):
    type: Literal["stop"]


class EStopModel(_CommandModel):
    type: Literal["estop"]


class ResetModel(_CommandModel):
    type: Literal["reset"]


class HeartbeatModel(_CommandModel):
    type: Literal["heartbeat"]


# A commissioning step's name or request: a word of the run's own vocabulary
# (controller/commission.py), compared with what the run asks; anything else is refused there.
StepName = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS)]


class CommissionConfirmModel(_CommandModel):
    type: Literal["commission_confirm"]
    step: Annotated[StepName, AfterValidator(_printable)]
    ask: Annotated[StepName, AfterValidator(_printable)]


class CommissionAbortModel(_CommandModel):
    type: Literal["commission_abort"]


# The clinician's record of a session (an extension of contract v1, docs/reports.md).
SessionId = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,11}$")]
Score = Annotated[int, Field(ge=0, le=10)]  # 0-10: pain (NRS), perceived exertion (CR10)
ClinicianCode = PersonCode
Notes = Annotated[PrintableText, StringConstraints(min_length=1, max_length=NOTES_MAX_CHARS)]


class OutcomeBeforeModel(_CommandModel):
    type: Literal["outcome_before"]
    session_id: SessionId
    # Whose session the tablet means: refused if the session is another user's (a mistyped
    # session id never lands on another patient's record).
    user: PersonCode | None = None
    pain: Score
    notes: Notes | None = None
    clinician: ClinicianCode | None = None


class OutcomeAfterModel(_CommandModel):
    type: Literal["outcome_after"]
    session_id: SessionId
    user: PersonCode | None = None
    pain: Score
    exertion: Score | None = None
    notes: Notes | None = None
    clinician: ClinicianCode | None = None


# The patient's plan (an extension of contract v1, docs/plan.md).
class ConfirmFirstSessionModel(_CommandModel):
    type: Literal["confirm_first_session"]
    session_id: SessionId
    user: PersonCode | None = None
    clinician: ClinicianCode | None = None


UserCode = PersonCode


def _no_minus_zero(value: float) -> float:
    return value + 0.0  # -0.0 + 0.0 is 0.0; every other number is itself


# A calendar day as the tablet writes it; whether it is a real day, and not after today in the
# clinic's zone, the daemon checks (this module reads no clock).
MeasureDate = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


class RecordMeasureModel(_CommandModel):
    type: Literal["record_measure"]
    user: UserCode
    # One of MeasureKind's values (strict=False: a JSON string names the enum's member).
    kind: Annotated[MeasureKind, Field(strict=False)]
    # A number (an integer is one too); its range and resolution, which depend on the kind, the
    # daemon checks (contract/measures.py) and refuses as out_of_range. -0 is 0: one number,
    # never shown as "-0".
    value: Annotated[float, Field(allow_inf_nan=False), AfterValidator(_no_minus_zero)]
    date: MeasureDate | None = None
    clinician: ClinicianCode | None = None


_MODELS: dict[str, type[_CommandModel]] = {
    CommandType.START_SESSION: StartSessionModel,
    CommandType.SET_SPEED: SetSpeedModel,
    CommandType.STOP: StopModel,
    CommandType.ESTOP: EStopModel,
    CommandType.RESET: ResetModel,
    CommandType.HEARTBEAT: HeartbeatModel,
    CommandType.COMMISSION_CONFIRM: CommissionConfirmModel,
    CommandType.COMMISSION_ABORT: CommissionAbortModel,
    CommandType.OUTCOME_BEFORE: OutcomeBeforeModel,
    CommandType.OUTCOME_AFTER: OutcomeAfterModel,
    CommandType.CONFIRM_FIRST_SESSION: ConfirmFirstSessionModel,
    CommandType.RECORD_MEASURE: RecordMeasureModel,
}
COMMAND_TYPES = frozenset(_MODELS)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A well-formed command. ``fingerprint`` identifies its content for duplicate checks."""

    id: str
    command: TabletCommand
    fingerprint: str


ParseResult: TypeAlias = ParsedCommand | CommandReply


class BadJson(ValueError):
    """A payload that is not strict JSON; its message says what is wrong."""


def _reject_constant(name: str) -> float:
    raise BadJson(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise BadJson(f"key {key!r} appears twice")
        obj[key] = value
    return obj


def strict_json(payload: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no repeated keys. Raises BadJson. Every payload of
    the contract, commands and queries alike, is read by it."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"the payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except json.JSONDecodeError as exc:
        raise BadJson(f"the payload is not JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise BadJson("the payload is nested too deeply") from None


def _readable_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if isinstance(value, str) and 1 <= len(value) <= ID_MAX_CHARS:
        return value
    return None


def _fingerprint(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def describe_invalid(exc: ValidationError, what: str = "command") -> str:
    """A refusal's words for a payload its model refused: the first three problems, by field."""
    parts = []
    for err in exc.errors()[:3]:
        field = ".".join(str(p) for p in err["loc"]) or what
        parts.append(err["msg"] if err["type"] == CODE_ERROR else f"{field}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return f"invalid {what}: " + "; ".join(parts)


def _to_command(model: _CommandModel, t: float) -> TabletCommand:
    match model:
        case StartSessionModel():
            return StartSession(
                t=t,
                user=model.user,
                program=model.program,
                cap_s=model.cap_s,
                target_mph=model.target_mph,
                shown=None if model.shown is None else (model.shown.program, model.shown.cap_s),
            )
        case SetSpeedModel():
            return SetSpeed(t=t, mph=model.mph, clinician=model.clinician)
        case StopModel():
            return Stop(t=t)
        case EStopModel():
            return EStop(t=t)
        case ResetModel():
            return Reset(t=t)
        case HeartbeatModel():
            return Heartbeat(t=t)
        case CommissionConfirmModel():
            return CommissionConfirm(t=t, step=model.step, ask=model.ask)
        case CommissionAbortModel():
            return CommissionAbort(t=t)
        case OutcomeBeforeModel() | OutcomeAfterModel():
            # The command's own fields, as the contract validated them.
            fields = model.model_dump(exclude={"id", "type", "ts"})
            kind = OutcomeBefore if isinstance(model, OutcomeBeforeModel) else OutcomeAfter
            return kind(t=t, **fields)
        case ConfirmFirstSessionModel():
            return ConfirmFirstSession(
                t=t, session_id=model.session_id, user=model.user, clinician=model.clinician
            )
        case RecordMeasureModel():
            return RecordMeasure(
                t=t,
                user=model.user,
                kind=model.kind.value,
                value=float(model.value),
                date=model.date,
                clinician=model.clinician,
            )
    raise AssertionError(f"no command for {type(model).__name__}")  # pragma: no cover


def parse_command(
    payload: bytes, *, retained: bool, t: float, now_unix: float | None = None
) -> ParseResult:
    """Parse one ``<p>/cmd`` payload; ``t`` becomes the command's time. Never raises.
    ``now_unix``, when given, is the clock a stamped command's ``ts`` is checked against.

    Range checks (speed band, cap limits, user name) are the safety core's: it answers them
    with ``out_of_range`` or ``invalid_command``. Here only the shape is checked.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return CommandReply(
            None,
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}",
        )
    try:
        obj = strict_json(payload)
    except BadJson as exc:
        return CommandReply(None, ErrorCode.INVALID_JSON, str(exc))
    if not isinstance(obj, dict):
        return CommandReply(
            None, ErrorCode.INVALID_COMMAND, "invalid command: a command must be a JSON object"
        )
    command_id = _readable_id(obj)
    if retained:
        return CommandReply(
            command_id,
            ErrorCode.NOT_ALLOWED,
            "retained commands are refused: publish commands with the retain flag off",
        )
    kind = obj.get("type")
    if kind is None:
        return CommandReply(
            command_id, ErrorCode.INVALID_COMMAND, "invalid command: type: Field required"
        )
    if not isinstance(kind, str):
        return CommandReply(
            command_id, ErrorCode.INVALID_COMMAND, "invalid command: type: must be a string"
        )
    model_type = _MODELS.get(kind)
    if model_type is None:
        known = ", ".join(sorted(_MODELS))
        return CommandReply(
            command_id,
            ErrorCode.UNKNOWN_TYPE,
            f"unknown command type {kind[:ID_MAX_CHARS]!r}; known: {known}",
        )
    try:
        model = model_type.model_validate(obj)
    except ValidationError as exc:
        return CommandReply(command_id, ErrorCode.INVALID_COMMAND, describe_invalid(exc))
    if model.ts is None and kind in _STAMP_REQUIRED:
        return CommandReply(model.id, ErrorCode.INVALID_COMMAND, STAMP_REQUIRED_MESSAGE)
    if model.ts is not None and now_unix is not None and kind in _AGE_CHECKED:
        late = _late(kind, model.ts, now_unix)
        if late is not None:
            return CommandReply(model.id, ErrorCode.NOT_ALLOWED, late)
    return ParsedCommand(id=model.id, command=_to_command(model, t), fingerprint=_fingerprint(obj))


def _readable_type(payload: bytes) -> str | None:
    """The command's type, for the journal, when the payload is a JSON object that has one."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        obj = strict_json(payload)
    except BadJson:
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind[:ID_MAX_CHARS] if isinstance(kind, str) else None


def _stop_however_formed(payload: bytes, t: float) -> Stop | EStop | None:
    """A stop or an estop, read as leniently as JSON allows: any JSON object within the size
    limit whose ``type`` is "stop" or "estop" (the last one, if the key is repeated)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == CommandType.STOP:
        return Stop(t=t)
    if kind == CommandType.ESTOP:
        return EStop(t=t)
    return None


def _late(kind: str, ts: float, now_unix: float) -> str | None:
    words: dict[str, str] = {
        CommandType.START_SESSION: "start",
        CommandType.SET_SPEED: "speed change",
        CommandType.COMMISSION_CONFIRM: "confirmation",
        CommandType.OUTCOME_BEFORE: "entry of the record",
        CommandType.OUTCOME_AFTER: "entry of the record",
        CommandType.CONFIRM_FIRST_SESSION: "confirmation",
        CommandType.RECORD_MEASURE: "measure",
    }
    what = words.get(kind, kind)
    age = now_unix - ts
    if age > MAX_COMMAND_AGE_S:
        again = ": press again if it is still wanted" if kind != CommandType.HEARTBEAT else ""
        return (
            f"this {what} was sent {age:.1f} s ago and is refused as too old (the limit is "
            f"{MAX_COMMAND_AGE_S:g} s){again}"
        )
    if age < -MAX_COMMAND_AHEAD_S:
        return (
            f"this {what} is stamped {-age:.1f} s in the future: the tablet's clock and the "
            "controller's disagree; set both from the network time"
        )
    return None


class DuplicateFilter:
    """A bounded memory (least recently used out) of recent command ids and their replies.

    The same id with the same content is a retransmission: its original reply is returned and
    the command is not run again. The same id with different content is refused as
    ``duplicate`` (ids are unique per command), and the original reply stays remembered.
    """

    def __init__(self, capacity: int = DEFAULT_DUPLICATE_MEMORY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[str, CommandReply]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def lookup(self, command_id: str, fingerprint: str) -> CommandReply | None:
        entry = self._seen.get(command_id)
        if entry is None:
            return None
        self._seen.move_to_end(command_id)
        original_fingerprint, original = entry
        if fingerprint == original_fingerprint:
            return original
        return CommandReply(
            command_id,
            ErrorCode.DUPLICATE,
            f"id {command_id!r} was already used by a different command; ids are unique",
        )

    def remember(self, command_id: str, fingerprint: str, reply: CommandReply) -> None:
        self._seen[command_id] = (fingerprint, reply)
        self._seen.move_to_end(command_id)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


Execute = Callable[[TabletCommand], Reply | None]
OnRefused = Callable[[CommandReply, str | None], None]
OnFailure = Callable[[Exception, CommandReply], None]
# Carried out every time they arrive, whatever their id (SR-12): a repeated stop is harmless,
# an ignored one is not (a tablet whose E-STOP button sends a fixed id). A commissioning run's
# abort likewise: it stops the belt.
_ALWAYS_RUN = (Stop, EStop, CommissionAbort)


def internal_error(command_id: str | None, kind: str | None, exc: BaseException) -> CommandReply:
    """The reply to a command whose handling failed unexpectedly (SR-15)."""
    what = f"this {kind}" if kind in COMMAND_TYPES else "this command"
    return CommandReply(
        command_id,
        ErrorCode.INTERNAL_ERROR,
        f"handling {what} failed unexpectedly ({type(exc).__name__}); the controller carries "
        "on and the failure is in its journal",
    )


def readable_id(payload: bytes) -> str | None:
    """The id of a payload, for a reply when everything else about it failed. Never raises."""
    try:
        obj = strict_json(payload) if len(payload) <= MAX_PAYLOAD_BYTES else None
    except (BadJson, ValueError, TypeError):
        return None
    return _readable_id(obj) if isinstance(obj, dict) else None


def answer_command(
    payload: bytes,
    *,
    retained: bool,
    t: float,
    seen: DuplicateFilter,
    execute: Execute,
    now_unix: float | None = None,
    on_refused: OnRefused | None = None,
    on_failure: OnFailure | None = None,
) -> CommandReply:
    """Parse, de-duplicate, run at most once, and build the reply for one ``<p>/cmd`` payload.

    ``on_refused`` hears of the refusals made here, before the core (malformed, retained,
    too old, an unexpected failure; with the command's type when it could be read): the core
    reports its own, as command_refused events, and these must reach the journal too (SR-14).
    A retransmission of a refused command is not reported again.

    ``stop`` and ``estop`` are the exception to the duplicate rule: run again every time
    (SR-12), and answered as any command is.

    An exception out of ``execute`` is answered ``internal_error`` and handed to
    ``on_failure`` (to be logged) and ``on_refused`` (to be journaled): never raised (SR-15).
    """
    parsed = parse_command(payload, retained=retained, t=t, now_unix=now_unix)
    if isinstance(parsed, CommandReply) and not retained:
        stop = _stop_however_formed(payload, t)
        if stop is not None:
            # SR-12: a stop or an estop is carried out however the rest of it is formed (a
            # field this version does not know, an id that is missing or too long, a
            # duplicate key): refusing it would leave the belt running. Answered as any
            # command, by its id when it can be read.
            try:
                return reply_from_core(parsed.id, execute(stop))
            except Exception as exc:  # SR-15: no handler raises into its caller
                reply = internal_error(parsed.id, _readable_type(payload), exc)
                if on_failure is not None:
                    on_failure(exc, reply)
                if on_refused is not None:
                    on_refused(reply, _readable_type(payload))
                return reply
    if isinstance(parsed, CommandReply):
        if parsed.id is not None and not retained:
            # The id was readable, so the payload is a JSON object.
            fingerprint = _fingerprint(strict_json(payload))
            earlier = seen.lookup(parsed.id, fingerprint)
            if earlier is not None:
                return earlier
            seen.remember(parsed.id, fingerprint, parsed)
        if on_refused is not None:
            on_refused(parsed, _readable_type(payload))
        return parsed
    always = isinstance(parsed.command, _ALWAYS_RUN)
    if not always:
        earlier = seen.lookup(parsed.id, parsed.fingerprint)
        if earlier is not None:
            return earlier
    try:
        reply = reply_from_core(parsed.id, execute(parsed.command))
    except Exception as exc:  # SR-15: no handler raises into its caller
        kind = _readable_type(payload)
        reply = internal_error(parsed.id, kind, exc)
        seen.remember(parsed.id, parsed.fingerprint, reply)
        if on_failure is not None:
            on_failure(exc, reply)
        if on_refused is not None:
            on_refused(reply, kind)
        return reply
    seen.remember(parsed.id, parsed.fingerprint, reply)
    return reply


# ------------------------------------------------------------------------------- outgoing


def _num(value: float, digits: int = 3) -> float | None:
    """A JSON number; a non-finite value (an unreadable drive) becomes null."""
    return round(value, digits) if math.isfinite(value) else None


def _scalar(value: str | int | float | bool | None) -> JsonValue:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_programs(
    programs: Mapping[str, Program],
    limits: SafetyLimits,
    *,
    default: str,
    returning: str,
) -> JsonObject:
    """The state's ``programs`` extension: what a tablet may offer, so that a program a clinic
    adds appears on every tablet without a new page. ``band_mph`` is the program's band inside
    the daemon's safety band; ``interval_s`` only for interval programs (a cap counts whole
    intervals). ``default`` and ``returning`` say what a start without a program gets for a
    user without and with a session in the journal."""
    listed: JsonObject = {}
    for name, program in sorted(programs.items()):
        entry: JsonObject = {
            "title": program.title,
            "kind": program.kind.value,
            "first_session": program.first_session,
            "band_mph": list(program.band_within(limits)),
            "cap_s": {
                "default": program.cap_s_default,
                "min": program.cap_s_min,
                "max": program.cap_s_max,
            },
        }
        if program.kind is ProgramKind.INTERVALS:
            entry["interval_s"] = program.interval_s
        listed[name] = entry
    return {"default": default, "returning": returning, "all": listed}


def encode_state(
    snapshot: Snapshot, *, treadmill_id: str, ts: float, to_unix: ToUnix
) -> JsonObject:
    """The ``<p>/state`` object. ``ts`` is unix seconds; ``to_unix`` maps the core's times."""
    s = snapshot.session
    session: JsonValue = None
    if s is not None:
        session = {
            "id": s.id,
            "user": s.user,
            "program": s.program,
            "elapsed_s": _num(s.elapsed_s),
            "cap_s": _num(s.cap_s),
            "remaining_s": _num(s.remaining_s),
        }
    latch = snapshot.latched
    latched: JsonValue = None
    if latch is not None:
        latched = {
            "kind": latch.kind.value,
            "cause": latch.cause.value,
            "since": _num(to_unix(latch.since)),
        }
    return {
        "treadmill_id": treadmill_id,
        "state": snapshot.state.value,
        "speed_mph": _num(snapshot.belt_mph),
        "target_mph": _num(snapshot.target_mph),
        "session": session,
        "grip": {
            "left": snapshot.grip.get(Hand.LEFT, False),
            "right": snapshot.grip.get(Hand.RIGHT, False),
        },
        "fall": snapshot.fall,
        "stale": [sensor.value for sensor in snapshot.stale],
        "latched": latched,
        "ts": _num(ts),
    }


# "loop" is the daemon's extension (control-loop lag), which moves all the time too.
# Besides what moves continuously, the programs: fixed for the daemon's life, so comparing them
# at every look (20 a second) would only cost time.
_CONTINUOUS = frozenset({"speed_mph", "ts", "loop", "programs"})
_CONTINUOUS_SESSION = frozenset({"elapsed_s", "remaining_s"})


def state_key(state: JsonObject) -> str:
    """What makes a state "changed": everything but the belt speed, the session clock and ts.

    Those move continuously while the belt runs and are refreshed by the periodic publication.
    The belt coming to a standstill (or starting to move) is a change: the periodic publication
    ends with the belt, and the last state published must show it standing still.
    """
    key: dict[str, JsonValue] = {k: v for k, v in state.items() if k not in _CONTINUOUS}
    speed = state.get("speed_mph")
    key["standstill"] = isinstance(speed, int | float) and speed <= STANDSTILL_MPH
    session = key.get("session")
    if isinstance(session, dict):
        key["session"] = {k: v for k, v in session.items() if k not in _CONTINUOUS_SESSION}
    return json.dumps(key, sort_keys=True)


def belt_moving(snapshot: Snapshot) -> bool:
    """The belt moves, or is commanded to: state must then go out at least every 500 ms."""
    belt = snapshot.belt_mph
    return (
        not math.isfinite(belt)
        or belt > STANDSTILL_MPH
        or snapshot.commanded_mph > 0.0
        or snapshot.state in (State.RUNNING, State.STOPPING)
    )


def encode_event(event: Event, *, to_unix: ToUnix) -> JsonObject:
    """The ``<p>/events`` object: ``{"type", "ts", ...fields}`` (fields never replace those two)."""
    out: JsonObject = {"type": event.type.value, "ts": _num(to_unix(event.t))}
    for key, value in event.fields.items():
        if key not in out:
            out[key] = _scalar(value)
    return out


def to_payload(obj: JsonObject) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


# ------------------------------------------------------------------------------- sensors


class _SensorModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    value: bool
    ts: float


@dataclass(frozen=True, slots=True)
class SensorReading:
    value: bool
    ts: float  # unix seconds, as the sensor stamped it


@dataclass(frozen=True, slots=True)
class SensorPayloadError:
    """A sensor payload that is not a reading. The caller treats it as no reading at all:
    the sensor goes stale, and a stale sensor is unsafe (SR-8)."""

    message: str


def parse_sensor_payload(payload: bytes) -> SensorReading | SensorPayloadError:
    """Parse ``{"value": true/false, "ts": <unix s>}``. Never raises."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return SensorPayloadError(f"the payload is {len(payload)} bytes; the limit is 4096")
    try:
        obj = strict_json(payload)
    except BadJson as exc:
        return SensorPayloadError(str(exc))
    try:
        model = _SensorModel.model_validate(obj)
    except ValidationError as exc:
        return SensorPayloadError(
            describe_invalid(exc).replace("invalid command", "invalid reading")
        )
    if not (math.isfinite(model.ts) and model.ts > 0):
        return SensorPayloadError(f"invalid reading: ts: {model.ts!r} is not a unix time")
    return SensorReading(value=model.value, ts=model.ts)
