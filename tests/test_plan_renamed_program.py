"""A clinic that renames its first-session program (programs are data, docs/plan.md): the
sessions on record under the old name are still first sessions, and a first session stopped
after a few seconds still does not count as one had (SR-7), at the start and in the proposal."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_plan_commands import Desk
from treadguard.config.loading import load_config
from treadguard.safety.decisions import RefusalCode, Refused
from treadguard.safety.inputs import StartSession

ROOT = Path(__file__).resolve().parents[1]


def renamed_clinic(folder: Path) -> Path:
    """config/sim.toml, its programs and the shipped rules, with first_session renamed
    first_session_v2 (the same program otherwise)."""
    shutil.copytree(ROOT / "config" / "programs", folder / "programs")
    old = folder / "programs" / "first_session.toml"
    text = old.read_text(encoding="utf-8").replace(
        'name = "first_session"', 'name = "first_session_v2"'
    )
    (folder / "programs" / "first_session_v2.toml").write_text(text, encoding="utf-8")
    old.unlink()
    rules = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    (folder / "progression.toml").write_text(
        rules.replace('program = "first_session" ', 'program = "first_session_v2" '),
        encoding="utf-8",
    )
    sim = (ROOT / "config" / "sim.toml").read_text(encoding="utf-8")
    config = folder / "sim.toml"
    config.write_text(
        sim.replace('default = "first_session"', 'default = "first_session_v2"'),
        encoding="utf-8",
    )
    return config


def test_a_first_session_of_a_few_seconds_under_a_renamed_program_still_does_not_count(
    tmp_path: Path,
) -> None:
    loaded = load_config(renamed_clinic(tmp_path))  # check-config's own reading: no problem
    assert loaded.rules.first_session.program == "first_session_v2"
    desk = Desk(loaded)
    try:
        # Run before the rename: stopped by the clinician after 3 s of belt time.
        desk.session(1, "p-1", "first_session", "operator_stop", 3.0)
        reply = desk.send(StartSession(desk.loop.time(), "p-1", program="reverse_walking"))
        assert isinstance(reply, Refused), reply
        assert reply.code is RefusalCode.PRECONDITIONS_UNMET
        assert "no first treadmill session on record" in reply.message, reply.message
        assert desk.system.proposal("p-1").program == "first_session_v2"
    finally:
        desk.system.close()
