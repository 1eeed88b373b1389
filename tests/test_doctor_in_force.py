"""The broker's files put back from a copy while it runs: a folder of them swapped with mv
keeps its files' old change times, so the change-time check passes what the broker no longer
runs. The installer's record of what it last restarted the broker with (scripts/install,
``/var/lib/treadguard-install/mosquitto-in-force``) says what it does run, by content."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import (
    FILES_SETTLE_S,
    MOSQUITTO,
    free_port,
    have_mosquitto,
    stay_root,
    wait_listening,
)
from treadguard.controller.broker_config import read_mosquitto_conf
from treadguard.controller.doctor import (
    Verdict,
    _changed_since_start,
    _not_in_force,
    _process_started,
)

STRICT = "user tablet\ntopic write treadmill/+/cmd\n"
OPEN = "pattern readwrite #\n"  # an older ACL: every account may command every treadmill


def written(folder: Path, acl: str, port: int, at: Path) -> Path:
    """A folder shaped as /etc/mosquitto, to be found at ``at``: the configuration, its ACL,
    and a file it does not read (so the folder's own change time is not judged)."""
    folder.mkdir()
    (folder / "acl").write_text(acl)
    (folder / "README").write_text("the board's broker\n")
    conf = folder / "mosquitto.conf"
    conf.write_text(
        stay_root()  # as the test's other brokers: its folder is the test's, private
        + f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {at / 'acl'}\n"
    )
    return conf


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    if not have_mosquitto():
        pytest.fail("mosquitto is not installed: scripts/test installs it")
    port = free_port()
    etc = tmp_path / "etc-mosquitto"
    # The copy kept from before, made before the broker started: its files' times are old.
    written(tmp_path / "backup", OPEN, port, etc)
    conf = written(etc, STRICT, port, etc)
    time.sleep(FILES_SETTLE_S)  # the files older than the broker's start, past the doctor's tick
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc, [port], lambda: "mosquitto exited")
        # As the installer writes it, right after the restart.
        record = tmp_path / "mosquitto-in-force"
        record.write_text(
            "".join(
                f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f}\n" for f in (conf, etc / "acl")
            )
        )
        yield proc, etc, record
    finally:
        proc.kill()
        proc.wait()


def test_a_folder_put_back_from_a_copy_is_not_what_the_broker_runs(
    tmp_path: Path, running: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    proc, etc, record = running
    who = f"mosquitto (pid {proc.pid})"
    assert _not_in_force(proc.pid, who, record) == []  # as restarted: nothing to say
    (etc).rename(tmp_path / "etc-mosquitto.strict")
    (tmp_path / "backup").rename(etc)
    # The change times say nothing: the files put back are older than the broker.
    conf = read_mosquitto_conf(etc / "mosquitto.conf")
    assert _changed_since_start(proc.pid, who, conf, str(tmp_path)) == []
    found = _not_in_force(proc.pid, who, record)
    assert len(found) == 1, found
    assert found[0].verdict is Verdict.TODO
    assert f"{etc / 'acl'} is not what the installer last restarted {who} with" in found[0].detail
    assert "sudo systemctl restart mosquitto" in found[0].fix


def test_a_broker_restarted_since_the_record_is_not_judged_by_it(
    running: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    """Restarted by anyone after the installer wrote its record, the broker runs what the
    files held then; the record no longer says what it runs (the change-time check does)."""
    proc, etc, record = running
    (etc / "acl").write_text(OPEN)
    assert len(_not_in_force(proc.pid, "mosquitto", record)) == 1
    started = _process_started(proc.pid)
    assert started is not None
    os.utime(record, (started - 1.0, started - 1.0))  # the record older than this start
    assert _not_in_force(proc.pid, "mosquitto", record) == []
