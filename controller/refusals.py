"""Coalescers for what a tablet can make the daemon journal as fast as it sends (SR-14): no
input can fill the journal. One for every refused command, one for speed changes.

Refusals come from two places, the contract (malformed, retained, too old, an unexpected
failure) and the safety core (out of range, not allowed, ...); both pass through here before
the journal and the link hear of them. Per kind (the command's type and the refusal's code),
the first refusal in a second goes out as it is, with its message; the others of that second
are only counted, and one ``command_refused`` event with ``count`` closes the second. So a
tablet gone mad costs at most one journal row a second per kind, however fast it sends, and
nothing it did goes unrecorded.

Pure: no clock reads, times are the events' own (the core's monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from treadguard.contract.mqtt import COMMAND_TYPES, ErrorCode
from treadguard.safety.decisions import Event, EventType, JsonScalar

WINDOW_S = 1.0


@dataclass
class _Window:
    start: float
    last: float
    held: int = 0


def refusal_kind(command: object, code: object) -> tuple[str, str]:
    """A bounded key: an unknown type or code (anything a sender makes up) is "other"."""
    kind = command if isinstance(command, str) and command in COMMAND_TYPES else "other"
    known = {c.value for c in ErrorCode}
    return kind, (code if isinstance(code, str) and code in known else "other")


class RefusalCoalescer:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._windows: dict[tuple[str, str], _Window] = {}
        self._closed: list[Event] = []
        self.held_total = 0

    def admit(self, event: Event) -> bool:
        """Whether ``event`` goes out now (True for everything but a refusal held back)."""
        if event.type is not EventType.COMMAND_REFUSED:
            return True
        key = refusal_kind(event.fields.get("command"), event.fields.get("code"))
        window = self._windows.get(key)
        if window is not None and event.t - window.start < self.window_s:
            window.held += 1
            window.last = event.t
            self.held_total += 1
            return False
        if window is not None:
            self._close(key, window)
        self._windows[key] = _Window(event.t, event.t)
        return True

    def take_closed(self) -> list[Event]:
        """The counts of the seconds that ended, oldest first, to be published before what
        comes next."""
        closed, self._closed = self._closed, []
        return closed

    def due(self, t: float) -> list[Event]:
        """At time ``t``: close every second that has ended, and return all counts not yet
        taken."""
        for key, window in list(self._windows.items()):
            if t - window.start >= self.window_s:
                del self._windows[key]
                self._close(key, window)
        return self.take_closed()

    def _close(self, key: tuple[str, str], window: _Window) -> None:
        if window.held == 0:
            return
        command, code = key
        self._closed.append(
            Event(
                EventType.COMMAND_REFUSED,
                window.last,
                {
                    "command": command,
                    "code": code,
                    "count": window.held,
                    "window_s": self.window_s,
                    "message": (
                        f"{window.held} more {command} command(s) refused ({code}) within "
                        f"{self.window_s:g} s; counted, not recorded one by one"
                    ),
                },
            )
        )


@dataclass
class _SpeedWindow:
    start: float
    last: float
    held: int = 0
    from_mph: object = None
    to_mph: object = None
    clinician: object = None


class SpeedChangeCoalescer:
    """Accepted speed changes (``speed_changed``), per session: the first in a second goes out
    as it is; the others of that second are held, and one ``speed_changed`` event closes the
    second, from the target before the first held change to the target after the last, with
    their ``count`` and the last one's clinician. A tablet sending speeds as fast as it can
    costs at most two journal rows a second, and the record still says where the target went.
    """

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._windows: dict[str, _SpeedWindow] = {}
        self._closed: list[Event] = []

    def admit(self, event: Event) -> bool:
        """Whether ``event`` goes out now (True for everything but a speed change held)."""
        if event.type is not EventType.SPEED_CHANGED:
            return True
        session = str(event.fields.get("session_id"))
        window = self._windows.get(session)
        if window is not None and event.t - window.start < self.window_s:
            if window.held == 0:
                window.from_mph = event.fields.get("from_mph")
            window.held += 1
            window.last = event.t
            window.to_mph = event.fields.get("to_mph")
            window.clinician = event.fields.get("clinician")
            return False
        if window is not None:
            self._close(session, window)
        self._windows[session] = _SpeedWindow(event.t, event.t)
        return True

    def take_closed(self) -> list[Event]:
        closed, self._closed = self._closed, []
        return closed

    def due(self, t: float) -> list[Event]:
        """At time ``t``: close every second that has ended; every count not yet taken."""
        for session, window in list(self._windows.items()):
            if t - window.start >= self.window_s:
                del self._windows[session]
                self._close(session, window)
        return self.take_closed()

    def _close(self, session: str, window: _SpeedWindow) -> None:
        if window.held == 0:
            return
        fields: dict[str, JsonScalar] = {
            "session_id": session,
            "from_mph": _scalar(window.from_mph),
            "to_mph": _scalar(window.to_mph),
            "count": window.held,
            "window_s": self.window_s,
        }
        if window.clinician is not None:
            fields["clinician"] = _scalar(window.clinician)
        self._closed.append(Event(EventType.SPEED_CHANGED, window.last, fields))


def _scalar(value: object) -> JsonScalar:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)
