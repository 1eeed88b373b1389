"""The daemon's configuration: one TOML file, validated by pydantic.

Every model forbids unknown keys, so a misspelt setting is an error that names its field rather
than a default silently used. Paths inside the file are relative to the file's own folder.

Any setting can be overridden from the environment as ``TREADGUARD_<SECTION>__<KEY>`` (nested
tables with further ``__``), for example ``TREADGUARD_MQTT__PORT=1884``; the environment wins
over the file, and its values are validated exactly like the file's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from treadguard.safety.inputs import Sensor
from treadguard.safety.limits import SafetyLimits
from treadguard.safety.link_limits import (
    DRIVE_MAX_POLL_INTERVAL_S,
    MAX_STATE_PERIOD_S,
    SENSOR_MAX_POLL_INTERVAL_S,
    SENSOR_MAX_REQUEST_TIMEOUT_S,
    TRACKMASTER_ACK_TIMEOUT_S,
    TRACKMASTER_MAX_ACK_TIMEOUT_S,
)

_Text = TypeVar("_Text", str, Path)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_nul(value: _Text) -> _Text:
    # The system cannot open a name with a NUL in it: Python raises ValueError where an
    # unopenable file or port would be reported, so refuse it here, with its field.
    if "\x00" in str(value):
        raise ValueError("a file, device or host name cannot hold a NUL character")
    return value


def _no_blank_ends(value: str) -> str:
    # A device or host name has no blanks at its ends (blanks alone are no name: the daemon
    # would look for " " for ever); a typing slip, said here with its field.
    if value != value.strip():
        raise ValueError("a device or host name cannot begin or end with blanks, nor be blanks")
    return value


# Names of files, devices and hosts: something the system can be asked to open.
FilePath = Annotated[Path, AfterValidator(_no_nul)]
DeviceName = Annotated[
    str, Field(min_length=1), AfterValidator(_no_nul), AfterValidator(_no_blank_ends)
]


class TreadmillSection(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    description: str = ""


class ControlSection(_Strict):
    tick_hz: float = Field(20.0, ge=10.0, le=100.0)


class ProgramsSection(_Strict):
    dir: FilePath = Path("programs")
    # Used when a start command names no program and the user has no history.
    default: str = "first_session"
    # Used when a start command names no program and the journal has a session of the user's.
    returning: str = "reverse_walking"
    # The clinic's progression rules (docs/plan.md), relative to this file. None named:
    # progression.toml beside this file if there is one, else the shipped defaults.
    rules: FilePath | None = None


class JournalSection(_Strict):
    """The session journal (SR-14): SQLite in WAL mode, every write synced before it is
    published. Relative to the configuration file's folder."""

    path: FilePath = Path("/var/lib/treadguard/journal.sqlite")
    # When it is this large it counts as full: the belt stops and no session starts, with the
    # reason, rather than the disk of the whole board filling up.
    max_size_mb: float = Field(512.0, gt=0.0)


class StopWatchSection(_Strict):
    """The stop-quality watch (safety/stop_watch.py): every stop is compared with the
    treadmill's commissioned baseline for its kind; a stop slower by more than ``margin_pct``
    warns, two in a row latch a ``drive_fault``."""

    # Above 100 % (a stop twice as slow as commissioned) the watch would catch too little.
    margin_pct: float = Field(30.0, gt=0.0, le=100.0, allow_inf_nan=False)


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
    # A worn brake: this fraction of every deceleration (controlled and emergency) is lost.
    brake_wear: float = Field(0.0, ge=0.0, lt=1.0)


class TrackmasterDriveSection(_Strict):
    """A Trackmaster (or compatible) treadmill on RS-232."""

    kind: Literal["trackmaster"]
    port: DeviceName
    baud: Literal[4800, 9600] = 4800
    # SR-9: the treadmill's communication-disconnect stop fires after 500 ms of silence.
    poll_interval_s: float = Field(DRIVE_MAX_POLL_INTERVAL_S, gt=0.0, le=DRIVE_MAX_POLL_INTERVAL_S)
    ack_timeout_s: float = Field(
        TRACKMASTER_ACK_TIMEOUT_S, gt=0.0, le=TRACKMASTER_MAX_ACK_TIMEOUT_S
    )


class ModbusDriveSection(_Strict):
    """A variable-frequency drive on Modbus RTU (RS-485) or Modbus TCP."""

    kind: Literal["modbus"]
    transport: Literal["rtu", "tcp"]
    host: DeviceName | None = None
    tcp_port: int = Field(502, ge=1, le=65535)
    serial_port: DeviceName | None = None
    baud: Literal[9600, 19200, 38400] = 19200
    parity: Literal["N", "E", "O"] = "N"
    device_id: int = Field(1, ge=1, le=247)
    register_map: FilePath = Path("drives/delta-vfd-e.toml")
    mph_per_hz: float = Field(gt=0.0, le=1.0)
    direction: Literal["forward", "reverse"] = "reverse"
    # SR-9: the driver's own bound (safety/link_limits.py), not a looser one of the file's.
    poll_interval_s: float = Field(DRIVE_MAX_POLL_INTERVAL_S, gt=0.0, le=DRIVE_MAX_POLL_INTERVAL_S)


DriveSection = Annotated[
    SimulatedDriveSection | TrackmasterDriveSection | ModbusDriveSection,
    Field(discriminator="kind"),
]


SensorName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class _WiredInput(_Strict):
    """A contact wired to an input pin: which reading it gives and how to read its level."""

    role: Sensor
    # Default: the role. Names a second sensor of the same role apart in logs and the state.
    name: SensorName | None = None
    # The electrical level that means "held" (a grip) or "fallen" (a fall sensor). No default:
    # whoever wired it says which, since a wrong guess inverts the sensor.
    active: Literal["high", "low"]
    # The safe reading (held, not fallen) counts only once the level has stayed there this long;
    # the unsafe one counts at once, so a bouncing contact can delay a start, never a stop.
    debounce_ms: float = Field(20.0, ge=0.0, le=100.0)
    # What the input reads with its wire cut. It must be the unsafe reading (check-config
    # refuses otherwise): a grip's cut wire reads "released", a fall sensor's "fallen".
    # GPIO: implied by bias pull_up (high) or pull_down (low), required with an external
    # resistor; Modbus: an open input reads off (low) unless the module says otherwise.
    open_circuit: Literal["high", "low"] | None = None

    def open_circuit_level(self) -> Literal["high", "low"] | None:
        return self.open_circuit


class GpioInputSection(_WiredInput):
    """A line of a GPIO chip, read through libgpiod v2 (``/dev/gpiochipN``)."""

    kind: Literal["gpio"]
    chip: DeviceName = "/dev/gpiochip0"
    # The line's offset on the chip, or its name (e.g. "GPIO17" on a Raspberry Pi).
    line: Annotated[int, Field(ge=0, le=1023)] | Annotated[str, Field(min_length=1)]
    # The pin's own pull resistor; "as_is" or "disabled" with an external one (then say
    # open_circuit). No default: the pull decides what a cut wire reads.
    bias: Literal["as_is", "pull_up", "pull_down", "disabled"]
    # Besides the edge events, the level is read this often: the reading stays fresh (SR-8).
    poll_interval_s: float = Field(0.02, gt=0.0, le=SENSOR_MAX_POLL_INTERVAL_S)

    def pull_level(self) -> Literal["high", "low"] | None:
        """What the pin's own pull makes an open circuit read; None without one."""
        if self.bias == "pull_up":
            return "high"
        if self.bias == "pull_down":
            return "low"
        return None  # as_is or disabled: an external resistor, or none

    def open_circuit_level(self) -> Literal["high", "low"] | None:
        return self.open_circuit if self.open_circuit is not None else self.pull_level()


class ModbusInputSection(_WiredInput):
    """A discrete input or a coil of a Modbus device: an I/O module, or the drive's own
    digital inputs over Modbus TCP."""

    kind: Literal["modbus"]
    transport: Literal["rtu", "tcp"]
    host: DeviceName | None = None
    tcp_port: int = Field(502, ge=1, le=65535)
    serial_port: DeviceName | None = None
    baud: Literal[9600, 19200, 38400, 57600, 115200] = 19200
    parity: Literal["N", "E", "O"] = "N"
    device_id: int = Field(1, ge=1, le=247)
    table: Literal["discrete_input", "coil"] = "discrete_input"
    address: int = Field(ge=0, le=65535)
    # Well inside safety.sensor_timeout_s: one lost answer must not make the sensor stale.
    poll_interval_s: float = Field(0.05, gt=0.0, le=SENSOR_MAX_POLL_INTERVAL_S)
    timeout_s: float = Field(0.1, gt=0.0, le=SENSOR_MAX_REQUEST_TIMEOUT_S)

    def open_circuit_level(self) -> Literal["high", "low"] | None:
        return self.open_circuit or "low"


class MqttInputSection(_Strict):
    """A sensor that publishes ``{"value": bool, "ts": unix s}`` on ``<prefix>/sensors/<name>``
    (a wireless grip sensor, a camera-based fall detector); ``value`` is already the reading
    (true: held, or fallen), and ``ts`` says how fresh it is."""

    kind: Literal["mqtt"]
    role: Sensor
    name: SensorName | None = None


SensorInput = Annotated[
    GpioInputSection | ModbusInputSection | MqttInputSection, Field(discriminator="kind")
]


class SensorsSection(_Strict):
    """Where the grip (left, right) and fall readings come from.

    Either ``source`` for all three at once, or one ``[[sensors.inputs]]`` table per sensor.

    ``source = "mqtt"``: each sensor publishes on ``<prefix>/sensors/grip_left``, ``grip_right``
    and ``fall``. ``"simulator"``: a simulated user who always holds on and never falls; only
    allowed on the simulated drive, since it would blind the daemon on a real belt.

    ``inputs``: GPIO lines, Modbus discrete inputs or coils, and MQTT topics, each with its own
    ``role``. Every role needs at least one. Several inputs of one role are combined, failing
    closed: a grip is held only while all its inputs say so, a fall is signalled when any
    does, and the combined reading is only as fresh as its stalest input.
    """

    source: Literal["simulator", "mqtt"] = "mqtt"
    inputs: tuple[SensorInput, ...] = ()
    # How often the simulated sensors report when nothing changes.
    report_interval_s: float = Field(0.1, gt=0.0, le=0.25)

    def effective_inputs(self) -> tuple[SensorInput, ...]:
        """The inputs to read; ``source = "mqtt"`` stands for one MQTT input per role, and
        ``"simulator"`` for none (the daemon's built-in user)."""
        if self.inputs:
            return self.inputs
        if self.source == "mqtt":
            return tuple(MqttInputSection(kind="mqtt", role=role) for role in Sensor)
        return ()


def input_name(entry: SensorInput) -> str:
    return entry.name if entry.name is not None else entry.role.value


# No wildcards, no leading or trailing "/"; and short: every topic under it must stay within
# MQTT's 65,535 bytes, or the MQTT client refuses to subscribe (a traceback, not a message).
# 256 characters is far more than a prefix needs, and at most 1,024 bytes in UTF-8.
MAX_PREFIX_CHARS = 256
MqttTopicPrefix = Annotated[
    str,
    Field(pattern=r"^[^/#+\s][^#+\s]*[^/#+\s]$|^[^/#+\s]$", max_length=MAX_PREFIX_CHARS),
]


class MqttTlsSection(_Strict):
    """TLS to the broker: the CA that signed its certificate, optionally a client certificate."""

    ca_file: FilePath
    cert_file: FilePath | None = None
    key_file: FilePath | None = None


# Accounts of the shipped broker configuration (config/mosquitto/acl, scripts/install) that
# some other device connects under, and the names docs/mqtt-security.md gives a second one of
# each kind (tablet-tm-01, sensors-tm-02-camera): the exact name, or it and "-" before more.
# The sensors' accounts are sensors-<treadmill id>, so only the family is known here.
DEVICE_ACCOUNTS: tuple[tuple[str, str], ...] = (
    ("tablet", "the clinician's tablet"),
    ("tablet-", "a tablet"),
    ("dashboard", "a clinic dashboard"),
    ("dashboard-", "a clinic dashboard"),
    ("sensors-", "a sensor device"),
    ("treadguard", "a daemon"),
    # A second treadmill's daemon on the same broker (treadguard-tm-02), and its query
    # connection (treadguard-tm-02-queries): docs/mqtt-security.md.
    ("treadguard-", "another treadmill's daemon"),
)


def device_account(name: str) -> str | None:
    """Whose account ``name`` is among DEVICE_ACCOUNTS ("a tablet"); None for none."""
    for account, whose in DEVICE_ACCOUNTS:
        if name == account or (account.endswith("-") and name.startswith(account)):
            return whose
    return None


class MqttSection(_Strict):
    """The broker the tablet contract (docs/tablet-contract.md) is served on."""

    host: DeviceName = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    # Default: treadmill/<treadmill.id>. No wildcards, no leading or trailing "/".
    prefix: MqttTopicPrefix | None = None
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = None
    tls: MqttTlsSection | None = None
    # Default: treadguard-<treadmill.id>; fixed, so the broker replaces a half-open old
    # connection of ours at once instead of firing its Will later. The shipped broker
    # configuration (use_username_as_clientid) takes the user name instead, as fixed.
    client_id: str | None = Field(None, min_length=1, max_length=64)
    # The read-only queries (history, a session's report) come in on a connection of their
    # own, under an account of their own (docs/daemon.md, "Queries"), so that a flood of them
    # never stands in the commands' stream. Default: "<username>-queries"
    # (treadguard-queries), anonymous when the daemon's own account is. Its password is
    # TREADGUARD_MQTT__QUERIES_PASSWORD, in the environment file beside the daemon's. Never an
    # account another connection uses: the daemon's own, a tablet's, a dashboard's, a sensor's.
    queries_username: str | None = Field(None, min_length=1)
    queries_password: SecretStr | None = None
    keepalive_s: int = Field(5, ge=2, le=60)
    # The contract asks for the state at least every 500 ms while the belt moves.
    state_period_s: float = Field(0.25, gt=0.0, le=MAX_STATE_PERIOD_S)
    backoff_max_s: float = Field(5.0, ge=0.5, le=60.0)

    @field_validator("password", "queries_password")
    @classmethod
    def _password_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty password is a slip (an empty TREADGUARD_MQTT__PASSWORD=, a blank line in
        # the environment file), not a password: the broker would refuse it, far from here.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "is empty (or only spaces): give the account's password, or leave it out"
            )
        return value

    @field_validator("queries_username")
    @classmethod
    def _queries_account_of_its_own(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The shipped broker takes each account's user name as its client id and keeps one
        # connection per client id: a second connection under an account already connected
        # knocks the first off, and the two go on replacing each other. Under the daemon's own
        # account its commands went unanswered (an E-STOP for 10 s); under the tablet's, the
        # clinician's tablet was dropped mid-session. (username is checked before this field.)
        if value is None:
            return value
        own = "leave queries_username out for <username>-queries, or name an account of its own"
        if value == info.data.get("username"):
            raise ValueError(
                f"{value!r} is mqtt.username, the daemon's own account: the broker keeps one "
                "connection per account (use_username_as_clientid), so the daemon's command "
                "link and its query connection would keep replacing each other and commands, "
                f"an E-STOP among them, would go unanswered; {own} (docs/mqtt-security.md)"
            )
        if value == f"{info.data.get('username')}-queries":
            return value  # the default's own name: this daemon's query account
        whose = device_account(value)
        if whose is not None:
            raise ValueError(
                f"{value!r} is {whose}'s account: the broker keeps one connection per account "
                "(use_username_as_clientid), so the daemon's query connection would knock "
                f"{whose} off the broker; {own} (docs/mqtt-security.md)"
            )
        return value


class LoggingSection(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: human-readable on a terminal, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"


class CommissioningSection(_Strict):
    """``treadguard commission`` (docs/commissioning.md): a technician proves every stop
    source on the machine before its first patient session and again every ``every_days``;
    until then, and once it has expired, no session starts."""

    # How long a passed commissioning stays current, in days (at most a year).
    every_days: float = Field(90.0, gt=0.0, le=366.0)
    # The belt speed the emergency stops are proven at (the 0.8 mph, the band's
    # bottom); it must lie in the default program's band (checked with the programs).
    proof_mph: float = Field(0.8, gt=0.0, le=3.0)
    # A stop passes when the belt stands still within this long of its trigger: an emergency
    # stop (E-STOP, grips, fall), the drive's deadman (from the link cut; it includes the
    # drive's own communication time-out), the controlled stop at the cap.
    max_emergency_standstill_s: float = Field(2.0, gt=0.0, le=10.0)
    max_deadman_standstill_s: float = Field(4.0, gt=0.0, le=15.0)
    max_controlled_standstill_s: float = Field(8.0, gt=0.0, le=30.0)


# Names the zone database holds that are no clinic's zone: the board's own setting (it may
# change under the daemon, unseen), the database's defaults and its placeholder.
_NO_CLINIC_ZONE = frozenset({"localtime", "posixrules", "Factory"})


class ClinicSection(_Strict):
    """The clinic the treadmill serves, as its reports show it (docs/reports.md)."""

    # The IANA name of the clinic's time zone ("Europe/London", "America/New_York"): the
    # reports and the CSV export give every time in it. The journal keeps UTC either way.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # ValueError: a name that is no zone's ("../etc", "zone.tab"); OSError: a folder
            # of zones ("Europe").
            raise ValueError(
                f'{value!r} is not a time zone: give its IANA name, e.g. "Europe/London" '
                'or "America/New_York" (or "UTC")'
            ) from None
        if value in _NO_CLINIC_ZONE:
            raise ValueError(
                f"{value!r} names no place: give the clinic's IANA zone, e.g. "
                '"Europe/London" or "America/New_York" (or "UTC"); "localtime" would follow '
                "the board's own setting, which the reports and the plan's weeks must not"
            )
        return value

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


ENV_PREFIX = "TREADGUARD_"
ENV_NESTED = "__"


class _FileAndEnvironment(BaseSettings):
    """Settings from one file's tables (as init arguments) and the environment over them."""

    model_config = SettingsConfigDict(
        frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, case_sensitive=False
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment over the file (the file's tables arrive as init arguments); no
        # .env files or secret directories: one file and the environment, nothing hidden.
        return (env_settings, init_settings)


class ConnectionSettings(_FileAndEnvironment):
    """What a tablet command needs of the configuration: the treadmill (its topics) and the
    broker. The file's other tables, and the environment's settings of them, are not read: a
    slip there (a time zone, a drive kind) must not keep a stop or an E-STOP from going out."""

    model_config = SettingsConfigDict(extra="ignore")

    treadmill: TreadmillSection
    mqtt: MqttSection = MqttSection()


class TreadguardConfig(_FileAndEnvironment):
    model_config = SettingsConfigDict(extra="forbid")

    treadmill: TreadmillSection
    control: ControlSection = ControlSection()
    safety: SafetyLimits = SafetyLimits()
    stop_watch: StopWatchSection = StopWatchSection()
    programs: ProgramsSection = ProgramsSection()
    drive: DriveSection
    sensors: SensorsSection = SensorsSection()
    mqtt: MqttSection = MqttSection()
    journal: JournalSection = JournalSection()
    commissioning: CommissioningSection = CommissioningSection()
    clinic: ClinicSection = ClinicSection()
    logging: LoggingSection = LoggingSection()
