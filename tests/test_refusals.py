"""SR-14 (amended): one coalescer for every refused command, so no input can fill the journal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from treadguard.controller.refusals import RefusalCoalescer, refusal_kind
from treadguard.safety.decisions import Event, EventType


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
    out.extend(c.due(times[-1] + 1.0))
    counts = [e.fields.get("count", 1) for e in out]
    assert all(isinstance(n, int) for n in counts), counts
    assert sum(n for n in counts if isinstance(n, int)) == len(times)
    singles = [e for e in out if "count" not in e.fields]
    assert len(singles) <= 3 * (int(times[-1] - times[0]) + 1) * 2
