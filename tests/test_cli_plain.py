"""Every message a person sees from the command line is plain.

Each command's ``--help`` has words for every option and no requirement numbers; and every
command, given a bad path or a bad value, says what was wrong and exits non-zero, never with a
traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import ROOT
from treadguard.controller.cli import build_parser
from treadguard.controller.journal import Journal

SIM = str(ROOT / "config" / "sim.toml")


def parsers(
    parser: argparse.ArgumentParser, name: str = "treadguard"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


PARSERS = dict(parsers(build_parser()))


def has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)


def command_of(command: str, args: list[str]) -> str:
    """The command a case runs: ``command``, and each argument after it that names one of its
    sub-commands (``tablet stop``, ``sim-device modbus``)."""
    name = f"treadguard {command}"
    for arg in args:
        if f"{name} {arg}" not in PARSERS:
            break
        name = f"{name} {arg}"
    return name


def test_every_command_is_covered_by_the_bad_input_cases() -> None:
    """Every command a person runs, sub-commands included (each tablet command has options
    and arguments of its own), has a bad-input case."""
    commands = {name for name, parser in PARSERS.items() if not has_subcommands(parser)}
    assert {"treadguard run", "treadguard tablet stop", "treadguard sim-device modbus"} <= commands
    covered = {command_of(command, args) for command, args, _ in BAD_INPUT}
    assert commands <= covered, f"commands without a bad-input case: {commands - covered}"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_says_what_it_does_and_no_requirement_numbers(name: str) -> None:
    parser = PARSERS[name]
    silent = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
        and not action.help
    ]
    assert silent == [], f"{name}: options without help: {silent}"
    text = parser.format_help()
    assert not re.search(r"\bSR-\d", text), f"{name} --help names a requirement number"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


# (command, arguments, what the message must name)
BAD_INPUT: list[tuple[str, list[str], str]] = [
    ("simulate", ["/nonexistent/s.toml"], "/nonexistent/s.toml"),
    ("simulate", ["{tmp}"], "{tmp}"),
    ("simulate", ["{junk}"], "{junk}"),
    ("simulate", ["--speed", "-1", "--realtime", "x.toml"], "--speed"),
    ("simulate", ["--speed", "nan", "--realtime", "x.toml"], "--speed"),
    ("simulate", ["--config", "/nonexistent/c.toml", "{scenario}"], "/nonexistent/c.toml"),
    ("check-config", ["/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("check-config", ["{tmp}"], "{tmp}"),
    ("check-config", ["{junk}"], "not valid TOML"),
    ("check-config", ["{long_prefix_config}"], "mqtt.prefix"),
    ("sim-device", ["modbus", "--tcp", "nohostport"], "HOST:PORT"),
    ("sim-device", ["modbus", "--tcp", "127.0.0.1:99999"], "99999"),
    (
        "sim-device",
        ["modbus", "--tcp", "127.0.0.1:0", "--register-map", "/nonexistent/m.toml"],
        "/nonexistent/m.toml",
    ),
    ("sim-device", ["modbus", "--tcp", "127.0.0.1:0", "--exception-register", "zz"], "zz"),
    ("sim-device", ["modbus", "--tcp", "127.0.0.1:0", "--mph-per-hz", "nan"], "mph-per-hz"),
    ("sim-device", ["trackmaster", "--line-delay-ms", "-5"], "line-delay-ms"),
    ("sim-device", ["trackmaster", "--link", "/nonexistent/dir/tm"], "/nonexistent/dir/tm"),
    ("sim-user", ["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("sim-user", ["--config", SIM, "--tell", "dance"], "dance"),
    ("history", ["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("history", ["--config", "{tmp}"], "{tmp}"),
    # A journal's path that leads to a pipe: something is there, and it is no journal.
    ("history", ["--config", "{fifo_journal_config}"], "not a regular file"),
    ("report", ["abc", "--config", SIM], "abc"),
    # Another script's digit is no session number (an Arabic-Indic three reported session 3).
    ("report", ["\u0663", "--config", "{journal_config}"], "not a session number"),
    ("report", ["1", "--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("report", ["1", "--config", "{empty_journal_config}"], "no journal"),
    # Past SQLite's integers: no session has such a number (it once ended in a traceback).
    (
        "report",
        ["99999999999999999999999", "--config", "{journal_config}"],
        "no session 99999999999999999999999",
    ),
    ("patient", ["ann", "--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("patient", ["ann", "--config", "{empty_journal_config}"], "no journal"),
    ("patient", ["ann", "--config", "{junk}"], "not valid TOML"),
    ("plan", ["ann", "--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("plan", ["ann", "--config", "{empty_journal_config}"], "no journal"),
    ("plan", ["ann", "--config", "{junk}"], "not valid TOML"),
    ("export", ["--config", SIM], "--csv"),
    ("export", ["--csv", "--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("export", ["--csv", "--config", "{empty_journal_config}"], "no journal"),
    ("export", ["--fhir", "--config", "{empty_journal_config}"], "no journal"),
    (
        "backup",
        ["/nonexistent/dir/copy.sqlite", "--config", "{empty_journal_config}"],
        "no journal",
    ),
    ("commission", ["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("commission", ["--status", "--config", "{junk}"], "not valid TOML"),
    ("commission", ["--simulated", "--config", "{trackmaster_config}"], "--simulated"),
    ("run", ["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("doctor", ["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("doctor", ["--wait-s", "0", "--config", SIM], "--wait-s"),
    # A typing slip that would wait for ever.
    ("doctor", ["--wait-s", "1e29", "--config", SIM], "must be at most 60"),
    ("tablet", ["heartbeat", "--timeout", "1e29", "--config", SIM], "must be at most 3600 s"),
    # Nothing typed is no path, and no host (it was the working folder, the configuration's).
    ("backup", ["", "--config", "{journal_config}"], "an empty path"),
    ("tablet", ["heartbeat", "--host", "", "--config", SIM], "an empty host"),
    # A pipe, which would hold the reading up for ever.
    ("check-config", ["{fifo}"], "not a regular file"),
    ("run", ["--config", "{junk}"], "not valid TOML"),
    ("tablet", ["heartbeat", "--port", "70000", "--config", SIM], "70000"),
    ("tablet", ["speed", "nan", "--config", SIM], "nan"),
    ("tablet", ["speed", "fast", "--config", SIM], "fast"),
    ("tablet", ["heartbeat", "--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("tablet", ["start", "--config", SIM], "--user"),
    ("tablet", ["measure", "p-1", "bmi", "22", "--config", SIM], "bmi"),
    ("tablet", ["measure", "p-1", "tug", "slow", "--config", SIM], "slow"),
    ("tablet", ["confirm-first-session", "--config", SIM], "SESSION"),
    ("tablet", ["heartbeat", "--timeout", "-1", "--config", SIM], "-1"),
    ("tablet", ["stop", "--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
    ("tablet", ["estop", "--timeout", "nan", "--config", SIM], "nan"),
    ("tablet", ["reset", "--prefix", "a/#", "--config", SIM], "a/#"),
    # A prefix no MQTT topic can hold (its client refused it with a traceback).
    ("tablet", ["reset", "--prefix", "{long_prefix}", "--config", SIM], "at most 256 characters"),
    ("tablet", ["outcome-before", "1", "--pain", "x", "--config", SIM], "--pain"),
    (
        "tablet",
        ["outcome-after", "1", "--pain", "3", "--exertion", "hard", "--config", SIM],
        "hard",
    ),
    ("tablet", ["commission-confirm", "--ask", "release_left", "--config", SIM], "--step"),
    ("tablet", ["commission-abort", "--config", "{tmp}"], "{tmp}"),
    ("tablet", ["watch", "--for", "-1", "--config", SIM], "--for"),
    ("tablet", ["estop", "--config", ""], "an empty path"),
    # Nothing typed, where a file or folder is named: never the working folder.
    ("export", ["--csv", "--out", "", "--config", "{journal_config}"], "an empty path"),
    ("report", ["1", "--out", "", "--config", "{journal_config}"], "an empty path"),
    ("check-config", [""], "an empty path"),
    ("history", ["--config", ""], "an empty path"),
    # A name longer than a folder may hold, and a place nobody may write (sysfs, root too).
    ("export", ["--csv", "--out", "{long_name}", "--config", "{journal_config}"], "too long"),
    ("export", ["--fhir", "--out", "/sys/x.json", "--config", "{journal_config}"], "/sys/x.json"),
    ("backup", ["{long_name}", "--config", "{journal_config}"], "too long"),
    ("backup", ["/sys/copy.sqlite", "--config", "{journal_config}"], "Permission denied"),
]


@pytest.mark.parametrize(
    ("command", "args", "named"), BAD_INPUT, ids=[" ".join([c, *a]) for c, a, _ in BAD_INPUT]
)
def test_a_bad_path_or_value_is_said_plainly(
    tmp_path: Path, command: str, args: list[str], named: str
) -> None:
    junk = tmp_path / "junk.toml"
    junk.write_bytes(b"\x00\xff not toml [[[")
    scenario = ROOT / "simulator" / "scenarios" / "demo.toml"
    empty = tmp_path / "empty.toml"
    empty.write_text(
        "[treadmill]\nid = 'tm-x'\n[drive]\nkind = 'simulator'\n"
        f"[programs]\ndir = '{(ROOT / 'config' / 'programs').as_posix()}'\n"
        f"[journal]\npath = '{(tmp_path / 'none' / 'journal.sqlite').as_posix()}'\n",
        encoding="utf-8",
    )
    trackmaster = tmp_path / "tm.toml"
    trackmaster.write_text(
        "[treadmill]\nid = 'tm-x'\n[drive]\nkind = 'trackmaster'\nport = '/dev/null'\n"
        f"[programs]\ndir = '{(ROOT / 'config' / 'programs').as_posix()}'\n",
        encoding="utf-8",
    )
    with_journal = tmp_path / "journal.toml"
    with_journal.write_text(
        empty.read_text(encoding="utf-8").replace("/none/", "/journal/"), encoding="utf-8"
    )
    (tmp_path / "journal").mkdir()
    Journal.open(tmp_path / "journal" / "journal.sqlite").close()
    long_prefix = "p" * 70_000  # MQTT's topics hold 65,535 bytes
    long_prefix_config = tmp_path / "long-prefix.toml"
    long_prefix_config.write_text(
        empty.read_text(encoding="utf-8") + f"[mqtt]\nprefix = '{long_prefix}'\n",
        encoding="utf-8",
    )
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    (tmp_path / "piped").mkdir()
    os.mkfifo(tmp_path / "piped" / "journal.sqlite")
    fifo_journal = tmp_path / "fifo-journal.toml"
    fifo_journal.write_text(
        empty.read_text(encoding="utf-8").replace("/none/", "/piped/"), encoding="utf-8"
    )
    fill = {
        "{fifo}": str(fifo),
        "{tmp}": str(tmp_path),
        "{junk}": str(junk),
        "{scenario}": str(scenario),
        "{empty_journal_config}": str(empty),
        "{journal_config}": str(with_journal),
        "{trackmaster_config}": str(trackmaster),
        "{long_prefix}": long_prefix,
        "{long_prefix_config}": str(long_prefix_config),
        "{long_name}": str(tmp_path / ("x" * 300)),
        "{fifo_journal_config}": str(fifo_journal),
    }
    argv = [fill.get(a, a) for a in args]
    done = run(command, *argv, cwd=tmp_path)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said, said
    assert fill.get(named, named) in said, said
    # A destination that cannot be written is said as such: the journal was read.
    assert "the journal belongs to the service" not in said, said


def test_a_reader_that_goes_away_ends_a_command_without_a_traceback() -> None:
    """`treadguard commission --status | head -0`: the pipe closed before the command writes;
    it ends quietly (exit 1), with no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", "commission", "--status",
         "--config", SIM],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader gone
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1, err
    assert "Traceback" not in err, err


# Every command that names a file it was given: a name that is no UTF-8, as a board's files
# may have (copied from a stick written elsewhere).
NOT_UTF8_NAME: list[tuple[str, ...]] = [
    ("check-config", "{bad}"),
    ("simulate", "{bad}"),
    ("history", "--config", "{bad}"),
    ("history", "--config", "{bad_there}"),
    ("report", "1", "--config", "{bad}"),
    ("patient", "ann", "--config", "{bad}"),
    ("plan", "ann", "--config", "{bad}"),
    ("export", "--csv", "--config", "{bad}"),
    ("backup", "{bad_dir}/copy.sqlite", "--config", "{bad_there}"),
    ("commission", "--status", "--config", "{bad}"),
    ("commission", "--status", "--config", "{bad_there}"),
    ("run", "--config", "{bad}"),
    ("doctor", "--config", "{bad}"),
    ("tablet", "heartbeat", "--config", "{bad}"),
]


@pytest.mark.parametrize("argv", NOT_UTF8_NAME, ids=[" ".join(a) for a in NOT_UTF8_NAME])
def test_a_file_name_that_is_no_utf8_is_shown_not_raised(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """With a UTF-8 locale's strict standard output (a board's usual locale), a name that is
    no UTF-8 is written with its bytes escaped, never a traceback half-way through the
    message."""
    folder = os.fsencode(tmp_path)
    # A configuration that loads, in a folder of that name: the journal it names (relative to
    # it, absent) is there too.
    there = folder + b"/odd\xff/there.toml"
    Path(os.fsdecode(there)).parent.mkdir()
    Path(os.fsdecode(there)).write_text(
        "[treadmill]\nid = 'tm-x'\n[drive]\nkind = 'simulator'\n"
        f"[programs]\ndir = '{(ROOT / 'config' / 'programs').as_posix()}'\n"
        "[journal]\npath = 'journal.sqlite'\n",
        encoding="utf-8",
    )
    fill = {
        "{bad}": folder + b"/no\xff.toml",
        "{bad_there}": there,
        "{bad_dir}": folder + b"/none\xfe",
    }
    command = [fill.get(a, os.fsencode(a)) for a in argv]
    done = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"treadguard.controller.cli", *command],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8:strict"},
    )
    said = (done.stdout + done.stderr).decode("utf-8")  # what was written is UTF-8 throughout
    assert done.returncode != 0, said
    assert "Traceback" not in said, said
    assert "\\xff" in said or "\\xfe" in said, said  # the name, its odd byte escaped


# Each file the configuration leads to, made a pipe (mkfifo): reading it would wait for a
# writer for ever, deaf to Ctrl-C and SIGTERM.
PIPE_AT = ["a program file", "the rules beside it", "the rules it names", "a register map"]


@pytest.mark.parametrize("where", PIPE_AT)
def test_a_pipe_where_the_configuration_leads_is_refused_not_waited_on(
    tmp_path: Path, where: str
) -> None:
    programs = tmp_path / "programs"
    shutil.copytree(ROOT / "config" / "programs", programs)
    text = (
        "[treadmill]\nid = 'tm-x'\n[drive]\nkind = 'simulator'\n"
        f"[programs]\ndir = '{programs.as_posix()}'\n"
    )
    if where == "a program file":
        pipe = programs / "zz-pipe.toml"
    elif where == "the rules beside it":
        pipe = tmp_path / "progression.toml"
    elif where == "the rules it names":
        pipe = tmp_path / "rules.toml"
        text += "rules = 'rules.toml'\n"
    else:
        pipe = tmp_path / "map.toml"
        text = text.replace(
            "kind = 'simulator'",
            "kind = 'modbus'\ntransport = 'tcp'\nhost = '127.0.0.1'\nregister_map = 'map.toml'\n"
            "mph_per_hz = 0.05",
        )
    os.mkfifo(pipe)
    config = tmp_path / "tg.toml"
    config.write_text(text, encoding="utf-8")
    done = run("check-config", str(config), cwd=tmp_path)  # within run()'s time-out
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said, said
    assert pipe.name in said, said
    assert "not a regular file" in said or "not point to a file" in said, said


@pytest.mark.parametrize("named", ["{tmp}/tg.tmol", "", "  "])
def test_a_tablet_command_never_falls_back_from_a_configuration_named_by_the_variable(
    tmp_path: Path, named: str
) -> None:
    """TREADGUARD_CONFIG naming a file that is not there (a typing slip), or set empty: a
    tablet's E-STOP must not go to the built-in simulator's treadmill instead, fail there after
    its wait, and never name the slip. It is refused at once, naming the variable's file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADGUARD_")}
    env["TREADGUARD_CONFIG"] = named.replace("{tmp}", str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", "tablet", "estop", "--timeout", "30"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=20,  # refused at once: well within the command's own wait
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "Traceback" not in said, said
    if named.strip():
        assert str(tmp_path / "tg.tmol") in said, said
    else:
        assert "TREADGUARD_CONFIG is set, but empty" in said, said
    assert "tm-sim" not in said, said
