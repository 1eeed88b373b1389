"""The VFD codec against golden values written by hand from docs/wire-protocols.md section 2 (SR-9).

Never values the codec produced: the driver and the simulated drive share this codec, so a wrong
bit here would be wrong on both sides of the wire and no integration test would notice.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from treadguard.drivers.vfd_codec import (
    CodecError,
    CommFaultAction,
    DriveConfigError,
    RegisterMap,
    RegisterMapError,
    check_comm_fault_action,
    check_comm_timeout,
    check_poll_margin,
    command_word,
    decode_command_word,
    hz_to_register,
    mph_to_register,
    parameter_label,
    register_to_hz,
    register_to_mph,
    run_word,
    status_read_plan,
    status_word,
    stop_word,
)

ROOT = Path(__file__).resolve().parents[1]
DELTA_MAP = ROOT / "config" / "drives" / "delta-vfd-e.toml"

# --- command word: bits 0-1 01 stop / 10 run; bits 4-5 01 forward / 10 reverse ------------------


@pytest.mark.parametrize(
    ("run", "direction", "golden"),
    [
        (False, "forward", 0b0001_0001),  # 0x11
        (True, "forward", 0b0001_0010),  # 0x12
        (False, "reverse", 0b0010_0001),  # 0x21
        (True, "reverse", 0b0010_0010),  # 0x22
    ],
)
def test_command_word_bit_patterns(run: bool, direction: str, golden: int) -> None:
    assert command_word(run=run, direction=direction) == golden  # type: ignore[arg-type]


def test_stop_and_run_words_reverse() -> None:
    assert stop_word("reverse") == 0x21
    assert run_word("reverse") == 0x22
    assert stop_word("forward") == 0x11
    assert run_word("forward") == 0x12


@pytest.mark.parametrize(
    ("word", "run", "direction"),
    [
        (0x22, True, "reverse"),
        (0x21, False, "reverse"),
        (0x12, True, "forward"),
        (0x11, False, "forward"),
        (0x02, True, None),  # bits 4-5 = 00: direction unchanged
        (0x20, None, "reverse"),  # bits 0-1 = 00: run/stop unchanged
        (0x00, None, None),
    ],
)
def test_decode_command_word(word: int, run: bool | None, direction: str | None) -> None:
    decoded = decode_command_word(word)
    assert (decoded.run, decoded.direction) == (run, direction)


@pytest.mark.parametrize(
    "word",
    [
        0x03,  # bits 0-1 = 11: jog
        0x30,  # bits 4-5 = 11: change direction
        0x0100,  # a bit this driver never uses
        0x10000,  # does not fit 16 bits
        -1,
    ],
)
def test_decode_command_word_refuses(word: int) -> None:
    with pytest.raises(CodecError):
        decode_command_word(word)


# --- frequency: 0.01 Hz units in an unsigned 16-bit register -----------------------------------


@pytest.mark.parametrize(
    ("mph", "mph_per_hz", "golden"),
    [
        (0.8, 0.05, 1600),  # 16.00 Hz
        (1.2, 0.05, 2400),  # 24.00 Hz
        (1.0, 0.05, 2000),  # 20.00 Hz
        (0.0, 0.05, 0),
        (1.2, 0.02, 6000),  # 60.00 Hz
        (6.5535, 0.01, 65535),  # 655.35 Hz, the largest register value
    ],
)
def test_mph_to_register_golden(mph: float, mph_per_hz: float, golden: int) -> None:
    assert mph_to_register(mph, mph_per_hz) == golden


@pytest.mark.parametrize(
    ("mph", "mph_per_hz"),
    [
        (6.5536, 0.01),  # 655.36 Hz = 65536: one past 16 bits
        (7.0, 0.01),
        (-0.1, 0.05),
        (math.nan, 0.05),
        (math.inf, 0.05),
        (1.0, 0.0),
        (1.0, -0.05),
        # A tiny calibration: the frequency is finite, its 0.01 Hz count is not (it raised
        # OverflowError, past the configuration check, into the daemon's start).
        (1.2, 2.2e-308),
        (1.2, 5e-324),
    ],
)
def test_mph_to_register_refuses(mph: float, mph_per_hz: float) -> None:
    with pytest.raises(CodecError):
        mph_to_register(mph, mph_per_hz)


def test_hz_register_golden() -> None:
    assert hz_to_register(60.0) == 6000
    assert hz_to_register(0.01) == 1
    assert register_to_hz(6000) == 60.0
    assert register_to_hz(1) == 0.01
    with pytest.raises(CodecError):
        hz_to_register(655.36)


@pytest.mark.parametrize(
    ("raw", "mph_per_hz", "mph"),
    [(2400, 0.05, 1.2), (1600, 0.05, 0.8), (0, 0.05, 0.0), (6000, 0.02, 1.2)],
)
def test_output_frequency_to_mph(raw: int, mph_per_hz: float, mph: float) -> None:
    assert register_to_mph(raw, mph_per_hz) == pytest.approx(mph)


@pytest.mark.parametrize("raw", [-1, 0x10000])
def test_output_frequency_out_of_range(raw: int) -> None:
    with pytest.raises(CodecError):
        register_to_mph(raw, 0.05)


# --- 09.02: only a stop is an acceptable communication-fault action (SR-9) ----------------------


@pytest.mark.parametrize(
    ("raw", "action"),
    [(1, CommFaultAction.WARN_AND_RAMP_TO_STOP), (2, CommFaultAction.WARN_AND_COAST_TO_STOP)],
)
def test_09_02_stop_actions_accepted(raw: int, action: CommFaultAction) -> None:
    assert check_comm_fault_action(raw) is action


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (0, "warn and keep running"),
        (3, "keep running"),
        (4, "unknown"),
        (0xFFFF, "unknown"),
    ],
)
def test_09_02_refusals_name_parameter_and_value(raw: int, words: str) -> None:
    """SR-9: warn-and-keep-running, keep-running and unknown values are all refused."""
    with pytest.raises(DriveConfigError) as info:
        check_comm_fault_action(raw)
    message = str(info.value)
    assert "09.02" in message
    assert f" is {raw}" in message
    assert words in message
    assert info.value.parameter == "09.02"
    assert info.value.value == raw


# --- 09.03: time-out in 0.1 s units; 0 = disabled, > 1.0 s refused -------------------------------


@pytest.mark.parametrize(("raw", "seconds"), [(1, 0.1), (5, 0.5), (10, 1.0)])
def test_09_03_accepted(raw: int, seconds: float) -> None:
    assert check_comm_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "words"),
    [(0, "disabled"), (11, "1.1 s"), (50, "5.0 s"), (1200, "120.0 s")],
)
def test_09_03_refusals_name_parameter_and_value(raw: int, words: str) -> None:
    """SR-9: a disabled time-out, or one longer than 1.0 s, is refused."""
    with pytest.raises(DriveConfigError) as info:
        check_comm_timeout(raw)
    message = str(info.value)
    assert "09.03" in message
    assert f" is {raw}" in message
    assert words in message
    assert (info.value.parameter, info.value.value) == ("09.03", raw)


def test_09_03_must_leave_room_for_two_polls() -> None:
    """SR-9: the link is kept busy at well under half the drive's time-out."""
    check_poll_margin(2, 0.1)  # 0.2 s time-out, 0.1 s poll: exactly two polls
    with pytest.raises(DriveConfigError, match=r"09\.03.* is 1 \(0\.1 s\)"):
        check_poll_margin(1, 0.1)


# --- register map --------------------------------------------------------------------------------


def test_shipped_delta_map_matches_the_wire_protocols_doc() -> None:
    rmap = RegisterMap.from_toml(DELTA_MAP)
    assert rmap.name == "delta-vfd-e"
    assert rmap.command_word == 0x2000
    assert rmap.frequency_command == 0x2001
    assert rmap.fault_reset == 0x2002
    assert rmap.error_code == 0x2100
    assert rmap.status_word == 0x2101
    assert rmap.frequency_readback == 0x2102
    assert rmap.output_frequency == 0x2103
    assert rmap.comm_fault_action == 0x0902
    assert rmap.comm_timeout == 0x0903
    # Error code .. output frequency in one read of 0x2100-0x2103.
    assert status_read_plan(rmap) == [(0x2100, 4)]


def test_far_apart_status_registers_are_read_separately() -> None:
    rmap = RegisterMap.from_toml(DELTA_MAP)
    spread = replace(rmap, name="x", output_frequency=0x3000)
    assert status_read_plan(spread) == [(0x2100, 1), (0x3000, 1)]


def test_parameter_label() -> None:
    assert parameter_label(0x0902) == "09.02"
    assert parameter_label(0x0903) == "09.03"
    assert parameter_label(0x0A03) == "10.03"


def _write_map(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "drive.toml"
    path.write_text(text)
    return path


def _delta_text() -> str:
    return DELTA_MAP.read_text()


def test_map_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write_map(tmp_path, _delta_text() + "speed_limit = 0x2200\n")
    with pytest.raises(RegisterMapError) as info:
        RegisterMap.from_toml(path)
    assert "speed_limit" in str(info.value)
    assert str(path) in str(info.value)


def test_map_missing_key_names_key_and_file(tmp_path: Path) -> None:
    text = "\n".join(
        line for line in _delta_text().splitlines() if not line.startswith("comm_timeout")
    )
    path = _write_map(tmp_path, text)
    with pytest.raises(RegisterMapError) as info:
        RegisterMap.from_toml(path)
    assert "missing key 'comm_timeout'" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("replacement", "words"),
    [
        ("output_frequency = true", "'output_frequency' must be an integer"),
        ('output_frequency = "0x2103"', "'output_frequency' must be an integer"),
        ("output_frequency = 0x10000", "outside 0..0xFFFF"),
        ("output_frequency = -1", "outside 0..0xFFFF"),
        ("output_frequency = 0x2000", "share address 0x2000"),
    ],
)
def test_map_bad_values(tmp_path: Path, replacement: str, words: str) -> None:
    text = "\n".join(
        replacement if line.startswith("output_frequency") else line
        for line in _delta_text().splitlines()
    )
    path = _write_map(tmp_path, text)
    with pytest.raises(RegisterMapError, match=words):
        RegisterMap.from_toml(path)


def test_map_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="cannot read"):
        RegisterMap.from_toml(tmp_path / "absent.toml")
    with pytest.raises(RegisterMapError, match="cannot read"):
        RegisterMap.from_toml(_write_map(tmp_path, "name = [unclosed"))


# --- status word (simulated drive only; bits marked verify in the codec) ------------------------


def test_status_word() -> None:
    assert status_word(running=True, moving=True, direction="forward") == 0b00011
    assert status_word(running=True, moving=True, direction="reverse") == 0b11011
    assert status_word(running=False, moving=True, direction="forward") == 0b00001
    assert status_word(running=False, moving=False, direction="reverse") == 0b11000
