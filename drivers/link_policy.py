"""When a drive link sends a stop, a poll or a command, and when it falls silent (SR-9, SR-13).

A pure state machine shared by every driver (no asyncio, no I/O, no clock reads; ``now`` is an
argument, on the loop's monotonic clock), in the manner of the safety core and h11's
``_state.py``. The driver reports what happened on its wire (:meth:`LinkPolicy.connected`,
:meth:`~LinkPolicy.stop_written`, :meth:`~LinkPolicy.status` ...) and asks :meth:`LinkPolicy.next`
what to do; the policy never sees a frame or a register, so one set of rules, tested once, holds
for the Trackmaster's bytes and the VFD's registers alike.

The rules:

- **A stop is raised** by an emergency stop, a controlled stop (wanted speed 0 while the belt may
  be moving), a fault, every new connection, the driver closing, and a status that shows the belt
  moving while the wanted speed is 0 (a drive started from its keypad, or one that ignored the
  stop). While a stop is raised no command goes out, and the stop goes out ahead of everything:
  no hold-off, reconnect back-off, queued command or pending poll delays it. A stop raised while
  the link is down makes the reconnection due at once.
- **It is repeated** every ``poll_interval_s``, each write followed at once by a status read,
  until a status read begun after the latest stop write reports standstill.
- **It must be confirmed** within ``stop_confirm_s`` of being raised: the drive accepts a stop
  written after the raise, or reports standstill. If not, the driver falls **silent**: nothing at
  all on the link (no stop, no poll, no command) for ``silence_s`` (the drive's own deadman
  time-out plus a margin), so that the drive's deadman trips; our own traffic must never keep it
  fed. Then one stop and one status read; unconfirmed again, silent again.
- **It must bring the belt to standstill** within ``standstill_s`` (4 s) of being first raised:
  a drive that accepts every stop and still reports motion (or whose status cannot be read)
  gets the same silence, so that its deadman trips.
- A **hold-off** after an exception reply or a refusal delays commands only, never a stop.
- **Fairness**: when a poll and a command are both due they take turns, so a stream of speed
  changes cannot starve the polls, nor a slow poll cycle the commands.

Confirmation ("the drive accepted the stop") is weaker than standstill: it only keeps the link
talking. The stop keeps being repeated until standstill is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

STOP_CONFIRM_S = 0.3
# How long a stop may take to bring the belt to standstill before the driver stops feeding the
# drive's deadman: from the 1.2 mph hard maximum at SR-2's controlled deceleration (0.4 mph/s,
# the slowest stop there is) the belt stands in 3 s; one more second of margin. A drive that
# accepts every stop word and keeps the belt moving (its command source is its keypad) would
# otherwise be kept alive by our repetitions for ever.
STANDSTILL_S = 4.0
# Past the drive's deadman time-out, how much longer the silence lasts: the drive's clock, its
# tick and our own lateness all round in the drive's favour.
SILENCE_MARGIN_S = 0.25


class Action(Enum):
    CONNECT = "connect"  # open the link (writes nothing)
    STOP = "stop"  # write the stop (Trackmaster A2; VFD stop command word)
    POLL = "poll"  # one status read (all its requests)
    COMMAND = "command"  # the driver's pending run/speed command
    WAIT = "wait"  # nothing due before ``at``; ask again then, or on any event
    SILENT = "silent"  # nothing at all on the link before ``at``


class StopCause(Enum):
    EMERGENCY = "emergency"
    CONTROLLED = "controlled"
    FAULT = "fault"
    CONNECTED = "connected"
    CLOSING = "closing"
    MOVING = "moving"  # a status showed the belt moving while the wanted speed is 0
    RETRY = "retry"  # the attempt after a silence


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    at: float  # now for an action; for WAIT/SILENT the time to ask again (inf: only on an event)


@dataclass(frozen=True, slots=True)
class PolicyParams:
    poll_interval_s: float
    deadman_s: float  # the drive's own communication time-out (Trackmaster CDS 0.5 s, VFD 09.03)
    stop_confirm_s: float = STOP_CONFIRM_S
    silence_margin_s: float = SILENCE_MARGIN_S
    holdoff_s: float | None = None  # after an exception reply; None: poll_interval_s
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 1.0
    standstill_s: float = STANDSTILL_S

    def __post_init__(self) -> None:
        for name in (
            "poll_interval_s",
            "deadman_s",
            "stop_confirm_s",
            "reconnect_initial_s",
            "standstill_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} {value} must be a positive number")
        if not (math.isfinite(self.silence_margin_s) and self.silence_margin_s >= 0):
            raise ValueError(f"silence_margin_s {self.silence_margin_s} must be >= 0")
        if self.holdoff_s is not None and not (
            math.isfinite(self.holdoff_s) and self.holdoff_s >= 0
        ):
            raise ValueError(f"holdoff_s {self.holdoff_s} must be >= 0")
        if not (
            math.isfinite(self.reconnect_max_s) and self.reconnect_max_s >= self.reconnect_initial_s
        ):
            raise ValueError("need reconnect_initial_s <= reconnect_max_s")


class LinkPolicy:
    """The stop, poll, command and silence rules of one drive link. See the module docstring."""

    def __init__(self, params: PolicyParams, now: float) -> None:
        self.params = params
        self._deadman_s = params.deadman_s
        self._holdoff_s = params.poll_interval_s if params.holdoff_s is None else params.holdoff_s
        self._seq = 0  # orders events; a token is the seq of a write or a poll

        # The link.
        self.link_up = False
        self._backoff_s = params.reconnect_initial_s
        self._connect_at = now
        self._answered_on_link = False
        # A stop was raised while the link was down: when the attempt then under way (if any)
        # fails, the next one is due at once. (next() only asks; it marks nothing, so an
        # emergency stop that asks it while an attempt runs cannot lose the mark.)
        self._stop_awaits_attempt = False

        # The stop. raised_seq: the latest raise. An episode runs from the first raise not yet
        # confirmed; the confirm bound runs from its start, and only a stop written after
        # episode_seq confirms it.
        self.stop_raised = True  # nothing is known about the belt yet
        self._stop_began = now  # when the stop now raised was first raised
        self.cause: StopCause = StopCause.CONNECTED
        self._raised_seq = 0
        self._episode_seq = 0
        self._episode_start = now
        self._confirmed = False
        self._retry = False  # the single attempt after a silence
        self._stop_seq = -1  # the latest stop write
        self._stop_at = -math.inf
        self._poll_seq = -1  # the latest poll begun
        self._next_poll_at = now
        self._holdoff_until = -math.inf
        self._last_was_poll = False

        # The belt, as far as we know: unknown counts as moving.
        self.may_be_moving = True
        self.wanted_moving = False

        # Silence.
        self.silent_since: float | None = None
        self.silence_reason = ""  # why the latest silence began, for the driver's log
        self._silences_told = 0
        self.silent_until: float | None = None

        # Counters for tests and diagnostics.
        self.stop_writes = 0
        self.stops_accepted = 0
        self.stops_refused = 0
        self.silences = 0

    # --- what the driver tells the policy ------------------------------------------------------

    @property
    def silence_s(self) -> float:
        return self._deadman_s + self.params.silence_margin_s

    def set_deadman(self, deadman_s: float) -> None:
        """The drive's deadman time-out as read from the drive (VFD 09.03 at link-up)."""
        if not (math.isfinite(deadman_s) and deadman_s > 0):
            raise ValueError(f"deadman_s {deadman_s} must be a positive number")
        self._deadman_s = deadman_s

    def connected(self, now: float) -> None:
        """A new connection: whatever the drive was doing, it is told to stop first."""
        self.link_up = True
        self._stop_awaits_attempt = False
        self._answered_on_link = False
        self.may_be_moving = True
        # What the last connection read of the drive's deadman may no longer hold (another
        # drive, a changed parameter): until it is read again, the configured (longest) one.
        self._deadman_s = self.params.deadman_s
        self._holdoff_until = -math.inf
        self._next_poll_at = now
        # The confirm and standstill bounds start afresh: nothing could be written while the
        # link was down.
        self._new_episode(now)
        self._stop_began = now
        self._raise(StopCause.CONNECTED, now)

    def disconnected(self, now: float) -> None:
        """The link is gone (or a connection attempt failed). The stop stays raised."""
        was_up = self.link_up
        self.link_up = False
        if was_up and self._answered_on_link:
            self._backoff_s = self.params.reconnect_initial_s
        if self._stop_awaits_attempt:
            # A stop was raised while the link was down: the next attempt is due at once,
            # whatever the back-off (once per stop raised, so a dead port is not hammered).
            self._stop_awaits_attempt = False
            self._connect_at = now
        else:
            self._connect_at = now + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.params.reconnect_max_s)
        self.may_be_moving = True
        if not self.stop_raised:
            self._new_episode(now)
        self._raise(StopCause.FAULT, now)

    def raise_stop(self, now: float, cause: StopCause) -> None:
        """An emergency stop, a controlled stop, a fault, the driver closing."""
        if (
            cause is not StopCause.EMERGENCY
            and self.link_up
            and self.stop_raised
            and self._stop_seq > self._raised_seq
            and now - self._stop_at < self.params.poll_interval_s
        ):
            # Raised already and its stop written just now: the repetition's pace holds. (A
            # driver that raises again on every new fault text, as exception replies alternate,
            # would otherwise write stops back to back as fast as the drive answers.) An
            # emergency stop is never held back.
            return
        if not self.stop_raised or self._confirmed:
            self._new_episode(now)
        self._raise(cause, now)
        if not self.link_up:
            self._connect_at = now  # a reconnect back-off never delays a stop
            self._stop_awaits_attempt = True

    def want(self, now: float, moving: bool) -> None:
        """The controller's wish: a speed above 0 (``moving``) or 0. A wish for 0 while the belt
        may be moving raises a controlled stop; a wish to move never lowers a raised stop."""
        self.wanted_moving = moving
        if not moving and self.may_be_moving and not self.stop_raised:
            self.raise_stop(now, StopCause.CONTROLLED)

    def stop_written(self, now: float) -> int:
        """A stop went onto the wire; the token identifies it in :meth:`stop_answered`."""
        self.stop_writes += 1
        self._stop_seq = self._next_seq()
        self._stop_at = now
        self._last_was_poll = False
        return self._stop_seq

    def stop_answered(self, now: float, token: int, accepted: bool) -> None:
        """The drive accepted (Trackmaster B2, a Modbus write answered) or refused a stop."""
        self._answered_on_link = True
        if not accepted:
            self.stops_refused += 1
            self._holdoff_until = now + self._holdoff_s
            return
        self.stops_accepted += 1
        if self.stop_raised and token > self._episode_seq:
            self._confirmed = True
            self._retry = False

    def poll_started(self, now: float) -> int:
        """A status read began; the token is handed back with its result to :meth:`status`."""
        self._poll_seq = self._next_seq()
        self._next_poll_at = now + self.params.poll_interval_s
        self._last_was_poll = True
        return self._poll_seq

    def status(self, now: float, token: int, moving: bool) -> None:
        """A status read (begun at ``token``) reports the belt moving or at standstill."""
        self._answered_on_link = True
        self.may_be_moving = moving
        if moving:
            if not self.stop_raised:
                if not self.wanted_moving:
                    self.raise_stop(now, StopCause.MOVING)
            elif self._confirmed and token > self._stop_seq:
                # Still moving after an accepted stop: the next repetition must be accepted
                # within the bound too, so a drive that turns to refusing it gets silence.
                self._new_episode(now)
                self.cause = StopCause.MOVING
            return
        if self.stop_raised and self._raised_seq < self._stop_seq < token:
            self.stop_raised = False
            self._confirmed = True
            self._retry = False

    def answered(self, now: float) -> None:
        """Any other answer from the drive (a poll answered with an exception, a command)."""
        self._answered_on_link = True

    def refused(self, now: float) -> None:
        """An exception reply or a refused command: commands wait ``holdoff_s``; stops never."""
        self._answered_on_link = True
        self._holdoff_until = now + self._holdoff_s

    def command_written(self, now: float, moves_belt: bool = True) -> None:
        """The driver wrote its pending command (run, speed; ``moves_belt`` False for a grade)."""
        self._next_seq()
        self._last_was_poll = False
        if moves_belt:
            self.may_be_moving = True

    # --- what the driver asks --------------------------------------------------------------

    def next(self, now: float, command_pending: bool = False) -> Decision:
        """What to do now, or when to ask again. ``command_pending``: the driver has a run or
        speed command it would like to send."""
        if self.silent_until is not None:
            if now < self.silent_until:
                return Decision(Action.SILENT, self.silent_until)
            self._end_silence(now)
        if not self.link_up:
            if now >= self._connect_at:
                return Decision(Action.CONNECT, now)
            return Decision(Action.WAIT, self._connect_at)
        if self.stop_raised:
            return self._next_while_stopping(now)
        poll_due = now >= self._next_poll_at
        command_ok = command_pending and now >= self._holdoff_until
        if command_ok and (not poll_due or self._last_was_poll):
            return Decision(Action.COMMAND, now)
        if poll_due:
            return Decision(Action.POLL, now)
        due = self._next_poll_at
        if command_pending:
            due = min(due, self._holdoff_until)
        return Decision(Action.WAIT, due)

    def new_silence(self) -> str | None:
        """Once per silence, the sentence a driver logs as it falls silent; else None."""
        if self.silences == self._silences_told:
            return None
        self._silences_told = self.silences
        return (
            f"{self.silence_reason}: nothing on the link for {self.silence_s:.2f} s, so that "
            "the drive's own deadman stops the belt"
        )

    @property
    def silent(self) -> bool:
        return self.silent_until is not None

    # --- internals -------------------------------------------------------------------------

    def _next_while_stopping(self, now: float) -> Decision:
        deadline = self._episode_start + self.params.stop_confirm_s
        if not self._confirmed and now >= deadline:
            return self._fall_silent(now, "the drive did not confirm the stop")
        if self.may_be_moving and now - self._stop_began >= self.params.standstill_s:
            # Accepted, repeated, and the belt is still not known to stand: our stop words do
            # not stop it, so they must not feed its deadman either.
            return self._fall_silent(now, "the belt is not at standstill after the stop")
        written = self._stop_seq > self._raised_seq
        polled = self._poll_seq > self._stop_seq
        if self._retry:
            # After a silence: one stop and one status read, then quiet until the bound.
            if not written:
                return Decision(Action.STOP, now)
            if not polled:
                return Decision(Action.POLL, now)
            return Decision(Action.WAIT, deadline)
        repeat_at = self._stop_at + self.params.poll_interval_s
        if not written or now >= repeat_at:
            return Decision(Action.STOP, now)
        if not polled or now >= self._next_poll_at:
            return Decision(Action.POLL, now)
        due = min(repeat_at, self._next_poll_at)
        if not self._confirmed:
            due = min(due, deadline)
        return Decision(Action.WAIT, due)

    def _fall_silent(self, now: float, reason: str) -> Decision:
        self.silences += 1
        self.silence_reason = reason
        self.silent_since = now
        self.silent_until = now + self.silence_s
        return Decision(Action.SILENT, self.silent_until)

    def _end_silence(self, now: float) -> None:
        self.silent_since = self.silent_until = None
        self._stop_began = now  # the attempt after a silence has its own standstill bound
        self._new_episode(now)
        self._retry = True
        self._raise(StopCause.RETRY, now)

    def _new_episode(self, now: float) -> None:
        self._episode_seq = self._next_seq()
        self._episode_start = now
        self._confirmed = False
        self._retry = False

    def _raise(self, cause: StopCause, now: float) -> None:
        if not self.stop_raised:
            self._stop_began = now
        self.stop_raised = True
        self.cause = cause
        self._raised_seq = self._next_seq()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
