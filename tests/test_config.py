"""`treadguard check-config` and the program validator (SR-1, SR-7, SR-15).

The CLI is run as a real subprocess, the way a clinic's installer would run it. Bad files are
written under tmp_path; each test changes one thing in an otherwise valid file, so the error
it sees is the one it caused.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from treadguard.config.loading import (
    ConfigError,
    ProgramError,
    environment_problems,
    load_config,
    load_program,
    load_programs,
)
from treadguard.config.schema import (
    ControlSection,
    GpioInputSection,
    ModbusDriveSection,
    ModbusInputSection,
    MqttSection,
    SimulatedDriveSection,
    TrackmasterDriveSection,
)
from treadguard.safety.limits import SafetyLimits
from treadguard.safety.programs import ProgramKind

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
PROGRAMS_DIR = CONFIG_DIR / "programs"
REGISTER_MAP = CONFIG_DIR / "drives" / "delta-vfd-e.toml"

# docs/requirements.md, "The programs": hard limits of belt-moving time per session.
FIRST_SESSION_HARD_CAP_S = 5 * 60
LATER_SESSION_HARD_CAP_S = 8 * 60
MAX_INTERVALS = 10
INTERVAL_S = 60
# SR-1: the band.
BAND_MPH = (0.8, 1.2)

# An "error line" of check-config: two spaces, a field path, a colon, the message.
PROBLEM = re.compile(r"^  (?P<path>[A-Za-z0-9_.\[\]()-]+): (?P<msg>.+)$")


def _treadguard_cmd() -> list[str]:
    # Not the venv's treadguard script: an editable install maps its imports to the tree it was
    # installed from, which need not be this one. -m with cwd=ROOT runs the code under test.
    return [sys.executable, "-m", "treadguard.controller.cli"]


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_treadguard_cmd(), "check-config", str(path)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def problems(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Field path -> message for every error line printed."""
    found: dict[str, str] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        match = PROBLEM.match(line)
        if match:
            found[match["path"]] = match["msg"]
    return found


class SectionText(TypedDict, total=False):
    """The text of sections of :func:`valid_config` a test changes."""

    safety: str
    drive: str


class ConfigText(SectionText, total=False):
    """... and what follows them."""

    extra: str


def valid_config(
    *,
    safety: str = "",
    drive: str = 'kind = "simulator"',
    programs_dir: Path = PROGRAMS_DIR,
    extra: str = "",
) -> str:
    """A complete, valid configuration (paths absolute, so it works from tmp_path)."""
    return (
        f'[treadmill]\nid = "tm-test"\n\n'
        f"[safety]\n{safety}\n\n"
        f"[programs]\ndir = '{programs_dir.as_posix()}'\n\n"
        f"[drive]\n{drive}\n\n"
        f"{extra}\n"
    )


def write(tmp_path: Path, text: str, name: str = "treadguard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_refused(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ok" not in proc.stdout.split()
    found = problems(proc)
    assert found, f"no 'field: message' lines in:\n{proc.stdout}{proc.stderr}"
    return found


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize(
    "name",
    ["sim.toml", "example-trackmaster.toml", "example-modbus.toml", "example-wired-sensors.toml"],
)
def test_shipped_configs_are_ok(name: str) -> None:
    proc = check_config(CONFIG_DIR / name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_base_file_of_these_tests_is_valid(tmp_path: Path) -> None:
    proc = check_config(write(tmp_path, valid_config()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


def test_stricter_than_the_defaults_is_accepted(tmp_path: Path) -> None:
    """docs/requirements.md: configuration may make a limit stricter."""
    safety = "max_mph = 1.0\naccel_mph_s = 0.1\ngrip_debounce_s = 0.1\nsensor_timeout_s = 0.3"
    proc = check_config(write(tmp_path, valid_config(safety=safety)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text_change", "field", "meant"),
    [
        ({"safety": "max_speed = 1.0"}, "safety.max_speed", "max_mph"),
        ({"drive": 'kind = "simulator"\nlag = 0.1'}, "drive.lag", "lag_s"),
        ({"extra": "[sensor]\nsource = 'simulator'"}, "sensor", "sensors"),
        ({"extra": "[mqtt]\nprot = 1883"}, "mqtt.prot", "port"),
    ],
)
def test_sr15_unknown_key_names_its_field_and_the_key_it_was_meant_to_be(
    tmp_path: Path, text_change: ConfigText, field: str, meant: str
) -> None:
    proc = check_config(write(tmp_path, valid_config(**text_change)))
    found = assert_refused(proc)
    assert field in found, found
    assert found[field].startswith(
        f'not a setting here (did you mean "{meant}"?); this table has: '
    )
    assert meant in found[field].partition("this table has: ")[2].split(", ")


def test_an_unknown_key_far_from_any_gets_the_table_s_keys_and_no_guess(tmp_path: Path) -> None:
    proc = check_config(write(tmp_path, valid_config(extra="[mqtt]\nzzzzqqq = 1")))
    found = assert_refused(proc)
    assert "did you mean" not in found["mqtt.zzzzqqq"]
    assert "host, keepalive_s" in found["mqtt.zzzzqqq"]


def test_a_kind_that_is_not_one_names_the_kinds(tmp_path: Path) -> None:
    proc = check_config(write(tmp_path, valid_config(drive='kind = "trackmastr"')))
    found = assert_refused(proc)
    assert found["drive.kind"] == (
        '"trackmastr" is not a kind; one of simulator, trackmaster, modbus'
        ' (did you mean "trackmaster"?)'
    )


def test_a_sensor_input_without_its_kind_names_the_kinds(tmp_path: Path) -> None:
    text = valid_config(extra="[[sensors.inputs]]\nreading = 'grip_left'")
    found = assert_refused(check_config(write(tmp_path, text)))
    assert found["sensors.inputs.0.kind"] == (
        "missing: say which kind this table is (kind = one of gpio, modbus, mqtt)"
    )


def test_sr1_max_mph_above_hard_limit_names_field_with_pydantic_message(tmp_path: Path) -> None:
    proc = check_config(write(tmp_path, valid_config(safety="max_mph = 1.5")))
    found = assert_refused(proc)
    assert found == {"safety.max_mph": "Input should be less than or equal to 1.2"}


@pytest.mark.parametrize(
    ("setting", "field", "bound"),
    [
        ("min_mph = 0.7", "safety.min_mph", "greater than or equal to 0.8"),  # SR-1
        ("accel_mph_s = 0.25", "safety.accel_mph_s", "less than or equal to 0.2"),  # SR-2
        ("decel_mph_s = 0.5", "safety.decel_mph_s", "less than or equal to 0.4"),  # SR-2
        ("grip_debounce_s = 0.4", "safety.grip_debounce_s", "less than or equal to 0.3"),  # SR-4
        ("sensor_timeout_s = 0.6", "safety.sensor_timeout_s", "less than or equal to 0.5"),  # SR-8
        ("heartbeat_grace_s = 6", "safety.heartbeat_grace_s", "less than or equal to 5"),  # SR-12
    ],
)
def test_sr15_looser_than_hard_limit_is_refused(
    tmp_path: Path, setting: str, field: str, bound: str
) -> None:
    proc = check_config(write(tmp_path, valid_config(safety=setting)))
    found = assert_refused(proc)
    assert list(found) == [field]
    assert bound in found[field]


def test_missing_drive_table(tmp_path: Path) -> None:
    text = f"[treadmill]\nid = \"tm-test\"\n[programs]\ndir = '{PROGRAMS_DIR.as_posix()}'\n"
    found = assert_refused(check_config(write(tmp_path, text)))
    assert found == {"drive": "Field required"}


def test_unknown_drive_kind_names_drive_kind(tmp_path: Path) -> None:
    found = assert_refused(check_config(write(tmp_path, valid_config(drive='kind = "vfd"'))))
    assert found == {"drive.kind": '"vfd" is not a kind; one of simulator, trackmaster, modbus'}


def test_missing_drive_kind_names_drive_kind(tmp_path: Path) -> None:
    found = assert_refused(check_config(write(tmp_path, valid_config(drive="lag_s = 0.1"))))
    assert list(found) == ["drive.kind"]


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, '[treadmill\nid = "tm-test"\n')
    proc = check_config(path)
    found = assert_refused(proc)
    assert list(found) == ["(file)"]
    assert "TOML" in found["(file)"]
    assert str(path) in proc.stdout + proc.stderr


def test_file_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    proc = check_config(path)
    found = assert_refused(proc)
    assert list(found) == ["(file)"]
    assert "cannot read" in found["(file)"]
    assert str(path) in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("program", "hard_s"),
    [
        (
            'name = "too_long_first"\ntitle = "x"\nfirst_session = true\n'
            "cap_s_default = 180\ncap_s_min = 180\ncap_s_max = 301\n",
            FIRST_SESSION_HARD_CAP_S,
        ),
        (
            'name = "too_long_later"\ntitle = "x"\n'
            "cap_s_default = 300\ncap_s_min = 300\ncap_s_max = 481\n",
            LATER_SESSION_HARD_CAP_S,
        ),
        (
            'name = "too_many_intervals"\ntitle = "x"\nkind = "intervals"\n'
            "interval_s = 60\ncap_s_default = 480\ncap_s_min = 480\ncap_s_max = 660\n",
            MAX_INTERVALS * INTERVAL_S,
        ),
    ],
)
def test_sr7_programs_dir_with_program_over_hard_limit(
    tmp_path: Path, program: str, hard_s: int
) -> None:
    programs = tmp_path / "programs"
    programs.mkdir()
    for shipped in PROGRAMS_DIR.glob("*.toml"):
        (programs / shipped.name).write_text(shipped.read_text(encoding="utf-8"))
    (programs / "zz_bad.toml").write_text(program, encoding="utf-8")
    path = write(tmp_path, valid_config(programs_dir=programs))
    found = assert_refused(check_config(path))
    assert list(found) == ["programs.dir"]
    message = found["programs.dir"]
    assert "zz_bad.toml" in message
    assert "cap_s_max" in message
    assert f"{hard_s:g}" in message or f"{float(hard_s)}" in message


def test_the_copied_programs_dir_alone_is_valid(tmp_path: Path) -> None:
    programs = tmp_path / "programs"
    programs.mkdir()
    for shipped in PROGRAMS_DIR.glob("*.toml"):
        (programs / shipped.name).write_text(shipped.read_text(encoding="utf-8"))
    proc = check_config(write(tmp_path, valid_config(programs_dir=programs)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_relative_paths_resolve_from_the_file_folder(tmp_path: Path) -> None:
    """programs.dir = "programs" next to the file: without it, the file is refused."""
    text = valid_config().replace(f"'{PROGRAMS_DIR.as_posix()}'", '"programs"')
    found = assert_refused(check_config(write(tmp_path, text)))
    assert list(found) == ["programs.dir"]


def test_modbus_tcp_without_host(tmp_path: Path) -> None:
    drive = (
        'kind = "modbus"\ntransport = "tcp"\nmph_per_hz = 0.05\n'
        f"register_map = '{REGISTER_MAP.as_posix()}'"
    )
    found = assert_refused(check_config(write(tmp_path, valid_config(drive=drive))))
    assert list(found) == ["drive.host"]
    assert "tcp" in found["drive.host"]


def test_modbus_tcp_with_host_is_ok(tmp_path: Path) -> None:
    drive = (
        'kind = "modbus"\ntransport = "tcp"\nhost = "10.0.0.7"\nmph_per_hz = 0.05\n'
        f"register_map = '{REGISTER_MAP.as_posix()}'"
    )
    proc = check_config(write(tmp_path, valid_config(drive=drive)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_several_schema_errors_are_all_listed(tmp_path: Path) -> None:
    text = (
        '[treadmill]\nid = "bad id with spaces"\n\n'
        "[safety]\nmax_mph = 1.5\nmax_speed = 1.0\n\n"
        "[control]\ntick_hz = 1000\n\n"
        '[drive]\nkind = "simulator"\nlag_s = 5\n'
    )
    proc = check_config(write(tmp_path, text))
    found = assert_refused(proc)
    expected = {
        "treadmill.id",
        "safety.max_mph",
        "safety.max_speed",
        "control.tick_hz",
        "drive.lag_s",
    }
    assert set(found) == expected
    assert f"{len(expected)} error(s)" in proc.stdout + proc.stderr


def test_several_cross_field_errors_are_all_listed(tmp_path: Path) -> None:
    drive = 'kind = "modbus"\ntransport = "tcp"\nmph_per_hz = 0.05\nregister_map = "nowhere.toml"'
    text = valid_config(drive=drive).replace(
        "[programs]\n", '[programs]\ndefault = "no_such_program"\n'
    )
    found = assert_refused(check_config(write(tmp_path, text)))
    assert set(found) == {"drive.host", "drive.register_map", "programs.default"}
    assert "nowhere.toml" in found["drive.register_map"]
    assert "no_such_program" in found["programs.default"]


# --------------------------------------------------------------------------- load_program


def program_file(tmp_path: Path, **fields: object) -> Path:
    base: dict[str, object] = {
        "name": "test_program",
        "title": "Test program",
        "cap_s_default": 180,
        "cap_s_min": 180,
        "cap_s_max": 180,
    }
    base.update(fields)
    lines = []
    for key, value in base.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    path = tmp_path / "program.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("fields", "hard_s"),
    [
        ({"first_session": True}, FIRST_SESSION_HARD_CAP_S),
        ({}, LATER_SESSION_HARD_CAP_S),
        ({"kind": "intervals", "interval_s": INTERVAL_S}, MAX_INTERVALS * INTERVAL_S),
    ],
    ids=["first_session", "later_session", "intervals"],
)
def test_sr7_load_program_accepts_the_hard_limit_and_refuses_beyond(
    tmp_path: Path, fields: dict[str, object], hard_s: int
) -> None:
    at_limit = program_file(
        tmp_path, **fields, cap_s_default=hard_s, cap_s_min=hard_s, cap_s_max=hard_s
    )
    assert load_program(at_limit).cap_s_max == hard_s

    over = program_file(tmp_path, **fields, cap_s_max=hard_s + 1)
    with pytest.raises(ProgramError) as info:
        load_program(over)
    assert "cap_s_max" in str(info.value)
    assert str(over) in str(info.value)


def test_sr7_intervals_at_most_ten_of_the_interval_length(tmp_path: Path) -> None:
    """Ten 30-second intervals are the most a 30 s interval program may allow."""
    fields = {"kind": "intervals", "interval_s": 30, "cap_s_default": 300, "cap_s_min": 300}
    assert load_program(program_file(tmp_path, **fields, cap_s_max=300)).cap_s_max == 300
    with pytest.raises(ProgramError, match="cap_s_max"):
        load_program(program_file(tmp_path, **fields, cap_s_max=301))


def test_sr7_intervals_are_at_most_one_minute(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="interval_s"):
        load_program(
            program_file(
                tmp_path,
                kind="intervals",
                interval_s=61,
                cap_s_default=480,
                cap_s_min=480,
                cap_s_max=600,
            )
        )


@pytest.mark.parametrize(
    "fields",
    [
        {"start_mph": 0.7},
        {"start_mph": 1.3},
        {"min_mph": 1.0, "start_mph": 0.9},
        {"max_mph": 1.0, "start_mph": 1.1},
    ],
)
def test_sr1_start_mph_outside_the_band_is_refused(
    tmp_path: Path, fields: dict[str, object]
) -> None:
    with pytest.raises(ProgramError, match="start_mph"):
        load_program(program_file(tmp_path, **fields))


@pytest.mark.parametrize("fields", [{"max_mph": 1.3}, {"min_mph": 0.7}])
def test_sr1_program_band_outside_hard_band_is_refused(
    tmp_path: Path, fields: dict[str, object]
) -> None:
    (field,) = fields
    with pytest.raises(ProgramError, match=field):
        load_program(program_file(tmp_path, **fields))


def test_shipped_programs_keep_to_the_protocol() -> None:
    programs = load_programs(PROGRAMS_DIR)
    assert set(programs) == {"first_session", "reverse_walking", "intervals"}
    first = programs["first_session"]
    assert first.first_session
    assert first.cap_s_default == 3 * 60
    assert first.cap_s_max <= FIRST_SESSION_HARD_CAP_S
    later = programs["reverse_walking"]
    assert later.cap_s_default == 5 * 60
    assert later.cap_s_max <= LATER_SESSION_HARD_CAP_S
    intervals = programs["intervals"]
    assert intervals.kind is ProgramKind.INTERVALS
    assert intervals.interval_s == INTERVAL_S
    assert intervals.cap_s_max <= MAX_INTERVALS * INTERVAL_S
    for program in programs.values():
        assert BAND_MPH[0] <= program.min_mph <= program.start_mph <= program.max_mph
        assert program.max_mph <= BAND_MPH[1]


# --------------------------------------------------------------------------- MQTT and environment


def test_environment_overrides_the_file_and_is_validated_like_it(tmp_path: Path) -> None:
    """TREADGUARD_<SECTION>__<KEY> wins over the file; a bad value names the field and the
    variable it came from (SR-15)."""
    from treadguard.config.loading import load_config

    path = write(tmp_path, valid_config(extra="[mqtt]\nport = 1883"))
    old = os.environ.get("TREADGUARD_MQTT__PORT")
    try:
        os.environ["TREADGUARD_MQTT__PORT"] = "1884"
        os.environ["TREADGUARD_DRIVE__LAG_S"] = "0.25"
        loaded = load_config(path)
        assert loaded.config.mqtt.port == 1884
        drive = loaded.config.drive
        assert drive.kind == "simulator"
        assert drive.lag_s == 0.25
    finally:
        os.environ.pop("TREADGUARD_DRIVE__LAG_S", None)
        if old is None:
            os.environ.pop("TREADGUARD_MQTT__PORT", None)
        else:
            os.environ["TREADGUARD_MQTT__PORT"] = old

    found = assert_refused(check_config(path, {"TREADGUARD_MQTT__PORT": "70000"}))
    assert "mqtt.port" in found, found
    assert "(from TREADGUARD_MQTT__PORT)" in found["mqtt.port"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("TREADGUARD_MQTT__PROT", 'no setting mqtt.prot (did you mean "port"?)'),
        ("TREADGUARD_MQQT__PORT", "no configuration section 'mqqt' (did you mean \"mqtt\"?)"),
        # One underscore where two belong: it would be ignored, and the port left as it was.
        (
            "TREADGUARD_MQTT_PORT",
            "not a setting; a section and its key are joined by two underscores:"
            " TREADGUARD_MQTT__PORT",
        ),
        (
            "TREADGUARD_STOP_WATCH_MARGIN_PCT",
            "not a setting; a section and its key are joined by two underscores:"
            " TREADGUARD_STOP_WATCH__MARGIN_PCT",
        ),
        # Misspellings of the variables that are not settings, and a setting's without its
        # underscores: each would be ignored.
        *(
            (name, f"not a variable treadguard reads (did you mean {meant}?)")
            for name, meant in (
                ("TREADGUARD_CONFIGS", "TREADGUARD_CONFIG"),
                ("TREADGUARD_CONIFG", "TREADGUARD_CONFIG"),
                ("TREADGUARD_CONFIG_FILE", "TREADGUARD_CONFIG"),
                ("TREADGUARD_TABLET_PASSWD", "TREADGUARD_TABLET_PASSWORD"),
                ("TREADGUARD_MQTTPORT", "TREADGUARD_MQTT__PORT"),
            )
        ),
    ],
)
def test_sr15_misspelt_environment_override_is_an_error(
    tmp_path: Path, name: str, message: str
) -> None:
    found = assert_refused(check_config(write(tmp_path, valid_config()), {name: "1884"}))
    assert found == {name: message}


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_mqtt_password_is_refused(tmp_path: Path, value: str) -> None:
    """An empty TREADGUARD_MQTT__PASSWORD= (a blank line in the environment file) is a slip,
    not a password; from the file too."""
    path = write(tmp_path, valid_config())
    found = assert_refused(check_config(path, {"TREADGUARD_MQTT__PASSWORD": ""}))
    assert found["mqtt.password"].startswith("is empty"), found
    text = valid_config(extra=f'[mqtt]\nusername = "treadguard"\npassword = "{value}"')
    found = assert_refused(check_config(write(tmp_path, text, "file.toml")))
    assert found["mqtt.password"].startswith("is empty"), found


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory"])
def test_a_clinic_timezone_that_names_no_place_is_refused(tmp_path: Path, zone: str) -> None:
    """Names the zone database holds that are no clinic's zone: "localtime" follows the
    board's own setting, which may change under the daemon unseen (the plan's weeks and the
    reports would move with it); the database's defaults and its placeholder."""
    found = assert_refused(
        check_config(write(tmp_path, valid_config(extra=f"[clinic]\ntimezone = '{zone}'")))
    )
    assert found["clinic.timezone"].startswith(f"{zone!r} names no place"), found


@pytest.mark.parametrize("zone", ["Mars/Olympus", "utc", "Europe", "../etc/passwd", "zone.tab"])
def test_a_clinic_timezone_that_is_not_one_names_its_field(tmp_path: Path, zone: str) -> None:
    """The reports' times are in [clinic] timezone: a name zoneinfo does not know (or a folder
    of zones, or a path) is refused by check-config, never found only by the first report."""
    found = assert_refused(
        check_config(write(tmp_path, valid_config(extra=f"[clinic]\ntimezone = '{zone}'")))
    )
    assert found["clinic.timezone"].startswith(f"{zone!r} is not a time zone"), found
    found = assert_refused(
        check_config(write(tmp_path, valid_config()), {"TREADGUARD_CLINIC__TIMEZONE": zone})
    )
    assert "clinic.timezone" in found, found
    good = valid_config(extra="[clinic]\ntimezone = 'Europe/London'")
    proc = check_config(write(tmp_path, good, "good.toml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_environment_variables_that_are_not_settings_are_left_alone(tmp_path: Path) -> None:
    proc = check_config(
        write(tmp_path, valid_config()),
        {"TREADGUARD_HYPOTHESIS_EXAMPLES": "9", "TREADGUARD_CONFIG": "elsewhere.toml"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The variables the repository names to be refused: the misspellings above, and the
# placeholder of a docstring.
REFUSED_ON_PURPOSE = {
    "TREADGUARD_MQTT__PROT",
    "TREADGUARD_MQQT__PORT",
    "TREADGUARD_MQTT_PORT",
    "TREADGUARD_STOP_WATCH_MARGIN_PCT",
    "TREADGUARD_CONFIGS",
    "TREADGUARD_CONIFG",
    "TREADGUARD_CONFIG_FILE",
    "TREADGUARD_TABLET_PASSWD",
    "TREADGUARD_MQTTPORT",
    "TREADGUARD_X__Y",
    "TREADGUARD_MQTT__PORTT",
}


def test_every_variable_the_repository_names_is_read_as_meant() -> None:
    """Each TREADGUARD_* variable named anywhere in the repository (the code reads it, a test
    sets it, a document tells a person to) passes the check that refuses misspelt ones, or is
    one of the misspellings named to be refused: a new variable that the check would take for
    a misspelling fails here, not on a board."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    names: set[str] = set()
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="ignore")
            names |= set(re.findall(r"\bTREADGUARD_[A-Z0-9_]*[A-Z0-9]\b", text))
    assert {"TREADGUARD_CONFIG", "TREADGUARD_HYPOTHESIS_EXAMPLES"} <= names  # the scan works
    refused = {name for name in names if environment_problems({name: "1"})}
    assert refused == REFUSED_ON_PURPOSE


def test_simulated_sensors_are_refused_on_a_real_drive(tmp_path: Path) -> None:
    """Fail closed: a simulated user who always holds on must never stand in for the real
    grip sensors of a real belt (SR-4, SR-8)."""
    drive = 'kind = "trackmaster"\nport = "/dev/ttyUSB0"'
    text = valid_config(drive=drive, extra="[sensors]\nsource = 'simulator'")
    found = assert_refused(check_config(write(tmp_path, text)))
    assert "sensors.source" in found, found
    ok = valid_config(drive=drive, extra="[sensors]\nsource = 'mqtt'")
    assert check_config(write(tmp_path, ok, "ok.toml")).returncode == 0


@pytest.mark.parametrize(
    ("mqtt", "field"),
    [
        ("prefix = 'treadmill/#'", "mqtt.prefix"),
        ("prefix = '/treadmill'", "mqtt.prefix"),
        ("port = 0", "mqtt.port"),
        ("state_period_s = 1.0", "mqtt.state_period_s"),
        ("[mqtt.tls]\nca_file = 'no-such-ca.pem'", "mqtt.tls.ca_file"),
    ],
)
def test_sr15_bad_mqtt_settings_name_their_field(tmp_path: Path, mqtt: str, field: str) -> None:
    found = assert_refused(check_config(write(tmp_path, valid_config(extra=f"[mqtt]\n{mqtt}"))))
    assert field in found, found


# --------------------------------------------------------------------------- check-config = run


def run_gets_past_configuration(path: Path) -> None:
    """What ``treadguard run`` does with a file before it starts any I/O: load it (with the
    checks check-config makes), then build the daemon's parts (the driver, the sensor readers,
    the MQTT link) exactly as the daemon does. Raises whatever run would die of."""
    import asyncio

    from treadguard.controller.daemon import Daemon
    from treadguard.controller.preflight import load_runnable

    loaded = load_runnable(path)
    # The journal goes beside the file, whatever the file says: a test never writes the
    # board's journal folder (/var/lib/treadguard, the default) on the machine it runs on.
    journal = loaded.config.journal.model_copy(update={"path": path.parent / "journal.sqlite"})
    loaded = replace(loaded, config=loaded.config.model_copy(update={"journal": journal}))

    async def assemble() -> None:
        daemon = Daemon(loaded)
        try:
            daemon._assemble()
            try:
                for run in daemon.sensors.build_sources(daemon.clock.time):
                    run.close()  # built, never started
            finally:
                daemon.system.close()
        finally:
            daemon._release_locks()  # as run() does, however it ends

    asyncio.run(assemble())


MODBUS_TCP = (
    f'kind = "modbus"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
    f"register_map = '{REGISTER_MAP.as_posix()}'\nmph_per_hz = 0.05"
)


def journaled(tmp_path: Path) -> str:
    return f"[journal]\npath = '{(tmp_path / 'journal.sqlite').as_posix()}'\n"


def test_sr15_a_drive_poll_interval_check_config_accepts_is_one_run_accepts(
    tmp_path: Path,
) -> None:
    """drive.poll_interval_s = 0.2 on a Modbus VFD: check-config said ok (its bound was 0.25),
    and run died with a traceback (the driver's bound is 0.1, SR-9). Both now read one bound:
    check-config refuses it and names the field."""
    path = write(tmp_path, valid_config(drive=f"{MODBUS_TCP}\npoll_interval_s = 0.2"))
    proc = check_config(path)
    if proc.returncode == 0:
        run_gets_past_configuration(path)  # what an "ok" promises
    found = assert_refused(proc)
    assert "drive.poll_interval_s" in found, found
    ok = write(tmp_path, valid_config(drive=f"{MODBUS_TCP}\npoll_interval_s = 0.1"), "ok.toml")
    assert check_config(ok).returncode == 0
    run_gets_past_configuration(ok)


def test_sr15_run_names_the_field_of_a_problem_found_in_building_never_a_traceback(
    tmp_path: Path,
) -> None:
    """A register map that exists but is not one: check-config used to look only for the
    file, and run died reading it. Both say what is wrong and where; run exits 2."""
    bad_map = tmp_path / "map.toml"
    bad_map.write_text('name = "half a map"\n', encoding="utf-8")
    drive = MODBUS_TCP.replace(REGISTER_MAP.as_posix(), bad_map.as_posix())
    path = write(tmp_path, valid_config(drive=drive, extra=journaled(tmp_path)))
    found = assert_refused(check_config(path))
    assert "drive.register_map" in found, found
    run = subprocess.run(
        [*_treadguard_cmd(), "run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "drive.register_map" in problems(run), run.stderr


def test_sr15_a_vfd_scale_that_cannot_command_the_top_speed_is_refused(tmp_path: Path) -> None:
    """mph_per_hz = 1e-4: 1.2 mph is 12,000 Hz, past the 16-bit frequency register, so the
    driver would refuse every run command (and stop): check-config says so instead of ok."""
    drive = MODBUS_TCP.replace("mph_per_hz = 0.05", "mph_per_hz = 1e-4")
    found = assert_refused(check_config(write(tmp_path, valid_config(drive=drive))))
    assert "drive.mph_per_hz" in found, found
    assert "safety.max_mph" in found["drive.mph_per_hz"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra": '[journal]\npath = "/tmp/journal\\u0000.sqlite"'}, "journal.path"),
        ({"drive": 'kind = "trackmaster"\nport = "/dev/ttyUSB0\\u0000"'}, "drive.port"),
        ({"extra": '[mqtt]\nhost = "broker\\u0000.lan"'}, "mqtt.host"),
    ],
)
def test_sr15_a_name_the_system_cannot_open_is_refused_with_its_field(
    tmp_path: Path, change: ConfigText, field: str
) -> None:
    """A NUL in a file, device or host name: Python raises ValueError where an unopenable
    name would be reported, and check-config (a device path) or run (the journal) died with a
    traceback. It is refused like any bad value."""
    found = assert_refused(check_config(write(tmp_path, valid_config(**change))))
    assert field in found, found
    assert "NUL" in found[field]


# --------------------------------------------------------------------------- hypothesis: every
# configuration check-config accepts is one run gets past configuration with (SR-15)

EXAMPLES = int(
    os.environ.get("TREADGUARD_HYPOTHESIS_EXAMPLES", 500 if os.environ.get("CI") else 150)
)

Tame = Callable[[], bool]  # asked once per field: a value inside the bounds?
WILD = st.floats()  # the whole space: negative, huge, subnormal, NaN, infinities
TEXT = st.text(max_size=12)  # all of Unicode; surrogates cannot be written to the file at all
PORTS = ["/dev/ttyUSB0", "/dev/ttyUSB1"]
NUL = "/dev/tty\x00USB0"  # a name the system cannot open at all


def numbers(model: type[BaseModel], name: str, tame: Tame) -> st.SearchStrategy[object]:
    """A number for ``model.name``: inside the schema's bounds, edges included (``tame()``), or
    mostly near them: the edges and their nearest neighbours on both sides (where check-config
    and a driver could disagree), and now and then anything at all."""
    field = model.model_fields[name]
    lo, hi, integer = -math.inf, math.inf, field.annotation is int
    lo_open = hi_open = False
    for bound in field.metadata:
        if hasattr(bound, "ge") or hasattr(bound, "gt"):
            lo, lo_open = float(getattr(bound, "ge", getattr(bound, "gt", 0))), hasattr(bound, "gt")
        if hasattr(bound, "le") or hasattr(bound, "lt"):
            hi, hi_open = float(getattr(bound, "le", getattr(bound, "lt", 0))), hasattr(bound, "lt")
    if math.isinf(lo):
        lo = 0
    if math.isinf(hi):
        hi, hi_open = 10 * max(lo, 1), False

    def accepted(x: float) -> bool:
        return (lo < x if lo_open else lo <= x) and (x < hi if hi_open else x <= hi)

    if integer:
        edges: list[object] = [int(e) + d for e in (lo, hi) for d in (-1, 0, 1)]
        inside: st.SearchStrategy[object] = st.integers(int(lo) + lo_open, int(hi) - hi_open)
        wild: st.SearchStrategy[object] = st.integers()
    else:
        edges = [x for e in (lo, hi) for x in (math.nextafter(e, -1), e, math.nextafter(e, 2))]
        inside = st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open)
        wild = WILD
    if tame():
        return st.one_of(st.sampled_from([x for x in edges if accepted(x)]), inside)  # type: ignore[arg-type]
    near = st.one_of(st.sampled_from(edges), inside)
    return st.one_of(*[near] * 11, wild)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
    if isinstance(value, int):
        return str(value)
    # A TOML basic string; characters outside the BMP as they are (TOML has no surrogate pairs).
    return json.dumps(value, ensure_ascii=False)


def table(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[object]]) -> str:
    """Each field given or left out (its default), one ``key = value`` line each."""
    lines = []
    for key, values in fields.items():
        if draw(st.booleans()):
            lines.append(f"{key} = {toml_value(draw(values))}")
    return "\n".join(lines)


def mostly(*values: object, bad: tuple[object, ...] = (), tame: Tame) -> st.SearchStrategy[object]:
    """One of ``values``; unless ``tame()``, also one of ``bad`` or now and then any text."""
    if tame():
        return st.sampled_from(values)
    return st.one_of(*[st.sampled_from(values + bad)] * 11, TEXT)


def numeric(
    model: type[BaseModel], *names: str, tame: Tame
) -> dict[str, st.SearchStrategy[object]]:
    return {name: numbers(model, name, tame) for name in names}


@st.composite
def drives(draw: st.DrawFn, register_maps: list[str], tame: Tame) -> str:
    kind = draw(st.sampled_from(["simulator", "trackmaster", "modbus"]))
    fields: dict[str, st.SearchStrategy[object]]
    if kind == "simulator":
        fields = numeric(
            SimulatedDriveSection,
            *["accel_mph_s", "decel_mph_s", "estop_decel_mph_s", "lag_s", "deadman_s", "max_mph"],
            tame=tame,
        )
    elif kind == "trackmaster":
        fields = {
            "port": mostly(*PORTS, bad=(NUL,), tame=tame),
            "baud": mostly(4800, 9600, bad=(19200,), tame=tame),
            **numeric(TrackmasterDriveSection, "poll_interval_s", "ack_timeout_s", tame=tame),
        }
    else:
        transport = draw(st.sampled_from(["rtu", "tcp"]))
        fields = {
            "host": mostly("127.0.0.1", "vfd.lan", bad=("",), tame=tame),
            "serial_port": mostly(*PORTS, bad=(NUL,), tame=tame),
            "baud": mostly(9600, 19200, 38400, bad=(4800,), tame=tame),
            "parity": mostly("N", "E", "O", tame=tame),
            "register_map": st.sampled_from(register_maps[:1] if tame() else register_maps),
            "direction": mostly("forward", "reverse", tame=tame),
            **numeric(
                ModbusDriveSection,
                *["tcp_port", "device_id", "mph_per_hz", "poll_interval_s"],
                tame=tame,
            ),
        }
        # What the file must give: the address the transport needs, the scale, the map.
        needed = ["host" if transport == "tcp" else "serial_port", "mph_per_hz", "register_map"]
        given = "".join(f"{key} = {toml_value(draw(fields.pop(key)))}\n" for key in needed)
        return f'kind = "modbus"\ntransport = "{transport}"\n{given}' + table(draw, fields)
    if kind == "trackmaster":
        port = f"port = {toml_value(draw(fields.pop('port')))}\n"
        return f'kind = "trackmaster"\n{port}' + table(draw, fields)
    return f'kind = "{kind}"\n' + table(draw, fields)


@st.composite
def sensor_input(draw: st.DrawFn, role: str, index: int, tame: Tame) -> str:
    kind = draw(st.sampled_from(["gpio", "modbus", "mqtt"]))
    head = f'[[sensors.inputs]]\nkind = "{kind}"\nrole = "{role}"\n'
    fields: dict[str, st.SearchStrategy[object]] = {
        "name": mostly(f"in{index}", bad=("Bad",), tame=tame)
    }
    if kind == "mqtt":
        return head + table(draw, fields)
    model: type[BaseModel]
    if kind == "gpio":
        model = GpioInputSection
        bias = draw(mostly("pull_up", "pull_down", "as_is", "disabled", tame=tame))
        cut = {"pull_up": "high", "pull_down": "low"}.get(str(bias))
        head += f"bias = {toml_value(bias)}\nline = {toml_value(draw(mostly(index, tame=tame)))}\n"
        fields |= {"chip": mostly("/dev/gpiochip0", "/dev/gpiochip1", bad=(NUL,), tame=tame)}
    else:
        model = ModbusInputSection
        cut = "low"
        transport = draw(st.sampled_from(["rtu", "tcp"]))
        needed = "host" if transport == "tcp" else "serial_port"
        where = draw(
            mostly("127.0.0.1", tame=tame)
            if transport == "tcp"
            else mostly("/dev/ttyUSB2", *PORTS, tame=tame)
        )
        head += f'transport = "{transport}"\n{needed} = {toml_value(where)}\n'
        head += f"address = {toml_value(draw(numbers(model, 'address', tame)))}\n"
        fields |= {
            "baud": mostly(9600, 19200, 115200, tame=tame),
            "parity": mostly("N", "E", tame=tame),
            "table": mostly("discrete_input", "coil", tame=tame),
            **numeric(model, "tcp_port", "device_id", "timeout_s", tame=tame),
        }
    if cut is None:
        cut = draw(st.sampled_from(["high", "low"]))
        head += f'open_circuit = "{cut}"\n'
    # Wired safe, mostly: a cut wire reads as a fall, or as a grip released.
    other = "low" if cut == "high" else "high"
    safe = cut if role == "fall" else other
    head += f"active = {toml_value(draw(mostly(safe, bad=(other,), tame=tame)))}\n"
    fields |= numeric(model, "debounce_ms", "poll_interval_s", tame=tame)
    return head + table(draw, fields)


@st.composite
def configurations(draw: st.DrawFn, folder: str, register_maps: list[str]) -> str:
    # Files inside every bound (many are accepted), files with a field out of bounds now and
    # then (one field is what a disagreement needs), and files with many.
    wild_one_in = draw(st.sampled_from([0, 20, 3]))

    def tame() -> bool:
        return wild_one_in == 0 or draw(st.integers(0, wild_one_in - 1)) != 0

    drive = draw(drives(register_maps, tame))
    sources = ["", 'source = "mqtt"']
    if not tame() or drive.startswith('kind = "simulator"'):
        sources.append('source = "simulator"')
    sensors = draw(st.sampled_from(sources))
    inputs: list[str] = []
    if not sensors and draw(st.booleans()):
        roles = ["grip_left", "grip_right", "fall"]
        roles += draw(st.lists(st.sampled_from(roles), max_size=2))
        inputs = [draw(sensor_input(role, i, tame)) for i, role in enumerate(roles)]
    safety = table(draw, numeric(SafetyLimits, "sensor_timeout_s", "drive_timeout_s", tame=tame))
    mqtt = table(
        draw,
        {
            **numeric(
                MqttSection, "state_period_s", "backoff_max_s", "keepalive_s", "port", tame=tame
            ),
            "client_id": st.just("treadguard-tm-h") if tame() else TEXT,
        },
    )
    control = table(draw, numeric(ControlSection, "tick_hz", tame=tame))
    journal = draw(
        mostly(f"{folder}/journal.sqlite", bad=(f"{folder}/journal\x00.sqlite",), tame=tame)
    )
    return (
        f'[treadmill]\nid = "tm-h"\n\n[control]\n{control}\n\n[safety]\n{safety}\n\n'
        f"[programs]\ndir = '{PROGRAMS_DIR.as_posix()}'\n\n"
        f"[drive]\n{drive}\n\n"
        f"[mqtt]\n{mqtt}\n\n[journal]\npath = {toml_value(journal)}\n\n"
        f"[sensors]\n{sensors}\n\n" + "\n\n".join(inputs) + "\n"
    )


_FOLDER = tempfile.mkdtemp(prefix="treadguard-config-")
_BAD_MAP = Path(_FOLDER) / "half-a-map.toml"
_BAD_MAP.write_text('name = "half a map"\ncommand_word = -1\n', encoding="utf-8")
_MAPS = [REGISTER_MAP.as_posix(), _BAD_MAP.as_posix(), f"{_FOLDER}/no-such-map.toml"]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(text=configurations(_FOLDER, _MAPS))
def test_sr15_every_configuration_check_config_accepts_is_one_run_gets_past(text: str) -> None:
    """Files over every drive kind, the sensor inputs, the bounds and the whole float space:
    check-config either refuses one with its fields, or run gets past configuration with it
    (its driver, sensor readers and MQTT link built the way the daemon builds them)."""
    from treadguard.controller.cli import main

    path = Path(_FOLDER) / "treadguard.toml"
    path.write_text(text, encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["check-config", str(path)])
    event("accepted" if code == 0 else "refused")
    for line in out.getvalue().splitlines()[1:]:
        event(line.split(":")[0])
    if code == 0:
        note(text)
        run_gets_past_configuration(path)
    else:
        assert code == 2, out.getvalue()
        assert problems(subprocess.CompletedProcess([], code, out.getvalue(), "")), out.getvalue()


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_setting_from_the_environment_that_is_no_utf8_is_refused_naming_it(
    command: str,
) -> None:
    """The daemon's password in an environment file saved in Latin-1 (caf\\xe9): no broker
    login can carry it, and the daemon ended in a traceback at its first connection while
    check-config said ok. Refused by both, naming the variable and the byte, never the value."""
    sim = ROOT / "config" / "sim.toml"
    argv = [command, str(sim)] if command == "check-config" else [command, "--config", str(sim)]
    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env[b"TREADGUARD_MQTT__PASSWORD"] = b"secret caf\xe9"
    done = subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    said = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 2, said
    assert "Traceback" not in said, said
    assert "TREADGUARD_MQTT__PASSWORD: its value is not UTF-8 text (byte \\xe9)" in said, said
    assert "secret" not in said, said


@pytest.mark.parametrize("host", [" ", "\t", " 127.0.0.1", "127.0.0.1 "])
def test_a_host_with_blanks_at_an_end_is_refused_naming_the_variable(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blanks alone passed for a host (an empty one is refused): the daemon then looked for
    the broker at " " for ever, every start refused for a broker never reached."""
    monkeypatch.setenv("TREADGUARD_MQTT__HOST", host)
    with pytest.raises(ConfigError) as refused:
        load_config(ROOT / "config" / "sim.toml")
    assert any(
        p.startswith("mqtt.host: a device or host name cannot begin or end with blanks")
        and "TREADGUARD_MQTT__HOST" in p
        for p in refused.value.problems
    ), refused.value.problems
