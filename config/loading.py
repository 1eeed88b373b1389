"""Reading a configuration file into a validated :class:`TreadguardConfig` with its programs."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from config.schema import ModbusDriveSection, TreadguardConfig
from safety.programs import Program, ProgramError, load_programs


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


def load_config(path: Path) -> LoadedConfig:
    """Load and check everything the file refers to; raise ConfigError with every problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, [f"(file): cannot read: {exc.strerror or exc}"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"(file): not valid TOML: {exc}"]) from exc
    try:
        config = TreadguardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            path, [f"{_field_path(err)}: {err['msg']}" for err in exc.errors()]
        ) from exc

    problems: list[str] = []
    programs: dict[str, Program] = {}
    loaded = LoadedConfig(path=path, config=config, programs=programs)
    try:
        programs.update(load_programs(loaded.resolve(config.programs.dir)))
    except ProgramError as exc:
        problems.append(f"programs.dir: {exc}")
    if programs and config.programs.default not in programs:
        problems.append(
            f"programs.default: no program named {config.programs.default!r} "
            f"(known: {', '.join(sorted(programs))})"
        )
    for name, program in programs.items():
        lim = config.safety
        if program.max_mph < lim.min_mph or program.min_mph > lim.max_mph:
            problems.append(
                f"programs.{name}: band {program.min_mph}-{program.max_mph} mph does not meet "
                f"safety band {lim.min_mph}-{lim.max_mph} mph"
            )
    drive = config.drive
    if isinstance(drive, ModbusDriveSection):
        if drive.transport == "tcp" and not drive.host:
            problems.append("drive.host: required when transport is 'tcp'")
        if drive.transport == "rtu" and not drive.serial_port:
            problems.append("drive.serial_port: required when transport is 'rtu'")
        if not loaded.resolve(drive.register_map).is_file():
            problems.append(f"drive.register_map: no such file {drive.register_map}")
    if problems:
        raise ConfigError(path, problems)
    return loaded
