"""The real daemon under the signals a terminal sends a command run by hand (`treadguard run`,
`treadguard commission`, which runs the daemon's assembly): SIGHUP (the terminal or the SSH
session gone) ends it as SIGTERM does, the belt brought to a controlled stop first; job
control (Ctrl-Z's SIGTSTP) does not freeze the process that drives the belt."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.clinician import clinician, running
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1])
async def test_sighup_brings_the_belt_to_a_controlled_stop_and_ends_the_daemon(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, sig: signal.Signals
) -> None:
    """SIGHUP, and the signals that would otherwise end the process at once with no stop sent
    (Ctrl-\\'s SIGQUIT, SIGUSR1): the controlled stop of SIGTERM."""
    tm = f"tm-{sig.name.lower()}"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-hup", program="first_session")
        daemon.signal(sig)
        ended = await doc.event("session_ended")
    assert ended["reason"] == "shutdown", ended
    assert daemon.wait() == 0
    assert f'"signal": "{sig.name}"' in daemon.log_text()


@pytest.mark.asyncio
async def test_ctrl_z_does_not_freeze_the_daemon_driving_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    tm = "tm-sigtstp"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-tstp", program="first_session")
        daemon.signal(signal.SIGTSTP)
        doc.tab.drain(f"{doc.p}/state")
        # Still ticking: the states keep coming (the session's time goes on), and it stops.
        later = await doc.state(lambda s: True, within=3.0)
        assert running(later), later
        await doc.command("stop")
        await doc.until(lambda s: s["state"] == "idle", within=15.0)


def test_a_daemon_whose_drive_never_answered_ends_at_once_with_no_stop_on_record(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """A Trackmaster on a port that is not there: the daemon never moved a belt, so a SIGTERM
    ends it at once, with no emergency stop waited for and recorded that nobody pressed."""
    daemon = make_daemon(
        treadmill_id="tm-never-answered",
        sensors="mqtt",
        drive='kind = "trackmaster"\nport = "/dev/ttyUSB9-absent"',
        commissioned=False,
    )
    deadline = time.monotonic() + 15.0
    while "daemon_started" not in daemon.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll of the daemon's log for its start
    daemon.signal(signal.SIGTERM)
    sent = time.monotonic()
    assert daemon.wait() == 0
    assert time.monotonic() - sent < 5.0  # SR-11's 10 s bound not waited out
    log = daemon.log_text()
    assert "shutdown_standstill_timeout" not in log
    assert '"drive": "never answered"' in log
