"""The journal's syncs on a worker thread (controller/journal_sync.py, SR-14): what a sync
covers, one sync at a time, a failing or overdue sync taken as a failed journal.

The journal is a real file; only its ``sync`` is held back by the test (a disk as slow as the
test needs), and counted. tests/test_journal_slow_disk.py runs the same through the daemon.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from treadguard.controller import journal_sync
from treadguard.controller.journal import Journal, JournalError
from treadguard.controller.journal_sync import JournalSync
from treadguard.safety.decisions import Event, EventType


class HeldDisk(Journal):
    """A journal whose syncs wait until the test lets them go (``release``), and say on which
    thread they ran; ``fail``: the next sync raises as a failing disk's would. Checkpoints
    wait for ``release_checkpoint`` and are counted; ``over_limit`` says the log is past its
    limit."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads: list[int] = []
        self.fail: str | None = None
        self.release_checkpoint = threading.Event()
        self.checkpoint_started = threading.Event()  # set by the first checkpoint's worker
        self.checkpoints = 0
        self.over_limit = False

    def wal_over_limit(self) -> bool:
        return self.over_limit

    def checkpoint(self) -> None:
        self.checkpoints += 1
        self.checkpoint_started.set()
        self.release_checkpoint.wait(10.0)

    def sync(self) -> None:
        self.threads.append(threading.get_ident())
        self.started.release()
        self.release.wait(10.0)
        if self.fail is not None:
            raise JournalError(self.fail)
        super().sync()


def held_journal(path: Path) -> HeldDisk:
    journal = HeldDisk.open(path)
    assert isinstance(journal, HeldDisk)
    return journal


def syncing(tmp_path: Path) -> tuple[HeldDisk, Calls, JournalSync]:
    """A held journal, the calls its JournalSync makes, and the JournalSync."""
    disk = held_journal(tmp_path / "j.sqlite")
    calls = Calls()
    return disk, calls, JournalSync(disk, on_durable=calls.on_durable, on_failure=calls.on_failure)


def event(n: int) -> Event:
    return Event(EventType.RESET, t=float(n), fields={"cleared": "fall"})


async def started(disk: HeldDisk) -> None:
    """Until a sync has begun on the worker (it says so with a semaphore)."""
    await asyncio.to_thread(disk.started.acquire, True, 10.0)


class Calls:
    """What JournalSync calls back, and a wait for a condition on what it has called."""

    def __init__(self) -> None:
        self.durable = 0
        self.failures: list[str] = []
        self._called = asyncio.Event()

    def on_durable(self) -> None:
        self.durable += 1
        self._called.set()

    def on_failure(self, reason: str) -> None:
        self.failures.append(reason)
        self._called.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10.0):
            while not condition():
                await self._called.wait()
                self._called.clear()


@pytest.mark.asyncio
async def test_a_sync_covers_what_was_written_before_it_and_runs_off_the_loop(
    tmp_path: Path,
) -> None:
    disk, calls, sync = syncing(tmp_path)
    disk.record(event(1), 1.0)
    sync.request()
    await started(disk)
    disk.record(event(2), 2.0)  # written while the sync runs: not covered by it
    assert (disk.records, sync.durable) == (2, 0)
    disk.release.set()
    await calls.until(lambda: sync.durable >= 1)
    assert sync.durable == 1
    assert calls.durable == 1
    assert disk.threads
    assert threading.get_ident() not in disk.threads
    sync.request()
    await calls.until(lambda: sync.durable >= 2)
    assert calls.failures == []
    sync.close()
    disk.close()
    # What the syncs covered is in the file for any reader.
    reader = Journal.read_only(tmp_path / "j.sqlite")
    assert [e.type for e in reader.events()] == ["reset", "reset"]
    reader.close()


@pytest.mark.asyncio
async def test_requests_during_a_sync_cost_one_more_sync_not_one_each(tmp_path: Path) -> None:
    disk, calls, sync = syncing(tmp_path)
    disk.record(event(1), 1.0)
    sync.request()
    await started(disk)
    for n in range(2, 12):
        disk.record(event(n), float(n))
        sync.request()
    disk.release.set()
    await calls.until(lambda: sync.durable >= 11)
    assert len(disk.threads) == 2
    assert calls.durable == 2
    sync.close()
    disk.close()


@pytest.mark.asyncio
async def test_a_failing_sync_is_a_failed_journal_and_no_more_syncs_follow(
    tmp_path: Path,
) -> None:
    """The failure goes to on_failure (the daemon latches the journal fault, and only then
    lets out what waited: System.journal_marks); what was not synced is not counted durable."""
    disk, calls, sync = syncing(tmp_path)
    disk.fail = "disk I/O error"
    disk.release.set()
    disk.record(event(1), 1.0)
    sync.request()
    await calls.until(lambda: bool(calls.failures))
    assert calls.failures == ["disk I/O error"]
    assert sync.failed
    assert sync.durable == 0
    assert calls.durable == 0
    sync.request()  # no more syncs
    assert len(disk.threads) == 1
    sync.close()
    disk.close()


@pytest.mark.asyncio
async def test_a_sync_past_its_bound_is_a_failed_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_sync, "SYNC_BOUND_S", 0.05)
    disk, calls, sync = syncing(tmp_path)
    disk.record(event(1), 1.0)
    sync.request()
    await started(disk)
    await calls.until(lambda: bool(calls.failures))
    assert calls.failures == ["a sync of the journal took longer than 0.05 s"]
    assert sync.durable == 0
    # The sync that was given up on ends later: it changes nothing, and close does not wait
    # for one that may never end.
    running = sync._running
    assert running is not None
    sync.close()
    disk.release.set()
    await asyncio.wait([running])
    assert calls.failures == ["a sync of the journal took longer than 0.05 s"]
    disk.close()


def test_sync_makes_committed_records_durable_and_keeps_the_log_within_its_limit(
    tmp_path: Path,
) -> None:
    """commit_written then sync, as the workers do it, on a journal with a small limit, and a
    checkpoint once the log is past it: the log starts again, never far past its bound."""
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path, max_size_mb=2.0)
    limit = journal._wal_limit_bytes
    assert limit > 0
    wal = Path(f"{path}-wal")
    most = 0
    for n in range(1500):
        journal.record(Event(EventType.RESET, t=n, fields={"pad": "x" * 200}), float(n))
        journal.commit_written()
        most = max(most, wal.stat().st_size)
        journal.sync()
        if journal.wal_over_limit():  # as the daemon does it between sessions
            journal.checkpoint()
    journal.commit()
    journal.close()
    # Past the limit by no more than one commit's pages (the sync after it checkpoints).
    assert limit < most <= limit + 16 * 4096, (most, limit)
    reader = Journal.read_only(path)
    assert len(reader.events()) == 1500
    reader.close()


def test_a_journal_opened_through_a_link_syncs_the_log_sqlite_writes(tmp_path: Path) -> None:
    """SQLite keeps the log beside the file a link points to: that log is the one synced
    (one beside the link would not exist, and the sync would make nothing durable)."""
    (tmp_path / "real").mkdir()
    link = tmp_path / "journal.sqlite"
    link.symlink_to(tmp_path / "real" / "j.sqlite")
    journal = Journal.open(link)
    journal.record(event(1), 1.0)
    journal.commit_written()
    journal.sync()
    wal = tmp_path / "real" / "j.sqlite-wal"
    assert journal._wal_fd is not None
    assert os.fstat(journal._wal_fd).st_ino == wal.stat().st_ino
    assert not Path(f"{link}-wal").exists()
    journal.close()


@pytest.mark.asyncio
async def test_a_slow_checkpoint_is_no_sync_past_its_bound_and_waits_for_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint takes several syncs of its own: it runs on its own worker, outside the
    sync's bound, only when the caller says so (between sessions), one at a time; syncs go on
    meanwhile."""
    monkeypatch.setattr(journal_sync, "SYNC_BOUND_S", 0.2)
    disk = held_journal(tmp_path / "j.sqlite")
    disk.over_limit = True
    disk.release.set()
    calls = Calls()
    between_sessions = False
    sync = JournalSync(
        disk,
        on_durable=calls.on_durable,
        on_failure=calls.on_failure,
        may_checkpoint=lambda: between_sessions,
    )
    disk.record(event(1), 1.0)
    sync.request()
    await calls.until(lambda: sync.durable >= 1)
    assert disk.checkpoints == 0  # a session is under way
    between_sessions = True
    for n in range(2, 6):
        disk.record(event(n), float(n))
        sync.request()
        await calls.until(lambda n=n: sync.durable >= n)  # type: ignore[misc]
    # One checkpoint, held far past the sync's bound: syncs went on, and nothing failed.
    # It runs on a worker of its own, which may begin after the syncs that followed it.
    assert await asyncio.to_thread(disk.checkpoint_started.wait, 10.0)
    disk.record(event(6), 6.0)  # and a sync while it is held
    sync.request()
    await calls.until(lambda: sync.durable >= 6)
    assert disk.checkpoints == 1
    await asyncio.sleep(0.3)  # past the bound: a window, not a synchronisation
    assert calls.failures == []
    disk.release_checkpoint.set()
    sync.close()
    disk.close()


@pytest.mark.asyncio
async def test_a_sync_that_ended_in_time_is_not_overdue_when_the_loop_hears_of_it_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop held up (by anything) past the bound while a quick sync's news waits: the
    sync ended in time, so the journal has not failed."""
    monkeypatch.setattr(journal_sync, "SYNC_BOUND_S", 0.2)
    disk, calls, sync = syncing(tmp_path)
    disk.release.set()
    disk.record(event(1), 1.0)
    sync.request()
    await started(disk)
    time.sleep(0.4)  # noqa: ASYNC251 - the loop held up past the bound: what is tested
    await calls.until(lambda: sync.durable >= 1)
    assert calls.failures == []
    sync.close()
    disk.close()
