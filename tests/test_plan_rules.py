"""The clinic's progression rules as a file (config/progression.py, docs/plan.md): the shipped
defaults, the file beside the configuration or the one it names, and a mistake refused by
``check-config`` with the file and the field named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from treadguard.config.loading import SHIPPED_RULES, ConfigError, load_config, load_rules
from treadguard.config.progression import ProgressionRules

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS_DIR = ROOT / "config" / "programs"


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "treadguard.toml"
    path.write_text(
        f'[treadmill]\nid = "tm-rules"\n[drive]\nkind = "simulator"\n'
        f"[programs]\ndir = '{PROGRAMS_DIR.as_posix()}'\n{extra}",
        encoding="utf-8",
    )
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", "check-config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_shipped_file_is_the_defaults_and_says_each_of_them() -> None:
    assert load_rules(SHIPPED_RULES) == ProgressionRules()
    text = SHIPPED_RULES.read_text(encoding="utf-8")
    for key in ("clinician_may_confirm", "pain_rise", "emergency_stop", "from_week", "cap_step_s"):
        assert key in text


def test_a_configuration_without_rules_gets_the_file_beside_it_or_the_shipped_ones(
    tmp_path: Path,
) -> None:
    assert load_config(config(tmp_path)).rules == ProgressionRules()
    (tmp_path / "progression.toml").write_text("[hold]\npain_rise = 3\n", encoding="utf-8")
    assert load_config(config(tmp_path)).rules.hold.pain_rise == 3
    named = tmp_path / "ours.toml"
    named.write_text("[hold]\npain_rise = 4\n", encoding="utf-8")
    loaded = load_config(config(tmp_path, 'rules = "ours.toml"\n'))
    assert loaded.rules.hold.pain_rise == 4


@pytest.mark.parametrize(
    ("rules", "named"),
    [
        ("[hold]\npain_rise = 0\n", "hold.pain_rise: Input should be greater than or equal to 1"),
        ("[hold]\npain_ris = 3\n", 'hold.pain_ris: not a setting here (did you mean "pain_rise"?)'),
        ("[first_session]\nsessions_a_week = [4, 3]\n", "[fewest, most]: 4 is more than 3"),
        (
            '[first_session]\nprogram = "reverse_walking"\n',
            "first_session.program: 'reverse_walking' is not a first-session program",
        ),
        (
            '[[phase]]\nname = "rw"\ntitle = "RW"\nprogram = "walking"\nfrom_week = 1\n'
            "sessions_a_week = [3, 4]\n",
            "phase.0.program: no program named 'walking'",
        ),
        (
            '[[phase]]\nname = "rw"\ntitle = "RW"\nprogram = "reverse_walking"\nfrom_week = 2\n'
            "sessions_a_week = [3, 4]\n",
            "the first phase (rw) begins in week 1",
        ),
        ('[user."p-1"]\nphase = "jogging"\n', "user.p-1.phase: no phase named 'jogging'"),
        (
            '[user."p-1"]\ncap_s = 900\n',
            "user.p-1.cap_s: Input should be less than or equal to 480",
        ),
        ("[hold\n", "not valid TOML"),
    ],
)
def test_a_mistake_in_the_rules_is_refused_with_the_file_and_the_field(
    tmp_path: Path, rules: str, named: str
) -> None:
    (tmp_path / "progression.toml").write_text(rules, encoding="utf-8")
    path = config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    said = str(info.value)
    assert f"programs.rules: {tmp_path / 'progression.toml'}: " in said
    assert named in said
    done = check_config(path)
    assert done.returncode == 2
    assert named in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_a_rules_file_named_and_missing_is_said(tmp_path: Path) -> None:
    done = check_config(config(tmp_path, 'rules = "nowhere.toml"\n'))
    assert done.returncode == 2
    assert f"programs.rules: {tmp_path / 'nowhere.toml'}: cannot read" in done.stdout


@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("p-\u202e210", "user.p-\\u202e210 contains an invisible formatting character (U+202E)"),
        ("p-012\u200b", "user.p-012\\u200b contains an invisible formatting character (U+200B)"),
        ("p-\u00a0012", "user.p-\\u00a0012 contains a space other than the ordinary space"),
    ],
)
def test_a_users_plan_under_a_code_no_user_can_have_is_refused(
    tmp_path: Path, code: str, named: str
) -> None:
    """The contract refuses such a code in every command, so a plan under it would apply to
    nobody, silently: check-config names the file, the code (escaped) and the character."""
    key = json.dumps(code)  # a TOML basic string: the character as a \\uXXXX escape
    (tmp_path / "progression.toml").write_text(
        f'[user.{key}]\nphase = "intervals"\n', encoding="utf-8"
    )
    done = check_config(config(tmp_path))
    assert done.returncode == 2, done
    assert f"programs.rules: {tmp_path / 'progression.toml'}: {named}" in done.stdout
    assert "this plan would be nobody's" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
