"""What the book of proposals (controller/proposal_book.py) costs the event loop.

A start from history reads the user's proposal from the book; the book works proposals out in
a process of its own (controller/proposal_worker.py). On a thread of the daemon the work would
share the interpreter's lock with the event loop, which runs the control tick and handles an
E-STOP. What matters is how late the loop's timers run meanwhile: one process, one event loop,
a 1 ms timer whose lateness is measured, in interleaved rounds with the keeper idle, with it
working out again and again a user of ``--sessions`` sessions of 20 record entries each (the
record changed after every proposal), and with the same proposals worked out on a thread of
this process instead (the baseline). Also: one proposal of that record in the worker, and a
start's look-up in the book.

    .venv/bin/python benchmarks/bench_proposal_book.py [--sessions 2000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from _common import python_speed_s, row, save, summary

from treadguard.config.loading import load_config
from treadguard.controller.journal import Journal
from treadguard.controller.proposal_book import BookKeeper, NotKnown, StartChoice, work_out

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")
ROUND_S = 2.0
TIMER_S = 0.001


def seed(path: Path, sessions: int) -> None:
    Journal.open(path, max_size_mb=4096).close()
    now = time.time()
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO sessions VALUES (?, 'p-long', ?, 300, ?, ?, 'cap', 300, 1)",
            [(n, "first_session" if n == 1 else "reverse_walking",
              now - 86_400 * (sessions - n + 2), now - 86_400 * (sessions - n + 2) + 320)
             for n in range(1, sessions + 1)],
        )  # fmt: skip
        entry = json.dumps({"when": "after", "pain": 3, "notes": "walked well " * 4})
        db.executemany(
            "INSERT INTO events (ts, type, session_id, fields)"
            " VALUES (?, 'outcome_recorded', ?, ?)",
            [(now - 86_400, n, entry) for n in range(1, sessions + 1) for _ in range(20)],
        )


async def lateness(seconds: float) -> list[float]:
    """How late (ms) a 1 ms timer runs, again and again for ``seconds``."""
    late: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        due = time.perf_counter() + TIMER_S
        await asyncio.sleep(TIMER_S)
        late.append((time.perf_counter() - due) * 1e3)
    return late


async def churn(
    keeper: BookKeeper, answered: asyncio.Event, stop: asyncio.Event, worked: list[float]
) -> None:
    """The record changes again as soon as each proposal is worked out: the keeper never
    rests. ``worked``: each proposal's time (ms), change to answer."""
    while not stop.is_set():
        answered.clear()
        t0 = time.perf_counter()
        keeper.book.changed("p-long")
        await answered.wait()
        worked.append((time.perf_counter() - t0) * 1e3)


async def on_a_thread(path: Path, stop: asyncio.Event) -> None:
    """The same proposals worked out on a thread of this process instead, as a baseline."""
    while not stop.is_set():
        await asyncio.to_thread(_work_out_here, path)


def _work_out_here(path: Path) -> None:
    journal = Journal.read_only(path)
    try:
        work_out(
            journal, "p-long", SIM.rules, SIM.programs, zone=SIM.config.clinic.zone(),
            now=time.time(),
        )  # fmt: skip
    finally:
        journal.close()


async def main(sessions: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite"
        seed(path, sessions)
        os.environ["TREADGUARD_JOURNAL__PATH"] = str(path)  # for the worker's configuration
        keeper = BookKeeper(
            load_config(ROOT / "config" / "sim.toml"),  # with the journal's path just set
            wall=time.time,
            commit=lambda: None,
        )
        put = keeper.book.put
        answered = asyncio.Event()

        def put_and_say(user: str, token: tuple[int, int], outcome: StartChoice | NotKnown) -> None:
            put(user, token, outcome)
            answered.set()

        keeper.book.put = put_and_say  # type: ignore[method-assign]
        runner = asyncio.create_task(keeper.run())
        keeper.book.ask("p-long")
        while not isinstance(keeper.book.choice("p-long"), StartChoice):
            answered.clear()
            await answered.wait()  # the first proposal, worked out at start-up
        idle: list[float] = []
        busy: list[float] = []
        threaded: list[float] = []
        worked: list[float] = []
        for _ in range(rounds):  # the three interleaved, sharing the machine's noise
            idle += await lateness(ROUND_S)
            stop = asyncio.Event()
            task = asyncio.create_task(churn(keeper, answered, stop, worked))
            busy += await lateness(ROUND_S)
            stop.set()
            await task
            stop = asyncio.Event()
            task = asyncio.create_task(on_a_thread(path, stop))
            threaded += await lateness(ROUND_S)
            stop.set()
            await task
        look: list[float] = []
        for _ in range(20_000):
            t0 = time.perf_counter_ns()
            keeper.book.choice("p-long")
            look.append((time.perf_counter_ns() - t0) / 1e3)
        runner.cancel()
    speed = python_speed_s()
    figures: dict[str, Any] = {
        "sessions": sessions,
        "entries_per_session": 20,
        "timer_late_idle_ms": summary(idle),
        "timer_late_while_working_out_ms": summary(busy),
        "timer_late_while_a_thread_works_out_ms": summary(threaded),
        "proposal_worked_out_ms": summary(worked),
        "start_look_up_us": summary(look),
        "python_10m_loop_s": speed,
    }
    print(f"a user of {sessions} sessions, 20 record entries each; 10M-step loop {speed:.2f} s")
    print(row("1 ms timer, late by, keeper idle", figures["timer_late_idle_ms"], "ms"))
    print(
        row("1 ms timer, late by, keeper working", figures["timer_late_while_working_out_ms"], "ms")
    )
    print(
        row(
            "  ... the same on a thread instead",
            figures["timer_late_while_a_thread_works_out_ms"],
            "ms",
        )
    )
    print(row("one proposal worked out (worker)", figures["proposal_worked_out_ms"], "ms"))
    print(row("a start's look-up in the book", figures["start_look_up_us"], "us"))
    print(f"saved {save('proposal_book', figures)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.rounds))
