"""The Trackmaster serial protocol as pure functions: bytes in, values out.

One codec for both ends of the wire. The driver (:mod:`drivers.trackmaster`) encodes commands and
status requests and decodes the treadmill's answers with :class:`ResponseDecoder`; the simulated
treadmill (:mod:`simulator.trackmaster_device`) decodes requests with :class:`RequestDecoder` and
encodes answers. Nothing here touches a port or a clock.

Frames (docs/wire-protocols.md, section 1): one command byte, optionally followed by ASCII
digits. Numbers are the decimal digits with the point left out; speed, elevation and time carry
tenths (1.2 mph -> ``0012``). The treadmill acknowledges a command with command + 0x10, refuses
one with ``BE`` (data out of range) or ``BF`` (illegal command), and answers a status request
``Cx`` with ``Dx`` and its data (``DF`` when it does not know the request).

There is deliberately no encoder for ``A1`` (start with the communication-disconnect stop
disabled): a host that dies after ``A1`` leaves the belt running, so the driver must have no way
to send it. :class:`RequestDecoder` still recognises ``A1`` because a simulated treadmill must
answer whatever a (possibly wrong) client sends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

ACK_OFFSET = 0x10
DIGITS_MAX = 9999
# A reported speed of 999.9 means an emergency stop or a speed loop that does not respond.
EMERGENCY_TENTHS = 9999


class CodecError(ValueError):
    """A value that cannot be put on the wire (negative, not finite, too many digits, off-step)."""


class Command(IntEnum):
    START = 0xA0  # start belt, communication-disconnect stop (CDS) enabled
    START_WITHOUT_CDS = 0xA1  # decoded for the device side only; never encoded
    STOP = 0xA2
    SET_SPEED = 0xA3
    SET_ELEVATION = 0xA4
    SET_TIME = 0xA5
    SET_PROTOCOL = 0xA6
    SET_STAGE = 0xA7
    RESET_TOTALS = 0xA8  # distance, total time, energy
    SET_WEIGHT = 0xA9
    AUTO_STOP = 0xAA
    AUTO_COOL_DOWN = 0xAB
    TOGGLE_ECHO = 0xAC

    @property
    def ack(self) -> int:
        return int(self) + ACK_OFFSET

    @property
    def data_digits(self) -> int:
        return _DATA_DIGITS.get(self, 0)


_DATA_DIGITS = {
    Command.SET_SPEED: 4,
    Command.SET_ELEVATION: 4,
    Command.SET_TIME: 4,
    Command.SET_PROTOCOL: 2,
    Command.SET_STAGE: 2,
    Command.SET_WEIGHT: 4,
}


class StatusRequest(IntEnum):
    BELT_STATE = 0xC0
    ACTUAL_SPEED = 0xC1
    ACTUAL_ELEVATION = 0xC2
    SET_SPEED = 0xC3
    SET_ELEVATION = 0xC4
    STAGE_TIME = 0xC5
    TOTAL_TIME = 0xC6
    DISTANCE = 0xC7
    PROTOCOL = 0xC8
    STAGE = 0xC9
    WEIGHT = 0xCA
    CALORIES = 0xCB
    VO2 = 0xCC
    METS = 0xCD

    @property
    def answer(self) -> int:
        return int(self) + ACK_OFFSET


class BeltState(IntEnum):
    """The one data byte of a ``D0`` answer."""

    STOPPED = 0x31
    RUNNING_CDS = 0x32
    RUNNING_WITHOUT_CDS = 0x33


class ErrorAnswer(IntEnum):
    DATA_OUT_OF_RANGE = 0xBE
    ILLEGAL_COMMAND = 0xBF


UNKNOWN_STATUS_ANSWER = 0xDF
STATUS_REQUEST_RANGE = range(0xC0, 0xD0)  # every Cx byte is a status request, known or not
_ACK_BYTES = {c.ack: c for c in Command}
_COMMAND_BYTES = {c.value: c for c in Command}
_STATUS_ANSWERS = {r.answer: r for r in StatusRequest}
_BELT_STATE_BYTES = frozenset(s.value for s in BeltState)
_ERROR_BYTES = frozenset(e.value for e in ErrorAnswer)
_DIGIT_BYTES = frozenset(b"0123456789")


# --- numbers ---------------------------------------------------------------------------------


def digits(value: int, width: int = 4) -> bytes:
    """``value`` as ``width`` ASCII digits: 12 -> b"0012"."""
    if not 0 <= value < 10**width:
        raise CodecError(f"{value} does not fit in {width} digits")
    return f"{value:0{width}d}".encode("ascii")


def tenths(value: float, what: str) -> int:
    """A quantity with one decimal as its tenths: round(value * 10), never 10 * round(value).

    ``trackmaster-python`` sent 10 * round(speed), so 1.2 mph went out as 1.0 mph.
    """
    if not math.isfinite(value) or value < 0:
        raise CodecError(f"{what} {value} must be a finite number >= 0")
    scaled = round(value * 10)
    if scaled > DIGITS_MAX:
        raise CodecError(f"{what} {value} exceeds {DIGITS_MAX / 10}")
    return scaled


def speed_tenths(mph: float) -> int:
    return tenths(mph, "speed (mph)")


def elevation_tenths(percent: float) -> int:
    """Elevation goes in 0.5 % steps; a value off the grid is refused, not rounded."""
    scaled = tenths(percent, "elevation (%)")
    if abs(percent * 10 - scaled) > 1e-6 or scaled % 5:
        raise CodecError(f"elevation {percent} % is not a multiple of 0.5 %")
    return scaled


def from_tenths(raw: int) -> float:
    return raw / 10


# --- host -> treadmill -------------------------------------------------------------------------


def encode_start() -> bytes:
    """``A0``: start the belt with the communication-disconnect stop enabled (the only start)."""
    return bytes([Command.START])


def encode_stop() -> bytes:
    return bytes([Command.STOP])


def encode_speed(mph: float) -> bytes:
    return bytes([Command.SET_SPEED]) + digits(speed_tenths(mph))


def encode_elevation(percent: float) -> bytes:
    return bytes([Command.SET_ELEVATION]) + digits(elevation_tenths(percent))


def encode_time(minutes: float) -> bytes:
    """``A5`` with minutes and tenths, like speed and elevation (unit per model *(verify)*)."""
    return bytes([Command.SET_TIME]) + digits(tenths(minutes, "time (min)"))


def encode_protocol(number: int) -> bytes:
    return bytes([Command.SET_PROTOCOL]) + digits(number, 2)


def encode_stage(number: int) -> bytes:
    return bytes([Command.SET_STAGE]) + digits(number, 2)


def encode_reset_totals() -> bytes:
    return bytes([Command.RESET_TOTALS])


def encode_weight(pounds: int) -> bytes:
    """``A9`` with the patient's weight as a whole number (pounds on US models *(verify)*)."""
    return bytes([Command.SET_WEIGHT]) + digits(pounds)


def encode_auto_stop() -> bytes:
    return bytes([Command.AUTO_STOP])


def encode_auto_cool_down() -> bytes:
    return bytes([Command.AUTO_COOL_DOWN])


def encode_toggle_echo() -> bytes:
    return bytes([Command.TOGGLE_ECHO])


def encode_status_request(request: StatusRequest) -> bytes:
    return bytes([request])


# --- treadmill -> host -------------------------------------------------------------------------


def encode_ack(command: Command, echo: bytes = b"") -> bytes:
    return bytes([command.ack]) + echo


def encode_error(error: ErrorAnswer) -> bytes:
    return bytes([error])


def encode_belt_state(state: BeltState) -> bytes:
    return bytes([StatusRequest.BELT_STATE.answer, state])


def encode_status_value(request: StatusRequest, raw: int) -> bytes:
    """A ``D1``..``DD`` answer: the answer byte and 4 digits (``raw`` is the number sent)."""
    if request is StatusRequest.BELT_STATE:
        raise CodecError("C0 is answered with encode_belt_state()")
    return bytes([request.answer]) + digits(raw)


def encode_unknown_status() -> bytes:
    return bytes([UNKNOWN_STATUS_ANSWER])


# --- decoded frames ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    command: Command
    echo: bytes = b""  # the command's data, only while the echo flag (AC) is set


@dataclass(frozen=True, slots=True)
class ErrorReply:
    error: ErrorAnswer


@dataclass(frozen=True, slots=True)
class BeltStateReply:
    state: BeltState


@dataclass(frozen=True, slots=True)
class StatusValue:
    request: StatusRequest
    raw: int  # the 4 digits as a number: tenths for speed, elevation, time

    @property
    def tenths_value(self) -> float:
        return from_tenths(self.raw)

    @property
    def is_emergency(self) -> bool:
        """999.9 in a speed field: emergency stop, or the speed loop is not responding."""
        speeds = (StatusRequest.ACTUAL_SPEED, StatusRequest.SET_SPEED)
        return self.request in speeds and self.raw == EMERGENCY_TENTHS


@dataclass(frozen=True, slots=True)
class UnknownStatusReply:
    pass


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that are no frame: line noise, a wrong baud rate, a frame broken off midway."""

    data: bytes


Response = Ack | ErrorReply | BeltStateReply | StatusValue | UnknownStatusReply | Garbage
_FrameMaker = Callable[[bytes], Response]


@dataclass(frozen=True, slots=True)
class CommandFrame:
    command: Command
    data: bytes = b""  # exactly command.data_digits ASCII digits

    @property
    def number(self) -> int:
        return int(self.data) if self.data else 0


@dataclass(frozen=True, slots=True)
class MalformedCommand:
    """A command whose data digits were cut short by a byte that is not a digit."""

    command: Command
    data: bytes


@dataclass(frozen=True, slots=True)
class StatusQuery:
    code: int  # 0xC0..0xCF

    @property
    def request(self) -> StatusRequest | None:
        """The known request, or None for a status request the treadmill answers with DF."""
        try:
            return StatusRequest(self.code)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A byte that starts no known frame; the treadmill answers BF."""

    code: int


Request = CommandFrame | MalformedCommand | StatusQuery | UnknownCommand


# --- incremental decoders -------------------------------------------------------------------------


class ResponseDecoder:
    """The treadmill's answers, fed in whatever pieces the port delivers them.

    ``feed()`` returns every frame completed by the new bytes; a frame cut by the end of the
    input waits for the next ``feed()``. A byte that cannot start a frame, or a frame broken by
    a byte that does not belong in it, comes out as :class:`Garbage` (adjacent garbage merged)
    and decoding resumes at the first byte that can start a frame: it never raises on input.

    ``echo`` mirrors the treadmill's echo flag (AC): when set, an ack of a command with data is
    followed by that data and decodes as one :class:`Ack` carrying it.
    """

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self._buf = bytearray()

    @property
    def pending(self) -> bytes:
        """The start of a frame still waiting for its remaining bytes."""
        return bytes(self._buf)

    def reset(self) -> bytes:
        """Forget a partial frame (after a time-out or a resync); returns what was dropped."""
        dropped = bytes(self._buf)
        self._buf.clear()
        return dropped

    def feed(self, data: bytes) -> list[Response]:
        self._buf += data
        out: list[Response] = []
        while self._buf:
            frame, used = self._parse_one()
            if used == 0:
                break  # a partial frame: wait for more
            del self._buf[:used]
            _append_merging_garbage(out, frame)
        return out

    def _parse_one(self) -> tuple[Response, int]:
        """One frame from the head of the buffer and its length; length 0 = incomplete."""
        buf = self._buf
        head = buf[0]
        if head in _ACK_BYTES:
            command = _ACK_BYTES[head]
            n = command.data_digits if self.echo else 0
            return _with_digits(buf, n, lambda data: Ack(command, data))
        if head in _ERROR_BYTES:
            return ErrorReply(ErrorAnswer(head)), 1
        if head == UNKNOWN_STATUS_ANSWER:
            return UnknownStatusReply(), 1
        if head == StatusRequest.BELT_STATE.answer:
            if len(buf) < 2:
                return Garbage(b""), 0
            if buf[1] in _BELT_STATE_BYTES:
                return BeltStateReply(BeltState(buf[1])), 2
            return Garbage(bytes(buf[:1])), 1
        if head in _STATUS_ANSWERS:
            request = _STATUS_ANSWERS[head]
            return _with_digits(buf, 4, lambda data: StatusValue(request, int(data)))
        return Garbage(bytes(buf[:1])), 1


class RequestDecoder:
    """The host's commands and status requests, for the treadmill's side of the wire.

    Same rules as :class:`ResponseDecoder`: pieces in, whole frames out, never raises. A command
    whose digits are cut by a non-digit comes out as :class:`MalformedCommand` and the cutting
    byte is decoded afresh (it may be the next command). Any other byte that starts no frame
    (including ``AD``..``AF`` and stray digits) is an :class:`UnknownCommand`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def reset(self) -> bytes:
        dropped = bytes(self._buf)
        self._buf.clear()
        return dropped

    def feed(self, data: bytes) -> list[Request]:
        self._buf += data
        out: list[Request] = []
        while self._buf:
            frame, used = self._parse_one()
            if used == 0:
                break
            del self._buf[:used]
            out.append(frame)
        return out

    def _parse_one(self) -> tuple[Request, int]:
        buf = self._buf
        head = buf[0]
        if head in STATUS_REQUEST_RANGE:
            return StatusQuery(head), 1
        command = _COMMAND_BYTES.get(head)
        if command is None:
            return UnknownCommand(head), 1
        n = command.data_digits
        for i in range(1, min(len(buf), n + 1)):
            if buf[i] not in _DIGIT_BYTES:
                return MalformedCommand(command, bytes(buf[1:i])), i
        if len(buf) < n + 1:
            return UnknownCommand(head), 0
        return CommandFrame(command, bytes(buf[1 : n + 1])), n + 1


def _with_digits(buf: bytearray, n: int, make: _FrameMaker) -> tuple[Response, int]:
    """A frame of one byte and ``n`` digits; garbage up to the first byte that is no digit."""
    for i in range(1, min(len(buf), n + 1)):
        if buf[i] not in _DIGIT_BYTES:
            return Garbage(bytes(buf[:i])), i
    if len(buf) < n + 1:
        return Garbage(b""), 0
    return make(bytes(buf[1 : n + 1])), n + 1


def _append_merging_garbage(out: list[Response], frame: Response) -> None:
    if isinstance(frame, Garbage) and out and isinstance(out[-1], Garbage):
        out[-1] = Garbage(out[-1].data + frame.data)
    else:
        out.append(frame)


def describe(frame: bytes) -> str:
    """Bytes as the protocol tables write them: b"\\xa3" b"0012" -> "A3 30 30 31 32"."""
    return " ".join(f"{b:02X}" for b in frame)
