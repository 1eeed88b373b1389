"""The daemon's configuration: one TOML file, validated by pydantic.

Every model forbids unknown keys, so a misspelt setting is an error that names its field rather
than a default silently used. Paths inside the file are relative to the file's own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from safety.limits import SafetyLimits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TreadmillSection(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    description: str = ""


class ControlSection(_Strict):
    tick_hz: float = Field(20.0, ge=10.0, le=100.0)


class ProgramsSection(_Strict):
    dir: Path = Path("programs")
    # Used when a start command names no program and the user has no history.
    default: str = "first_session"


class SimulatedDriveSection(_Strict):
    """The built-in simulated drive: belt physics in-process, no wire."""

    kind: Literal["simulator"]
    accel_mph_s: float = Field(0.5, gt=0.0, le=5.0)
    decel_mph_s: float = Field(0.8, gt=0.0, le=5.0)
    estop_decel_mph_s: float = Field(3.0, gt=0.0, le=20.0)
    lag_s: float = Field(0.15, ge=0.0, le=1.0)
    # The drive's own deadman: no word from the host for this long stops the belt.
    deadman_s: float = Field(0.5, gt=0.0, le=2.0)
    max_mph: float = Field(12.0, gt=0.0)


class TrackmasterDriveSection(_Strict):
    """A Trackmaster (or compatible) treadmill on RS-232."""

    kind: Literal["trackmaster"]
    port: str = Field(min_length=1)
    baud: Literal[4800, 9600] = 4800
    # SR-9: the treadmill's communication-disconnect stop fires after 500 ms of silence.
    poll_interval_s: float = Field(0.1, gt=0.0, le=0.1)
    ack_timeout_s: float = Field(0.2, gt=0.0, le=0.25)


class ModbusDriveSection(_Strict):
    """A variable-frequency drive on Modbus RTU (RS-485) or Modbus TCP."""

    kind: Literal["modbus"]
    transport: Literal["rtu", "tcp"]
    host: str | None = None
    tcp_port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None
    baud: Literal[9600, 19200, 38400] = 19200
    parity: Literal["N", "E", "O"] = "N"
    device_id: int = Field(1, ge=1, le=247)
    register_map: Path = Path("drives/delta-vfd-e.toml")
    mph_per_hz: float = Field(gt=0.0, le=1.0)
    direction: Literal["forward", "reverse"] = "reverse"
    poll_interval_s: float = Field(0.1, gt=0.0, le=0.25)


DriveSection = Annotated[
    SimulatedDriveSection | TrackmasterDriveSection | ModbusDriveSection,
    Field(discriminator="kind"),
]


class SensorsSection(_Strict):
    # Grip (left, right) and fall sensors. Only the simulator's sensors exist so far.
    source: Literal["simulator"] = "simulator"
    # How often the simulated sensors report when nothing changes.
    report_interval_s: float = Field(0.1, gt=0.0, le=0.25)


class LoggingSection(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: human-readable on a terminal, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"


class TreadguardConfig(_Strict):
    treadmill: TreadmillSection
    control: ControlSection = ControlSection()
    safety: SafetyLimits = SafetyLimits()
    programs: ProgramsSection = ProgramsSection()
    drive: DriveSection
    sensors: SensorsSection = SensorsSection()
    logging: LoggingSection = LoggingSection()
