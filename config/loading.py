"""Reading a configuration file into a validated :class:`TreadguardConfig` with its programs.

The program files are read here too: ``safety`` only validates a program's data (it does no I/O).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from treadguard.config.progression import ProgressionRules
from treadguard.config.schema import (
    ENV_NESTED,
    ENV_PREFIX,
    ConnectionSettings,
    ModbusDriveSection,
    SimulatedDriveSection,
    TreadguardConfig,
)
from treadguard.config.sensor_checks import sensor_problems
from treadguard.config.suggest import did_you_mean, keys_at, tags_at
from treadguard.drivers.regular_file import NotARegularFile, read_regular_text
from treadguard.safety.programs import Program

# Where an installed treadguard keeps its configuration (scripts/install writes it there), and
# the variable that names another file. Commands that drive or read a real treadmill default to
# these, never to the built-in simulator: a board started without its file must not quietly run
# a simulation and answer the tablet as if it were the treadmill.
INSTALLED_CONFIG = Path("/etc/treadguard/treadguard.toml")
CONFIG_ENV = "TREADGUARD_CONFIG"
# The other variables treadguard reads that are not settings' overrides: the broker passwords of
# the tablet's and the simulated user's accounts (never on a command line, where `ps` shows
# them), and a test's step of the daemon's wall clock (controller/wallclock.py).
TABLET_PASSWORD_ENV = "TREADGUARD_TABLET_PASSWORD"
SIM_USER_PASSWORD_ENV = "TREADGUARD_SIM_USER_PASSWORD"
WALL_STEP_FILE_ENV = "TREADGUARD_TEST_WALL_STEP_FILE"
OTHER_ENV = (CONFIG_ENV, TABLET_PASSWORD_ENV, SIM_USER_PASSWORD_ENV, WALL_STEP_FILE_ENV)


def default_config(environ: Mapping[str, str] | None = None) -> Path:
    """``$TREADGUARD_CONFIG`` if set, else the installed location."""
    named = (os.environ if environ is None else environ).get(CONFIG_ENV, "").strip()
    return Path(named) if named else INSTALLED_CONFIG


def environment_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """The environment's TREADGUARD_* variables that treadguard would not read as meant: a
    misspelt setting (TREADGUARD_MQTT_PORT) or a misspelt TREADGUARD_CONFIG, each with the
    right spelling. load_config refuses them; a command looking for its configuration says
    them first, since a misspelt TREADGUARD_CONFIG is why it looks where it does."""
    return _unknown_env_settings(os.environ if environ is None else environ)


def no_default_config(path: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """What to tell a person whose command found no configuration where it looked by default;
    None when there is a file there."""
    if path.exists():
        return None
    raw = (os.environ if environ is None else environ).get(CONFIG_ENV)
    named = (raw or "").strip()
    unset = "is not set" if raw is None else "is set, but empty"
    where = (
        f"{CONFIG_ENV} names {path}, and there is no file there"
        if named
        else f"no file at {path}, where an installed treadguard keeps it ({CONFIG_ENV} {unset})"
    )
    return (
        f"no configuration: {where}. Name one with --config FILE "
        f"or {CONFIG_ENV}=FILE; on a new board, install treadguard first "
        "(docs/install-raspberry-pi.md); to try it on the built-in simulated treadmill, use "
        "--config config/sim.toml in a checkout, or scripts/run"
    )


class ProgramError(ValueError):
    """A program file that cannot be used; the message names the file and the field."""


_M = TypeVar("_M", bound=BaseModel)


def _load_model(path: Path, model: type[_M], error: type[ValueError], what: str) -> _M:
    """A TOML file validated by ``model``; ``error`` names the file and each field wrong."""
    try:
        data = tomllib.loads(read_regular_text(path))
    except NotARegularFile as exc:
        raise error(f"{path}: not a regular file (a folder, a pipe or a device)") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or what}: {_words(err, model)}"
            for err in exc.errors()
        )
        raise error(f"{path}: {problems}") from exc


def load_program(path: Path) -> Program:
    return _load_model(path, Program, ProgramError, "program")


def load_programs(directory: Path) -> dict[str, Program]:
    """Every ``*.toml`` in ``directory``, keyed by program name. Names must be unique."""
    programs: dict[str, Program] = {}
    for path in sorted(directory.glob("*.toml")):
        program = load_program(path)
        if program.name in programs:
            raise ProgramError(f"{path}: program name {program.name!r} is used twice")
        programs[program.name] = program
    if not programs:
        raise ProgramError(f"{directory}: no program files (*.toml)")
    return programs


# The progression rules a configuration gets when it names none: the shipped defaults.
RULES_FILE = "progression.toml"
SHIPPED_RULES = Path(__file__).parent / RULES_FILE


class RulesError(ValueError):
    """A progression rules file that cannot be used; the message names the file and field."""


def load_rules(path: Path) -> ProgressionRules:
    return _load_model(path, ProgressionRules, RulesError, "rules")


def rules_problems(rules: ProgressionRules, programs: Mapping[str, Program]) -> list[str]:
    """What in the rules does not fit the programs on disk: each problem names its field."""
    problems: list[str] = []
    if programs:
        first = programs.get(rules.first_session.program)
        if first is None:
            problems.append(
                f"first_session.program: no program named {rules.first_session.program!r} "
                f"(known: {', '.join(sorted(programs))})"
            )
        elif not first.first_session:
            problems.append(
                f"first_session.program: {first.name!r} is not a first-session program (its "
                "file does not say first_session = true)"
            )
        for n, phase in enumerate(rules.phase):
            program = programs.get(phase.program)
            if program is None:
                problems.append(
                    f"phase.{n}.program: no program named {phase.program!r} "
                    f"(known: {', '.join(sorted(programs))})"
                )
            elif program.first_session:
                problems.append(
                    f"phase.{n}.program: {program.name!r} is a first-session program; a phase "
                    "comes after the first session"
                )
    return problems


class ConfigError(Exception):
    """A configuration that cannot be used. ``problems`` are "field.path: message" lines."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    config: TreadguardConfig
    programs: dict[str, Program]
    rules: ProgressionRules = field(default_factory=ProgressionRules)
    rules_path: Path | None = None  # the file the rules came from

    def resolve(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.path.parent / relative


_TAG_ERRORS = {"union_tag_invalid", "union_tag_not_found"}


def _field_path(err: ErrorDetails) -> str:
    # Drop pydantic's discriminator tag ("drive.simulator.lag_s" -> "drive.lag_s").
    parts = [str(p) for p in err["loc"]]
    if (
        len(parts) >= 2
        and parts[0] == "drive"
        and parts[1] in {"simulator", "trackmaster", "modbus"}
    ):
        del parts[1]
    # A missing or unknown tag is an error of the tag field itself ("drive" -> "drive.kind").
    if err["type"] in _TAG_ERRORS:
        parts.append(str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
    return ".".join(p for p in parts if p) or "(file)"


def _env_name(field_path: str) -> str:
    return ENV_PREFIX + field_path.replace(".", ENV_NESTED).upper()


def _from_env(field_path: str, environ: Mapping[str, str]) -> str:
    """ " (from TREADGUARD_X__Y)" when the environment set the field (or a table above it)."""
    parts = field_path.split(".")
    for n in range(len(parts), 0, -1):
        name = _env_name(".".join(parts[:n]))
        if any(key.upper() == name for key in environ):
            return f" (from {name})"
    return ""


def _words(err: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """pydantic's message, without the "Value error, " it puts before our validators' own
    words; for a key the table does not have, the key it was probably meant to be."""
    if err["type"] == "extra_forbidden" and root is not None and err["loc"]:
        *table, key = err["loc"]
        known = keys_at(root, table)
        return f"not a setting here{did_you_mean(str(key), known)}; this table has: " + (
            ", ".join(known)
        )
    if err["type"] in _TAG_ERRORS and root is not None:
        ctx = err.get("ctx", {})
        field = str(ctx.get("discriminator", "kind")).strip("'")
        kinds = tags_at(root, err["loc"], field)
        if err["type"] == "union_tag_not_found":
            return f"missing: say which {field} this table is ({field} = one of {', '.join(kinds)})"
        tag = str(ctx.get("tag", ""))
        return f'"{tag}" is not a {field}; one of {", ".join(kinds)}{did_you_mean(tag, kinds)}'
    return err["msg"].removeprefix("Value error, ")


def _known_env_names() -> list[str]:
    """Every variable treadguard reads: OTHER_ENV, and TREADGUARD_<SECTION>__<KEY> for each
    setting of each section."""
    settings = [
        f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}{key.upper()}"
        for section in TreadguardConfig.model_fields
        for key in keys_at(TreadguardConfig, [section])
    ]
    return [*OTHER_ENV, *settings]


def _not_utf8(value: str) -> str | None:
    """The first byte of ``value`` that was no UTF-8 (Python keeps such an environment's
    bytes as lone surrogates, which no broker login or file name can carry), as \\xNN."""
    for c in value:
        if 0xD800 <= ord(c) <= 0xDFFF:
            return f"\\x{ord(c) - 0xDC00:02x}" if ord(c) >= 0xDC80 else f"U+{ord(c):04X}"
    return None


def _unknown_env_settings(environ: Mapping[str, str]) -> list[str]:
    """TREADGUARD_<SECTION>__<KEY> variables that name no setting, and misspellings of the
    other variables treadguard reads (TREADGUARD_CONFIGS): a misspelt variable must not be
    silently ignored, any more than a misspelt key in the file."""
    problems = []
    sections = sorted(TreadguardConfig.model_fields, key=len, reverse=True)
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        odd = _not_utf8(environ[key])
        if odd is not None:
            # (a password among them: its value is never shown, only the first odd byte)
            problems.append(
                f"{key}: its value is not UTF-8 text (byte {odd}): write it again in UTF-8 "
                "(an environment file saved in another encoding, Latin-1 say)"
            )
        if upper in OTHER_ENV:
            continue
        if ENV_NESTED not in upper[len(ENV_PREFIX) :]:
            # TREADGUARD_MQTT_PORT: a section's name, then one underscore where two belong. It
            # would be ignored; said instead.
            bare = upper[len(ENV_PREFIX) :]
            for name in sections:
                head = name.upper() + "_"
                if bare.startswith(head) and len(bare) > len(head):
                    fixed = f"{ENV_PREFIX}{name.upper()}{ENV_NESTED}{bare[len(head) :]}"
                    problems.append(
                        f"{key}: not a setting; a section and its key are joined by two"
                        f" underscores: {fixed}"
                    )
                    break
            else:
                # Close to a variable treadguard reads: that one, misspelt (TREADGUARD_CONIFG
                # would leave the installed file in charge). Others (a test's own, such as
                # TREADGUARD_HYPOTHESIS_EXAMPLES) are not treadguard's, and are left alone.
                # Compared without the prefix all share, which would make any two look alike.
                spelt = {name.removeprefix(ENV_PREFIX): name for name in _known_env_names()}
                close = difflib.get_close_matches(bare, list(spelt), n=1, cutoff=0.6)
                if close:
                    problems.append(
                        f"{key}: not a variable treadguard reads (did you mean {spelt[close[0]]}?)"
                    )
            continue
        section, _, rest = upper[len(ENV_PREFIX) :].partition(ENV_NESTED)
        field = TreadguardConfig.model_fields.get(section.lower())
        if field is None:
            hint = did_you_mean(section, list(TreadguardConfig.model_fields))
            problems.append(f"{key}: no configuration section {section.lower()!r}{hint}")
            continue
        name = rest.partition(ENV_NESTED)[0].lower()
        known = keys_at(TreadguardConfig, [section.lower()])
        if known and name not in known:
            hint = did_you_mean(name, known)
            problems.append(f"{key}: no setting {section.lower()}.{name}{hint}")
    return problems


def _no_file(resolved: Path, named: Path) -> str:
    """Why ``named`` (found at ``resolved``) is no file to read, in words."""
    if os.path.lexists(resolved):
        return f"{named} is not a regular file (a folder, a pipe, a device or a link to nothing)"
    return f"no such file {named}"


@dataclass(frozen=True)
class ConnectionLoaded:
    """The configuration's treadmill and broker, for a tablet command (see load_connection)."""

    path: Path
    config: ConnectionSettings

    def resolve(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.path.parent / relative


CONNECTION_SECTIONS = ("treadmill", "mqtt")


def load_connection(path: Path) -> ConnectionLoaded:
    """The file's [treadmill] and [mqtt] tables with the environment's overrides of them,
    checked as ``load_config`` checks them, and nothing else of the file or the environment:
    for a command that needs only where the broker is and the treadmill's topics. A tablet's
    stop or E-STOP must not wait for a slip elsewhere (a clinic's time zone, a drive's kind, a
    rules file) to be put right."""
    data = _table_of(path)
    env = os.environ
    # Every misspelling said but those of the other tables' settings (a misspelt
    # TREADGUARD_CONFIG is why the command would look at another file).
    others = tuple(
        f"{ENV_PREFIX}{name.upper()}"
        for name in TreadguardConfig.model_fields
        if name not in CONNECTION_SECTIONS
    )
    unknown = [p for p in _unknown_env_settings(env) if not p.upper().startswith(others)]
    if unknown:
        raise ConfigError(path, unknown)
    try:
        config = ConnectionSettings(**{k: v for k, v in data.items() if k in CONNECTION_SECTIONS})
    except ValidationError as exc:
        raise ConfigError(
            path,
            [
                f"{_field_path(err)}: {_words(err, ConnectionSettings)}"
                f"{_from_env(_field_path(err), env)}"
                for err in exc.errors()
            ],
        ) from exc
    return ConnectionLoaded(path, config)


def _table_of(path: Path) -> dict[str, Any]:
    """The file's TOML, read only as a regular file; ConfigError saying why not."""
    try:
        # A pipe or a device would hold the reading up for ever (check-config FIFO).
        return tomllib.loads(read_regular_text(path))
    except NotARegularFile as exc:
        raise ConfigError(
            path, ["(file): not a regular file (a folder, a pipe or a device): name the file"]
        ) from exc
    except OSError as exc:
        raise ConfigError(path, [f"(file): cannot read: {exc.strerror or exc}"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"(file): not valid TOML: {exc}"]) from exc


def _settings(path: Path) -> TreadguardConfig:
    """The file's settings with the environment's overrides; ConfigError with every problem."""
    env = os.environ
    data = _table_of(path)
    unknown = _unknown_env_settings(env)
    if unknown:
        raise ConfigError(path, unknown)
    try:
        # pydantic-settings reads the environment's overrides on top of the file's tables.
        config = TreadguardConfig(**data)
    except ValidationError as exc:
        raise ConfigError(
            path,
            [
                f"{_field_path(err)}: {_words(err, TreadguardConfig)}"
                f"{_from_env(_field_path(err), env)}"
                for err in exc.errors()
            ],
        ) from exc
    return config


def load_config(path: Path) -> LoadedConfig:
    """Load and check everything the file refers to; raise ConfigError with every problem.

    ``TREADGUARD_<SECTION>__<KEY>`` variables of the environment override the file.
    """
    config = _settings(path)
    problems: list[str] = []
    programs: dict[str, Program] = {}
    rules = ProgressionRules()
    named = config.programs.rules
    rules_path = path.parent / (RULES_FILE if named is None else named)
    if named is None and not os.path.lexists(rules_path):
        # None beside it: the shipped defaults. One there that is no file (a pipe, a link to
        # nothing) is read below and said, never passed over for the defaults.
        rules_path = SHIPPED_RULES
    try:
        rules = load_rules(rules_path)
    except RulesError as exc:
        problems.append(f"programs.rules: {exc}")
    loaded = LoadedConfig(
        path=path, config=config, programs=programs, rules=rules, rules_path=rules_path
    )
    try:
        programs.update(load_programs(loaded.resolve(config.programs.dir)))
    except ProgramError as exc:
        problems.append(f"programs.dir: {exc}")
    problems.extend(f"programs.rules: {rules_path}: {p}" for p in rules_problems(rules, programs))
    for key in ("default", "returning"):
        name = getattr(config.programs, key)
        if programs and name not in programs:
            problems.append(
                f"programs.{key}: no program named {name!r} (known: {', '.join(sorted(programs))})"
            )
    for name, program in programs.items():
        lim = config.safety
        if program.max_mph < lim.min_mph or program.min_mph > lim.max_mph:
            problems.append(
                f"programs.{name}: band {program.min_mph}-{program.max_mph} mph does not meet "
                f"safety band {lim.min_mph}-{lim.max_mph} mph"
            )
    proof = programs.get(config.programs.default)
    if proof is not None:
        # The commissioning's proof runs use the default program at commissioning.proof_mph.
        lo, hi = proof.band_within(config.safety)
        mph = config.commissioning.proof_mph
        if not lo <= mph <= hi:
            problems.append(
                f"commissioning.proof_mph: {mph:g} mph is outside the band {lo:g}-{hi:g} mph "
                f"of the default program ({proof.name}), where the stops are proven"
            )
    drive = config.drive
    if config.sensors.source == "simulator" and not isinstance(drive, SimulatedDriveSection):
        problems.append(
            "sensors.source: 'simulator' is only for drive.kind 'simulator': a simulated user "
            "who always holds on would hide a real user letting go (use 'mqtt')"
        )
    problems.extend(sensor_problems(config))
    tls = config.mqtt.tls
    if tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            file = getattr(tls, name)
            if file is not None and not loaded.resolve(file).is_file():
                problems.append(f"mqtt.tls.{name}: {_no_file(loaded.resolve(file), file)}")
        if tls.key_file is not None and tls.cert_file is None:
            problems.append("mqtt.tls.key_file: given without mqtt.tls.cert_file")
    if isinstance(drive, ModbusDriveSection):
        if drive.transport == "tcp" and not drive.host:
            problems.append("drive.host: required when transport is 'tcp'")
        if drive.transport == "rtu" and not drive.serial_port:
            problems.append("drive.serial_port: required when transport is 'rtu'")
        if not loaded.resolve(drive.register_map).is_file():
            where = loaded.resolve(drive.register_map)
            problems.append(f"drive.register_map: {_no_file(where, drive.register_map)}")
    if problems:
        raise ConfigError(path, problems)
    return loaded
