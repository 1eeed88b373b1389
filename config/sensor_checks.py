"""What the sensors table must satisfy beyond each field's own type: the checks that look at
several inputs at once, or at the drive and the safety limits too."""

from __future__ import annotations

import os

from treadguard.config.schema import (
    GpioInputSection,
    ModbusDriveSection,
    ModbusInputSection,
    TreadguardConfig,
    input_name,
)
from treadguard.safety.inputs import Sensor
from treadguard.safety.link_limits import MODBUS_MAX_BITS_PER_READ

# A GPIO line is read at least this many times per sensor time-out, so that one lost read
# never makes a sensor stale.
READS_PER_TIMEOUT = 3
# The most bits one Modbus read may ask for: the reader's own bound.
MAX_BITS_PER_READ = MODBUS_MAX_BITS_PER_READ


def same_device(path: str) -> str:
    """A device path with its symlinks resolved: a udev name and the name it points at are one
    port."""
    return os.path.realpath(path)


def sensor_problems(config: TreadguardConfig) -> list[str]:
    sensors = config.sensors
    if not sensors.inputs:
        return []
    problems: list[str] = []
    if "source" in sensors.model_fields_set:
        problems.append(
            "sensors.source: give either sensors.source or [[sensors.inputs]] tables, not both "
            "(with inputs, each input says where its reading comes from)"
        )
    roles = {entry.role for entry in sensors.inputs}
    for role in Sensor:
        if role not in roles:
            problems.append(
                f"sensors.inputs: no input gives the {role.value} reading (grip_left, grip_right "
                "and fall each need at least one)"
            )
    seen_names: dict[str, int] = {}
    seen_points: dict[tuple[str, ...], int] = {}
    serial_settings: dict[str, tuple[int, str, int]] = {}
    spans: dict[tuple[str, ...], list[int]] = {}
    for i, entry in enumerate(sensors.inputs):
        where = f"sensors.inputs[{i}]"
        name = input_name(entry)
        if name in seen_names:
            problems.append(
                f"{where}.name: {name!r} is already the name of sensors.inputs[{seen_names[name]}]"
                " (give one of them a name of its own)"
            )
        seen_names.setdefault(name, i)
        if isinstance(entry, GpioInputSection | ModbusInputSection):
            problems.extend(_wiring_problems(where, entry))
            problems.extend(_rate_problems(where, entry, config.safety.sensor_timeout_s))
            point = _point(entry)
            if point in seen_points:
                problems.append(
                    f"{where}: the same {_point_words(entry)} as sensors.inputs"
                    f"[{seen_points[point]}]: one contact cannot be two sensors"
                )
            seen_points.setdefault(point, i)
        if isinstance(entry, ModbusInputSection):
            if entry.transport == "tcp" and not entry.host:
                problems.append(f"{where}.host: required when transport is 'tcp'")
            if entry.transport == "rtu" and not entry.serial_port:
                problems.append(f"{where}.serial_port: required when transport is 'rtu'")
            spans.setdefault(point[:-1], []).append(entry.address)
            if entry.transport == "rtu" and entry.serial_port:
                problems.extend(_bus_problems(where, i, entry, config, serial_settings))
    for key, addresses in spans.items():
        if max(addresses) - min(addresses) + 1 > MAX_BITS_PER_READ:
            problems.append(
                f"sensors.inputs: the {key[-1]}s of {key[1]} device {key[-2]} span addresses "
                f"{min(addresses)}-{max(addresses)}, more than one read of "
                f"{MAX_BITS_PER_READ} can hold"
            )
    return problems


def _wiring_problems(where: str, entry: GpioInputSection | ModbusInputSection) -> list[str]:
    """A cut wire must read as the unsafe reading: a grip released, a fall signalled."""
    cut = entry.open_circuit_level()
    if isinstance(entry, GpioInputSection):
        implied = entry.pull_level()
        if entry.open_circuit is not None and implied is not None and implied != cut:
            return [
                f"{where}.open_circuit: {entry.open_circuit!r} contradicts bias {entry.bias!r}, "
                f"which makes a cut wire read {implied}"
            ]
        if cut is None:
            return [
                f"{where}.open_circuit: bias {entry.bias!r} leaves the level of a cut wire to an "
                'external resistor: say which level it reads (open_circuit = "high" or '
                '"low"), or use bias = "pull_up" or "pull_down"'
            ]
    if entry.role is Sensor.FALL:
        if cut != entry.active:
            return [
                f"{where}.active: with active = {entry.active!r}, a cut wire (which reads "
                f"{cut}) would read 'no fall': wire the fall contact so that a cut wire reads "
                f"as a fall (a normally closed contact, active = {cut!r})"
            ]
    elif cut == entry.active:
        return [
            f"{where}.active: with active = {entry.active!r}, a cut wire (which reads {cut}) "
            f"would read 'held': wire the grip so that a cut wire reads released (active = "
            f"{'low' if cut == 'high' else 'high'!r})"
        ]
    return []


def _rate_problems(
    where: str, entry: GpioInputSection | ModbusInputSection, sensor_timeout_s: float
) -> list[str]:
    if isinstance(entry, GpioInputSection):
        if entry.poll_interval_s * READS_PER_TIMEOUT > sensor_timeout_s:
            return [
                f"{where}.poll_interval_s: {entry.poll_interval_s} s reads it fewer than "
                f"{READS_PER_TIMEOUT} times per safety.sensor_timeout_s ({sensor_timeout_s} s)"
            ]
        return []
    # One lost answer: the poll after the last good one times out, the link is opened again
    # (on RS-485 after a quiet line of one time-out), and the next poll must still land
    # inside the sensor time-out, with a poll interval to spare.
    waits = 3 if entry.transport == "rtu" else 2
    worst = 2 * entry.poll_interval_s + waits * entry.timeout_s
    if worst > sensor_timeout_s:
        return [
            f"{where}.poll_interval_s: one lost answer at poll_interval_s {entry.poll_interval_s}"
            f" s and timeout_s {entry.timeout_s} s leaves the sensor without a reading for "
            f"up to {worst:.2f} s, longer than safety.sensor_timeout_s ({sensor_timeout_s} s)"
        ]
    return []


def _bus(entry: ModbusInputSection) -> str:
    if entry.transport == "tcp":
        return f"tcp {entry.host}:{entry.tcp_port}"
    return f"rtu {same_device(entry.serial_port or '')}"


def _point(entry: GpioInputSection | ModbusInputSection) -> tuple[str, ...]:
    if isinstance(entry, GpioInputSection):
        return ("gpio", same_device(entry.chip), str(entry.line))
    return ("modbus", _bus(entry), str(entry.device_id), entry.table, str(entry.address))


def _point_words(entry: GpioInputSection | ModbusInputSection) -> str:
    if isinstance(entry, GpioInputSection):
        return f"line {entry.line} of {entry.chip}"
    return f"{entry.table} {entry.address} of device {entry.device_id} on {_bus(entry)}"


def _bus_problems(
    where: str,
    index: int,
    entry: ModbusInputSection,
    config: TreadguardConfig,
    serial_settings: dict[str, tuple[int, str, int]],
) -> list[str]:
    assert entry.serial_port is not None
    port = same_device(entry.serial_port)
    drive = config.drive
    problems: list[str] = []
    if (
        isinstance(drive, ModbusDriveSection)
        and drive.transport == "rtu"
        and drive.serial_port is not None
        and same_device(drive.serial_port) == port
    ):
        problems.append(
            f"{where}.serial_port: {entry.serial_port} is the drive's RS-485 bus, which has one "
            "master, the drive's driver: wire the sensors to an I/O module on a bus of its own, "
            "or read the drive's inputs over Modbus TCP"
        )
    settings = (entry.baud, entry.parity, index)
    earlier = serial_settings.setdefault(port, settings)
    if earlier[:2] != settings[:2]:
        problems.append(
            f"{where}.baud: {entry.serial_port} is read at {earlier[0]} baud, parity "
            f"{earlier[1]} by sensors.inputs[{earlier[2]}]; one bus has one setting"
        )
    return problems
