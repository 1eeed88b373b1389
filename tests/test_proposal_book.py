"""The daemon's book of proposals (controller/proposal_book.py), without a daemon: an entry is
used by a start only while it is current, i.e. worked out from the user's record as it stands;
any change to that record (or to a record whose user is not known) makes it due again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treadguard.controller.proposal_book import ENTRIES_MAX, NotKnown, ProposalBook, StartChoice
from treadguard.safety.decisions import Event, EventType, JsonScalar

RW = StartChoice("reverse_walking", 300.0, "Reverse walking, 5 min: first session completed")
FIRST = StartChoice("first_session", 180.0, "First treadmill session, 3 min: held")


def event(kind: EventType, **fields: JsonScalar) -> Event:
    return Event(kind, 0.0, fields)


def test_an_entry_is_used_only_while_the_user_s_record_is_as_it_was_worked_out() -> None:
    book = ProposalBook()
    woken: list[None] = []
    book.wake = lambda: woken.append(None)
    first = book.choice("p-1")
    assert isinstance(first, NotKnown)
    assert "being worked out" in first.why
    assert book.due() == "p-1"
    assert woken
    token = book.token("p-1")
    book.put("p-1", token, RW)
    assert book.choice("p-1") == RW
    assert book.due() is None
    # The user's session starts and ends, then the pain after it: each makes it due again.
    book.on_event(event(EventType.SESSION_STARTED, session_id="7", user="p-1", program="x"))
    assert isinstance(book.choice("p-1"), NotKnown)
    assert book.due() == "p-1"
    book.put("p-1", book.token("p-1"), RW)
    book.on_event(event(EventType.OUTCOME_RECORDED, session_id="7", when="after", pain=6))
    assert isinstance(book.choice("p-1"), NotKnown)
    # Another user's record leaves p-1's entry current.
    book.put("p-1", book.token("p-1"), FIRST)
    book.on_event(event(EventType.FIRST_SESSION_CONFIRMED, session_id="3", user="p-2"))
    assert book.choice("p-1") == FIRST
    # Nor do events that change nobody's record.
    book.on_event(event(EventType.SPEED_CHANGED, session_id="7", mph=1.0))
    assert book.choice("p-1") == FIRST


def test_an_entry_worked_out_while_the_record_changed_is_not_used_and_is_worked_out_again() -> None:
    book = ProposalBook()
    token = book.token("p-1")  # the keeper begins reading p-1's record
    book.changed("p-1")  # ... and the record changes meanwhile
    book.put("p-1", token, RW)
    assert isinstance(book.choice("p-1"), NotKnown)
    assert book.due() == "p-1"


def test_an_entry_for_a_session_whose_user_is_not_known_makes_every_entry_due() -> None:
    """A pain entry for a session from before a restart names only the session: whose record
    changed is not known here, so no entry is current until worked out again."""
    book = ProposalBook()
    for user in ("p-1", "p-2"):
        book.put(user, book.token(user), RW)
    book.on_event(event(EventType.OUTCOME_RECORDED, session_id="1", when="after", pain=9))
    assert isinstance(book.choice("p-1"), NotKnown)
    assert isinstance(book.choice("p-2"), NotKnown)
    assert {book.due(), book.due()} == {"p-1", "p-2"}


def test_a_record_that_could_not_be_read_is_read_again_for_the_next_start() -> None:
    book = ProposalBook()
    book.put("p-1", book.token("p-1"), NotKnown("the record of p-1 cannot be read (locked)"))
    got = book.choice("p-1")
    assert isinstance(got, NotKnown)
    assert "cannot be read" in got.why
    assert book.due() == "p-1"


def test_a_keeper_that_stopped_refuses_every_start_from_history_saying_so() -> None:
    book = ProposalBook()
    book.put("p-1", book.token("p-1"), RW)
    book.broken = "proposals cannot be worked out on this treadmill (OSError): choose a program"
    got = book.choice("p-1")
    assert isinstance(got, NotKnown)
    assert "choose a program" in got.why


USERS = st.sampled_from(["p-1", "p-2", "p-3"])
KINDS = st.sampled_from(list(EventType))
SESSIONS = st.sampled_from(["1", "2", "3"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("event"), KINDS, SESSIONS, st.one_of(st.none(), USERS)),
        st.tuples(st.just("begin"), USERS),
        st.tuples(st.just("finish"), USERS),
        st.tuples(st.just("day"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_a_start_never_uses_an_entry_from_a_record_that_has_changed_since(
    steps: list[tuple[object, ...]],
) -> None:
    """A model of the records: a counter per user of their record's changes, and whose record
    each session is. Whatever the events and whenever the keeper begins and finishes working
    an entry out, a start uses an entry only if the user's record has not changed since the
    keeper began reading it."""
    book = ProposalBook()
    changes = {"p-1": 0, "p-2": 0, "p-3": 0}
    owner: dict[str, str] = {}
    begun: dict[str, tuple[tuple[int, int], dict[str, int]]] = {}
    used_from: dict[str, dict[str, int]] = {}  # the record each entry was read from
    record_kinds = {
        EventType.SESSION_STARTED,
        EventType.SESSION_ENDED,
        EventType.OUTCOME_RECORDED,
        EventType.FIRST_SESSION_CONFIRMED,
    }
    for step in steps:
        if step[0] == "event":
            _, kind, session, user = step
            assert isinstance(kind, EventType)
            assert isinstance(session, str)
            fields: dict[str, JsonScalar] = {"session_id": session}
            if user is not None:
                fields["user"] = str(user)
            book.on_event(Event(kind, 0.0, fields))
            if kind in record_kinds:
                if kind is EventType.SESSION_STARTED and user is not None:
                    owner[session] = str(user)
                whose = str(user) if user is not None else owner.get(session)
                for u in changes if whose is None else [whose]:
                    changes[u] += 1
        elif step[0] == "begin":
            user = str(step[1])
            begun[user] = (book.token(user), dict(changes))
        elif step[0] == "finish":
            user = str(step[1])
            if user in begun:
                token, seen = begun.pop(user)
                book.put(user, token, RW)
                used_from[user] = seen
        else:
            book.everyone()
        for user in changes:
            if book.choice(user) == RW:
                assert used_from[user][user] == changes[user], (user, used_from, changes)


def test_an_entry_for_a_session_said_to_be_a_user_s_makes_only_that_user_s_entry_due() -> None:
    """The daemon says whose session a record entry is for (System, before the event): a
    pain entry for a session from before a restart then outdates that user's entry only, and
    a flood of them cannot keep everyone's starts from history refused."""
    book = ProposalBook()
    for user in ("p-1", "p-2"):
        book.put(user, book.token(user), RW)
    book.session_of("1", "p-1")
    book.on_event(event(EventType.OUTCOME_RECORDED, session_id="1", when="after", pain=9))
    assert isinstance(book.choice("p-1"), NotKnown)
    assert book.choice("p-2") == RW


def test_the_book_keeps_a_bounded_number_of_users() -> None:
    """Any account that may ask a history query may name any code: the users worked out
    longest ago go past ENTRIES_MAX."""
    book = ProposalBook()
    for n in range(ENTRIES_MAX + 10):
        user = f"p-{n}"
        book.put(user, book.token(user), RW)
    assert book.current("p-0") is None
    assert book.current(f"p-{ENTRIES_MAX + 9}") == RW
