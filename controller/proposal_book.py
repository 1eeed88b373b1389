"""What a start without a program gets: the user's proposal (controller/plan.py), worked out
off the command path.

A start that names no program ("From history" on the page) follows the plan: the program and
cap it proposes, holds included (a pain rise in the first session keeps the user on the
first-session program). Working a proposal out reads the user's whole record, which for a user
with thousands of sessions takes seconds; on the command path that would hold an E-STOP behind
it, and the control loop with it. So the daemon keeps a book: each user's proposal, worked out
in a process of its own (controller/proposal_worker.py: on a thread, it would hold the
interpreter's lock against the event loop) from a read-only connection to the journal, and
worked out again whenever their record changes (a session started or ended, a pain entry, a
confirmation). A start reads the book, which costs a dictionary look-up; when the user's entry
is not current (their record changed a moment ago, or the daemon has only just started), the
start is refused with that reason and the entry is worked out, so starting again a moment later
goes ahead.

:class:`ProposalBook` is the bookkeeping, pure and synchronous: which entries are current
(a generation per user, and an epoch for changes whose user is not known), which users wait
to be worked out. :class:`BookKeeper` runs it in the daemon: the worker process, the journal's users
at start-up, and everyone again when the clinic's day changes (the week on the treadmill, and
with it the phase, goes by the day). A scenario or a test on the virtual clock works each
entry out on demand instead (:class:`WorkedOutOnDemand`): the same proposal, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from treadguard.config.loading import LoadedConfig
from treadguard.config.progression import ProgressionRules
from treadguard.controller.first_session import PLANNED_ENDS
from treadguard.controller.journal import Journal, JournalError
from treadguard.controller.plan import Proposal, UserRecord, asks_more, propose
from treadguard.safety.decisions import Event, EventType
from treadguard.safety.programs import Program

# Users whose proposals are kept at most: any account that may ask a history query may name
# any code, and each named is worked out again at every change whose user is not known.
ENTRIES_MAX = 2000
# How often the keeper looks whether the clinic's day has changed.
DAY_CHECK_S = 60.0
# The longest one proposal may take in the worker (its start-up included); longer, and it is
# started afresh for the next.
WORKER_TIMEOUT_S = 30.0
# The worker yields the processor to the daemon and the board's other services.
WORKER_NICENESS = 10
# How often the keeper asks the worker whether the configuration on disk still serves.
CONFIG_CHECK_S = 2.0
CHECK_ANSWER_S = 5.0  # a check not answered by then refuses starts from history meanwhile
# How long a history query waits for the user's proposal being worked out.
PROPOSAL_WAIT_S = 10.0

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class StartChoice:
    """What the proposal gives a start without a program; ``proposal``: the whole of it, as
    a ``history`` query's answer carries it (controller/plan.py's ``Proposal.as_json``,
    without the user)."""

    program: str
    cap_s: float
    reason: str
    proposal: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class NotKnown:
    """Why the proposal cannot be used now, in words for the refusal. ``configuration``: the
    worker found the configuration on disk other than the daemon's (no start from history of
    anyone's may go ahead, not only this user's)."""

    why: str
    configuration: bool = False


class ProposalSource(Protocol):
    """What System asks at a start without a program, for a user with a first session had."""

    def choice(self, user: str) -> StartChoice | NotKnown: ...

    def on_event(self, event: Event) -> None: ...

    def session_of(self, session: str, user: str) -> None:
        """Whose ``session`` is: said before an event that names only the session (an entry
        of the record after it), so that only that user's proposal is worked out again."""

    def refusal(self) -> str | None:
        """Why no start from history may go ahead now, a first session's included."""


@dataclass(frozen=True)
class _Entry:
    generation: int
    epoch: int
    outcome: StartChoice | NotKnown


# The events after which a user's proposal may differ: their sessions, their pain entries,
# a clinician's confirmation of their first session.
_CHANGES = {
    EventType.SESSION_STARTED,
    EventType.SESSION_ENDED,
    EventType.OUTCOME_RECORDED,
    EventType.FIRST_SESSION_CONFIRMED,
}


class ProposalBook:
    """Users' proposals and whether each is current. Sans-I/O: the keeper (or a test) asks
    :meth:`due` what to work out, works it out and hands it back with :meth:`put`, with the
    token :meth:`token` gave when it began; an entry whose user's record changed meanwhile is
    not current and is worked out again."""

    def __init__(self) -> None:
        self._generation: dict[str, int] = {}
        self._epoch = 0  # changes whose user is not known: every entry out of date
        self._entries: dict[str, _Entry] = {}
        self._session_user: dict[str, str] = {}
        self._due: dict[str, None] = {}  # insertion-ordered set
        self.wake: Callable[[], None] = lambda: None
        self.broken: str | None = None  # why no entry will be worked out any more
        # Why no entry may be used now: the configuration changed on disk since the daemon
        # started (the worker says so), so proposals would follow other rules.
        self.config_changed: str | None = None

    def refusal(self) -> str | None:
        """Why no start from history may go ahead now, whoever's (None: each by its entry)."""
        return self.broken if self.broken is not None else self.config_changed

    # ------------------------------------------------------------------ the record changes

    def on_event(self, event: Event) -> None:
        """System's listener: an event journaled (never raises on any fields)."""
        if event.type not in _CHANGES:
            return
        fields = event.fields
        session = fields.get("session_id")
        user = fields.get("user")
        started = event.type is EventType.SESSION_STARTED
        if started and isinstance(user, str) and isinstance(session, str):
            self._session_user[session] = user.strip()
        if not isinstance(user, str) and isinstance(session, str):
            # Kept after the session ends: its record entries come later and name only it.
            user = self._session_user.get(session)
        self.changed(user.strip() if isinstance(user, str) else None)

    def session_of(self, session: str, user: str) -> None:
        self._session_user[session] = user.strip()

    def changed(self, user: str | None) -> None:
        """``user``'s record changed (None: someone's, not known whose)."""
        if user is None:
            self._epoch += 1
            for known in self._entries:
                self._due[known] = None
        else:
            self._generation[user] = self._generation.get(user, 0) + 1
            self._due[user] = None
        self.wake()

    # ------------------------------------------------------------------ working out

    def ask(self, user: str) -> None:
        """Work ``user``'s proposal out (again), unless it is current."""
        if self._current(user) is None:
            self._due[user] = None
            self.wake()

    def everyone(self) -> None:
        """Work every user with an entry out again (the day changed)."""
        for user in self._entries:
            self._due[user] = None
        self.wake()

    def due(self) -> str | None:
        """The next user to work out, oldest request first; None if nobody waits."""
        for user in self._due:
            del self._due[user]
            return user
        return None

    def token(self, user: str) -> tuple[int, int]:
        return self._generation.get(user, 0), self._epoch

    def put(self, user: str, token: tuple[int, int], outcome: StartChoice | NotKnown) -> None:
        """``user``'s proposal as worked out from their record as it stood at ``token``."""
        self._entries.pop(user, None)
        self._entries[user] = _Entry(token[0], token[1], outcome)
        while len(self._entries) > ENTRIES_MAX:  # the one worked out longest ago goes
            del self._entries[next(iter(self._entries))]
        if token != self.token(user):
            self._due[user] = None  # changed meanwhile: once more
            self.wake()

    # ------------------------------------------------------------------ a start reads it

    def choice(self, user: str) -> StartChoice | NotKnown:
        """The proposal's program and cap for a start without a program, if ``user``'s entry
        is current; else why not (and it is asked for)."""
        why = self.refusal()
        if why is not None:
            return NotKnown(why)
        current = self._current(user)
        if current is not None:
            if isinstance(current.outcome, NotKnown):
                # The record could not be read then (a busy disk, say): tried again for the
                # next start, never taken as the answer for good.
                self._due[user] = None
                self.wake()
            return current.outcome
        self.ask(user)
        return NotKnown(
            f"the proposal for {user} is being worked out from their record, which changed a "
            "moment ago (or the treadmill has just started): start again in a moment, or "
            "choose a program"
        )

    def current(self, user: str) -> StartChoice | NotKnown | None:
        """``user``'s entry if it is current (None: not worked out from their record as it
        stands)."""
        entry = self._current(user)
        return None if entry is None else entry.outcome

    def _current(self, user: str) -> _Entry | None:
        entry = self._entries.get(user)
        if entry is None or (entry.generation, entry.epoch) != self.token(user):
            return None
        return entry


def work_out(
    journal: Journal,
    user: str,
    rules: ProgressionRules,
    programs: Mapping[str, Program],
    *,
    zone: ZoneInfo,
    now: float,
) -> StartChoice | NotKnown:
    """``user``'s proposal from ``journal``, as a start's program and cap."""
    try:
        record = journal.user_record(user)
    except JournalError as exc:
        return NotKnown(f"the record of {user} cannot be read ({exc})")
    whole, start = proposal_and_start(record, rules, programs, zone=zone, now=now)
    return StartChoice(start.program, start.cap_s, start.reason, whole)


def proposal_and_start(
    record: UserRecord,
    rules: ProgressionRules,
    programs: Mapping[str, Program],
    *,
    zone: ZoneInfo,
    now: float,
) -> tuple[JsonObject, Proposal]:
    """``record``'s user's proposal, as a ``history`` answer carries it, and what a start from
    history gets (see below); the answer's ``from_history`` says the latter, so the patient
    view shows what the one tap starts where it is less than the proposal."""
    made = propose(record, rules, programs, zone=zone, now=now)
    # The start keeps to the phase the user has reached: the proposal moves a user on to a
    # later phase by the calendar (week 4 on the treadmill: intervals), which is advice for the
    # clinician, who starts it by naming it. Started by one tap, it would put a user who has
    # been away, or a board whose clock stepped forward, on a program never run; kept to the
    # phase reached, nothing the wall clock says changes what a start from history gets.
    kept = propose(record, _in_phase_reached(rules, record), programs, zone=zone, now=now)
    # And never more than the proposal shown: a phase reached by a session started by hand
    # (intervals named once and run to their cap) is no phase the plan has moved the user to,
    # and holds bound what is shown. The lower of the two; a clock step can only lower it.
    start = kept if asks_more(rules, programs, made, kept) else made
    whole = {k: v for k, v in made.as_json().items() if k != "user"}
    whole["from_history"] = {
        "program": start.program,
        "program_title": start.program_title,
        "cap_s": start.cap_s,
        "reason": start.reason,
    }
    return whole, start


def _in_phase_reached(rules: ProgressionRules, record: UserRecord) -> ProgressionRules:
    """``rules`` without the phases after the latest whose program ``record``'s user has run
    as planned (to its cap, or completed), the first phase if none: the calendar moves them
    on no further. The clinic's own phase for the user, if it set one, stands. (The phases are
    cut, not the user kept in one by a plan of their own: the proposal would then say the
    clinic keeps them there.)"""
    own = rules.user.get(record.user)
    if (own is not None and own.phase is not None) or not rules.phase:
        return rules
    ran = {s.program for s in record.sessions if s.end_reason in PLANNED_ENDS}
    # A program that runs in several phases (the clinic's rules may repeat one, with another
    # rhythm or cap step) shows only the first of them reached.
    first_of: dict[str, int] = {}
    for i, phase in enumerate(rules.phase):
        first_of.setdefault(phase.program, i)
    reached = max((first_of[program] for program in ran if program in first_of), default=0)
    return rules.model_copy(update={"phase": rules.phase[: reached + 1]})


class WorkedOutOnDemand:
    """The proposal worked out when a start asks, from the journal System writes: for a
    scenario or a test on the virtual clock, where nothing waits on the command path."""

    def __init__(
        self,
        journal: Journal,
        rules: ProgressionRules,
        programs: Mapping[str, Program],
        *,
        zone: ZoneInfo,
        wall: Callable[[], float],
    ) -> None:
        self._journal, self._rules, self._programs = journal, rules, programs
        self._zone, self._wall = zone, wall

    def choice(self, user: str) -> StartChoice | NotKnown:
        return work_out(
            self._journal, user, self._rules, self._programs, zone=self._zone, now=self._wall()
        )

    def on_event(self, event: Event) -> None:
        pass

    def session_of(self, session: str, user: str) -> None:
        pass

    def refusal(self) -> str | None:
        return None


def fingerprint(loaded: LoadedConfig) -> str:
    """What a proposal is worked out from, besides the record: the rules, the programs, the
    clinic's zone and the journal's file. The daemon hands its own to the worker, which loads
    the configuration file itself: one edited on disk since the daemon started gives another,
    and the worker then works nothing out (the daemon's core runs the programs it started
    with; a proposal by other rules or programs is not what a start from history may get)."""
    basis = {
        "rules": loaded.rules.model_dump(mode="json"),
        "programs": {
            name: p.model_dump(mode="json") for name, p in sorted(loaded.programs.items())
        },
        "zone": loaded.config.clinic.timezone,
        "journal": str(loaded.resolve(loaded.config.journal.path)),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


class WorkerProcess:
    """controller/proposal_worker.py in a process of its own, at a lower priority, started
    when first asked and again after it failed: one request at a time."""

    def __init__(
        self,
        config: Path,
        print_: str | None = None,
        *,
        journal_identity: str | None = None,
        timeout_s: float = WORKER_TIMEOUT_S,
    ) -> None:
        """``print_``: the daemon's fingerprint() of its configuration, if it has one;
        ``journal_identity``: the journal's file it writes (Journal.identity), if it has one."""
        self._config = config
        self._print = print_
        self._identity = journal_identity
        self._timeout_s = timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._one_at_a_time = asyncio.Lock()  # a request and its answer, a line each

    async def check(self) -> str | None:
        """Whether the configuration on disk still serves (the worker loads it): why not, or
        None. A worker that does not answer, or answers nothing it should, has not shown that
        it does: that is a why too (fail closed), until a check answers again."""
        try:
            async with self._one_at_a_time:
                proc = await self._running()
                line = await asyncio.wait_for(self._send(proc, {"check": True}), self._timeout_s)
            got = json.loads(line) if line else None
            if not isinstance(got, dict) or got.get("check") is not True:
                raise ValueError(f"no answer to the check ({line[:80]!r})")
            why = got.get("not_known")
            return why if isinstance(why, str) else None
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            await self.close()
            what = (
                f"no answer within {self._timeout_s:g} s"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            return (
                "the configuration on disk could not be checked against the one the daemon "
                f"runs ({what}): choose a program, or ask again shortly"
            )

    async def ask(self, user: str, now: float) -> StartChoice | NotKnown:
        try:
            async with self._one_at_a_time:
                proc = await self._running()
                line = await asyncio.wait_for(
                    self._send(proc, {"user": user, "now": now}), self._timeout_s
                )
            if not line:
                raise EOFError("the proposal worker ended")
            got = json.loads(line)
            if got.get("user") != user:
                raise ValueError(f"an answer for another user ({got.get('user')!r})")
            if "not_known" in got:
                return NotKnown(
                    str(got["not_known"]), configuration=got.get("configuration") is True
                )
            whole = got.get("proposal")
            return StartChoice(
                str(got["program"]),
                float(got["cap_s"]),
                str(got["reason"]),
                whole if isinstance(whole, dict) else {},
            )
        except (OSError, EOFError, ValueError, KeyError, TypeError, TimeoutError) as exc:
            await self.close()  # started afresh for the next request
            return NotKnown(
                f"the proposal for {user} could not be worked out ({type(exc).__name__}: "
                f"{exc}): start again, or choose a program"
            )

    @staticmethod
    async def _send(proc: asyncio.subprocess.Process, request: JsonObject) -> bytes:
        if proc.stdin is None or proc.stdout is None:
            raise EOFError("the proposal worker has no pipes")
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        await proc.stdin.drain()
        return await proc.stdout.readline()

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        self._proc = proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "treadguard.controller.proposal_worker",
            "--config",
            str(self._config),
            *(() if self._print is None else ("--fingerprint", self._print)),
            *(() if self._identity is None else ("--journal-identity", self._identity)),
            # It ends with the daemon, however the daemon ends (proposal_worker.py).
            "--parent",
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        with contextlib.suppress(OSError):  # gone already, or not allowed: it only works out
            os.setpriority(os.PRIO_PROCESS, proc.pid, WORKER_NICENESS)
        return proc

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class BookKeeper:
    """The book in the daemon: entries worked out by the worker process, one at a time;
    every user on record at start-up; everyone again when the clinic's day changes."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        wall: Callable[[], float],
        commit: Callable[[], None],
        identity: str | None = None,
        logger: Any = None,
    ) -> None:
        """``loaded``: the daemon's configuration (the worker loads its file too, and works
        nothing out if it finds another); ``commit``: the daemon's journal committed
        (System.commit_journal); ``identity``: the journal's file the daemon writes
        (Journal.identity): the worker reads no other file put at its path."""
        self.book = ProposalBook()
        self._journal = loaded.resolve(loaded.config.journal.path)
        self._identity = identity
        self._worker = WorkerProcess(loaded.path, fingerprint(loaded), journal_identity=identity)
        self._zone, self._wall, self._commit = loaded.config.clinic.zone(), wall, commit
        self._log = logger if logger is not None else structlog.get_logger("treadguard.plan")
        self._wake = asyncio.Event()
        self.book.wake = self._wake.set
        self._answered = asyncio.Condition()
        self.worked_out = 0

    def choice(self, user: str) -> StartChoice | NotKnown:
        return self.book.choice(user)

    def refusal(self) -> str | None:
        return self.book.refusal()

    def on_event(self, event: Event) -> None:
        self.book.on_event(event)

    def session_of(self, session: str, user: str) -> None:
        self.book.session_of(session, user)

    async def proposal(self, user: str, within_s: float = PROPOSAL_WAIT_S) -> JsonObject | NotKnown:
        """``user``'s whole proposal, for a ``history`` answer: the current entry, waited for
        (at most ``within_s``) while it is being worked out; why not, if it cannot be had."""
        try:
            async with asyncio.timeout(within_s), self._answered:
                while True:
                    why = self.book.refusal()  # first: an entry worked out before it is stale
                    if why is not None:
                        return NotKnown(why)
                    got = self.book.current(user)
                    if isinstance(got, StartChoice):
                        return dict(got.proposal) or NotKnown("the proposal came back empty")
                    if isinstance(got, NotKnown):
                        return got
                    self.book.ask(user)
                    await self._answered.wait()
        except TimeoutError:
            return NotKnown(
                f"the proposal for {user} was not worked out within {within_s:g} s: ask again"
            )

    async def run(self) -> None:
        """Until cancelled. A failure working one user out is that user's entry (a start
        from history is refused, saying why) and is logged; the keeper carries on. Should the
        keeper itself fail, every start from history is refused from then on, saying so (the
        belt is not the keeper's: a start naming its program goes ahead)."""
        try:
            await self._keep()
        except Exception as exc:
            self._log.error("proposals_stopped", error=repr(exc))
            self.book.broken = (
                f"proposals cannot be worked out on this treadmill ({type(exc).__name__}): "
                "choose a program"
            )
        finally:
            await self._worker.close()

    async def _keep(self) -> None:
        try:
            users = await asyncio.to_thread(self._users)
        except JournalError as exc:
            self._log.warning("proposals_not_read", error=str(exc))
            users = []
        for user in users:
            self.book.ask(user)
        day = self._day()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._days(day), name="proposal-days")
            tg.create_task(self._configuration(), name="proposal-configuration")
            while True:
                waiting = self.book.due()
                if waiting is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                token = self.book.token(waiting)
                # What the token counts is committed before the worker's connection reads:
                # the daemon writes records in a transaction it commits twice a second.
                self._commit()
                outcome = await self._worker.ask(waiting, self._wall())
                if isinstance(outcome, NotKnown):
                    self._log.warning("proposal_not_worked_out", user=waiting, why=outcome.why)
                    if outcome.configuration:
                        # Seen now, not at the next check: a first session's start from
                        # history, which needs no entry, is refused from this moment too.
                        await self._configured(outcome.why)
                self.book.put(waiting, token, outcome)
                self.worked_out += 1
                async with self._answered:
                    self._answered.notify_all()

    async def _configuration(self) -> None:
        """Every CONFIG_CHECK_S, whether the configuration on disk still gives the rules and
        programs the daemon runs: an edit since it started refuses every start from history
        (saying so) until the file is as it was, or the daemon restarted. A worker that has not
        answered within CHECK_ANSWER_S has not shown it: refused too, until it answers (it
        is waited for, not killed: it may be working a long record out)."""
        while True:
            check = asyncio.ensure_future(self._worker.check())
            done, _ = await asyncio.wait({check}, timeout=CHECK_ANSWER_S)
            if not done:
                await self._configured(
                    "the proposal worker has not answered the check of the configuration "
                    f"within {CHECK_ANSWER_S:g} s: choose a program, or ask again shortly"
                )
            await self._configured(await check)
            await asyncio.sleep(CONFIG_CHECK_S)  # a period, not a synchronisation

    async def _configured(self, why: str | None) -> None:
        """The check's verdict in force: ``why`` no start from history may go ahead, or None.
        Back to what the daemon runs, every entry is worked out again: one worked out
        meanwhile says the configuration changed, which is no longer so."""
        if why == self.book.config_changed:
            return
        if why is not None:
            self._log.warning("proposals_configuration_changed", why=why)
        else:
            self._log.info("proposals_configuration_as_started")
            self.book.everyone()
        self.book.config_changed = why
        async with self._answered:
            self._answered.notify_all()

    async def _days(self, day: str) -> None:
        while True:
            await asyncio.sleep(DAY_CHECK_S)  # a period, not a synchronisation
            today = self._day()
            if today != day:
                day = today
                self.book.everyone()

    def _day(self) -> str:
        return datetime.fromtimestamp(self._wall(), self._zone).date().isoformat()

    def _users(self) -> list[str]:
        journal = Journal.read_only(self._journal, identity=self._identity)
        try:
            return journal.users()
        finally:
            journal.close()
