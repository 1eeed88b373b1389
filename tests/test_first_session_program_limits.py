"""A first-session program's cap is settable from 3 to 5 minutes (SR-7 in docs/requirements.md, the
programs' table): a program file that lets a first session end sooner is refused by
check-config, with the field named, since a session that ran to a shorter cap would count as the
first session had (controller/first_session.py) and open the later programs to the user (SR-7)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from treadguard.config.loading import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_a_first_session_program_whose_cap_may_be_seconds_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config" / "programs", tmp_path / "programs")
    first = tmp_path / "programs" / "first_session.toml"
    text = first.read_text(encoding="utf-8")
    text = text.replace("cap_s_default = 180", "cap_s_default = 5")
    text = text.replace("cap_s_min = 180", "cap_s_min = 5")
    first.write_text(text, encoding="utf-8")
    sim = (ROOT / "config" / "sim.toml").read_text(encoding="utf-8")
    (tmp_path / "sim.toml").write_text(sim, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "sim.toml")
    assert "cap_s_min" in str(refused.value)
