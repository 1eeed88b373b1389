"""A journal whose file is moved, removed or replaced on disk while the daemon runs (a restore
copied over it, a tidy-up script, a link re-pointed): what the daemon writes after that goes to
a file nobody can name and is lost, and a reader by the name (a history query, the proposal
worker) reads another journal. The daemon takes it as a failed journal (SR-14: the belt stops,
no session starts, the state says so), and no reader on its behalf reads the other file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clinician import STANDSTILL_MPH, clinician, refused
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker
from tests.tablet_queries import tablet_queries
from treadguard.controller.journal import Journal, JournalError, file_identity
from treadguard.safety.decisions import Event, EventType, JsonScalar


def _swap(path: Path, how: str) -> None:
    """Put another file where ``path`` was, as ``how`` says."""
    if how == "removed":
        path.unlink()
        return
    other = path.with_name(f"other-{path.name}")
    if how == "copied in place":  # cp BACKUP journal.sqlite: the same file, its pages rewritten
        shutil.copyfile(path, other)
        with path.open("r+b") as journal:
            journal.write(other.read_bytes())
        return
    if how == "copied over":  # a backup restored with cp over a rename (install -m, rsync)
        shutil.copyfile(path, other)
        os.replace(other, path)
    else:  # "link re-pointed": the configured name is a symbolic link, pointed elsewhere
        shutil.copyfile(path.resolve(), other)
        link = path.with_name(f"link-{path.name}")
        link.symlink_to(other)
        os.replace(link, path)


@pytest.mark.parametrize("how", ["copied over", "removed", "link re-pointed", "copied in place"])
def test_the_journal_says_when_its_name_no_longer_leads_to_it(tmp_path: Path, how: str) -> None:
    real = tmp_path / "real.sqlite"
    path = tmp_path / "journal.sqlite"
    if how == "link re-pointed":
        path.symlink_to(real)
    journal = Journal.open(path, max_size_mb=8, exclusive=True)
    try:
        identity = journal.identity()
        assert identity == file_identity(path)
        assert journal.replaced() is None
        Journal.read_only(path, identity=identity).close()  # the daemon's own file: read
        _swap(path, how)
        why = journal.replaced()
        assert why is not None
        assert "restart treadguard" in why
        if how == "copied in place":
            assert f"{path} was written by another program while treadguard ran" in why
            return
        assert f"{path} is no longer the journal this daemon opened" in why
        gone = r"no longer the journal the daemon writes|no journal at"
        with pytest.raises(JournalError, match=gone):
            Journal.read_only(path, identity=identity)
    finally:
        journal.close()


def test_a_journal_opened_without_the_lock_has_no_identity(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal.open(path, max_size_mb=8).close()
    assert Journal.open(path, max_size_mb=8).identity() is None
    assert Journal.read_only(path).identity() is None
    assert Journal.in_memory().identity() is None


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["copied over", "removed", "copied in place"])
async def test_sr14_a_journal_replaced_under_a_running_session_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, how: str
) -> None:
    """The real daemon, a session running; the journal's file is replaced (or removed): a
    latched journal fault, the belt stops, no start is accepted, and the log says why."""
    tm = f"tm-journal-{how.replace(' ', '-')}"
    daemon = make_daemon(treadmill_id=tm)
    path = broker.workdir / f"journal-{tm}.sqlite"
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        await doc.start_running("u-swap", program="first_session")
        _swap(path, how)
        state = await doc.state(lambda s: s["latched"] is not None, within=5.0)
        assert (state["latched"]["kind"], state["latched"]["cause"]) == ("fault", "journal")
        await doc.until(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=10.0)
        refused(await doc.command("start_session", user="u-next"), "latched")
    said = (
        "was written by another program while treadguard ran"
        if how == "copied in place"
        else "is no longer the journal this daemon opened"
    )
    assert said in daemon.log_text()
    assert daemon.alive()


@pytest.mark.asyncio
async def test_a_history_query_never_reads_a_journal_put_in_the_daemons_place(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Another journal copied over the daemon's, holding a user the daemon's has never seen:
    the history query is refused "unavailable", never answered from the other file."""
    tm = "tm-journal-history"
    make_daemon(treadmill_id=tm)
    path = broker.workdir / f"journal-{tm}.sqlite"
    async with tablet_queries(broker, tm) as ask:
        other = path.with_name("elsewhere.sqlite")
        shutil.copyfile(path, other)
        stranger = Journal.open(other, max_size_mb=8)
        started: dict[str, JsonScalar] = {
            "session_id": "1", "user": "u-stranger", "program": "first_session", "cap_s": 180.0,
        }  # fmt: skip
        stranger.record(Event(EventType.SESSION_STARTED, 0.0, started), 1.0e9)
        stranger.commit()
        stranger.close()
        os.replace(other, path)
        answer = await ask("history", user="u-stranger")
        assert answer["ok"] is False, answer
        assert answer["error"]["code"] == "unavailable"
        assert "no longer the journal the daemon writes" in answer["error"]["message"]


@pytest.mark.asyncio
async def test_a_history_answer_says_why_it_has_no_proposal(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """The configuration file broken on disk while the daemon runs (its proposal worker looks
    at it before each request): the history answer has no proposal, and says why, rather than
    leaving the patient view without one and without a word."""
    tm = "tm-no-proposal"
    daemon = make_daemon(treadmill_id=tm)
    async with tablet_queries(broker, tm) as ask:
        daemon.break_configuration()
        answer = await ask("history", user="u-none")
    assert answer["ok"] is True, answer
    assert "proposal" not in answer
    why = answer["proposal_unavailable"]
    assert f"the configuration ({daemon.config}) cannot be loaded now" in why, why
