"""The shared drive-link policy (drivers/link_policy.py), driven directly: SR-9 and SR-13.

Examples first, then hypothesis: arbitrary sequences of driver events, controller wishes and
time steps (tiny, huge and in between), with the rules checked after every step against a
small reference model written here from docs/requirements.md, not from the policy's own state.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from treadguard.drivers.link_policy import (
    Action,
    Decision,
    LinkPolicy,
    PolicyParams,
    StopCause,
)

POLL = 0.1
DEADMAN = 0.5
CONFIRM = 0.3
STANDSTILL = 4.0
MARGIN = 0.25
PARAMS = PolicyParams(
    poll_interval_s=POLL,
    deadman_s=DEADMAN,
    stop_confirm_s=CONFIRM,
    silence_margin_s=MARGIN,
    standstill_s=STANDSTILL,
)
FRAMES = frozenset({Action.STOP, Action.POLL, Action.COMMAND})


def linked(now: float = 0.0) -> LinkPolicy:
    """A policy whose link is up and whose first stop was accepted and confirmed by standstill."""
    p = LinkPolicy(PARAMS, now)
    assert p.next(now).action is Action.CONNECT
    p.connected(now)
    assert p.next(now).action is Action.STOP
    token = p.stop_written(now)
    p.stop_answered(now, token, accepted=True)
    assert p.next(now).action is Action.POLL
    p.status(now, p.poll_started(now), moving=False)
    assert not p.stop_raised
    return p


def running(now: float = 0.0) -> LinkPolicy:
    p = linked(now)
    p.want(now, moving=True)
    assert p.next(now, command_pending=True).action is Action.COMMAND
    p.command_written(now)
    return p


# --- examples -------------------------------------------------------------------------------


def until_silent(
    p: LinkPolicy, t: float, *, stops_accepted: bool, belt_moving: bool | None
) -> tuple[float, Decision]:
    """Follow the policy until it falls silent: every stop written is answered
    ``stops_accepted``; every status read shows the belt ``belt_moving`` (None: no answer).
    The time and the SILENT decision; bounded, and failing if silence never comes."""
    for _ in range(1000):
        d = p.next(t)
        if d.action is Action.SILENT:
            return t, d
        if d.action is Action.STOP:
            p.stop_answered(t, p.stop_written(t), accepted=stops_accepted)
        elif d.action is Action.POLL:
            token = p.poll_started(t)
            if belt_moving is not None:
                p.status(t, token, moving=belt_moving)
        else:
            t = d.at
    raise AssertionError(f"no silence within 1000 decisions, at t={t}")


def test_sr9_every_new_connection_starts_with_a_stop() -> None:
    p = LinkPolicy(PARAMS, 0.0)
    assert p.stop_raised  # before the first connection nothing is known about the belt
    assert p.next(0.0) == Decision(Action.CONNECT, 0.0)
    p.connected(0.0)
    assert p.stop_raised
    assert p.cause is StopCause.CONNECTED
    assert p.next(0.0, command_pending=True).action is Action.STOP


def test_sr13_emergency_stop_goes_out_ahead_of_a_due_poll_and_a_pending_command() -> None:
    p = running()
    p.refused(0.05)  # an exception reply: commands are held off
    p.raise_stop(0.2, StopCause.EMERGENCY)
    assert p.next(0.2, command_pending=True) == Decision(Action.STOP, 0.2)


def test_sr9_a_stop_is_never_delayed_by_the_holdoff_of_exception_replies() -> None:
    """Status reads answered with exceptions, each renewing the hold-off: the stop still goes
    out at once, and is repeated every poll interval."""
    p = running()
    t = 0.0
    for _ in range(5):
        t += POLL
        assert p.next(t).action is Action.POLL
        p.poll_started(t)
        p.refused(t + 0.02)
    t += 0.02
    p.raise_stop(t, StopCause.EMERGENCY)
    assert p.next(t).action is Action.STOP
    stops = []
    for _ in range(5000):  # bounded: a policy that never lets time pass fails, not hangs
        if t >= 2.0:
            break
        d = p.next(t)
        if d.action is Action.STOP:
            stops.append(t)
            p.stop_answered(t + 0.02, p.stop_written(t), accepted=True)
            t += 0.02
        elif d.action is Action.POLL:
            p.poll_started(t)
            t += 0.02
            p.refused(t)
        else:
            assert d.action is Action.WAIT
            t = d.at
    gaps = [b - a for a, b in itertools.pairwise(stops)]
    assert len(stops) >= 15
    assert max(gaps) <= POLL + 0.02 + 1e-9
    assert p.silences == 0  # the drive accepts the stops: confirmed, no silence


def test_sr9_standstill_after_a_stop_write_clears_the_repetition() -> None:
    p = running()
    early = p.poll_started(0.99)
    p.want(1.0, moving=False)
    assert p.stop_raised
    assert p.cause is StopCause.CONTROLLED
    token = p.stop_written(1.0)
    p.stop_answered(1.0, token, accepted=True)
    # A poll begun before the stop write does not count, even if it says standstill.
    p.status(1.01, early, moving=False)
    assert p.stop_raised
    p.status(1.02, p.poll_started(1.01), moving=False)
    assert not p.stop_raised
    assert p.next(1.03).action is Action.WAIT


def test_sr9_the_stop_is_repeated_until_standstill() -> None:
    p = running()
    p.want(1.0, moving=False)
    written = []
    t = 1.0
    for _ in range(5000):
        if t >= 3.0:
            break
        d = p.next(t)
        if d.action is Action.STOP:
            written.append(t)
            p.stop_answered(t, p.stop_written(t), accepted=True)
        elif d.action is Action.POLL:
            p.status(t, p.poll_started(t), moving=t < 2.0)
        else:
            t = d.at
    assert written[0] == 1.0
    assert len(written) >= 9
    assert max(written) < 2.0 + POLL + 1e-9
    assert not p.stop_raised


def test_sr9_a_belt_moving_while_the_wanted_speed_is_zero_raises_the_stop_again() -> None:
    """A drive started from its keypad: the status shows motion, the stop goes out again."""
    p = linked()
    p.want(0.5, moving=False)
    assert not p.stop_raised
    p.status(0.6, p.poll_started(0.6), moving=True)
    assert p.stop_raised
    assert p.cause is StopCause.MOVING
    assert p.next(0.6).action is Action.STOP


def test_sr9_an_unconfirmed_stop_falls_silent_for_the_deadman_plus_margin() -> None:
    """Hazard: writes refused, reads answered; our polls would feed the drive's deadman."""
    p = running()
    p.raise_stop(1.0, StopCause.EMERGENCY)
    _, d = until_silent(p, 1.0, stops_accepted=False, belt_moving=True)
    assert p.silent_since == pytest.approx(1.0 + CONFIRM)
    assert d.at == pytest.approx(1.0 + CONFIRM + DEADMAN + MARGIN)
    # Nothing at all until the silence ends: not an emergency stop, not a reconnect.
    p.raise_stop(1.5, StopCause.EMERGENCY)
    p.disconnected(1.6)
    assert p.cause is StopCause.FAULT  # a lost link is a fault
    assert p.next(1.7, command_pending=True) == Decision(Action.SILENT, d.at)
    p.connected(1.7)
    assert p.next(d.at - 1e-9).action is Action.SILENT
    # Then one stop and one status read, and silence again when still unconfirmed.
    p2 = running()
    p2.raise_stop(0.0, StopCause.EMERGENCY)
    p2.stop_answered(0.0, p2.stop_written(0.0), accepted=False)
    end = p2.next(CONFIRM).at
    assert p2.next(end) == Decision(Action.STOP, end)
    assert p2.cause is StopCause.RETRY
    p2.stop_answered(end, p2.stop_written(end), accepted=False)
    assert p2.next(end) == Decision(Action.POLL, end)
    p2.status(end, p2.poll_started(end), moving=True)
    quiet = p2.next(end + 0.01)
    assert quiet == Decision(Action.WAIT, end + CONFIRM)
    assert p2.next(end + CONFIRM).action is Action.SILENT
    assert p2.silences == 2


def test_sr9_a_late_answer_to_a_stop_written_before_an_emergency_does_not_confirm_it() -> None:
    """Hazard: an emergency stop is raised while an earlier stop write still awaits its
    answer; that answer then arrives, and the drive answers nothing more. The answer belongs
    to the earlier stop, not to the emergency: taken as its confirmation, the policy would
    keep writing stops and polls (feeding the drive's deadman) until the standstill bound,
    instead of falling silent after the confirm bound so the drive's own deadman stops it."""
    p = LinkPolicy(PARAMS, 0.0)
    p.connected(0.0)
    assert p.next(0.0).action is Action.STOP
    p.stop_answered(0.01, p.stop_written(0.0), accepted=True)  # the connect stop, accepted
    assert p.next(POLL).action is Action.STOP  # repeated until standstill is read
    earlier = p.stop_written(POLL)  # its answer is on its way...
    p.raise_stop(0.12, StopCause.EMERGENCY)  # ...when an emergency stop is raised
    p.stop_answered(0.13, earlier, accepted=True)  # the late answer to the earlier write
    t, writes = 0.13, 0
    while t < STANDSTILL:
        d = p.next(t)
        if d.action is Action.SILENT:
            break
        if d.action is Action.STOP:
            p.stop_written(t)  # never answered from now on
            writes += 1
        elif d.action is Action.POLL:
            p.poll_started(t)  # never answered either
        t += 0.01
    assert d.action is Action.SILENT, (t, writes)
    assert p.silent_since == pytest.approx(0.12 + CONFIRM, abs=0.02)
    assert writes <= 3


def test_sr9_a_drive_that_ignores_the_stop_for_a_while_is_stopped_once_it_obeys() -> None:
    p = running()
    p.raise_stop(0.0, StopCause.EMERGENCY)
    t, obeys_at = 0.0, 5.0
    for _ in range(5000):
        if not p.stop_raised or t >= 20.0:
            break
        d = p.next(t)
        if d.action is Action.STOP:
            p.stop_answered(t, p.stop_written(t), accepted=t >= obeys_at)
        elif d.action is Action.POLL:
            p.status(t, p.poll_started(t), moving=t < obeys_at + 0.5)
        else:
            t = d.at
    assert not p.stop_raised
    assert t < obeys_at + 2.0


def test_sr9_accepted_stops_that_leave_the_belt_moving_get_silence_at_the_standstill_bound() -> (
    None
):
    """SR-9: accepted stop words that do not stop the belt must not feed its deadman for ever:
    past the standstill bound, silence; after it, one stop and one status read again."""
    p = running()
    p.raise_stop(0.0, StopCause.EMERGENCY)
    t, d = until_silent(p, 0.0, stops_accepted=True, belt_moving=True)
    assert STANDSTILL <= t < STANDSTILL + POLL
    assert p.stop_writes >= STANDSTILL / POLL - 1
    assert d.at == pytest.approx(t + DEADMAN + MARGIN)
    # After the silence the deadman has stopped the belt: one stop, one read, and it is over.
    t = d.at
    assert p.next(t).action is Action.STOP
    p.stop_answered(t, p.stop_written(t), accepted=True)
    assert p.next(t).action is Action.POLL
    p.status(t, p.poll_started(t), moving=False)
    assert not p.stop_raised


def test_sr9_each_connection_starts_from_the_configured_deadman_until_it_is_read_again() -> None:
    """SR-9: a deadman read on one connection may not hold on the next (the drive's parameter
    changed, or it cannot be read now): the silence is sized from the configured one again."""
    p = running()
    p.set_deadman(0.2)
    assert p.silence_s == pytest.approx(0.2 + MARGIN)
    p.disconnected(1.0)
    p.connected(2.0)
    assert p.silence_s == pytest.approx(DEADMAN + MARGIN)


def test_sr9_a_stop_raised_again_and_again_keeps_the_repetitions_pace() -> None:
    """SR-9: a driver that raises the stop on every new fault text (exception replies to
    alternating requests) gets one stop write a poll interval, not a storm; an emergency stop
    still goes out at once."""
    p = running()
    p.raise_stop(0.0, StopCause.FAULT)
    t, writes = 0.0, 0
    while t < 0.25:
        d = p.next(t)
        if d.action is Action.STOP:
            p.stop_answered(t, p.stop_written(t), accepted=False)
            writes += 1
        elif d.action is Action.POLL:
            p.poll_started(t)
            p.refused(t)
        p.raise_stop(t, StopCause.FAULT)  # a new fault text after every request
        t += 0.001
    assert writes <= 0.25 / POLL + 1
    assert p.stops_refused == writes
    p.raise_stop(t, StopCause.EMERGENCY)
    assert p.next(t) == Decision(Action.STOP, t)


def test_sr9_the_silence_follows_the_deadman_read_from_the_drive() -> None:
    p = running()
    p.set_deadman(1.0)
    p.raise_stop(0.0, StopCause.FAULT)
    p.stop_answered(0.0, p.stop_written(0.0), accepted=False)
    d = p.next(CONFIRM)
    assert d.action is Action.SILENT
    assert d.at == pytest.approx(CONFIRM + 1.0 + MARGIN)


def test_sr9_a_stop_raised_during_the_reconnect_backoff_makes_the_connect_due_at_once() -> None:
    p = LinkPolicy(PARAMS, 0.0)
    t = 0.0
    for _ in range(5):
        d = p.next(t)
        if d.action is Action.WAIT:
            t = d.at
        assert p.next(t).action is Action.CONNECT
        p.disconnected(t)  # the connection attempt failed
    waiting = p.next(t)
    assert waiting.action is Action.WAIT
    assert waiting.at >= t + 0.8
    p.raise_stop(t + 0.1, StopCause.EMERGENCY)
    assert p.next(t + 0.1) == Decision(Action.CONNECT, t + 0.1)


def test_sr9_a_stop_raised_during_a_failing_connection_attempt_is_not_delayed_by_its_backoff() -> (
    None
):
    """SR-9: the attempt under way when an emergency stop is raised cannot serve it; when that
    attempt fails, the next one is due at once, not a back-off later. Only once per stop: the
    attempt after that backs off again, so a dead port is not hammered."""
    p = LinkPolicy(PARAMS, 0.0)
    t = 0.0
    for _ in range(5):  # a back-off of about a second has built up
        d = p.next(t)
        if d.action is Action.WAIT:
            t = d.at
        assert p.next(t).action is Action.CONNECT
        p.disconnected(t)
    t = p.next(t).at
    assert p.next(t).action is Action.CONNECT  # an attempt begins ...
    p.raise_stop(t + 0.01, StopCause.EMERGENCY)  # ... a stop is raised while it is under way
    p.disconnected(t + 0.02)  # ... and it fails
    assert p.next(t + 0.02) == Decision(Action.CONNECT, t + 0.02)
    p.disconnected(t + 0.03)  # that one fails too: the back-off is back
    waiting = p.next(t + 0.03)
    assert waiting.action is Action.WAIT
    assert waiting.at >= t + 0.03 + 0.8


def test_sr9_the_backoff_restarts_after_a_link_that_answered() -> None:
    p = running()
    p.disconnected(1.0)
    assert p.next(1.0) == Decision(Action.WAIT, 1.0 + PARAMS.reconnect_initial_s)


def failed_attempts(p: LinkPolicy, t: float, n: int) -> float:
    """n connection attempts that fail, each when it is due; returns the time of the last."""
    for _ in range(n):
        d = p.next(t)
        if d.action is Action.WAIT:
            t = d.at
        assert p.next(t) == Decision(Action.CONNECT, t)
        p.disconnected(t)
    return t


def reconnect_waits(p: LinkPolicy, t: float, n: int) -> list[float]:
    """The waits before n connection attempts that fail, starting with the link just down."""
    waits = []
    for _ in range(n):
        d = p.next(t)
        assert d.action is Action.WAIT
        waits.append(d.at - t)
        t = d.at
        assert p.next(t) == Decision(Action.CONNECT, t)
        p.disconnected(t)
    return waits


def test_sr9_a_port_that_connects_but_never_answers_is_not_hammered() -> None:
    """A connection on which the drive answers nothing (a dead drive behind a live port) does
    not restart the back-off: it keeps doubling, up to its maximum, across connections."""
    p = LinkPolicy(PARAMS, 0.0)
    t, waits = 0.0, []
    for _ in range(6):
        assert p.next(t) == Decision(Action.CONNECT, t)
        p.connected(t)
        assert p.next(t) == Decision(Action.STOP, t)
        p.stop_written(t)  # never answered: the link drops
        p.disconnected(t)
        d = p.next(t)
        assert d.action is Action.WAIT
        waits.append(d.at - t)
        t = d.at
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0])


def test_sr9_after_an_answered_link_drops_failed_attempts_back_off_again() -> None:
    p = running()
    p.disconnected(1.0)
    assert reconnect_waits(p, 1.0, 4) == pytest.approx([0.05, 0.1, 0.2, 0.4])


@pytest.mark.parametrize(
    "answer", ["status", "stop accepted", "stop refused", "exception reply", "other answer"]
)
def test_sr9_any_answer_from_the_drive_restarts_the_backoff(answer: str) -> None:
    p = LinkPolicy(PARAMS, 0.0)
    t = failed_attempts(p, 0.0, 4)  # the back-off has grown to 0.8 s
    t = p.next(t).at
    p.connected(t)
    token = p.stop_written(t)
    if answer == "status":
        p.status(t, p.poll_started(t), moving=False)
    elif answer == "stop accepted":
        p.stop_answered(t, token, accepted=True)
    elif answer == "stop refused":
        p.stop_answered(t, token, accepted=False)
    elif answer == "exception reply":
        p.refused(t)
    else:
        p.answered(t)
    p.disconnected(t)
    assert p.next(t) == Decision(Action.WAIT, t + PARAMS.reconnect_initial_s)


def test_sr9_the_driver_is_told_once_why_the_link_falls_silent() -> None:
    """The sentence a driver logs as it falls silent names the reason and the silence's length;
    once per silence."""
    p = running()
    p.raise_stop(1.0, StopCause.EMERGENCY)
    p.stop_answered(1.0, p.stop_written(1.0), accepted=False)
    assert p.new_silence() is None
    assert p.next(1.0 + CONFIRM).action is Action.SILENT
    assert p.new_silence() == (
        "the drive did not confirm the stop: nothing on the link for 0.75 s, so that the "
        "drive's own deadman stops the belt"
    )
    assert p.new_silence() is None


def test_sr9_the_standstill_bound_is_four_seconds_to_the_tick() -> None:
    """Stops accepted, the belt reported moving: frames go out until the bound, silence at it."""
    p = running()
    p.raise_stop(0.0, StopCause.EMERGENCY)
    for k in range(40):
        t = k * POLL
        if k == 20:
            # Raised again meanwhile: the bound still runs from the first raise.
            p.raise_stop(t, StopCause.EMERGENCY)
        for _ in range(10):  # bounded: what is due at t, then on to the next tick
            d = p.next(t)
            if d.action is Action.STOP:
                assert d == Decision(Action.STOP, t)
                p.stop_answered(t, p.stop_written(t), accepted=True)
            elif d.action is Action.POLL:
                assert d == Decision(Action.POLL, t)
                p.status(t, p.poll_started(t), moving=True)
                assert p.cause is StopCause.MOVING
            else:
                assert d.action is Action.WAIT
                break
    assert p.silences == 0
    assert p.next(STANDSTILL) == Decision(Action.SILENT, STANDSTILL + DEADMAN + MARGIN)
    assert p.new_silence() == (
        "the belt is not at standstill after the stop: nothing on the link for 0.75 s, so "
        "that the drive's own deadman stops the belt"
    )
    assert p.stops_accepted == p.stop_writes
    assert p.stops_refused == 0


def test_sr9_each_stop_write_is_followed_at_once_by_a_status_read() -> None:
    p = running()  # its latest poll began at 0.0: the next one is not due before POLL
    p.raise_stop(0.05, StopCause.EMERGENCY)
    assert p.next(0.05) == Decision(Action.STOP, 0.05)
    p.stop_written(0.05)
    assert p.next(0.05) == Decision(Action.POLL, 0.05)


def test_sr9_a_new_stop_after_a_confirmed_one_must_be_confirmed_again() -> None:
    """A stop accepted (confirmed), then an emergency stop while the belt has not stood yet:
    the drive must accept a stop written after the new raise within the bound, else silence."""
    p = running()
    p.raise_stop(0.0, StopCause.FAULT)
    p.stop_answered(0.0, p.stop_written(0.0), accepted=True)
    p.raise_stop(0.05, StopCause.EMERGENCY)
    until_silent(p, 0.05, stops_accepted=False, belt_moving=None)
    assert p.silent_since == pytest.approx(0.05 + CONFIRM)


def test_sr9_a_refused_stop_holds_off_commands_like_any_refusal() -> None:
    p = running()
    p.want(1.0, moving=False)
    p.stop_answered(1.0, p.stop_written(1.0), accepted=False)
    p.status(1.0, p.poll_started(1.0), moving=False)
    assert not p.stop_raised
    assert p.stops_refused == 1
    assert p.stops_accepted == 1  # the first stop of the connection, in linked()
    p.want(1.01, moving=True)
    assert p.next(1.01, command_pending=True) == Decision(Action.WAIT, 1.0 + POLL)
    assert p.next(1.0 + POLL, command_pending=True) == Decision(Action.COMMAND, 1.0 + POLL)


def test_sr9_a_drive_whose_status_cannot_be_read_gets_silence_at_the_standstill_bound() -> None:
    """Stops accepted, every status read unanswered: the belt is not known to stand, so past
    the standstill bound our stop words must not feed the drive's deadman."""
    p = LinkPolicy(PARAMS, 0.0)
    p.connected(0.0)
    until_silent(p, 0.0, stops_accepted=True, belt_moving=None)
    assert p.silent_since == pytest.approx(STANDSTILL)


def test_sr9_a_belt_found_moving_before_any_wish_is_stopped_again() -> None:
    """Nothing asked the belt to move (the controller has not said a word since the link came
    up): a status showing motion raises the stop."""
    p = linked()
    p.status(0.5, p.poll_started(0.5), moving=True)
    assert p.stop_raised
    assert p.cause is StopCause.MOVING


def test_sr9_a_late_standstill_during_a_silence_still_gets_the_attempt_after_it() -> None:
    """A status read begun before the silence answers standstill during it: after the silence
    the policy still makes its one stop and one read, with bounds of their own."""
    p = running()
    p.raise_stop(1.0, StopCause.EMERGENCY)
    p.stop_answered(1.0, p.stop_written(1.0), accepted=False)
    token = p.poll_started(1.0)
    silence = p.next(1.0 + CONFIRM)
    assert silence.action is Action.SILENT
    p.status(1.5, token, moving=False)  # the late answer
    assert p.next(silence.at) == Decision(Action.STOP, silence.at)
    assert p.cause is StopCause.RETRY
    p.stop_answered(silence.at, p.stop_written(silence.at), accepted=True)
    assert p.next(silence.at) == Decision(Action.POLL, silence.at)
    p.status(silence.at, p.poll_started(silence.at), moving=True)
    assert p.next(silence.at + POLL) == Decision(Action.STOP, silence.at + POLL)


def test_sr9_raising_an_unconfirmed_stop_again_does_not_restart_its_confirm_bound() -> None:
    """The bound runs from the first raise not yet confirmed: a driver raising the stop again
    and again (an emergency stop repeated from the page) cannot postpone the silence."""
    p = running()
    p.raise_stop(0.0, StopCause.EMERGENCY)
    p.stop_answered(0.0, p.stop_written(0.0), accepted=False)
    p.raise_stop(0.2, StopCause.EMERGENCY)
    p.stop_answered(0.2, p.stop_written(0.2), accepted=False)
    assert p.next(CONFIRM) == Decision(Action.SILENT, CONFIRM + DEADMAN + MARGIN)


def test_sr9_a_stop_raised_again_a_poll_interval_after_its_write_must_be_confirmed_again() -> None:
    """The pace holds back a raise only within the poll interval after a stop write: from
    then on a new raise is a new stop, and a stop written after it must be accepted."""
    p = running()
    p.raise_stop(0.0, StopCause.FAULT)
    p.stop_answered(0.0, p.stop_written(0.0), accepted=True)  # confirmed
    p.raise_stop(POLL, StopCause.FAULT)  # a new fault, exactly a poll interval later
    assert p.next(POLL) == Decision(Action.STOP, POLL)
    p.stop_answered(POLL, p.stop_written(POLL), accepted=False)
    assert p.next(POLL + CONFIRM).action is Action.SILENT


def test_a_configured_holdoff_is_the_one_commands_wait() -> None:
    params = PolicyParams(poll_interval_s=POLL, deadman_s=DEADMAN, holdoff_s=0.25)
    p = LinkPolicy(params, 0.0)
    p.connected(0.0)
    p.stop_answered(0.0, p.stop_written(0.0), accepted=True)
    p.status(0.0, p.poll_started(0.0), moving=False)
    p.want(0.0, moving=True)
    p.refused(0.01)
    assert p.next(0.2, command_pending=True) == Decision(Action.POLL, 0.2)
    p.status(0.2, p.poll_started(0.2), moving=False)
    assert p.next(0.21, command_pending=True) == Decision(Action.WAIT, 0.26)
    assert p.next(0.26, command_pending=True) == Decision(Action.COMMAND, 0.26)


@pytest.mark.parametrize(
    "edge",
    [
        {"silence_margin_s": 0.0},
        {"holdoff_s": 0.0},
        {"holdoff_s": 2.0},
        {"reconnect_initial_s": 0.5, "reconnect_max_s": 0.5},
    ],
)
def test_params_accept_their_edges(edge: dict[str, float]) -> None:
    """No margin past the deadman, no hold-off, a fixed reconnect interval: all allowed."""
    params = PolicyParams(poll_interval_s=POLL, deadman_s=DEADMAN, **edge)
    for name, value in edge.items():
        assert getattr(params, name) == value


def test_params_name_the_reconnect_bounds_they_refuse() -> None:
    with pytest.raises(ValueError, match=r"^need reconnect_initial_s <= reconnect_max_s$"):
        PolicyParams(poll_interval_s=POLL, deadman_s=DEADMAN, reconnect_initial_s=2.0)


@pytest.mark.parametrize("deadman", [0.0, -0.5, math.nan, math.inf])
def test_a_deadman_read_from_the_drive_that_is_no_time_out_is_refused(deadman: float) -> None:
    p = linked()
    with pytest.raises(ValueError, match=r"^deadman_s \S+ must be a positive number$"):
        p.set_deadman(deadman)
    assert p.silence_s == pytest.approx(DEADMAN + MARGIN)


def test_polls_and_commands_take_turns() -> None:
    p = running()
    t = 0.0
    seen = []
    for _ in range(8):
        t += 1.5 * POLL  # a poll is due every time: a slow drive, or a stream of speed changes
        d = p.next(t, command_pending=True)
        seen.append(d.action)
        if d.action is Action.POLL:
            p.status(t, p.poll_started(t), moving=True)
        else:
            p.command_written(t)
    assert Action.POLL in seen
    assert Action.COMMAND in seen
    assert all(a is not b for a, b in itertools.pairwise(seen))


def test_commands_wait_out_the_holdoff() -> None:
    p = linked()
    p.want(0.0, moving=True)
    p.refused(0.01)
    assert p.next(0.02, command_pending=True) == Decision(Action.WAIT, POLL)  # the next poll
    assert p.next(POLL, command_pending=True) == Decision(Action.POLL, POLL)
    p.status(POLL, p.poll_started(POLL), moving=False)
    assert p.next(0.105, command_pending=True) == Decision(Action.WAIT, 0.01 + POLL)
    assert p.next(0.01 + POLL, command_pending=True).action is Action.COMMAND


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("poll_interval_s", 0.0),
        ("deadman_s", math.nan),
        ("stop_confirm_s", -1.0),
        ("silence_margin_s", math.inf),
        ("holdoff_s", -0.1),
        ("reconnect_max_s", 0.01),
    ],
)
def test_params_refuse_nonsense(field_name: str, value: float) -> None:
    kwargs: dict[str, float] = {"poll_interval_s": POLL, "deadman_s": DEADMAN}
    kwargs[field_name] = value
    with pytest.raises(ValueError, match=field_name.split("_")[0]):
        PolicyParams(**kwargs)


# --- properties -------------------------------------------------------------------------------

EXAMPLES = int(
    os.environ.get("TREADGUARD_HYPOTHESIS_EXAMPLES", 1000 if os.environ.get("CI") else 300)
)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STEPS = st.one_of(
    st.floats(min_value=0.0, max_value=1e-6),
    st.floats(min_value=0.0, max_value=0.5),
    st.floats(min_value=0.0, max_value=1e4),
    st.sampled_from([0.0, POLL, CONFIRM, DEADMAN + MARGIN, 5e-324]),
)
ACT = st.tuples(st.just("act"), st.integers(0, 5), st.booleans())
# The driver acts far more often than anything else happens: weight it so.
EVENTS = st.one_of(
    ACT,
    ACT,
    ACT,
    st.tuples(st.just("advance"), STEPS),
    st.tuples(st.just("advance"), STEPS),
    st.tuples(st.just("raise"), st.sampled_from(list(StopCause))),
    st.tuples(st.just("want"), st.booleans()),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("refused")),
    st.tuples(st.just("deadman"), st.floats(min_value=0.1, max_value=1.0)),
)


@dataclass
class Model:
    """The SR-9 rules of docs/requirements.md, restated: when may a frame go out while a stop is
    raised?"""

    # A stop raised and not confirmed since `since`: frames only until since + CONFIRM.
    since: float = 0.0
    confirmed: bool = False
    silent_until: float = -math.inf
    written_since_raise: bool = False  # a stop write since the latest raise
    # The belt must stand within STANDSTILL of the stop's first raise (or of a silence's end):
    # past that, while it is (or may be) moving, no frame goes out.
    began: float = 0.0
    moving: bool = True  # as last reported; unknown counts as moving
    stop_at: float = -math.inf  # the latest stop write


@given(events=st.lists(EVENTS, max_size=120), start=st.floats(min_value=-1e6, max_value=1e6))
@SETTINGS
def test_sr9_sr13_policy_rules_hold_for_any_sequence_of_events(
    events: list[tuple[object, ...]], start: float
) -> None:
    p = LinkPolicy(PARAMS, start)
    m = Model(since=start, began=start)
    now = start
    for ev in events:
        note(f"t={now!r} stop_raised={p.stop_raised} silent={p.silent} event={ev}")
        kind = ev[0]
        if not p.stop_raised:
            m.began = now  # a stop raised by this event begins now
        if kind == "advance":
            step = ev[1]
            assert isinstance(step, float)
            now += step
        elif kind == "raise":
            cause = ev[1]
            assert isinstance(cause, StopCause)
            if (
                cause is not StopCause.EMERGENCY
                and p.link_up
                and p.stop_raised
                and m.written_since_raise
                and now - m.stop_at < POLL
            ):
                # Raised already and written just now: the repetition's pace holds; nothing
                # changes but that no command goes out.
                p.raise_stop(now, cause)
                assert _ask(p, m, now, command_pending=True).action is not Action.COMMAND
                continue
            if not p.stop_raised or m.confirmed:
                m.since, m.confirmed = now, False
            p.raise_stop(now, cause)
            m.written_since_raise = False
            _check_stop_goes_out_at_once(p, m, now)
        elif kind == "want":
            was_raised = p.stop_raised
            p.want(now, moving=bool(ev[1]))
            if p.stop_raised and not was_raised:
                m.since, m.confirmed, m.written_since_raise = now, False, False
                _check_stop_goes_out_at_once(p, m, now)
        elif kind == "disconnect":
            if p.link_up:
                if not p.stop_raised:
                    m.since, m.confirmed = now, False
                p.disconnected(now)
                m.written_since_raise = False
                m.moving = True
        elif kind == "refused":
            if p.link_up:
                p.refused(now)
        elif kind == "deadman":
            deadman = ev[1]
            assert isinstance(deadman, float)
            p.set_deadman(deadman)
        else:
            outcome, moving = ev[1], ev[2]
            assert isinstance(outcome, int)
            assert isinstance(moving, bool)
            _act(p, m, now, outcome, moving)


def _ask(p: LinkPolicy, m: Model, now: float, command_pending: bool) -> Decision:
    """p.next(), with the model following silences in and out."""
    raised_before, silent_before = p.stop_raised, p.silent
    d = p.next(now, command_pending=command_pending)
    assert d.at >= now
    if d.action in (Action.WAIT, Action.SILENT):
        assert d.at > now
    if d.action in (Action.STOP, Action.POLL, Action.COMMAND, Action.CONNECT):
        assert d.at == now
    if silent_before and not p.silent:
        # The silence ended: one more attempt, with its own bounds.
        assert now >= m.silent_until
        m.since, m.confirmed, m.written_since_raise = now, False, False
        m.began = now
    if d.action is Action.SILENT and not silent_before:
        # Entering silence: only for an unconfirmed stop past the bound, for deadman + margin.
        assert raised_before, "silence without a raised stop"
        assert p.link_up, "silence on a link that is down"
        unconfirmed = not m.confirmed and now >= m.since + CONFIRM - 1e-9
        not_standing = m.moving and now >= m.began + STANDSTILL - 1e-9
        assert unconfirmed or not_standing, "silence before either bound"
        assert d.at - now >= p.silence_s - 1e-9
        m.silent_until = d.at
    if d.action is Action.SILENT:
        assert now < m.silent_until
    if d.action in FRAMES:
        assert now >= m.silent_until, "a frame during the silence"
        if p.stop_raised:
            assert m.confirmed or now < m.since + CONFIRM + 1e-9, "frames past the bound"
            assert not m.moving or now < m.began + STANDSTILL + 1e-9, (
                "frames past the standstill bound to a belt still moving"
            )
    if p.stop_raised:
        assert d.action is not Action.COMMAND, "a command while a stop is raised"
    return d


def _act(p: LinkPolicy, m: Model, now: float, outcome: int, moving: bool) -> None:
    d = _ask(p, m, now, command_pending=outcome % 2 == 0)
    if d.action is Action.COMMAND:
        p.command_written(now)
        m.moving = True
    elif d.action is Action.STOP:
        token = p.stop_written(now)
        m.written_since_raise = True
        m.stop_at = now
        if outcome in (0, 1):
            p.stop_answered(now, token, accepted=True)
            m.confirmed = True
        elif outcome == 2:
            p.stop_answered(now, token, accepted=False)
        # else: no answer (a time-out; the link may drop next)
    elif d.action is Action.POLL:
        token = p.poll_started(now)
        if outcome < 4:
            was_raised = p.stop_raised
            p.status(now, token, moving=moving)
            m.moving = moving
            if was_raised and not moving and m.written_since_raise:
                assert not p.stop_raised, "standstill after a stop write must clear the stop"
            if not was_raised and p.stop_raised:
                assert moving
                assert not p.wanted_moving
                m.since, m.confirmed, m.written_since_raise = now, False, False
                _check_stop_goes_out_at_once(p, m, now)
            elif was_raised and moving and m.confirmed and m.written_since_raise:
                m.since, m.confirmed = now, False  # the next repetition must be accepted too
        elif outcome == 4:
            p.refused(now)
    elif d.action is Action.CONNECT:
        m.moving = True
        if outcome < 3:
            p.connected(now)
            m.since, m.confirmed, m.written_since_raise = now, False, False
            m.began = now
            _check_stop_goes_out_at_once(p, m, now)
        else:
            p.disconnected(now)
            m.written_since_raise = False


def _check_stop_goes_out_at_once(p: LinkPolicy, m: Model, now: float) -> None:
    """SR-13: a raised stop is the very next thing, whatever hold-off, back-off, due poll or
    pending command there is: unless the drive is being left to its deadman (silence)."""
    silent_before = p.silent
    d = _ask(p, m, now, command_pending=True)
    if silent_before and p.silent:
        assert d.action is Action.SILENT
    elif not p.link_up:
        assert d == Decision(Action.CONNECT, now)
    elif d.action is not Action.SILENT:
        assert d == Decision(Action.STOP, now)
