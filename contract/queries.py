"""Read-only queries of the tablet contract (``docs/tablet-contract.md``, "Queries"), pure.

A tablet or a dashboard asks the daemon for a user's sessions (``history``) or for one
session's report (``session``). A query never reaches the safety core: it only reads the
journal. Each account has a topic pair of its own, and the broker's ACL (config/mosquitto/acl)
lets only that account publish on the first and read the second, so the account named in the
topic is the one that asked, and the reply (patient data) reaches no one else::

    <p>/query/<account>          the account -> daemon   one query
    <p>/query/<account>/reply    daemon -> the account   its answer

- :func:`parse_query` turns a payload into a :class:`HistoryQuery` or :class:`SessionQuery`, or
  a :class:`QueryReply` refusal that says what was wrong. It never raises.
- :func:`account_of` reads the asking account from a query topic.
- :func:`encode_history` and :func:`encode_session` build the answers from rows the caller
  read and put in words (times in the clinic's zone, program titles); this module reads no
  clock and no file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from treadguard.contract.mqtt import (
    ID_MAX_CHARS,
    MAX_PAYLOAD_BYTES,
    BadJson,
    CommandId,
    JsonObject,
    JsonValue,
    PersonCode,
    SessionId,
    describe_invalid,
    strict_json,
    to_payload,
)

QUERY_SEGMENT = "query"
REPLY_SEGMENT = "reply"
# A page of history: enough for the trend of a 6-week block at 3-4 sessions a week, small
# enough that one answer is a few kilobytes and read in a few milliseconds.
HISTORY_DEFAULT = 20
HISTORY_MAX = 50
# The largest answer the daemon sends. The board's broker takes no packet over 1 MiB from
# anyone (max_packet_size in config/mosquitto/treadguard.conf, which bounds what one message,
# retained or not, can cost it): an answer stays under that with room for its topic. A typical
# session's page is about 50 KiB; one with thousands of events can pass this, and is refused
# with its size and where to print it instead.
MAX_REPLY_BYTES = 960 * 1024


class QueryErrorCode(StrEnum):
    """Why a query was not answered (the ``error.code`` of its reply)."""

    INVALID_JSON = "invalid_json"
    INVALID_QUERY = "invalid_query"
    UNKNOWN_TYPE = "unknown_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_ALLOWED = "not_allowed"  # a retained query
    NOT_FOUND = "not_found"  # no such session
    RATE_LIMITED = "rate_limited"  # more queries waiting than the daemon answers
    UNAVAILABLE = "unavailable"  # the journal cannot be read now
    INTERNAL_ERROR = "internal_error"


# ------------------------------------------------------------------------------- topics


def query_topic(prefix: str, account: str) -> str:
    return f"{prefix}/{QUERY_SEGMENT}/{account}"


def query_reply_topic(prefix: str, account: str) -> str:
    return f"{prefix}/{QUERY_SEGMENT}/{account}/{REPLY_SEGMENT}"


def query_filter(prefix: str) -> str:
    """What the daemon subscribes to: every account's query topic (never the replies)."""
    return f"{prefix}/{QUERY_SEGMENT}/+"


def account_of(prefix: str, topic: str) -> str | None:
    """The account a query topic names, or None for any other topic. The name is one topic
    level, so it holds no ``/``; the broker has already refused ``+`` and ``#`` in a topic
    name, and the ACL lets only that account publish there."""
    head = f"{prefix}/{QUERY_SEGMENT}/"
    if not topic.startswith(head):
        return None
    account = topic[len(head) :]
    if not account or "/" in account or "+" in account or "#" in account:
        return None
    return account


# ------------------------------------------------------------------------------- queries


class _QueryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: CommandId


# As a command's: taken as typed, or refused (contract/codes.py).
UserCode = PersonCode


class HistoryQuery(_QueryModel):
    """A user's sessions, newest first, at most ``limit`` of them."""

    type: Literal["history"]
    user: UserCode
    limit: Annotated[int, Field(ge=1, le=HISTORY_MAX)] = HISTORY_DEFAULT


class SessionQuery(_QueryModel):
    """One session's report: its data, and with ``format`` "html" the rendered page too."""

    type: Literal["session"]
    session_id: SessionId
    format: Literal["data", "html"] = "data"


Query: TypeAlias = HistoryQuery | SessionQuery
_MODELS: dict[str, type[_QueryModel]] = {"history": HistoryQuery, "session": SessionQuery}
QUERY_TYPES = frozenset(_MODELS)


@dataclass(frozen=True, slots=True)
class QueryReply:
    """An answer: ``ok`` with ``body`` (the fields beside id and ok), or a refusal."""

    id: str | None
    error: QueryErrorCode | None = None
    message: str = ""
    body: JsonObject = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> JsonObject:
        if self.error is None:
            return {"id": self.id, "ok": True, **self.body}
        return {
            "id": self.id,
            "ok": False,
            "error": {"code": self.error.value, "message": self.message},
        }

    def payload(self) -> bytes:
        """The answer's bytes; over MAX_REPLY_BYTES, a refusal instead that says how large the
        answer was and where the whole of it can be had."""
        data = to_payload(self.to_json())
        if len(data) <= MAX_REPLY_BYTES:
            return data
        session = self.body.get("session")
        sid = session.get("session_id") if isinstance(session, dict) else None
        where = (
            f"print the session's report on the board instead (treadguard report {sid})"
            if sid is not None
            else "ask for fewer sessions (a smaller limit)"
        )
        too_large = QueryReply(
            self.id,
            QueryErrorCode.UNAVAILABLE,
            f"the answer is {-(-len(data) // 1024)} KiB, more than the "
            f"{MAX_REPLY_BYTES // 1024} KiB an answer may be over MQTT: {where}",
        )
        return to_payload(too_large.to_json())


def refusal(query_id: str | None, code: QueryErrorCode, message: str) -> QueryReply:
    return QueryReply(query_id, code, message)


def _loads(payload: bytes) -> tuple[Any, str | None]:
    """Strict JSON (UTF-8, no NaN, no key twice), as for a command: the object, or None and
    what is wrong."""
    try:
        return strict_json(payload), None
    except BadJson as exc:
        return None, str(exc)


def parse_query(payload: bytes, *, retained: bool) -> Query | QueryReply:
    """One ``<p>/query/<account>`` payload, read; or the refusal to send back. Never raises."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return refusal(
            None,
            QueryErrorCode.PAYLOAD_TOO_LARGE,
            f"the payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}",
        )
    obj, problem = _loads(payload)
    if problem is not None:
        return refusal(None, QueryErrorCode.INVALID_JSON, problem)
    if not isinstance(obj, dict):
        return refusal(
            None, QueryErrorCode.INVALID_QUERY, "invalid query: a query must be a JSON object"
        )
    raw_id = obj.get("id")
    query_id = raw_id if isinstance(raw_id, str) and 1 <= len(raw_id) <= ID_MAX_CHARS else None
    if retained:
        return refusal(
            query_id,
            QueryErrorCode.NOT_ALLOWED,
            "retained queries are refused: publish queries with the retain flag off",
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        return refusal(
            query_id, QueryErrorCode.INVALID_QUERY, "invalid query: type: a string is required"
        )
    model = _MODELS.get(kind)
    if model is None:
        return refusal(
            query_id,
            QueryErrorCode.UNKNOWN_TYPE,
            f"unknown query type {kind[:ID_MAX_CHARS]!r}; known: {', '.join(sorted(_MODELS))}",
        )
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        return refusal(query_id, QueryErrorCode.INVALID_QUERY, describe_invalid(exc, "query"))
    assert isinstance(parsed, HistoryQuery | SessionQuery)
    return parsed


# ------------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session as a clinician reads it: what the caller read from the journal, in the
    clinic's zone and words. ``pain_before``, ``pain_after`` and ``exertion`` are the newest
    entries of the clinician's record, None when not entered."""

    session_id: int
    user: str
    program: str
    program_title: str
    started: str  # ISO 8601 with the clinic's offset
    ended: str | None
    belt_min: float | None  # to 0.1 min
    cap_min: float
    top_mph: float | None  # to 0.01 mph
    ended_by: str | None  # the end reason's code; None while the session is open
    ended_by_words: str
    pain_before: int | None = None
    pain_after: int | None = None
    exertion: int | None = None

    def to_json(self) -> JsonObject:
        return {
            "session_id": str(self.session_id),  # a string, as in the state and the events
            "user": self.user,
            "program": self.program,
            "program_title": self.program_title,
            "started": self.started,
            "ended": self.ended,
            "belt_min": self.belt_min,
            "cap_min": self.cap_min,
            "top_mph": self.top_mph,
            "ended_by": self.ended_by,
            "ended_by_words": self.ended_by_words,
            "pain_before": self.pain_before,
            "pain_after": self.pain_after,
            "exertion": self.exertion,
        }


def encode_history(
    query: HistoryQuery,
    sessions: Sequence[SessionSummary],
    *,
    total: int,
    timezone: str,
    proposal: JsonObject | None = None,
    proposal_unavailable: str | None = None,
    measures: Sequence[JsonObject] = (),
) -> QueryReply:
    """The answer to a ``history`` query: ``sessions`` newest first (at most the query's
    limit), ``total`` the user's sessions in the journal, ``measures`` the user's measures a
    kind each (baseline, latest and change, in words: one row per kind, so the answer stays
    small however many are taken), and ``proposal``, when the daemon makes one, the next
    session proposed with its reason, or ``proposal_unavailable``: why the daemon has none
    to give now. A user with no sessions gets an empty list, not an error: a first session is
    still to come."""
    body: JsonObject = {
        "type": "history",
        "user": query.user,
        "timezone": timezone,
        "total": total,
        "sessions": [s.to_json() for s in sessions[: query.limit]],
        "measures": list(measures),
    }
    if proposal is not None:
        body["proposal"] = proposal
    elif proposal_unavailable is not None:
        body["proposal_unavailable"] = proposal_unavailable
    return QueryReply(query.id, body=body)


def encode_session(
    query: SessionQuery,
    summary: SessionSummary,
    *,
    timezone: str,
    notes: Mapping[str, str],
    events: Sequence[Mapping[str, str]],
    html: str | None = None,
) -> QueryReply:
    """The answer to a ``session`` query: the summary, the clinician's notes (by ``before``
    and ``after``), the events as the report lists them (``time``, ``into``, ``name``,
    ``details``), and ``html``, when given, the report's page."""
    body: JsonObject = {
        "type": "session",
        "timezone": timezone,
        "session": summary.to_json(),
        "notes": {k: v for k, v in notes.items()},
        "events": [_strings(e) for e in events],
    }
    if html is not None:
        body["html"] = html
    return QueryReply(query.id, body=body)


def with_page(answer: QueryReply, html: str) -> QueryReply:
    """A ``session`` answer with the report's page added (``format`` "html"), once written."""
    return QueryReply(answer.id, answer.error, answer.message, {**answer.body, "html": html})


def _strings(row: Mapping[str, str]) -> JsonValue:
    return {k: str(v) for k, v in row.items()}
