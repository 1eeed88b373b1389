"""A guided commissioning (``treadguard commission`` without ``--simulated``) for tests: the
daemon's whole assembly with the run as its errand, in the test's own process (so that the
test can pull the simulated drive's cable), over the test's Mosquitto, answered from the
tablet's side; and a technician who does, on the simulated treadmill, what the run asks.

The physical actions are the technician's: the grip and fall sensors over MQTT (a
:class:`tests.clinician.SensorUser`), the drive's cable (the daemon's in-process rig). The
confirmations are the test's to send: a command over MQTT, or a tap on the tablet page.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.clinician import Clinician, SensorUser
from tests.daemon_process import daemon_config
from tests.drive_helpers import eventually
from tests.mosquitto import body
from treadguard.config.loading import LoadedConfig
from treadguard.controller.commission import CommissioningResult, guided_errand
from treadguard.controller.daemon import Daemon
from treadguard.controller.preflight import load_runnable

# The proof programs' shortest cap here: the cap's proof waits for it, and every other proof
# is done within it (the grips' two take one proof run, with four requests answered).
PROOF_CAP_S = 15.0
# From one request of the run to the next: a proof run's start and its stop, or the cap.
RUN_WAIT_S = PROOF_CAP_S + 30.0
DAEMON_END_S = 20.0  # the daemon's shutdown after the run (SR-11's bound, and some)


def guided_config(tmp_path: Path, port: int, tm: str) -> Path:
    """A daemon configuration on the simulated drive, its sensors over MQTT."""
    return daemon_config(tmp_path, port, treadmill_id=tm, sensors="mqtt")


def with_short_proof_cap(loaded: LoadedConfig) -> LoadedConfig:
    """``loaded`` with its default program (the proof runs') allowing a cap of PROOF_CAP_S:
    the shipped 3 minutes would make the cap's proof wait that long in real time. Set past
    the loader (``model_copy`` does not validate), which refuses a first-session program whose
    cap may be under 3 minutes (SR-7); a proof run is no patient's first session."""
    name = loaded.config.programs.default
    short = loaded.programs[name].model_copy(
        update={"cap_s_default": PROOF_CAP_S, "cap_s_min": PROOF_CAP_S}
    )
    return replace(loaded, programs={**loaded.programs, name: short})


def run_of(state: dict[str, Any]) -> dict[str, Any] | None:
    """The state's guided run (docs/daemon.md), None without one."""
    commissioning = state.get("commissioning")
    run = commissioning.get("run") if isinstance(commissioning, dict) else None
    return run if isinstance(run, dict) else None


async def state_where(
    doc: Clinician, where: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    """The newest state if it satisfies ``where``, else the next that does, within ``within``
    seconds however long the daemon publishes nothing (a state goes out on a change only)."""
    if doc.latest is not None and where(doc.latest):
        return doc.latest
    async with asyncio.timeout(within):
        while True:
            state = body(await doc.tab.next(f"{doc.p}/state", within=within))
            assert isinstance(state, dict)
            doc.latest = state
            if where(state):
                return state


async def next_request(doc: Clinician, done: set[tuple[str, str]]) -> dict[str, Any]:
    """The run's next request of the technician not among ``done`` (step, ask), or its end."""

    def new(state: dict[str, Any]) -> bool:
        run = run_of(state)
        if run is None:
            return False
        if run["outcome"] is not None:
            return True
        return run["waiting"] == "technician" and (run["step"], run["ask"]) not in done

    run = run_of(await state_where(doc, new, RUN_WAIT_S))
    assert run is not None
    return run


@dataclass
class GuidedDaemon:
    daemon: Daemon
    task: asyncio.Task[int]
    results: list[CommissioningResult]
    lines: list[str] = field(default_factory=list)

    async def ended(self) -> CommissioningResult:
        """The run's result, once the daemon has shut down after it."""
        async with asyncio.timeout(DAEMON_END_S + RUN_WAIT_S):
            assert await asyncio.shield(self.task) == 0
        (result,) = self.results
        return result


@asynccontextmanager
async def guided_daemon(config: Path) -> AsyncIterator[GuidedDaemon]:
    """The daemon with a guided run as its errand, answered from the tablet only (no
    terminal). On the way out it is shut down as by SIGTERM if it still runs."""
    results: list[CommissioningResult] = []
    lines: list[str] = []
    errand = guided_errand(
        technician="T. Tester", echo=lines.append, results=results, terminal=None
    )
    daemon = Daemon(with_short_proof_cap(load_runnable(config)), errand=errand)
    task = asyncio.create_task(daemon.run(), name="guided-daemon")
    try:
        yield GuidedDaemon(daemon, task, results, lines)
    finally:
        if not task.done():
            daemon._on_signal(signal.SIGTERM)  # a clean shutdown: the belt stopped first
        with suppress(TimeoutError):
            async with asyncio.timeout(DAEMON_END_S):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


class Technician:
    """Does on the simulated treadmill what the run asks (its ``ask``), before confirming."""

    def __init__(self, guided: GuidedDaemon, user: SensorUser) -> None:
        self.daemon = guided.daemon
        self.user = user

    async def perform(self, ask: str) -> None:
        values = self.user.values
        rig = self.daemon.rig
        assert rig is not None
        if ask in ("stand_on", "hold_both"):
            values.update(grip_left=True, grip_right=True)
        elif ask == "release_left":
            values["grip_left"] = False
        elif ask == "release_right":
            values["grip_right"] = False
        elif ask == "release_both":
            values.update(grip_left=False, grip_right=False)
        elif ask == "fall":
            values["fall"] = True
        elif ask == "stand_up":
            values["fall"] = False
        elif ask == "cut_link":
            rig.unplug()
        elif ask == "restore_link":
            # They watch the belt run down (nobody polls the drive while its cable is out),
            # then plug the cable back in.
            clock = self.daemon.clock

            def still() -> bool:
                rig.belt.advance(clock.time())
                return not rig.belt.moving()

            await eventually(still, "the belt standing still with its cable out", 10.0)
            rig.plug()
        else:
            assert ask == "give_estop", ask  # the confirmation gives it (or the page's E-STOP)
