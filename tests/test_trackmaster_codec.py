"""The Trackmaster codec against golden bytes written by hand from docs/wire-protocols.md section 1.

The driver and the simulated treadmill share this codec, so a mistake in it would be invisible
end to end: every expected byte string below is typed from the protocol table (ASCII digits:
"0" = 0x30 ... "9" = 0x39), never produced by the codec.
"""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadguard.drivers import trackmaster_codec as codec
from treadguard.drivers.trackmaster_codec import (
    Ack,
    BeltState,
    BeltStateReply,
    CodecError,
    Command,
    CommandFrame,
    ErrorAnswer,
    ErrorReply,
    Garbage,
    MalformedCommand,
    RequestDecoder,
    Response,
    ResponseDecoder,
    StatusQuery,
    StatusRequest,
    StatusValue,
    UnknownCommand,
    UnknownStatusReply,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- encoding commands ------------------------------------------------------------------------

# (what, encoded by the codec, golden bytes from the table)
GOLDEN_COMMANDS = [
    ("A0 start with CDS", codec.encode_start(), "A0"),
    ("A2 stop", codec.encode_stop(), "A2"),
    ("A3 1.2 mph", codec.encode_speed(1.2), "A3 30 30 31 32"),
    ("A3 0.8 mph", codec.encode_speed(0.8), "A3 30 30 30 38"),
    ("A3 1.0 mph", codec.encode_speed(1.0), "A3 30 30 31 30"),
    ("A3 0 mph", codec.encode_speed(0.0), "A3 30 30 30 30"),
    ("A3 12.0 mph", codec.encode_speed(12.0), "A3 30 31 32 30"),
    ("A3 999.9 mph", codec.encode_speed(999.9), "A3 39 39 39 39"),
    ("A4 2.5 %", codec.encode_elevation(2.5), "A4 30 30 32 35"),
    ("A4 10 %", codec.encode_elevation(10.0), "A4 30 31 30 30"),
    ("A4 0 %", codec.encode_elevation(0.0), "A4 30 30 30 30"),
    ("A5 12.5 min", codec.encode_time(12.5), "A5 30 31 32 35"),
    ("A6 protocol 3", codec.encode_protocol(3), "A6 30 33"),
    ("A7 stage 12", codec.encode_stage(12), "A7 31 32"),
    ("A8 reset totals", codec.encode_reset_totals(), "A8"),
    ("A9 weight 150", codec.encode_weight(150), "A9 30 31 35 30"),
    ("AA auto stop", codec.encode_auto_stop(), "AA"),
    ("AB auto cool-down", codec.encode_auto_cool_down(), "AB"),
    ("AC toggle echo", codec.encode_toggle_echo(), "AC"),
]


@pytest.mark.parametrize(("what", "encoded", "golden"), GOLDEN_COMMANDS)
def test_commands_encode_to_the_table(what: str, encoded: bytes, golden: str) -> None:
    assert encoded == h(golden), what


@pytest.mark.parametrize(
    ("mph", "golden"),
    [
        (0.8, "A3 30 30 30 38"),
        (0.9, "A3 30 30 30 39"),
        (1.0, "A3 30 30 31 30"),
        (1.1, "A3 30 30 31 31"),
        (1.2, "A3 30 30 31 32"),
    ],
)
def test_program_band_speeds_keep_their_tenths(mph: float, golden: str) -> None:
    """trackmaster-python sent 10 * round(speed): 0.8 and 1.2 both went out as 0010 (1.0)."""
    assert codec.encode_speed(mph) == h(golden)


def test_the_10_times_round_mistake_does_not_happen() -> None:
    one_mph = h("A3 30 30 31 30")
    assert codec.encode_speed(1.2) != one_mph
    assert codec.encode_speed(0.8) != one_mph
    assert codec.encode_speed(0.8) != codec.encode_speed(1.2)


@pytest.mark.parametrize(
    ("request_", "golden"),
    [(r, f"{0xC0 + i:02X}") for i, r in enumerate(StatusRequest)],
)
def test_status_requests_are_one_byte_c0_to_cd(request_: StatusRequest, golden: str) -> None:
    assert codec.encode_status_request(request_) == h(golden)


def test_status_table_has_c0_to_cd() -> None:
    assert [int(r) for r in StatusRequest] == list(range(0xC0, 0xCE))


def test_there_is_no_encoder_for_a1() -> None:
    """The driver must never start without CDS: nothing in the codec produces A1."""
    outputs = []
    for name, fn in inspect.getmembers(codec, inspect.isfunction):
        if name.startswith("encode_") and not inspect.signature(fn).parameters:
            outputs.append(fn())
    assert outputs, "found no zero-argument encoders"
    assert all(not out.startswith(h("A1")) for out in outputs)
    assert not any("without" in name for name in dir(codec) if name.startswith("encode"))


@pytest.mark.parametrize("mph", [-0.1, math.nan, math.inf, 1000.0])
def test_speed_out_of_digits_is_refused(mph: float) -> None:
    with pytest.raises(CodecError):
        codec.encode_speed(mph)


@pytest.mark.parametrize("percent", [2.7, 0.1, -0.5, 1000.0])
def test_elevation_off_the_half_percent_grid_is_refused_not_rounded(percent: float) -> None:
    with pytest.raises(CodecError):
        codec.encode_elevation(percent)


def test_two_digit_and_four_digit_fields_are_bounded() -> None:
    with pytest.raises(CodecError):
        codec.encode_protocol(100)
    with pytest.raises(CodecError):
        codec.encode_weight(10000)


# --- encoding answers (the device side) -----------------------------------------------------------


def test_answers_encode_to_the_table() -> None:
    assert codec.encode_ack(Command.SET_SPEED) == h("B3")
    assert codec.encode_ack(Command.SET_SPEED, b"0012") == h("B3 30 30 31 32")
    assert codec.encode_error(ErrorAnswer.DATA_OUT_OF_RANGE) == h("BE")
    assert codec.encode_error(ErrorAnswer.ILLEGAL_COMMAND) == h("BF")
    assert codec.encode_belt_state(BeltState.STOPPED) == h("D0 31")
    assert codec.encode_belt_state(BeltState.RUNNING_CDS) == h("D0 32")
    assert codec.encode_belt_state(BeltState.RUNNING_WITHOUT_CDS) == h("D0 33")
    assert codec.encode_status_value(StatusRequest.ACTUAL_SPEED, 12) == h("D1 30 30 31 32")
    assert codec.encode_status_value(StatusRequest.METS, 35) == h("DD 30 30 33 35")
    assert codec.encode_unknown_status() == h("DF")


def test_acks_are_command_plus_0x10() -> None:
    assert [c.ack for c in Command] == list(range(0xB0, 0xBD))


# --- decoding answers ----------------------------------------------------------------------------

GOLDEN_ANSWERS: list[tuple[str, Response]] = [
    ("B0", Ack(Command.START)),
    ("B1", Ack(Command.START_WITHOUT_CDS)),
    ("B2", Ack(Command.STOP)),
    ("B3", Ack(Command.SET_SPEED)),
    ("B4", Ack(Command.SET_ELEVATION)),
    ("B5", Ack(Command.SET_TIME)),
    ("B6", Ack(Command.SET_PROTOCOL)),
    ("B7", Ack(Command.SET_STAGE)),
    ("B8", Ack(Command.RESET_TOTALS)),
    ("B9", Ack(Command.SET_WEIGHT)),
    ("BA", Ack(Command.AUTO_STOP)),
    ("BB", Ack(Command.AUTO_COOL_DOWN)),
    ("BC", Ack(Command.TOGGLE_ECHO)),
    ("BE", ErrorReply(ErrorAnswer.DATA_OUT_OF_RANGE)),
    ("BF", ErrorReply(ErrorAnswer.ILLEGAL_COMMAND)),
    ("D0 31", BeltStateReply(BeltState.STOPPED)),
    ("D0 32", BeltStateReply(BeltState.RUNNING_CDS)),
    ("D0 33", BeltStateReply(BeltState.RUNNING_WITHOUT_CDS)),
    ("D1 30 30 31 32", StatusValue(StatusRequest.ACTUAL_SPEED, 12)),
    ("D2 30 30 32 35", StatusValue(StatusRequest.ACTUAL_ELEVATION, 25)),
    ("D3 30 30 30 38", StatusValue(StatusRequest.SET_SPEED, 8)),
    ("D4 30 31 30 30", StatusValue(StatusRequest.SET_ELEVATION, 100)),
    ("D5 30 30 31 35", StatusValue(StatusRequest.STAGE_TIME, 15)),
    ("DD 30 30 33 35", StatusValue(StatusRequest.METS, 35)),
    ("DF", UnknownStatusReply()),
]


@pytest.mark.parametrize(("golden", "frame"), GOLDEN_ANSWERS)
def test_each_answer_decodes(golden: str, frame: Response) -> None:
    decoder = ResponseDecoder()
    assert decoder.feed(h(golden)) == [frame]
    assert decoder.pending == b""


def test_speed_tenths_and_the_emergency_value() -> None:
    [speed] = ResponseDecoder().feed(h("D1 30 30 31 32"))
    assert isinstance(speed, StatusValue)
    assert speed.tenths_value == pytest.approx(1.2)
    assert not speed.is_emergency
    [emergency] = ResponseDecoder().feed(h("D1 39 39 39 39"))
    assert isinstance(emergency, StatusValue)
    assert emergency.is_emergency
    [set_speed] = ResponseDecoder().feed(h("D3 39 39 39 39"))
    assert isinstance(set_speed, StatusValue)
    assert set_speed.is_emergency


def test_frames_split_across_reads_decode_whole() -> None:
    stream = h("B0 D0 32 D1 30 30 31 32 B3 DF")
    decoder = ResponseDecoder()
    frames: list[Response] = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
    assert frames == [
        Ack(Command.START),
        BeltStateReply(BeltState.RUNNING_CDS),
        StatusValue(StatusRequest.ACTUAL_SPEED, 12),
        Ack(Command.SET_SPEED),
        UnknownStatusReply(),
    ]


def test_a_partial_frame_waits_for_the_rest() -> None:
    decoder = ResponseDecoder()
    assert decoder.feed(h("D1 30 30")) == []
    assert decoder.pending == h("D1 30 30")
    assert decoder.feed(h("31 32")) == [StatusValue(StatusRequest.ACTUAL_SPEED, 12)]
    assert decoder.feed(h("D0")) == []
    assert decoder.reset() == h("D0")
    assert decoder.pending == b""


def test_garbage_is_reported_and_decoding_resumes() -> None:
    decoder = ResponseDecoder()
    assert decoder.feed(h("00 55 AA B2")) == [Garbage(h("00 55 AA")), Ack(Command.STOP)]
    # A digit field broken by a byte that starts a frame: the broken part is garbage.
    assert decoder.feed(h("D1 30 41 B3")) == [Garbage(h("D1 30 41")), Ack(Command.SET_SPEED)]
    assert decoder.feed(h("D1 30 B0")) == [Garbage(h("D1 30")), Ack(Command.START)]
    # D0 must be followed by 31, 32 or 33.
    assert decoder.feed(h("D0 39")) == [Garbage(h("D0 39"))]
    # Unused codes of the answer ranges.
    assert decoder.feed(h("BD DE")) == [Garbage(h("BD DE"))]
    # A command byte is not an answer.
    assert decoder.feed(h("A3")) == [Garbage(h("A3"))]


def test_echo_flag_carries_the_data_after_the_ack() -> None:
    decoder = ResponseDecoder(echo=True)
    assert decoder.feed(h("B3 30 30 31 32 B2 B6 30 33")) == [
        Ack(Command.SET_SPEED, b"0012"),
        Ack(Command.STOP),
        Ack(Command.SET_PROTOCOL, b"03"),
    ]


# --- decoding requests (the device side) --------------------------------------------------------


def test_requests_decode() -> None:
    decoder = RequestDecoder()
    assert decoder.feed(h("A0 A1 A2 A3 30 30 31 32 A6 30 39 C0 C1 CD CE")) == [
        CommandFrame(Command.START),
        CommandFrame(Command.START_WITHOUT_CDS),  # recognised on the device side
        CommandFrame(Command.STOP),
        CommandFrame(Command.SET_SPEED, b"0012"),
        CommandFrame(Command.SET_PROTOCOL, b"09"),
        StatusQuery(0xC0),
        StatusQuery(0xC1),
        StatusQuery(0xCD),
        StatusQuery(0xCE),
    ]


def test_request_numbers_and_unknown_status_requests() -> None:
    [speed] = RequestDecoder().feed(h("A3 30 30 31 32"))
    assert isinstance(speed, CommandFrame)
    assert speed.number == 12
    assert StatusQuery(0xC1).request is StatusRequest.ACTUAL_SPEED
    assert StatusQuery(0xCE).request is None
    assert StatusQuery(0xCF).request is None


def test_unknown_bytes_are_unknown_commands() -> None:
    assert RequestDecoder().feed(h("AD AE AF 00 35 B2")) == [
        UnknownCommand(0xAD),
        UnknownCommand(0xAE),
        UnknownCommand(0xAF),
        UnknownCommand(0x00),
        UnknownCommand(0x35),
        UnknownCommand(0xB2),
    ]


def test_a_command_cut_short_by_the_next_one() -> None:
    """A stop written while a speed command is half sent: the speed is malformed, the stop
    stands on its own."""
    decoder = RequestDecoder()
    assert decoder.feed(h("A3 30 30")) == []
    assert decoder.pending == h("A3 30 30")
    assert decoder.feed(h("A2")) == [
        MalformedCommand(Command.SET_SPEED, b"00"),
        CommandFrame(Command.STOP),
    ]


def test_split_request_decodes_whole() -> None:
    decoder = RequestDecoder()
    out = []
    for b in h("A4 30 30 32 35"):
        out += decoder.feed(bytes([b]))
    assert out == [CommandFrame(Command.SET_ELEVATION, b"0025")]


# --- properties ------------------------------------------------------------------------------


def _wire(frame: Response) -> bytes:
    """The test's own serialiser (independent of the codec's encoders)."""
    match frame:
        case Ack(command=command, echo=echo):
            return bytes([int(command) + 0x10]) + echo
        case ErrorReply(error=error):
            return bytes([int(error)])
        case BeltStateReply(state=state):
            return bytes([0xD0, int(state)])
        case StatusValue(request=request, raw=raw):
            return bytes([int(request) + 0x10]) + str(raw).zfill(4).encode()
        case UnknownStatusReply():
            return bytes([0xDF])
        case Garbage(data=data):
            return data


def _merged(frames: list[Response]) -> list[Response]:
    out: list[Response] = []
    for f in frames:
        if isinstance(f, Garbage) and out and isinstance(out[-1], Garbage):
            out[-1] = Garbage(out[-1].data + f.data)
        else:
            out.append(f)
    return out


answer_bytes = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=3),
        st.sampled_from([h(g) for g, _ in GOLDEN_ANSWERS]),
    ),
    max_size=30,
).map(b"".join)


@given(data=answer_bytes, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_decoder_never_raises_loses_no_byte_and_ignores_chunking(
    data: bytes, cuts: list[int]
) -> None:
    whole = ResponseDecoder()
    frames_whole = whole.feed(data)
    chunked = ResponseDecoder()
    frames_chunked: list[Response] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        frames_chunked += chunked.feed(data[a:b])
    assert _merged(frames_chunked) == frames_whole
    assert b"".join(_wire(f) for f in frames_whole) + whole.pending == data
    assert chunked.pending == whole.pending


@given(data=st.binary(max_size=64))
def test_request_decoder_never_raises(data: bytes) -> None:
    decoder = RequestDecoder()
    frames = decoder.feed(data)
    assert len(decoder.pending) <= 4
    assert all(
        isinstance(f, CommandFrame | MalformedCommand | StatusQuery | UnknownCommand)
        for f in frames
    )


@given(tenths=st.integers(min_value=0, max_value=9999))
def test_speed_round_trips_through_the_device_decoder(tenths: int) -> None:
    mph = tenths / 10
    [frame] = RequestDecoder().feed(codec.encode_speed(mph))
    assert frame == CommandFrame(Command.SET_SPEED, str(tenths).zfill(4).encode())
    assert frame.number == tenths


@given(mph=st.floats(min_value=0.0, max_value=999.94, allow_nan=False))
def test_speed_is_round_of_tenths_never_tenfold_round(mph: float) -> None:
    [frame] = RequestDecoder().feed(codec.encode_speed(mph))
    assert isinstance(frame, CommandFrame)
    assert frame.number == round(mph * 10)
    assert abs(frame.number / 10 - mph) <= 0.05 + 1e-9


@given(request=st.sampled_from(list(StatusRequest)[1:]), raw=st.integers(0, 9999))
def test_status_values_round_trip(request: StatusRequest, raw: int) -> None:
    assert ResponseDecoder().feed(codec.encode_status_value(request, raw)) == [
        StatusValue(request, raw)
    ]
