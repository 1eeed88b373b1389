"""The journal's syncs, off the event loop (SR-14 without holding up SR-2, SR-8, SR-9).

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
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from treadguard.controller.journal import Journal, JournalError

# The longest a sync may take: four times the drive's and the sensors' time-outs, which an SD
# card's slowest moments stay under; longer, and the disk is taken as failing.
SYNC_BOUND_S = 2.0


class JournalSync:
    """Syncs ``journal`` on a worker thread when asked (:meth:`request`).

    ``on_durable`` is called (on the loop) after each sync that covered new records;
    ``on_failure`` with the reason when a commit or a sync fails, after which nothing more
    is synced and :attr:`durable` is infinite: nothing can be made durable any more, and the
    latched journal fault that the failure brings must still reach the tablet."""

    def __init__(
        self,
        journal: Journal,
        *,
        on_durable: Callable[[], None],
        on_failure: Callable[[str], None],
    ) -> None:
        self._journal = journal
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-sync")
        # Records known to be on disk: none yet (the first sync covers any written before).
        self.durable: float = 0
        self._running: asyncio.Future[None] | None = None
        self._again = False
        self.failed = False
        self._closed = False

    def written(self) -> int:
        """The safety records written so far."""
        return self._journal.records

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
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._journal.sync)
        self._running = future
        overdue = loop.call_later(SYNC_BOUND_S, self._overdue, future)
        future.add_done_callback(lambda done: self._finished(done, covers, overdue))

    def _overdue(self, future: asyncio.Future[None]) -> None:
        if self._running is future and not self.failed:
            self._fail(f"a sync of the journal took longer than {SYNC_BOUND_S:g} s")

    def _finished(
        self, done: asyncio.Future[None], covers: int, overdue: asyncio.TimerHandle
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
        if self._again:
            self._again = False
            self.request()

    def _fail(self, reason: str) -> None:
        self.failed = True
        self.durable = math.inf
        self._on_failure(reason)
        self._on_durable()

    def close(self) -> None:
        """No more syncs: the one under way is waited for (unless the journal was given up
        on: a sync past its bound may never end), and the worker goes. The caller's last
        commit (:meth:`Journal.commit`) syncs the rest."""
        self._closed = True
        self._pool.shutdown(wait=not self.failed)
