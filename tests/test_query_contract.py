"""The read-only queries of the tablet contract (docs/tablet-contract.md, "Queries"), pure: the
payloads here are written by hand from that page, never built by the code under test."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treadguard.contract.mqtt import JsonObject
from treadguard.contract.queries import (
    HistoryQuery,
    QueryErrorCode,
    QueryReply,
    SessionQuery,
    SessionSummary,
    account_of,
    encode_history,
    encode_session,
    parse_query,
    query_filter,
    query_reply_topic,
    query_topic,
)

P = "treadmill/tm-01"


def parse(text: str | bytes, *, retained: bool = False) -> HistoryQuery | SessionQuery | QueryReply:
    return parse_query(text.encode() if isinstance(text, str) else text, retained=retained)


def refused(text: str | bytes, code: str, *, retained: bool = False) -> QueryReply:
    reply = parse(text, retained=retained)
    assert isinstance(reply, QueryReply), reply
    assert reply.to_json()["ok"] is False
    assert reply.to_json()["error"] == {"code": code, "message": reply.message}
    assert reply.message
    return reply


def test_the_topics_are_the_accounts_own() -> None:
    assert query_topic(P, "tablet") == "treadmill/tm-01/query/tablet"
    assert query_reply_topic(P, "tablet") == "treadmill/tm-01/query/tablet/reply"
    assert query_filter(P) == "treadmill/tm-01/query/+"
    assert account_of(P, "treadmill/tm-01/query/dashboard") == "dashboard"
    for other in (
        "treadmill/tm-01/query/tablet/reply",
        "treadmill/tm-01/query/",
        "treadmill/tm-02/query/tablet",
        "treadmill/tm-01/cmd",
    ):
        assert account_of(P, other) is None


def test_the_queries_of_the_page() -> None:
    assert parse('{"id": "q-1", "type": "history", "user": "u1", "limit": 20}') == HistoryQuery(
        id="q-1", type="history", user="u1", limit=20
    )
    assert parse('{"id": "q-2", "type": "session", "session_id": "7", "format": "html"}') == (
        SessionQuery(id="q-2", type="session", session_id="7", format="html")
    )
    query = parse('{"id": "q-3", "type": "session", "session_id": "7"}')
    assert isinstance(query, SessionQuery)
    assert query.format == "data"


@pytest.mark.parametrize(
    ("text", "code", "with_id"),
    [
        ("{not json", "invalid_json", False),
        ('{"id": "a", "id": "b", "type": "history", "user": "u"}', "invalid_json", False),
        ('{"id": "q", "type": "history", "user": "u", "limit": NaN}', "invalid_json", False),
        ('["history"]', "invalid_query", False),
        ('{"id": "q", "user": "u"}', "invalid_query", True),
        ('{"id": "q", "type": "history"}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": ""}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "   "}', "invalid_query", True),
        # A code is taken as typed: the page trims it, and " u1 " is no code of anyone's.
        ('{"id": "q", "type": "history", "user": " u1 "}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "u1\\u200b"}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "' + "u" * 65 + '"}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "a\\u0000b"}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "u", "limit": 0}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "u", "limit": 51}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "u", "limit": 5.0}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "u", "limit": "5"}', "invalid_query", True),
        ('{"id": "q", "type": "history", "user": "u", "extra": 1}', "invalid_query", True),
        ('{"id": "q", "type": "session", "session_id": 7}', "invalid_query", True),
        ('{"id": "q", "type": "session", "session_id": "0"}', "invalid_query", True),
        (
            '{"id": "q", "type": "session", "session_id": "7", "format": "pdf"}',
            "invalid_query",
            True,
        ),
        ('{"id": "", "type": "history", "user": "u"}', "invalid_query", False),
        ('{"id": "q", "type": "estop"}', "unknown_type", True),
        ('{"id": "q", "type": "sessions", "user": "u"}', "unknown_type", True),
    ],
)
def test_bad_queries_are_refused_saying_what_was_wrong(text: str, code: str, with_id: bool) -> None:
    reply = refused(text, code)
    assert reply.id == ("q" if with_id else None)


def test_the_message_names_the_field() -> None:
    assert (
        "limit"
        in refused(
            '{"id": "q", "type": "history", "user": "u", "limit": 99}', "invalid_query"
        ).message
    )
    assert "history, session" in refused('{"id": "q", "type": "x"}', "unknown_type").message


def test_a_retained_query_and_a_large_one_are_refused() -> None:
    reply = refused('{"id": "q", "type": "history", "user": "u"}', "not_allowed", retained=True)
    assert reply.id == "q"
    big = json.dumps({"id": "q", "type": "history", "user": "u", "pad": "x" * 5000})
    assert refused(big, "payload_too_large").id is None


@given(st.binary(max_size=300))
def test_any_bytes_are_parsed_or_refused_never_raised(payload: bytes) -> None:
    result = parse_query(payload, retained=False)
    assert isinstance(result, HistoryQuery | SessionQuery | QueryReply)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["id", "type", "user", "limit", "session_id", "format", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=70),
            st.sampled_from(["history", "session", "7", "html"]),
        ),
    )
)
def test_any_object_is_parsed_or_refused_with_a_contract_code(obj: dict[str, object]) -> None:
    result = parse_query(json.dumps(obj).encode(), retained=False)
    if isinstance(result, QueryReply):
        assert result.error in set(QueryErrorCode)
        assert result.message


SUMMARY = SessionSummary(
    session_id=7,
    user="u1",
    program="reverse_walking",
    program_title="Reverse walking",
    started="2026-12-01T14:05:03+00:00",
    ended="2026-12-01T14:10:09+00:00",
    belt_min=5.0,
    cap_min=5.0,
    top_mph=1.0,
    ended_by="cap",
    ended_by_words="the session cap was reached",
    pain_before=4,
    pain_after=2,
    exertion=5,
)


def test_the_history_answer_as_the_page_documents_it() -> None:
    query = HistoryQuery(id="q-1", type="history", user="u1", limit=20)
    answer = encode_history(query, [SUMMARY], total=1, timezone="Europe/London")
    # The example of docs/tablet-contract.md, "Queries", copied.
    documented = json.loads(
        '{"id": "q-1", "ok": true, "type": "history", "user": "u1", "timezone": "Europe/London",'
        ' "total": 1, "sessions": [{"session_id": "7", "user": "u1", "program": "reverse_walking",'
        ' "program_title": "Reverse walking", "started": "2026-12-01T14:05:03+00:00",'
        ' "ended": "2026-12-01T14:10:09+00:00", "belt_min": 5.0, "cap_min": 5.0, "top_mph": 1.0,'
        ' "ended_by": "cap", "ended_by_words": "the session cap was reached", "pain_before": 4,'
        ' "pain_after": 2, "exertion": 5}], "measures": []}'
    )
    assert json.loads(answer.payload()) == documented


def test_the_history_answer_carries_the_measures_as_documented() -> None:
    query = HistoryQuery(id="q", type="history", user="u1")
    # The row of docs/tablet-contract.md, "The measures", copied.
    row = json.loads(
        '{"kind": "tug", "title": "Timed Up and Go", "baseline": "12.0 s, 2026-11-02",'
        ' "latest": "10.5 s, 2026-11-20", "change": "-1.5 s, better", "count": 2}'
    )
    answer = encode_history(query, [], total=0, timezone="UTC", measures=[row])
    assert json.loads(answer.payload())["measures"] == [row]


def test_the_history_answer_holds_at_most_the_limit() -> None:
    query = HistoryQuery(id="q", type="history", user="u1", limit=2)
    answer = encode_history(query, [SUMMARY] * 3, total=9, timezone="UTC").to_json()
    sessions = answer["sessions"]
    assert isinstance(sessions, list)
    assert len(sessions) == 2
    assert answer["total"] == 9


def test_the_session_answer_carries_the_page_only_when_asked() -> None:
    data = SessionQuery(id="q", type="session", session_id="7")
    events = [{"time": "14:05:03", "into": "0:00", "name": "Session started", "details": "x"}]
    plain = encode_session(data, SUMMARY, timezone="UTC", notes={"after": "ok"}, events=events)
    assert "html" not in plain.to_json()
    assert plain.to_json()["notes"] == {"after": "ok"}
    assert plain.to_json()["events"] == events
    page = SessionQuery(id="q", type="session", session_id="7", format="html")
    rendered = encode_session(page, SUMMARY, timezone="UTC", notes={}, events=[], html="<html>")
    assert rendered.to_json()["html"] == "<html>"
    assert rendered.to_json()["session"] == SUMMARY.to_json()


def test_the_history_answer_carries_a_proposal_only_when_one_is_made() -> None:
    query = HistoryQuery(id="q", type="history", user="u1")
    proposal: JsonObject = {
        "program": "reverse_walking",
        "cap_s": 300.0,
        "reason": "first session completed",
    }
    made = encode_history(query, [], total=0, timezone="UTC", proposal=proposal).to_json()
    assert made["proposal"] == proposal
    assert "proposal" not in encode_history(query, [], total=0, timezone="UTC").to_json()
