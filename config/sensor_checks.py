"""What the sensors table must satisfy beyond each field's own type: the checks that look at
several inputs at once, or at the drive and the safety limits too."""

from __future__ import annotations

from config.schema import (
    GpioInputSection,
    ModbusDriveSection,
    ModbusInputSection,
    TreadguardConfig,
    input_name,
)
from safety.inputs import Sensor

# A wired input is read at least this many times per sensor time-out, so that one lost read
# never makes a sensor stale.
READS_PER_TIMEOUT = 3


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
    seen_lines: dict[tuple[str, str], int] = {}
    serial_settings: dict[str, tuple[int, str, int]] = {}
    timeout = config.safety.sensor_timeout_s
    drive = config.drive
    for i, entry in enumerate(sensors.inputs):
        where = f"sensors.inputs[{i}]"
        name = input_name(entry)
        if name in seen_names:
            problems.append(
                f"{where}.name: {name!r} is already the name of sensors.inputs[{seen_names[name]}]"
                " (give one of them a name of its own)"
            )
        seen_names.setdefault(name, i)
        poll = getattr(entry, "poll_interval_s", None)  # the wired inputs'
        if poll is not None and poll * READS_PER_TIMEOUT > timeout:
            problems.append(
                f"{where}.poll_interval_s: {poll} s reads it fewer than "
                f"{READS_PER_TIMEOUT} times per safety.sensor_timeout_s ({timeout} s)"
            )
        if isinstance(entry, GpioInputSection):
            key = (entry.chip, str(entry.line))
            if key in seen_lines:
                problems.append(
                    f"{where}.line: line {entry.line} of {entry.chip} is already "
                    f"sensors.inputs[{seen_lines[key]}]"
                )
            seen_lines.setdefault(key, i)
        if isinstance(entry, ModbusInputSection):
            if entry.transport == "tcp" and not entry.host:
                problems.append(f"{where}.host: required when transport is 'tcp'")
            if entry.transport == "rtu":
                if not entry.serial_port:
                    problems.append(f"{where}.serial_port: required when transport is 'rtu'")
                    continue
                if (
                    isinstance(drive, ModbusDriveSection)
                    and drive.transport == "rtu"
                    and drive.serial_port == entry.serial_port
                ):
                    problems.append(
                        f"{where}.serial_port: {entry.serial_port} is the drive's RS-485 bus, "
                        "which has one master, the drive's driver: wire the sensors to an I/O "
                        "module on a bus of its own, or read the drive's inputs over Modbus TCP"
                    )
                settings = (entry.baud, entry.parity, i)
                earlier = serial_settings.setdefault(entry.serial_port, settings)
                if earlier[:2] != settings[:2]:
                    problems.append(
                        f"{where}.baud: {entry.serial_port} is read at {earlier[0]} baud, parity "
                        f"{earlier[1]} by sensors.inputs[{earlier[2]}]; one bus has one setting"
                    )
    return problems
