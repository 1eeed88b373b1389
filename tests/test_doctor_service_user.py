"""What the doctor says of a configuration the service's user may not read: every file the
daemon reads (the configuration, the rules, each program file) and every folder on the way,
each named with the fix that lets the user in (a folder needs a+x, a file a+r)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from treadguard.config.loading import load_config
from treadguard.controller.doctor import Verdict, _configuration_unreadable, service_account

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def board_etc() -> Iterator[Path]:
    """A folder as /etc/treadguard is (others may enter it and read its files), with a copy of
    the shipped programs: a pytest folder is closed to other users on the way."""
    folder = Path(tempfile.mkdtemp(prefix="tg-etc-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        shutil.copytree(ROOT / "config" / "programs", folder / "programs")
        (folder / "programs").chmod(0o755)
        for program in (folder / "programs").iterdir():
            program.chmod(0o644)
        config = folder / "treadguard.toml"
        config.write_text(
            "[treadmill]\nid = 'tm-x'\n[drive]\nkind = 'simulator'\n[programs]\ndir = 'programs'\n",
            encoding="utf-8",
        )
        config.chmod(0o644)
        yield folder
    finally:
        shutil.rmtree(folder)


def _judged(folder: Path) -> tuple[str, str] | None:
    nobody = service_account("nobody")
    assert nobody is not None
    check = _configuration_unreadable(load_config(folder / "treadguard.toml"), nobody)
    if check is None:
        return None
    assert check.verdict is Verdict.FAIL, check
    return check.detail, check.fix


def test_an_open_configuration_passes(board_etc: Path) -> None:
    assert _judged(board_etc) is None


def test_a_program_file_the_service_user_may_not_read_is_named(board_etc: Path) -> None:
    """One program file root's alone (0600): the daemon loads every program file, and would
    not start; the doctor had looked at the folder only."""
    closed = board_etc / "programs" / "intervals.toml"
    closed.chmod(0o600)
    judged = _judged(board_etc)
    assert judged is not None
    detail, fix = judged
    assert f"{closed} cannot be read by nobody" in detail, detail
    assert f"sudo chmod a+r {closed}" in fix, fix


def test_a_folder_on_the_way_is_named_with_the_fix_that_opens_it(board_etc: Path) -> None:
    """The configuration's folder closed (0700): chmod a+r on the files would change nothing;
    the fix names the folder, which the user must be let into (a+x)."""
    board_etc.chmod(0o700)
    judged = _judged(board_etc)
    assert judged is not None
    detail, fix = judged
    assert f"{board_etc} cannot be entered by nobody" in detail, detail
    assert f"sudo chmod a+x {board_etc}" in fix, fix
    assert "a+r" not in fix, fix
