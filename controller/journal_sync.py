"""The journal's syncs and checkpoints, off the event loop (SR-14 without holding up SR-2, SR-8,
SR-9).

A sync (fdatasync of SQLite's write-ahead log) takes a millisecond on an idle disk and can take
seconds on a busy SD card. Run on the event loop, it held up everything the loop does: the
drive's polls, the sensors' readings, the tablet's E-STOP; a sync longer than the drive's and
the sensors' time-outs (0.5 s) ended sessions as a lost drive. Here the loop only commits (no
sync: the records are in the page cache, safe from a crash of this process) and a worker
thread syncs; :attr:`JournalSync.durable` says how many of the journal's safety records
(:attr:`Journal.records`) a finished sync covered, and the MQTT link publishes only what is
covered (SR-14: nothing is published or acknowledged before it is on disk).

One sync at a time; a request while one runs is taken up by one more sync right after it, so a
flood of requests costs one sync per sync time, not one each. A sync still under way after
``SYNC_BOUND_S`` is a journal that cannot be written (fail closed, SR-14): the core latches its
journal fault and the belt stops; the tablet, whose state waits for the sync meanwhile, is
held up no longer than that.

Checkpoints (the log copied into the database, so it can start again) run on a second worker,
never inside a sync's bound, and only while the caller says the time is right (the daemon:
between sessions, when nothing is written, so the copy completes and the log starts again).

The workers are daemon threads: a disk call that never returns cannot keep the process from
exiting once the belt is stopped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from treadguard.controller.journal import Journal, JournalError

# The longest one sync (one fdatasync of the log) may take: four times the drive's and the
# sensors' time-outs, which an SD card's slowest moments stay under; longer, and the disk is
# taken as failing.
SYNC_BOUND_S = 2.0
# How long closing waits for a sync or a checkpoint under way (the caller's last commit then
# syncs the rest itself).
CLOSE_WAIT_S = SYNC_BOUND_S


class _Worker:
    """One daemon thread running jobs in turn; each job's outcome is handed back to its
    event loop as an asyncio future."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, Callable[[], Any], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((loop, job, future))
        return future

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            loop, job, future = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = job()
            except BaseException as exc:  # handed to the loop, which decides
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                return  # the loop is closed: nobody waits any more

    def stop(self, wait_s: float) -> None:
        self._jobs.put(None)
        self._thread.join(wait_s)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class JournalSync:
    """Syncs ``journal`` on a worker thread when asked (:meth:`request`), and checkpoints it on
    another once its log has passed its limit and ``may_checkpoint()`` says so.

    ``on_durable`` is called (on the loop) after each sync that covered new records;
    ``on_failure`` with the reason when a commit or a sync fails or a sync overruns its bound,
    after which nothing more is synced (the caller latches the journal fault before it lets
    out what waits: see System.journal_marks). A checkpoint that fails goes to
    ``on_checkpoint_error`` (the log is synced all the same: nothing is lost, it only grows)."""

    def __init__(
        self,
        journal: Journal,
        *,
        on_durable: Callable[[], None],
        on_failure: Callable[[str], None],
        may_checkpoint: Callable[[], bool] = lambda: True,
        on_checkpoint_error: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._journal = journal
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._may_checkpoint = may_checkpoint
        self._on_checkpoint_error = on_checkpoint_error
        self._syncer = _Worker("journal-sync")
        self._checkpointer = _Worker("journal-checkpoint")
        # Records known to be on disk: none yet (the first sync covers any written before).
        self.durable: float = 0
        self._running: asyncio.Future[Any] | None = None
        self._checkpointing: asyncio.Future[Any] | None = None
        self._again = False
        self.failed = False
        self._closed = False

    def request(self) -> None:
        """Commit what is written, here and now (no sync), and have it synced: at once, or
        right after the sync under way. Never blocks on the disk's sync; never raises (a
        failure goes to ``on_failure``)."""
        if self.failed or self._closed:
            return
        try:
            self._journal.commit_written()
        except JournalError as exc:
            self._fail(str(exc))
            return
        if self._running is not None:
            self._again = True
            return
        self._start()

    def _start(self) -> None:
        covers = self._journal.records  # committed just now, so this sync covers them
        ended = threading.Event()

        def sync() -> None:
            try:
                self._journal.sync()
            finally:
                ended.set()  # seen by _overdue even while the loop is behind with its news

        future = self._syncer.submit(sync)
        self._running = future
        overdue = asyncio.get_running_loop().call_later(SYNC_BOUND_S, self._overdue, future, ended)
        future.add_done_callback(lambda done: self._finished(done, covers, overdue))

    def _overdue(self, future: asyncio.Future[Any], ended: threading.Event) -> None:
        # A sync that ended in time, whose news the loop has not read yet (it was held up),
        # is not overdue.
        if self._running is future and not self.failed and not ended.is_set():
            self._fail(f"a sync of the journal took longer than {SYNC_BOUND_S:g} s")

    def _finished(
        self, done: asyncio.Future[Any], covers: int, overdue: asyncio.TimerHandle
    ) -> None:
        overdue.cancel()
        if self._running is done:
            self._running = None
        if done.cancelled() or self.failed or self._closed:
            return  # the loop is closing, or the journal was given up
        exc = done.exception()
        if exc is not None:
            self._fail(str(exc) if isinstance(exc, JournalError) else repr(exc))
            return
        if covers > self.durable:
            self.durable = covers
            self._on_durable()
        self._checkpoint_if_due()
        if self._again:
            self._again = False
            self.request()

    def _checkpoint_if_due(self) -> None:
        if self._checkpointing is not None or not self._journal.wal_over_limit():
            return
        if not self._may_checkpoint():
            return  # asked again after the next sync
        future = self._checkpointer.submit(self._journal.checkpoint)
        self._checkpointing = future
        future.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[Any]) -> None:
        self._checkpointing = None
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            self._on_checkpoint_error(str(exc) if isinstance(exc, JournalError) else repr(exc))

    def _fail(self, reason: str) -> None:
        self.failed = True
        self._on_failure(reason)

    def close(self) -> None:
        """No more syncs or checkpoints: the ones under way are waited for, up to
        CLOSE_WAIT_S each, and the workers go (daemon threads: one stuck in the disk is left
        behind). The caller's last commit (:meth:`Journal.commit`) syncs the rest."""
        self._closed = True
        self._syncer.stop(0.0 if self.failed else CLOSE_WAIT_S)
        self._checkpointer.stop(CLOSE_WAIT_S)
