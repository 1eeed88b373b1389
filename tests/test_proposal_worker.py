"""The proposal worker (controller/proposal_worker.py), in its own process as the daemon runs
it: a line in, a line out, whatever the line; a worker that dies is started afresh for the next
request, and a request never raises into the keeper."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.daemon_process import daemon_config
from treadguard.config.loading import LoadedConfig, load_config
from treadguard.controller import proposal_worker
from treadguard.controller.journal import Journal
from treadguard.controller.proposal_book import (
    BookKeeper,
    NotKnown,
    StartChoice,
    WorkerProcess,
    _in_phase_reached,
    fingerprint,
    work_out,
)
from treadguard.controller.proposal_worker import WorkerConfig, answer, serve
from treadguard.safety.decisions import Event, EventType, JsonScalar

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The simulator's configuration with a journal of its own holding p-1's first session,
    run to its cap with pain 2 before and 5 after."""
    path = tmp_path / "journal.sqlite"
    monkeypatch.setenv("TREADGUARD_JOURNAL__PATH", str(path))
    journal = Journal.open(path, max_size_mb=64)
    start = time.time() - 86_400
    fields: dict[str, JsonScalar] = {
        "session_id": "1", "user": "p-1", "program": "first_session", "cap_s": 180.0,
    }  # fmt: skip
    journal.record(Event(EventType.SESSION_STARTED, 0.0, fields), start)
    for when, pain in (("before", 2), ("after", 5)):
        entry: dict[str, JsonScalar] = {"session_id": "1", "when": when, "pain": pain}
        journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, entry), start + 1)
    ended: dict[str, JsonScalar] = {"session_id": "1", "reason": "cap", "belt_moving_s": 180.0}
    journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), start + 200)
    journal.commit()
    journal.close()
    return ROOT / "config" / "sim.toml"


def test_the_worker_answers_each_line_with_the_user_s_proposal(config: Path) -> None:
    lines = io.StringIO(
        json.dumps({"user": "p-1", "now": time.time()}) + "\n"
        "not json\n"
        '{"user": 7, "now": 1}\n'
        '{"user": "p-2", "now": true}\n'
        + json.dumps({"user": "p-new", "now": time.time()}) + "\n"
    )  # fmt: skip
    out = io.StringIO()
    serve(WorkerConfig(config), lines, out)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(got) == 5
    assert got[0]["program"] == "first_session"
    assert "held at first treadmill session: pain rose 3 points" in got[0]["reason"]
    assert got[0]["proposal"]["held"] is True
    assert got[1] == {"user": None, "not_known": "the request is not an object"}
    assert got[2] == {"user": None, "not_known": "bad request"}
    assert got[3] == {"user": "p-2", "not_known": "bad request"}
    assert got[4]["program"] == "first_session"  # nobody's record: a first session


@pytest.mark.asyncio
async def test_a_configuration_changed_on_disk_since_the_daemon_started_gives_no_proposal(
    config: Path,
) -> None:
    """The worker loads the configuration file itself: rules or programs edited since the
    daemon started would give proposals the daemon's core does not run by. The daemon hands
    its fingerprint of what it loaded; a worker that loads another works nothing out."""
    loaded = load_config(config)
    same = io.StringIO()
    serve(
        WorkerConfig(config, fingerprint(loaded)), io.StringIO('{"user": "p-1", "now": 1}\n'), same
    )
    assert "program" in json.loads(same.getvalue())
    worker = WorkerProcess(config, "0" * 64)  # what the daemon loaded was another
    try:
        got = await worker.ask("p-1", time.time())
    finally:
        await worker.close()
    assert isinstance(got, NotKnown)
    assert "was changed since the daemon started" in got.why


@settings(max_examples=200, deadline=None)
@given(request=st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=8,
))  # fmt: skip
def test_any_request_is_answered_and_never_raises(request: object) -> None:
    loaded = load_config(ROOT / "config" / "sim.toml")
    got = answer(loaded, Path("/nonexistent/journal.sqlite"), request)
    assert "not_known" in got or "program" in got
    json.dumps(got)  # a line the daemon can read


@pytest.mark.asyncio
async def test_a_worker_that_died_is_started_afresh_for_the_next_request(config: Path) -> None:
    worker = WorkerProcess(config)
    try:
        first = await worker.ask("p-1", time.time())
        assert isinstance(first, StartChoice)
        assert first.program == "first_session"
        assert worker._proc is not None
        dead = worker._proc.pid
        os.kill(dead, signal.SIGKILL)
        await worker._proc.wait()
        again = await worker.ask("p-1", time.time())
        assert again == first
        assert worker._proc is not None
        assert worker._proc.pid != dead
        # One that cannot answer in time: the request is answered "not known", never raised,
        # and the next is worked out by a fresh worker.
        os.kill(worker._proc.pid, signal.SIGSTOP)
        worker._timeout_s = 0.5
        late = await worker.ask("p-1", time.time())
        assert isinstance(late, NotKnown)
        assert "could not be worked out" in late.why
        worker._timeout_s = 30.0
        assert await worker.ask("p-1", time.time()) == first
    finally:
        await worker.close()


def _sessions(journal: Journal, user: str, runs: list[tuple[str, float, float]]) -> None:
    """``user``'s sessions one day apart, each (program, cap, belt time), ended at their cap."""
    start = time.time() - 86_400 * (len(runs) + 1)
    for n, (program, cap, belt) in enumerate(runs, start=1):
        at = start + 86_400 * n
        fields: dict[str, JsonScalar] = {
            "session_id": str(n), "user": user, "program": program, "cap_s": cap,
        }  # fmt: skip
        journal.record(Event(EventType.SESSION_STARTED, 0.0, fields), at)
        ended: dict[str, JsonScalar] = {
            "session_id": str(n),
            "reason": "cap",
            "belt_moving_s": belt,
        }
        journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), at + belt + 10)


def test_a_start_from_history_never_asks_more_than_the_proposal_shown(tmp_path: Path) -> None:
    """Intervals named by hand once in week 1 and run to their cap: the proposal shown (the
    patient view's) is reverse walking at 5 min, and a start from history gets that, not
    intervals stepped up as if the plan had moved the user on; with a pain rise in that
    session, the hold shown bounds it too."""
    loaded = load_config(ROOT / "config" / "sim.toml")
    journal = Journal.open(tmp_path / "j.sqlite", max_size_mb=64)
    _sessions(journal, "p-hand", [("first_session", 180.0, 180.0), ("intervals", 480.0, 480.0)])
    zone = loaded.config.clinic.zone()
    got = work_out(journal, "p-hand", loaded.rules, loaded.programs, zone=zone, now=time.time())
    assert isinstance(got, StartChoice)
    shown = got.proposal
    assert (shown["program"], shown["cap_s"]) == ("reverse_walking", 300.0), shown
    assert (got.program, got.cap_s) == ("reverse_walking", 300.0), got
    for when, pain in (("before", 2), ("after", 6)):
        entry: dict[str, JsonScalar] = {"session_id": "2", "when": when, "pain": pain}
        journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, entry), time.time() - 3600)
    held = work_out(journal, "p-hand", loaded.rules, loaded.programs, zone=zone, now=time.time())
    assert isinstance(held, StartChoice)
    assert held.proposal["held"] is True
    assert (held.program, held.cap_s) == (held.proposal["program"], held.proposal["cap_s"])
    journal.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["missing", "invalid"])
async def test_a_configuration_that_cannot_be_loaded_is_each_answer_of_one_worker(
    tmp_path: Path, fault: str
) -> None:
    """The configuration removed or broken on disk since the daemon started: every request
    is answered saying so, by the one worker (not a worker started, failing and started
    again for each request), and the start from history is refused with that reason."""
    config = tmp_path / "treadguard.toml"
    if fault == "invalid":
        config.write_text("[drive\nkind = 7\n")
    worker = WorkerProcess(config, "0" * 64)
    try:
        first = await worker.ask("p-1", time.time())
        assert worker._proc is not None
        pid = worker._proc.pid
        second = await worker.ask("p-2", time.time())
        assert worker._proc is not None
        assert worker._proc.pid == pid
    finally:
        await worker.close()
    for got, user in ((first, "p-1"), (second, "p-2")):
        assert isinstance(got, NotKnown), got
        assert f"the configuration ({config}) cannot be loaded now" in got.why
        assert ("cannot read" if fault == "missing" else "not valid TOML") in got.why
        assert "choose a program" in got.why, user


PARENT = """
import asyncio, sys, time
from pathlib import Path
from treadguard.controller.proposal_book import WorkerProcess

async def main() -> None:
    worker = WorkerProcess(Path(sys.argv[1]))
    await worker.ask("p-1", time.time())
    print(worker._proc.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _ended(pid: int) -> bool:
    """``pid`` has ended: gone, or a zombie nobody has reaped yet (its parent died)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_stopped_worker_ends_with_the_daemon_killed(config: Path) -> None:
    """A daemon (here: a process with the daemon's WorkerProcess) killed with SIGKILL, its
    worker stopped with SIGSTOP at that moment: the worker does not live on, holding the
    journal open, with nobody to end it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(config)], stdout=subprocess.PIPE, env=env, text=True
    )
    worker = 0
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        os.kill(worker, signal.SIGSTOP)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10.0
        while not _ended(worker) and time.monotonic() < deadline:
            time.sleep(0.02)  # a poll of /proc: the kernel's kill is what is waited for
        assert _ended(worker), "the stopped worker outlived the daemon"
    finally:
        parent.kill()
        if worker and not _ended(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_program_in_two_phases_shows_only_the_first_of_them_reached(tmp_path: Path) -> None:
    """Rules that run reverse walking again in a later maintenance phase (after intervals):
    a user who has run only reverse walking has reached its first phase, not the later one."""
    loaded = load_config(ROOT / "config" / "sim.toml")
    walking, intervals = loaded.rules.phase
    maintenance = walking.model_copy(update={"name": "maintenance", "from_week": 10})
    rules = loaded.rules.model_copy(update={"phase": [walking, intervals, maintenance]})
    journal = Journal.open(tmp_path / "j.sqlite", max_size_mb=64)
    _sessions(journal, "p-rw", [("first_session", 180.0, 180.0), ("reverse_walking", 300.0, 300.0)])
    record = journal.user_record("p-rw")
    journal.close()
    kept = _in_phase_reached(rules, record)
    assert [phase.name for phase in kept.phase] == [walking.name]
    assert "p-rw" not in kept.user  # no plan of the clinic's is made up for them


def test_rules_edited_after_the_worker_started_refuse_every_proposal(tmp_path: Path) -> None:
    """The clinic edits the rules file while the daemon runs (a user's cap): the worker looks
    at its files before each request, and from then on every request, and every check the
    keeper makes, is refused saying so; put back as it was, the rules serve again."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-rules")
    rules = tmp_path / "progression.toml"
    shipped = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    rules.write_text(shipped, encoding="utf-8")
    worker = WorkerConfig(config, fingerprint(load_config(config)))

    def answers(*lines: str) -> list[dict[str, object]]:
        out = io.StringIO()
        serve(worker, io.StringIO("".join(f"{line}\n" for line in lines)), out)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    request, check = json.dumps({"user": "p-1", "now": time.time()}), '{"check": true}'
    assert answers(request, check) == [answers(request)[0], {"check": True}]
    rules.write_text(shipped + '\n[user."p-1"]\ncap_s = 180\n', encoding="utf-8")
    refused, checked = answers(request, check)
    assert "was changed since the daemon started" in str(refused["not_known"])
    assert "was changed since the daemon started" in str(checked["not_known"])
    rules.write_text(shipped, encoding="utf-8")
    assert answers(check) == [{"check": True}]


def _answers(worker: WorkerConfig, *lines: str) -> list[dict[str, object]]:
    out = io.StringIO()
    serve(worker, io.StringIO("".join(f"{line}\n" for line in lines)), out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


CHECK = '{"check": true}'


def test_rules_that_appear_beside_the_configuration_are_seen(tmp_path: Path) -> None:
    """No rules file beside the configuration when the daemon started (the shipped rules
    serve): one written there later is the clinic's, and a proposal by the shipped rules is
    no longer what the file says. Moved away and an edited copy put back, the same."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-beside")
    worker = WorkerConfig(config, fingerprint(load_config(config)))
    assert _answers(worker, CHECK) == [{"check": True}]
    shipped = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    rules = tmp_path / "progression.toml"
    rules.write_text(shipped + '\n[user."p-1"]\ncap_s = 180\n', encoding="utf-8")
    (checked,) = _answers(worker, CHECK)
    assert "was changed since the daemon started" in str(checked["not_known"]), checked
    rules.rename(tmp_path / "progression.toml.orig")
    assert _answers(worker, CHECK) == [{"check": True}]  # the shipped rules again: as started
    rules.write_text(
        shipped.replace("clinician_may_confirm = true", "clinician_may_confirm = false")
    )
    (checked,) = _answers(worker, CHECK)
    assert "was changed since the daemon started" in str(checked["not_known"]), checked


def test_an_edit_that_lands_while_the_worker_loads_is_seen_at_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules edited the moment after the worker read them, before it could note how the
    files looked: the next request sees the edit (by what the files say, not how they look)."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-race")
    shipped = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    rules = tmp_path / "progression.toml"
    rules.write_text(shipped, encoding="utf-8")
    worker = WorkerConfig(config, fingerprint(load_config(config)))
    real = load_config
    edits = [shipped + '\n[user."p-1"]\ncap_s = 180\n']

    def edited_just_after(path: Path) -> LoadedConfig:
        loaded = real(path)
        if edits:
            rules.write_text(edits.pop(), encoding="utf-8")
        return loaded

    config.touch()  # a look that has changed: the worker loads again
    monkeypatch.setattr(proposal_worker, "load_config", edited_just_after)
    assert _answers(worker, CHECK) == [{"check": True}]  # read before the edit: as started
    (checked,) = _answers(worker, CHECK)
    assert "was changed since the daemon started" in str(checked["not_known"]), checked


def test_a_check_the_worker_does_not_answer_is_a_refusal(tmp_path: Path) -> None:
    """A worker that cannot answer the keeper's check (stuck, gone) has not shown that the
    configuration still serves: the check says why, never nothing."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-silent")
    process = WorkerProcess(config, fingerprint(load_config(config)))

    async def checks() -> tuple[str | None, str | None]:
        first = await process.check()  # the worker started, and answering
        proc = process._proc
        assert proc is not None
        process._timeout_s = 0.5  # the stopped worker is not waited on for the default 30 s
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            second = await process.check()
        finally:
            with contextlib.suppress(ProcessLookupError):  # the check's failure ended it
                os.kill(proc.pid, signal.SIGCONT)
            await process.close()
        return first, second

    first, second = asyncio.run(checks())
    assert first is None
    assert second is not None
    assert "could not be checked" in second, second


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` until it holds: the keeper's checks run on their own period."""
    deadline = time.monotonic() + within
    while not condition():  # bounded by the deadline
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)  # a poll's period, not a synchronisation


@pytest.fixture
def kept(tmp_path: Path) -> tuple[Path, Path, str]:
    """A configuration with its rules file beside it (as the shipped ones), and its journal."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-kept")
    rules = tmp_path / "progression.toml"
    shipped = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    rules.write_text(shipped, encoding="utf-8")
    Journal.open(tmp_path / "journal-tm-kept.sqlite").close()
    return config, rules, shipped


@pytest.mark.asyncio
async def test_a_worker_that_does_not_answer_refuses_starts_from_history_within_seconds(
    kept: tuple[Path, Path, str],
) -> None:
    """The worker stopped (SIGSTOP, or stuck on a long record): within the keeper's answer
    time, not the worker's 30 s time-out, every start from history is refused, saying so; once
    it answers again, they go ahead."""
    config, _, _ = kept
    keeper = BookKeeper(load_config(config), wall=time.time, commit=lambda: None)
    task = asyncio.create_task(keeper.run())
    try:
        await _until(lambda: keeper._worker._proc is not None, 15.0, "the worker started")
        proc = keeper._worker._proc
        assert proc is not None
        await _until(lambda: keeper.refusal() is None, 15.0, "the first check answered")
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            await _until(lambda: keeper.refusal() is not None, 15.0, "a refusal")
            took = time.monotonic() - stopped
            assert "has not answered the check" in str(keeper.refusal())
            assert took < 10.0, took  # CHECK_ANSWER_S and a check period, not 30 s
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await _until(lambda: keeper.refusal() is None, 15.0, "the refusal lifted")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_an_entry_worked_out_while_the_rules_were_edited_is_worked_out_again_once_back(
    kept: tuple[Path, Path, str],
) -> None:
    """A user's proposal asked for while the rules differed from the daemon's (their patient
    view opened meanwhile) says the configuration changed; the rules put back as they were,
    it is worked out again at once, never left saying so until a start asks."""
    config, rules, shipped = kept
    keeper = BookKeeper(load_config(config), wall=time.time, commit=lambda: None)
    task = asyncio.create_task(keeper.run())
    try:
        await _until(lambda: keeper._worker._proc is not None, 15.0, "the worker started")
        rules.write_text(shipped + '\n[user."p-1"]\ncap_s = 180\n', encoding="utf-8")
        keeper.book.ask("p-1")
        await _until(lambda: keeper.book.current("p-1") is not None, 15.0, "p-1 worked out")
        # The worker's finding holds for every start from history at once (a first session's
        # needs no entry), not from the keeper's next check.
        assert keeper.refusal() is not None
        stale = keeper.book.current("p-1")
        assert isinstance(stale, NotKnown), stale
        assert "was changed since the daemon started" in stale.why
        rules.write_text(shipped, encoding="utf-8")
        await _until(lambda: keeper.refusal() is None, 15.0, "the rules back")
        await _until(lambda: isinstance(keeper.book.current("p-1"), StartChoice), 15.0, "p-1 again")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
