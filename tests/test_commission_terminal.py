"""The guided commissioning's terminal (`treadguard commission` on the machine, here its own
process on the simulated treadmill, its standard input a pipe): read for the whole run, so
that `q` gives up at any moment, also while the run waits for the belt rather than for the
technician, and an Enter typed when nothing is asked answers nothing; and a run whose last
request the tablet answered exits with its outcome, its terminal still open
(docs/commissioning.md, H-43)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.clinician import Clinician, clinician, ok
from tests.commission_terminal import PROMPT, CommissionProcess, commission
from tests.daemon_process import daemon_config
from tests.guided_commissioning import DAEMON_END_S, RUN_WAIT_S, next_request, run_of, state_where
from tests.mosquitto import Broker
from treadguard.controller.journal import Journal

START_S = 60.0  # the process up, the daemon's assembly running, the first request asked


def _moving_up(state: dict[str, Any]) -> bool:
    """The run waits for the belt (coming up to the proof speed), the belt moving."""
    run = run_of(state)
    speed = state["speed_mph"]
    return run is not None and run["waiting"] == "belt" and isinstance(speed, float) and speed > 0.2


@asynccontextmanager
async def belt_coming_up(
    broker: Broker, tm: str
) -> AsyncIterator[tuple[CommissionProcess, Clinician]]:
    """`treadguard commission` on the simulated treadmill, the technician's Enter given to
    its first request (standing on the belt), and the belt coming up to the proof speed."""
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm, sensors="simulator")
    async with commission(config, broker.workdir) as proc, clinician(broker, tm) as doc:
        await proc.until(f"^{PROMPT}", START_S)
        await proc.type("")  # standing on the belt
        await state_where(doc, _moving_up, RUN_WAIT_S)
        yield proc, doc


@pytest.mark.asyncio
async def test_q_on_the_terminal_while_the_run_waits_for_the_belt_stops_it_at_once(
    broker: Broker,
) -> None:
    """The technician confirms standing on the belt with Enter; while the belt comes up to the
    proof speed (nothing asked of them), they type q: an emergency stop at once, not at the
    next request, and the run is journaled as aborted."""
    tm = "tm-term-q"
    async with belt_coming_up(broker, tm) as (proc, doc):
        typed = time.monotonic()
        await proc.type("q")
        state = await doc.until(lambda s: s["latched"] is not None, within=2.0)
        assert time.monotonic() - typed < 2.0
        assert state["latched"]["cause"] == "remote_estop"
        code = await proc.exit_code(DAEMON_END_S)
    assert code == 1, proc.text
    assert "aborted: the technician gave up" in proc.text
    journal = Journal.read_only(broker.workdir / f"journal-{tm}.sqlite")
    (row,) = journal.commissioning_runs()
    assert row.outcome == "aborted"


@pytest.mark.asyncio
async def test_a_run_answered_on_the_tablet_exits_with_its_outcome_its_terminal_open(
    broker: Broker,
) -> None:
    """Every request answered from the tablet, the terminal open and silent but for one Enter
    typed while the run waits for the belt (it answers nothing, and the terminal says so).
    The built-in simulated user never lets go of a grip, so the left grip's proof fails: the
    process exits 1 with the run's outcome, cleanly (no reader left blocked on its input)."""
    tm = "tm-term-tablet"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm, sensors="simulator")
    async with commission(config, broker.workdir) as proc, clinician(broker, tm) as doc:
        done: set[tuple[str, str]] = set()
        typed_enter = False
        while True:
            run = await next_request(doc, done)
            if run["outcome"] is not None:
                break
            ok(await doc.command("commission_confirm", step=run["step"], ask=run["ask"]))
            done.add((run["step"], run["ask"]))
            if not typed_enter:
                await state_where(doc, _moving_up, RUN_WAIT_S)
                mark = len(proc.lines)
                await proc.type("")
                await proc.until("nothing is asked now", 5.0, after=mark)
                typed_enter = True
        assert run["outcome"] == "failed", run
        code = await proc.exit_code(DAEMON_END_S)
    stderr = proc.stderr.read_text(errors="replace")
    assert code == 1, proc.text + stderr
    assert "Fatal Python error" not in stderr
    assert "FAIL left grip released" in proc.text


@pytest.mark.asyncio
async def test_a_run_cut_short_by_sighup_is_journaled_and_said_as_aborted(
    broker: Broker,
) -> None:
    """The SSH session drops while the belt comes up to the proof speed (SIGHUP): the belt
    stops under control, the run is journaled as aborted, cut short, and the command says so
    (not that it never ran)."""
    tm = "tm-term-hup"
    async with belt_coming_up(broker, tm) as (proc, _):
        proc.proc.send_signal(signal.SIGHUP)
        code = await proc.exit_code(DAEMON_END_S)
    assert code == 1, proc.text
    assert "commissioning aborted: cut short: treadguard was told to end" in proc.text
    assert "did not run" not in proc.text
    journal = Journal.read_only(broker.workdir / f"journal-{tm}.sqlite")
    (row,) = journal.commissioning_runs()
    assert row.outcome == "aborted"
    assert row.detail == "cut short: treadguard was told to end"
