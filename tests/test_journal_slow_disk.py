"""A slow disk holds up nothing but what must wait for it (SR-14 with SR-2, SR-9, SR-8).

strace, attached to the real daemon, makes every ``fsync`` and ``fdatasync`` it calls take
``SYNC_S`` longer: an SD card in a busy moment, or a disk shared with a backup. SR-14
keeps every safety event on disk before it is published, so what the tablet receives waits
for the disk; nothing else may. The control loop keeps reading the drive and the sensors and
decides a stop at once: a sync longer than the drive's and the sensors' time-outs (0.5 s)
must not end a session as a lost drive or a stale sensor, and a grip release is acted on
within its debounce, not after the sync.
"""

from __future__ import annotations

import asyncio
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt
import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok, sensor_user
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker, body

SYNC_S = 0.8  # longer than drive_timeout_s and sensor_timeout_s (0.5 s)
RUN_S = 5.0  # ten journal ticks, each a sync
TM = "tm-slow-disk"


@contextmanager
def slow_disk(pid: int, sync_s: float, record: Path, *, fail: bool = False) -> Iterator[None]:
    """strace attached to the running process ``pid`` and each of its threads, adding
    ``sync_s`` to every fsync and fdatasync they make (``fail``: making them fail with EIO
    instead), and writing each (thread id first) to ``record``. The daemon is signalled as
    always, not through strace."""
    inject = "error=EIO" if fail else f"delay_exit={int(sync_s * 1e6)}"
    tracer = subprocess.Popen(
        [
            "strace",
            "-p",
            str(pid),
            "-f",
            "-o",
            str(record),
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            f"inject=fsync,fdatasync:{inject}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tracer.stderr is not None
        # "strace: Process PID attached" once per thread: the first says it has begun.
        with selectors.DefaultSelector() as sel:
            sel.register(tracer.stderr, selectors.EVENT_READ)
            assert sel.select(10.0), "strace did not attach"
        line = tracer.stderr.readline()
        assert "attached" in line, line
        yield
    finally:
        tracer.terminate()  # detaches: the daemon runs on as it was
        tracer.wait(timeout=10)


pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None, reason="needs strace (scripts/test installs it)"
)


@pytest.mark.asyncio
async def test_sr9_sr8_a_session_runs_on_and_a_grip_release_stops_it_at_once_on_a_slow_disk(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    daemon = make_daemon(treadmill_id=TM, sensors="mqtt")
    syncs = tmp_path / "syncs.strace"
    assert daemon.proc is not None
    p = f"treadmill/{TM}"
    async with sensor_user(broker, TM) as user, clinician(broker, TM) as doc:
        await doc.state(lambda s: s["stale"] == [], within=10.0)
        with slow_disk(daemon.proc.pid, SYNC_S, syncs):
            await doc.start_running("u-disk", program="first_session")
            # Every state the tablet gets for RUN_S seconds (several slow syncs) says running.
            seen = 0
            end = time.monotonic() + RUN_S
            while (left := end - time.monotonic()) > 0:
                try:
                    state = await doc.state(lambda s: True, within=left)
                except TimeoutError:
                    break
                seen += 1
                assert state["state"] == "running", (state, daemon.log_text()[-3000:])
            assert seen >= 2, "no state came while the belt ran"

            released = time.time()
            user.values["grip_left"] = user.values["grip_right"] = False
            message = await doc.tab.next(
                f"{p}/events", lambda m: body(m)["type"] == "estop", within=15.0
            )
            arrived = time.time()
            estop = body(message)
            assert estop["cause"] == "grip_lost", estop
            # Decided within the grip debounce (0.3 s) and a sensor report or two (0.1 s
            # each), not after a sync.
            assert estop["ts"] - released < 0.6, (estop, released, daemon.log_text()[-3000:])
            # SR-14: published only once it was on disk, so after a sync of its own.
            assert arrived - estop["ts"] >= SYNC_S, (estop, arrived)
            ended = await doc.state(lambda s: s["state"] == "estop", within=10.0)
            assert ended["latched"]["cause"] == "grip_lost"
    # Every sync was made, and none by the event loop's thread (whose id is the process's).
    threads = [line.split()[0] for line in syncs.read_text().splitlines() if "sync(" in line]
    assert len(threads) >= 3, syncs.read_text()
    assert str(daemon.proc.pid) not in threads, syncs.read_text()


@pytest.mark.asyncio
async def test_sr14_a_disk_that_fails_its_syncs_latches_the_fault_before_anything_unsynced_goes_out(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """Every sync fails (EIO): the refusal journaled for a command cannot be made durable.
    The journal fault is latched and published before the reply to that command, which
    waited for the sync."""
    daemon = make_daemon(treadmill_id=TM, sensors="mqtt")
    assert daemon.proc is not None
    p = f"treadmill/{TM}"
    async with sensor_user(broker, TM), clinician(broker, TM) as doc:
        await doc.state(lambda s: s["stale"] == [], within=10.0)
        doc.tab.drain(f"{p}/state")
        async with aiomqtt.Client("127.0.0.1", broker.port) as watcher:
            # One subscriber for both topics: messages come in the order they were published.
            await watcher.subscribe(f"{p}/state", qos=1)
            await watcher.subscribe(f"{p}/reply", qos=1)
            with slow_disk(daemon.proc.pid, 0.0, tmp_path / "eio.strace", fail=True):
                await doc.raw(b'{"id": "r-eio", "type": "set_speed", "mph": 1.0}')
                order: list[str] = []
                async with asyncio.timeout(10.0):
                    async for message in watcher.messages:
                        got = body(message)
                        if not isinstance(got, dict):
                            continue
                        topic = str(message.topic)
                        latched = got.get("latched") if topic.endswith("/state") else None
                        if isinstance(latched, dict) and latched.get("cause") == "journal":
                            order.append("fault state")
                        if topic.endswith("/reply") and got.get("id") == "r-eio":
                            order.append("reply")
                            break
                assert order[:1] == ["fault state"], order
                assert order[-1] == "reply", order


@pytest.mark.asyncio
async def test_sr9_the_log_starts_over_between_sessions_off_the_loop_on_a_slow_disk(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """A journal small enough that one session takes its log past its limit: between two
    sessions the log is checkpointed and starts over on the checkpoint's thread (its header
    synced there), not in the next session's first commit on the loop; both sessions run."""
    daemon = make_daemon(
        treadmill_id=TM, sensors="mqtt", env={"TREADGUARD_JOURNAL__MAX_SIZE_MB": "0.5"}
    )
    assert daemon.proc is not None
    wal = tmp_path / f"journal-{TM}.sqlite-wal"
    syncs = tmp_path / "restart.strace"
    async with sensor_user(broker, TM), clinician(broker, TM) as doc:
        await doc.state(lambda s: s["stale"] == [], within=10.0)
        with slow_disk(daemon.proc.pid, SYNC_S, syncs):
            await doc.start_running("u-a", program="first_session")
            limit = 12 * 4096  # journal_size_limit for 0.5 MB: a tenth, at least 8 pages
            async with asyncio.timeout(30.0):
                while wal.stat().st_size <= limit:  # the session's records past the limit
                    await doc.state(lambda s: True, within=5.0)
            ok(await doc.command("stop"))
            await doc.state(
                lambda s: s["state"] == "idle" and s["speed_mph"] == 0.0, within=SESSION_WAIT_S
            )
            async with asyncio.timeout(30.0):
                while wal.stat().st_size > limit:  # noqa: ASYNC110 - a file has no event to await
                    await asyncio.sleep(0.1)  # checkpointed, started over and cut back, polled
            await doc.start_running("u-a", program="first_session")
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                state = await doc.state(lambda s: True, within=5.0)
                assert state["state"] == "running", (state, daemon.log_text()[-3000:])
    threads = [line.split()[0] for line in syncs.read_text().splitlines() if "sync(" in line]
    assert str(daemon.proc.pid) not in threads, syncs.read_text()
