"""SR-14 (amended): one coalescer for every refused command, so no input can fill the journal."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from treadguard.controller.refusals import RefusalCoalescer, SpeedChangeCoalescer, refusal_kind
from treadguard.safety.decisions import Event, EventType, JsonScalar


def refused(t: float, command: str = "set_speed", code: str = "out_of_range") -> Event:
    return Event(EventType.COMMAND_REFUSED, t, {"command": command, "code": code, "message": "no"})


def test_sr14_the_first_refusal_of_a_second_goes_out_the_rest_are_counted() -> None:
    c = RefusalCoalescer()
    assert c.admit(refused(0.0))
    assert not any(c.admit(refused(0.001 * n)) for n in range(1, 100))
    assert c.admit(refused(0.0, command="start_session"))  # another kind
    assert c.due(0.5) == []
    (counted,) = c.due(1.0)
    assert counted.type is EventType.COMMAND_REFUSED
    assert counted.fields["count"] == 99
    assert (counted.fields["command"], counted.fields["code"]) == ("set_speed", "out_of_range")
    assert c.due(5.0) == []  # start_session's second held nothing back


def test_sr14_a_refusal_after_its_second_ended_closes_it_first() -> None:
    c = RefusalCoalescer()
    c.admit(refused(0.0))
    c.admit(refused(0.5))
    assert c.admit(refused(1.2))
    (counted,) = c.take_closed()
    assert counted.fields["count"] == 1


def test_other_events_are_never_held() -> None:
    c = RefusalCoalescer()
    for n in range(10):
        assert c.admit(Event(EventType.ESTOP, 0.0, {"cause": "remote_estop"}))
        assert c.admit(Event(EventType.GRIP_WARNING, n * 0.01, {}))


@given(st.text(), st.text())
def test_kinds_are_bounded_whatever_a_sender_makes_up(command: str, code: str) -> None:
    kind, reason = refusal_kind(command, code)
    assert kind in {"start_session", "set_speed", "stop", "estop", "reset", "heartbeat", "other"}
    assert reason == "other" or reason.islower()


@given(
    times=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=300).map(sorted),
    kinds=st.lists(st.sampled_from(["set_speed", "launch", "reset"]), min_size=1),
)
def test_sr14_every_refusal_is_accounted_for_and_at_most_one_a_second_per_kind_goes_out(
    times: list[float], kinds: list[str]
) -> None:
    c = RefusalCoalescer()
    out: list[Event] = []
    for n, t in enumerate(times):
        ev = refused(t, command=kinds[n % len(kinds)])
        if c.admit(ev):
            out.append(ev)
        out.extend(c.take_closed())
    out.extend(c.due(times[-1] + 2.0))  # every window ended (t + 1.0 may round below it)
    counts = [e.fields.get("count", 1) for e in out]
    assert all(isinstance(n, int) for n in counts), counts
    assert sum(n for n in counts if isinstance(n, int)) == len(times)
    singles = [e for e in out if "count" not in e.fields]
    assert len(singles) <= 3 * (int(times[-1] - times[0]) + 1) * 2


# ------------------------------------------------------------------- speed changes (SR-14)


def changed(t: float, frm: float, to: float, session: str = "4") -> Event:
    fields: dict[str, JsonScalar] = {"session_id": session, "from_mph": frm, "to_mph": to}
    return Event(EventType.SPEED_CHANGED, t, fields)


def test_sr14_the_first_speed_change_of_a_second_goes_out_the_rest_close_it() -> None:
    """The held changes of a second go out as one: from the target before the first held one
    to the target after the last, with their count."""
    c = SpeedChangeCoalescer()
    assert c.admit(changed(10.0, 0.8, 1.0))
    assert not c.admit(changed(10.2, 1.0, 1.1))
    assert not c.admit(changed(10.4, 1.1, 0.9))
    assert c.due(10.9) == []
    (closed,) = c.due(11.0)
    assert closed.t == 10.4
    assert closed.fields == {
        "session_id": "4",
        "from_mph": 1.0,
        "to_mph": 0.9,
        "count": 2,
        "window_s": 1.0,
    }
    assert c.admit(changed(11.5, 0.9, 1.2))  # a new second


@given(
    times=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=300).map(sorted),
    sessions=st.lists(st.sampled_from(["1", "2"]), min_size=1),
)
def test_sr14_every_speed_change_is_accounted_for_and_the_target_chain_holds(
    times: list[float], sessions: list[str]
) -> None:
    """However fast they come: every change counted once, at most two rows a second per
    session, and per session the targets recorded chain from the first to the last."""
    c = SpeedChangeCoalescer()
    out: list[Event] = []
    target = {"1": 0.8, "2": 0.8}
    for n, t in enumerate(times):
        session = sessions[n % len(sessions)]
        new = round(0.8 + (n % 5) / 10, 1)
        ev = changed(t, target[session], new, session)
        target[session] = new
        if c.admit(ev):
            out.append(ev)
        out.extend(c.take_closed())
    out.extend(c.due(times[-1] + 2.0))  # every window ended (t + 1.0 may round below it)
    counts = [e.fields.get("count", 1) for e in out]
    assert sum(n for n in counts if isinstance(n, int)) == len(times)
    for session in ("1", "2"):
        rows = sorted((e for e in out if e.fields["session_id"] == session), key=lambda e: e.t)
        if rows:
            assert rows[-1].fields["to_mph"] == target[session]
        for a, b in itertools.pairwise(rows):
            assert b.fields["from_mph"] == a.fields["to_mph"]
        span = int(times[-1] - times[0]) + 1
        assert len(rows) <= 2 * span * 2


def test_other_events_pass_the_speed_change_coalescer() -> None:
    c = SpeedChangeCoalescer()
    assert c.admit(refused(1.0))
    assert c.admit(Event(EventType.RESET, 1.0, {"cleared": "fall"}))
