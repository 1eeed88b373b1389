"""Pure encoding for a variable-frequency drive on Modbus (docs/wire-protocols.md, section 2).

No I/O and no clock: register values in, values out. The driver (drivers/modbus_vfd.py) and the
simulated drive (simulator/modbus_device.py) both use these functions, so their tests use golden
values written by hand from docs/wire-protocols.md, never values this module produced.

The reference map is Delta's VFD-E / VFD-EL (user manual, chapter 4). Other drives put the same
functions at other addresses, so the addresses live in a TOML file (config/drives/*.toml) loaded
into a :class:`RegisterMap`; the bit layouts below are Delta's.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Literal

from treadguard.drivers.regular_file import read_regular_text

Direction = Literal["forward", "reverse"]

REGISTER_MAX = 0xFFFF

# --- Command word (0x2000 on a Delta) ------------------------------------------------------------
# Bits 0-1: 00 no function, 01 stop, 10 run, 11 jog + run (never used here).
# Bits 4-5: 00 no function, 01 forward, 10 reverse, 11 change direction (never used here).
# docs/wire-protocols.md marks the direction bits *(verify)*.
_RUN_STOP_MASK = 0b11
_STOP_BITS = 0b01
_RUN_BITS = 0b10
_DIRECTION_SHIFT = 4
_DIRECTION_MASK = 0b11 << _DIRECTION_SHIFT
_FORWARD_BITS = 0b01 << _DIRECTION_SHIFT
_REVERSE_BITS = 0b10 << _DIRECTION_SHIFT

# --- Fault reset (0x2002 on a Delta): bit 1 resets a tripped drive *(verify)*. -------------------
FAULT_RESET_WORD = 0b10

# --- Frequencies are unsigned 16-bit registers in 0.01 Hz units. ---------------------------------
_CENTIHZ_PER_HZ = 100


class RegisterMapError(ValueError):
    """A register-map file is unreadable, or has an unknown, missing or bad key."""


class DriveConfigError(ValueError):
    """The drive's own configuration is unsafe (SR-9); names the parameter and the value found."""

    def __init__(self, parameter: str, value: int, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value


class CodecError(ValueError):
    """A value that cannot be encoded into, or decoded from, a 16-bit register."""


# --- Register map --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """Where a drive keeps each function, as Modbus protocol (0-based) register addresses."""

    name: str
    command_word: int
    frequency_command: int
    fault_reset: int
    error_code: int
    status_word: int
    frequency_readback: int
    output_frequency: int
    comm_fault_action: int  # Delta parameter 09.02
    comm_timeout: int  # Delta parameter 09.03

    @classmethod
    def from_toml(cls, path: Path) -> RegisterMap:
        try:
            data = tomllib.loads(read_regular_text(path))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegisterMapError(f"register map {path}: cannot read it: {exc}") from exc
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, object], *, source: str) -> RegisterMap:
        """Build a map from parsed TOML; every key is required and no other key is allowed."""
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise RegisterMapError(f"register map {source}: unknown key {key!r}")
        for key in known:
            if key not in data:
                raise RegisterMapError(f"register map {source}: missing key {key!r}")
        name = data["name"]
        if not isinstance(name, str) or not name:
            raise RegisterMapError(f"register map {source}: key 'name' must be a non-empty string")
        addresses = {key: _address(data[key], key, source) for key in known if key != "name"}
        _refuse_shared_addresses(addresses, source)
        return cls(name=name, **addresses)

    def addresses(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


def _address(value: object, key: str, source: str) -> int:
    # bool is an int in Python; `true` in the file is a typo, not register 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RegisterMapError(f"register map {source}: key {key!r} must be an integer address")
    if not 0 <= value <= REGISTER_MAX:
        raise RegisterMapError(f"register map {source}: key {key!r} = {value} is outside 0..0xFFFF")
    return value


def _refuse_shared_addresses(addresses: dict[str, int], source: str) -> None:
    # Two functions on one address is a copy-paste slip that would, say, write a speed into the
    # command word: refuse it.
    seen: dict[int, str] = {}
    for key, address in addresses.items():
        if address in seen:
            raise RegisterMapError(
                f"register map {source}: keys {seen[address]!r} and {key!r} share address "
                f"{address:#06x}"
            )
        seen[address] = key


def load_register_map(path: Path) -> RegisterMap:
    return RegisterMap.from_toml(path)


def parameter_label(address: int) -> str:
    """Delta numbers parameter GG.nn at register GG * 256 + nn: 0x0902 -> '09.02'."""
    return f"{address >> 8:02d}.{address & 0xFF:02d}"


def status_read_plan(rmap: RegisterMap, max_span: int = 4) -> list[tuple[int, int]]:
    """The reads that fetch the error code and the output frequency, as (address, count).

    One read when both sit within ``max_span`` registers of each other (Delta: 0x2100..0x2103,
    every register in between readable), otherwise one read each. Fewer frames keep the bus free
    for a stop.
    """
    low = min(rmap.error_code, rmap.output_frequency)
    high = max(rmap.error_code, rmap.output_frequency)
    if high - low < max_span:
        return [(low, high - low + 1)]
    return [(rmap.error_code, 1), (rmap.output_frequency, 1)]


# --- Command word ------------------------------------------------------------------------------


def _direction_bits(direction: Direction) -> int:
    return _FORWARD_BITS if direction == "forward" else _REVERSE_BITS


def command_word(*, run: bool, direction: Direction) -> int:
    """Run or stop, always with an explicit direction so the belt never reverses by surprise."""
    return (_RUN_BITS if run else _STOP_BITS) | _direction_bits(direction)


def stop_word(direction: Direction) -> int:
    return command_word(run=False, direction=direction)


def run_word(direction: Direction) -> int:
    return command_word(run=True, direction=direction)


@dataclass(frozen=True, slots=True)
class CommandWord:
    """A decoded command word: None where the word says 'no function' for that field."""

    run: bool | None
    direction: Direction | None


def decode_command_word(word: int) -> CommandWord:
    """Used by the simulated drive. Jog (11), change direction (11) and other bits are refused."""
    if not 0 <= word <= REGISTER_MAX:
        raise CodecError(f"command word {word} does not fit 16 bits")
    if word & ~(_RUN_STOP_MASK | _DIRECTION_MASK):
        raise CodecError(f"command word {word:#06x} sets bits this driver never uses")
    run_bits = word & _RUN_STOP_MASK
    if run_bits == _RUN_STOP_MASK:
        raise CodecError(f"command word {word:#06x}: jog (bits 0-1 = 11) is not supported")
    dir_bits = word & _DIRECTION_MASK
    if dir_bits == _DIRECTION_MASK:
        raise CodecError(f"command word {word:#06x}: change direction (bits 4-5 = 11) refused")
    run = {0: None, _STOP_BITS: False, _RUN_BITS: True}[run_bits]
    direction: Direction | None = {0: None, _FORWARD_BITS: "forward", _REVERSE_BITS: "reverse"}[
        dir_bits
    ]
    return CommandWord(run=run, direction=direction)


# --- Frequency -----------------------------------------------------------------------------------


def hz_to_register(hz: float) -> int:
    """A frequency in 0.01 Hz units; refuses what does not fit an unsigned 16-bit register."""
    if not math.isfinite(hz) or hz < 0:
        raise CodecError(f"frequency {hz} Hz is not a finite, non-negative number")
    scaled = hz * _CENTIHZ_PER_HZ
    if scaled > REGISTER_MAX + 0.5:
        # Compared before rounding: a finite frequency can scale past the largest float, and
        # round() of infinity raises OverflowError, not the codec's own error.
        raise CodecError(
            f"frequency {hz} Hz is {scaled:.6g} in 0.01 Hz units, more than a 16-bit register holds"
        )
    raw = round(scaled)
    if raw > REGISTER_MAX:
        raise CodecError(
            f"frequency {hz} Hz is {raw} in 0.01 Hz units, more than a 16-bit register holds"
        )
    return raw


def register_to_hz(raw: int) -> float:
    if not 0 <= raw <= REGISTER_MAX:
        raise CodecError(f"register value {raw} does not fit 16 bits")
    return raw / _CENTIHZ_PER_HZ


def _check_calibration(mph_per_hz: float) -> None:
    if not math.isfinite(mph_per_hz) or mph_per_hz <= 0:
        raise CodecError(f"mph_per_hz {mph_per_hz} must be a positive number")


def mph_to_register(mph: float, mph_per_hz: float) -> int:
    """Belt speed to a frequency command: ``hz = mph / mph_per_hz``, in 0.01 Hz units."""
    _check_calibration(mph_per_hz)
    if not math.isfinite(mph) or mph < 0:
        raise CodecError(f"speed {mph} mph is not a finite, non-negative number")
    return hz_to_register(mph / mph_per_hz)


def register_to_mph(raw: int, mph_per_hz: float) -> float:
    """An output frequency (0.01 Hz units) as belt speed: ``mph = hz * mph_per_hz``."""
    _check_calibration(mph_per_hz)
    return register_to_hz(raw) * mph_per_hz


# --- Status word (0x2101 on a Delta), used by the simulated drive ---------------------------------
# Bits 0-1: 00 stopped, 01 decelerating to stop, 10 standby, 11 running; bits 3-4: 00 forward,
# 11 reverse (01/10: changing direction). All *(verify)*: the sources do not list this register's
# bits and the driver does not rely on them (it reads the output frequency instead).
STATUS_STOPPED = 0b00
STATUS_DECELERATING = 0b01
STATUS_RUNNING = 0b11
_STATUS_REVERSE = 0b11 << 3


def status_word(*, running: bool, moving: bool, direction: Direction) -> int:
    if running:
        state = STATUS_RUNNING
    elif moving:
        state = STATUS_DECELERATING
    else:
        state = STATUS_STOPPED
    return state | (_STATUS_REVERSE if direction == "reverse" else 0)


# --- Parameter 09.02: what the drive does when its communication times out ------------------------


class CommFaultAction(IntEnum):
    """Delta 09.02 "transmission fault treatment". Numeric values *(verify)*: the sources list
    the four actions in this order without numbering them; Delta's VFD-E manual (and the C2000
    family) number them 0-3 as below, factory setting 3."""

    WARN_AND_KEEP_RUNNING = 0
    WARN_AND_RAMP_TO_STOP = 1
    WARN_AND_COAST_TO_STOP = 2
    KEEP_RUNNING_NO_WARNING = 3


COMM_FAULT_ACTION_TEXT = {
    CommFaultAction.WARN_AND_KEEP_RUNNING: "warn and keep running",
    CommFaultAction.WARN_AND_RAMP_TO_STOP: "ramp to stop",
    CommFaultAction.WARN_AND_COAST_TO_STOP: "coast to stop",
    CommFaultAction.KEEP_RUNNING_NO_WARNING: "keep running, no warning",
}

# Only a stop is acceptable: a drive that keeps running on a lost link leaves the belt moving
# under a user when the host dies (docs/wire-protocols.md; LinuxCNC issue #4529).
STOP_ACTIONS = frozenset(
    {CommFaultAction.WARN_AND_RAMP_TO_STOP, CommFaultAction.WARN_AND_COAST_TO_STOP}
)


def check_comm_fault_action(raw: int, address: int = 0x0902) -> CommFaultAction:
    """Accept 09.02 only if its action is a stop; otherwise a DriveConfigError naming the value."""
    label = parameter_label(address)
    try:
        action = CommFaultAction(raw)
    except ValueError:
        raise DriveConfigError(
            label,
            raw,
            f"parameter {label} (communication fault action, register {address:#06x}) is {raw}, "
            "an unknown value: refusing to run; set it to 1 (ramp to stop) or 2 (coast to stop)",
        ) from None
    if action not in STOP_ACTIONS:
        raise DriveConfigError(
            label,
            raw,
            f"parameter {label} (communication fault action, register {address:#06x}) is {raw} "
            f"({COMM_FAULT_ACTION_TEXT[action]}): the belt would keep moving if the host died; "
            "refusing to run; set it to 1 (ramp to stop) or 2 (coast to stop)",
        )
    return action


# --- Parameter 09.03: communication time-out, 0.1 s units, 0 = disabled ---------------------------

COMM_TIMEOUT_UNIT_S = 0.1
# SR-9 wants the drive-side deadman short: a dead host may leave the belt running for at most 1 s.
COMM_TIMEOUT_MAX_RAW = 10


def check_comm_timeout(raw: int, address: int = 0x0903) -> float:
    """Accept 09.03 only if the time-out is enabled and at most 1.0 s; returns it in seconds."""
    label = parameter_label(address)
    where = f"parameter {label} (communication time-out, register {address:#06x})"
    if raw == 0:
        raise DriveConfigError(
            label,
            raw,
            f"{where} is 0 (0.0 s = disabled): the drive would keep running if the host died; "
            "refusing to run; set it to 0.1-1.0 s",
        )
    if not 0 < raw <= COMM_TIMEOUT_MAX_RAW:
        raise DriveConfigError(
            label,
            raw,
            f"{where} is {raw} ({raw * COMM_TIMEOUT_UNIT_S:.1f} s), longer than 1.0 s: "
            "refusing to run; set it to 0.1-1.0 s",
        )
    return raw * COMM_TIMEOUT_UNIT_S


def check_poll_margin(timeout_raw: int, poll_interval_s: float, address: int = 0x0903) -> None:
    """SR-9: the link must be kept busy at well under half the drive's time-out, or the drive
    would trip between two polls of a healthy host."""
    timeout_s = timeout_raw * COMM_TIMEOUT_UNIT_S
    if poll_interval_s * 2 > timeout_s + 1e-9:
        label = parameter_label(address)
        raise DriveConfigError(
            label,
            timeout_raw,
            f"parameter {label} (communication time-out, register {address:#06x}) is "
            f"{timeout_raw} ({timeout_s:.1f} s), less than twice the {poll_interval_s:g} s poll "
            "interval: the drive would trip on a healthy link; refusing to run",
        )
