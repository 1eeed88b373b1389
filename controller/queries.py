"""The daemon's answers to read-only queries (contract/queries.py): a user's history and one
session's report, read from the journal, never from the safety core.

Nothing here runs on the control loop's time but the parsing of a query:

- :meth:`QueryService.submit` (the query connection calls it on the loop's thread, as the query is
  read) parses the query and queues it, or answers a bad one at once. Each account may have
  ``per_account`` queries waiting; past that a query is refused ``rate_limited`` (like a
  command that finds the outbox full), so a flood costs a refusal each, never a backlog.
- :meth:`QueryService.run` answers the queue one query at a time. The journal is read on a
  worker thread, on a read-only connection of its own (the daemon's writer never waits for
  it: the journal is in WAL mode, and a reader holds no lock a writer needs), bounded by the
  query's limit. A session's rendered report (``format`` "html") is written by ``treadguard
  report`` in a process of its own, at a lower priority, within ``render_timeout_s``: the
  charting library never enters the daemon (docs/daemon.md, "Queries").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from treadguard.config.progression import ProgressionRules
from treadguard.contract.mqtt import JsonObject
from treadguard.contract.queries import (
    HistoryQuery,
    Query,
    QueryErrorCode,
    QueryReply,
    SessionQuery,
    SessionSummary,
    encode_history,
    encode_session,
    parse_query,
    refusal,
    with_page,
)
from treadguard.controller import report_text as t
from treadguard.controller.journal import EventRow, Journal, JournalError, SessionRow
from treadguard.controller.plan import MeasureTrend, measure_trends, outcomes_of
from treadguard.controller.proposal_book import NotKnown, proposal_and_start
from treadguard.safety.decisions import EventType
from treadguard.safety.programs import Program

PER_ACCOUNT = 4  # queries of one account waiting or being answered, at most
RENDER_TIMEOUT_S = 30.0  # `treadguard report` on a Raspberry Pi takes a few seconds
RENDER_NICENESS = 10  # the report's process yields the processor to the daemon's
UNLISTED = {EventType.COUNTDOWN}  # as the printed report: "belt starts" says it all

Reply = Callable[[str, bytes], None]
Render = Callable[[int], Awaitable[str]]


@dataclass(frozen=True)
class ClinicWords:
    """What an answer is written in: the clinic's zone and the programs' titles."""

    zone: ZoneInfo
    titles: Mapping[str, str]

    def title(self, program: str) -> str:
        return self.titles.get(program, program)  # a program since removed keeps its name


@dataclass(frozen=True)
class Planning:
    """What a history's proposal is made from (controller/plan.py): the clinic's progression
    rules, its programs, and the wall clock (the daemon's one, SR-16) for "now"."""

    rules: ProgressionRules
    programs: Mapping[str, Program]
    now: Callable[[], float]

    def proposal(self, journal: Journal, user: str, zone: ZoneInfo) -> JsonObject:
        record = journal.user_record(user)
        whole, _ = proposal_and_start(record, self.rules, self.programs, zone=zone, now=self.now())
        return whole


@dataclass(frozen=True)
class KnownProposal:
    """A proposal worked out elsewhere (the daemon's book), as a history answer's; or why
    there is none."""

    known: JsonObject | NotKnown

    def proposal(self, journal: Journal, user: str, zone: ZoneInfo) -> JsonObject | NotKnown:
        return self.known


def _score(entry: Mapping[str, Any] | None, key: str) -> int | None:
    value = None if entry is None else entry.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summary_of(
    session: SessionRow, outcomes: Mapping[str, Mapping[str, Any]], words: ClinicWords
) -> SessionSummary:
    """One session in the clinic's zone and words, with the newest pain and exertion entered."""
    before, after = outcomes.get("before"), outcomes.get("after")
    return SessionSummary(
        session_id=session.id,
        user=session.user,
        program=session.program,
        program_title=words.title(session.program),
        started=t.iso(session.started_at, words.zone),
        ended=t.iso(session.ended_at, words.zone) or None,
        belt_min=_round(None if session.belt_moving_s is None else session.belt_moving_s / 60, 1),
        cap_min=round(session.cap_s / 60, 1),
        top_mph=_round(session.max_speed_mph, 2),
        ended_by=session.end_reason,
        ended_by_words=t.ended_by(session.end_reason),
        pain_before=_score(before, "pain"),
        pain_after=_score(after, "pain"),
        exertion=_score(after, "exertion"),
    )


def _outcomes(journal: Journal, session_id: int) -> dict[str, Mapping[str, Any]]:
    entries = journal.outcome_entries(session_id)
    return outcomes_of([EventRow(0.0, EventType.OUTCOME_RECORDED, e) for e in entries])


def measure_json(trend: MeasureTrend) -> JsonObject:
    """One kind of the user's measures as the reports show it (controller/plan.py)."""
    return {
        "kind": trend.kind,
        "title": trend.title,
        "baseline": trend.baseline,
        "latest": trend.latest,
        "change": trend.change,
        "count": trend.count,
    }


def history_answer(
    journal: Journal,
    query: HistoryQuery,
    words: ClinicWords,
    planning: Planning | KnownProposal | None = None,
) -> QueryReply:
    """A ``history`` answer from the journal: at most the query's limit of rows, the user's
    measures (a row a kind), and with ``planning`` the proposal for the user's next session
    (from the user's whole record)."""
    sessions, total = journal.recent_sessions(query.user, query.limit)
    rows = [summary_of(s, _outcomes(journal, s.id), words) for s in sessions]
    measures = [measure_json(m) for m in measure_trends(journal.measures(query.user))]
    proposal = None if planning is None else planning.proposal(journal, query.user, words.zone)
    return encode_history(
        query,
        rows,
        total=total,
        timezone=words.zone.key,
        proposal=proposal if isinstance(proposal, dict) else None,
        proposal_unavailable=proposal.why if isinstance(proposal, NotKnown) else None,
        measures=measures,
    )


def event_rows(
    session: SessionRow, events: Sequence[EventRow], zone: ZoneInfo
) -> list[dict[str, str]]:
    """The session's events as its report lists them."""
    return [
        {
            "time": t.time_of_day(e.ts, zone),
            "into": t.clock(e.ts - session.started_at),
            "name": t.event_name(e.type),
            "details": t.event_details(e.type, e.fields),
        }
        for e in events
        if e.type not in UNLISTED
    ]


def session_answer(journal: Journal, query: SessionQuery, words: ClinicWords) -> QueryReply:
    """A ``session`` answer from the journal; ``not_found`` for a session it does not have."""
    session = journal.session(int(query.session_id))
    if session is None:
        return refusal(
            query.id, QueryErrorCode.NOT_FOUND, f"there is no session {query.session_id}"
        )
    events = journal.events(session.id)
    outcomes = outcomes_of(events)
    notes = {
        when: str(entry["notes"])
        for when, entry in outcomes.items()
        if isinstance(entry.get("notes"), str)
    }
    return encode_session(
        query,
        summary_of(session, outcomes, words),
        timezone=words.zone.key,
        notes=notes,
        events=event_rows(session, events, words.zone),
    )


def read_answer(
    path: Path,
    query: Query,
    words: ClinicWords,
    planning: Planning | KnownProposal | None = None,
    *,
    identity: str | None = None,
) -> QueryReply:
    """The answer, on a read-only connection of its own (opened and closed on the calling
    thread: a worker's). JournalError when the journal cannot be read, or ``path`` no longer
    leads to the file ``identity`` names (the daemon's: Journal.identity)."""
    journal = Journal.read_only(path, identity=identity)
    try:
        if isinstance(query, HistoryQuery):
            return history_answer(journal, query, words, planning)
        return session_answer(journal, query, words)
    finally:
        journal.close()


async def render_report(
    config: Path, session_id: int, *, timeout_s: float, cache: Path | None = None
) -> str:
    """``treadguard report`` of one session, in a process of its own at a lower priority:
    its page. RuntimeError (with why) when it fails or takes longer than ``timeout_s``.

    ``cache``: matplotlib's folder (its font list), unless the environment names one. Under
    systemd the daemon's user has no home to keep it in (ProtectHome), and matplotlib would
    build it again for every page: a folder beside the journal, which the daemon may write."""
    env = dict(os.environ)
    if cache is not None:
        env.setdefault("MPLCONFIGDIR", str(cache))
    with tempfile.TemporaryDirectory(prefix="treadguard-report-") as folder:
        out = Path(folder) / "report.html"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "treadguard.controller.cli",
            "report",
            str(session_id),
            "--config",
            str(config),
            "--out",
            str(out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        with contextlib.suppress(OSError):  # gone already, or not allowed: it only renders
            os.setpriority(os.PRIO_PROCESS, proc.pid, RENDER_NICENESS)
        try:
            async with asyncio.timeout(timeout_s):
                _, err = await proc.communicate()
        except TimeoutError:
            raise RuntimeError(f"the report took longer than {timeout_s:g} s") from None
        finally:
            if proc.returncode is None:  # timed out, or the daemon is shutting down
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            said = err.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(said[-1] if said else f"the report failed ({proc.returncode})")
        return await asyncio.to_thread(out.read_text, encoding="utf-8")


class QueryService:
    """Answers the queries the link hands it (:meth:`submit`), while :meth:`run` runs.

    ``journal`` is the journal's file (None: the daemon has none, every query is answered
    ``unavailable``); ``reply`` queues an answer for an account (``QueryLink.answer``);
    ``render`` writes one session's report page (:func:`render_report` by default)."""

    def __init__(
        self,
        *,
        journal: Path | None,
        journal_identity: str | None = None,
        words: ClinicWords,
        reply: Reply,
        render: Render,
        planning: Planning | None = None,
        proposals: Callable[[str], Awaitable[JsonObject | NotKnown]] | None = None,
        per_account: int = PER_ACCOUNT,
        logger: Any = None,
    ) -> None:
        self._journal = journal
        self._identity = journal_identity  # only the file the daemon writes is read
        self._words = words
        self._planning = planning
        # The daemon's book of proposals (controller/proposal_book.py): a history's proposal
        # from there, worked out in a process of its own, never on a thread of the daemon's.
        self._proposals = proposals
        self._reply = reply
        self._render = render
        self._per_account = per_account
        self._log = logger if logger is not None else structlog.get_logger("treadguard.queries")
        self._queue: asyncio.Queue[tuple[str, Query]] = asyncio.Queue()
        self._waiting: dict[str, int] = defaultdict(int)
        self.answered = 0
        self.rate_limited = 0

    def submit(self, account: str, payload: bytes, retained: bool) -> None:
        """A query from ``account``, as the link read it. Never blocks, never raises."""
        try:
            parsed = parse_query(payload, retained=retained)
            if isinstance(parsed, QueryReply):
                self._send(account, parsed)
                return
            if self._waiting[account] >= self._per_account:
                self.rate_limited += 1
                self._send(
                    account,
                    refusal(
                        parsed.id,
                        QueryErrorCode.RATE_LIMITED,
                        f"{self._per_account} queries of this account are waiting: not "
                        "answered; ask again once they are",
                    ),
                )
                return
            self._waiting[account] += 1
            self._queue.put_nowait((account, parsed))
        except Exception as exc:  # SR-15: no handler raises into its caller
            self._log.error("query_submit_failed", account=account, error=repr(exc))

    async def run(self) -> None:
        """Answer the queue, one query at a time, until cancelled."""
        while True:
            account, query = await self._queue.get()
            try:
                reply = await self._answer(query)
            except Exception as exc:  # SR-15: an unexpected failure is an answer too
                self._log.error("query_failed", account=account, error=repr(exc))
                reply = refusal(
                    query.id,
                    QueryErrorCode.INTERNAL_ERROR,
                    f"answering this {query.type} query failed unexpectedly "
                    f"({type(exc).__name__}); the controller carries on",
                )
            finally:
                self._waiting[account] -= 1
            self._send(account, reply)

    async def _answer(self, query: Query) -> QueryReply:
        if self._journal is None:
            return refusal(query.id, QueryErrorCode.UNAVAILABLE, "the daemon has no journal")
        answer = await self._read(query)
        if not (answer.ok and isinstance(query, SessionQuery) and query.format == "html"):
            return answer
        # The session is there (its data read first, cheaply): now its page, in a process of
        # its own.
        try:
            html = await self._render(int(query.session_id))
        except RuntimeError as exc:
            return refusal(
                query.id, QueryErrorCode.UNAVAILABLE, f"the report could not be written: {exc}"
            )
        return with_page(answer, html)

    async def _read(self, query: Query) -> QueryReply:
        assert self._journal is not None
        planning: Planning | KnownProposal | None = self._planning
        if self._proposals is not None and isinstance(query, HistoryQuery):
            planning = KnownProposal(await self._proposals(query.user))
        try:
            return await asyncio.to_thread(
                read_answer, self._journal, query, self._words, planning, identity=self._identity
            )
        except JournalError as exc:
            return refusal(
                query.id, QueryErrorCode.UNAVAILABLE, f"the journal cannot be read: {exc}"
            )

    def _send(self, account: str, reply: QueryReply) -> None:
        try:
            self._reply(account, reply.payload())
            self.answered += 1
        except Exception as exc:  # SR-15: the asker's timeout tells it; the daemon carries on
            self._log.error("query_answer_failed", account=account, error=repr(exc))
