"""Where the commands look for their configuration when none is named.

The commands that drive or read a real treadmill (run, commission, history, report, backup)
take ``--config``, else ``$TREADGUARD_CONFIG``, else the installed file, and never fall back to
the built-in simulator: a board whose configuration is missing must say so, not run a
simulation that answers the tablet as if it were the treadmill.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_process import ROOT, daemon_config
from treadguard.config.loading import CONFIG_ENV, INSTALLED_CONFIG
from treadguard.controller.journal import Journal
from treadguard.safety.decisions import Event, EventType

COMMANDS = [
    ["run"],
    ["doctor"],
    ["commission"],
    ["commission", "--status"],
    ["history"],
    ["report", "1"],
    ["backup", "copy.sqlite"],
]


def treadguard(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.mark.skipif(INSTALLED_CONFIG.exists(), reason="this machine has an installed treadguard")
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_with_no_configuration_a_command_says_where_it_looked_and_runs_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    done = treadguard(args, tmp_path, clean_env())
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"no file at {INSTALLED_CONFIG}" in done.stderr
    assert "--config FILE" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no journal, no copy, nothing written


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_missing_file_named_by_the_variable_is_said(tmp_path: Path, args: list[str]) -> None:
    named = tmp_path / "elsewhere.toml"
    done = treadguard(args, tmp_path, clean_env(**{CONFIG_ENV: str(named)}))
    assert done.returncode == 2
    assert f"{CONFIG_ENV} names {named}, and there is no file there" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_variable_names_the_configuration(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-env")
    journal = Journal.open(tmp_path / "journal-tm-env.sqlite")
    journal.record(
        Event(
            EventType.SESSION_STARTED,
            0.0,
            {"session_id": "1", "user": "p-env", "program": "first_session", "cap_s": 180},
        ),
        ts=1000.0,
    )
    journal.commit()
    journal.close()
    done = treadguard(["history"], tmp_path, clean_env(**{CONFIG_ENV: str(config)}))
    assert done.returncode == 0, done.stderr
    assert "p-env" in done.stdout
    # --config wins over the variable.
    other = daemon_config(tmp_path, 1883, treadmill_id="tm-other")
    chosen = treadguard(
        ["history", "--config", str(other)], tmp_path, clean_env(**{CONFIG_ENV: str(config)})
    )
    assert "p-env" not in chosen.stdout


@pytest.mark.parametrize("misspelt", ["TREADGUARD_CONFIGS", "TREADGUARD_CONIFG"])
@pytest.mark.parametrize("args", [["history"], ["run"], ["tablet", "heartbeat"]], ids=" ".join)
def test_a_misspelt_variable_is_said_with_its_right_spelling(
    tmp_path: Path, args: list[str], misspelt: str
) -> None:
    """Ignored, it would leave the installed configuration (or, for a tablet, the built-in
    one) in charge of a command meant for another."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-misspelt")
    done = treadguard(args, tmp_path, clean_env(**{misspelt: str(config)}))
    assert done.returncode == 2, done.stdout + done.stderr
    said = f"{misspelt}: not a variable treadguard reads (did you mean {CONFIG_ENV}?)"
    assert said in done.stderr
    assert "Traceback" not in done.stderr
