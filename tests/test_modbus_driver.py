"""The Modbus VFD driver against the simulated VFD over real transports (SR-9, SR-10, SR-13).

Modbus TCP on a real socket on 127.0.0.1 (a free port the server picks), Modbus RTU on real
raw-mode ptys, pymodbus's real server on the far side; nothing mocked. Command words and frames
are compared with golden values from docs/wire-protocols.md and the Modbus specification.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import pytest
from pymodbus.client import ModbusTcpClient

from tests.drive_helpers import ControlTicks, eventually, status_of
from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.drivers.vfd_codec import RegisterMap
from treadguard.simulator.belt import BeltParams
from treadguard.simulator.modbus_device import (
    ModbusDeviceServer,
    SimulatedVfd,
    serve_modbus_rtu,
    serve_modbus_tcp,
)

ROOT = Path(__file__).resolve().parents[1]
DELTA_MAP = ROOT / "config" / "drives" / "delta-vfd-e.toml"
RMAP = RegisterMap.from_toml(DELTA_MAP)
MPH_PER_HZ = 0.05
# A brisk belt so a test reaches speed and standstill in a fraction of a second.
FAST_BELT = BeltParams(accel_mph_s=4.0, decel_mph_s=4.0, estop_decel_mph_s=8.0, lag_s=0.02)

# docs/wire-protocols.md: bits 0-1 01 stop / 10 run, bits 4-5 10 reverse.
STOP_REVERSE = 0b10_0001
RUN_REVERSE = 0b10_0010
# Modbus "write single register" PDU: function 06, address 0x2000, value 0x0021.
STOP_PDU = bytes([0x06, 0x20, 0x00, 0x00, 0x21])
DEADMAN_S = 0.5  # the simulated drive's default 09.03 = 5 (0.5 s)
DETECT_S = 0.3  # a dead link shows in status() within this

Kind = Literal["tcp", "rtu"]
KINDS: list[Kind] = ["tcp", "rtu"]


class VfdSettings(TypedDict, total=False):
    """The simulated drive's own parameters a test sets (09.02 and 09.03)."""

    comm_fault_action: int
    comm_timeout: int


def make_vfd(**settings: Unpack[VfdSettings]) -> SimulatedVfd:
    return SimulatedVfd(RMAP, mph_per_hz=MPH_PER_HZ, belt_params=FAST_BELT, **settings)


async def serve(kind: Kind, vfd: SimulatedVfd, port: int = 0) -> ModbusDeviceServer:
    if kind == "tcp":
        return await serve_modbus_tcp("127.0.0.1", port, vfd=vfd)
    return await serve_modbus_rtu(vfd=vfd)


@contextlib.asynccontextmanager
async def simulated_drive(
    kind: Kind, vfd: SimulatedVfd | None = None
) -> AsyncIterator[tuple[SimulatedVfd, ModbusDeviceServer]]:
    vfd = vfd or make_vfd()
    server = await serve(kind, vfd)
    try:
        yield vfd, server
    finally:
        await server.close()
        await vfd.close()


def make_driver(
    server: ModbusDeviceServer, rmap: RegisterMap = RMAP, **options: object
) -> ModbusVfdDriver:
    if server.transport == "tcp":
        assert server.port is not None
        return ModbusVfdDriver(
            "tcp",
            host="127.0.0.1",
            port=server.port,
            register_map=rmap,
            mph_per_hz=MPH_PER_HZ,
            **options,  # type: ignore[arg-type]
        )
    return ModbusVfdDriver(
        "rtu",
        serial_port=server.path,
        register_map=rmap,
        mph_per_hz=MPH_PER_HZ,
        **options,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running(driver: ModbusVfdDriver) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run())
    try:
        yield task
    finally:
        await cancel_and_wait(task)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel the driver and wait for it to end: bounded, so a driver that swallowed its cancel
    fails the test instead of hanging it."""
    task.cancel()
    async with asyncio.timeout(5):
        with contextlib.suppress(asyncio.CancelledError):
            await task


def advanced_past(driver: ModbusVfdDriver, t: float) -> Callable[[], bool]:
    return lambda: status_of(driver).t > t


def healthy(driver: ModbusVfdDriver) -> bool:
    st = driver.status()
    return st is not None and st.fault is None


def faulted(driver: ModbusVfdDriver, prefix: str = "") -> bool:
    st = driver.status()
    return st is not None and st.fault is not None and st.fault.startswith(prefix)


async def start_belt(driver: ModbusVfdDriver, vfd: SimulatedVfd, ticks: ControlTicks) -> None:
    """Bring the belt to 1.0 mph the way the controller does: stop while idle, then run."""
    ticks.target = 0.0
    await eventually(lambda: healthy(driver), "a healthy status")
    # The driver runs only after a stop asked for once the link was seen healthy.
    seen = ticks.ticks
    await eventually(lambda: ticks.ticks >= seen + 2, "two ticks asking for a stop")
    ticks.target = 1.0
    await vfd.wait_until(lambda: vfd.running and vfd.belt.speed_mph > 0.95, timeout_s=5)


# --- normal operation ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_start_speed_stop_reverse(kind: Kind) -> None:
    async with simulated_drive(kind) as (vfd, server):
        driver = make_driver(server)
        async with running(driver):
            # Asked before the controller has seen the link: ignored, never written.
            driver.command_speed(1.0)
            await eventually(lambda: healthy(driver), "a healthy status")
            assert vfd.commanded_words == [STOP_REVERSE]  # stop first (SR-11), nothing else
            assert driver.ignored_run_commands == 1

            driver.command_speed(0.0)  # the controller's idle tick
            driver.command_speed(1.0)
            await vfd.wait_until(lambda: vfd.running, timeout_s=5)
            assert vfd.frequency_command == 2000  # 1.0 mph / 0.05 mph/Hz = 20.00 Hz
            assert vfd.direction == "reverse"
            assert vfd.commanded_words == [STOP_REVERSE, RUN_REVERSE]
            await eventually(
                lambda: abs(status_of(driver).speed_mph - 1.0) < 0.01, "1.0 mph read back"
            )

            driver.command_speed(1.2)
            await vfd.wait_until(lambda: vfd.frequency_command == 2400, timeout_s=5)
            await eventually(
                lambda: abs(status_of(driver).speed_mph - 1.2) < 0.01, "1.2 mph read back"
            )
            # status() is the drive's output frequency (0x2103), not the command echoed.
            assert abs(status_of(driver).speed_mph - vfd.belt.speed_mph) < 0.02

            driver.command_speed(0.0)
            await vfd.wait_until(lambda: not vfd.running, timeout_s=5)
            assert vfd.commanded_words[-1] == STOP_REVERSE
            await eventually(lambda: status_of(driver).speed_mph == 0.0, "standstill read back")
            assert status_of(driver).fault is None
            assert vfd.comm_timeout_trips == []  # polling kept the drive's deadman quiet (SR-9)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_emergency_stop_preempts(kind: Kind) -> None:
    """SR-13: the stop word is the first frame after emergency_stop(); the speed change asked
    for just before it is never sent."""
    frames: list[bytes] = []

    def trace(sending: bool, frame: bytes) -> bytes:
        if sending:
            frames.append(frame)
        return frame

    async with simulated_drive(kind) as (vfd, server):
        driver = make_driver(server, trace_packet=trace)
        async with running(driver):
            async with ControlTicks(driver) as ticks:
                await start_belt(driver, vfd, ticks)
            mark = len(frames)
            driver.command_speed(1.2)
            driver.emergency_stop()
            await vfd.wait_until(lambda: not vfd.running, timeout_s=5)
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=5)

    pdus = [_pdu(kind, frame) for frame in frames[mark:]]
    assert pdus[0] == STOP_PDU
    assert not any(pdu[:3] == bytes([0x06, 0x20, 0x01]) for pdu in pdus)  # no frequency write
    assert vfd.frequency_command == 2000
    assert vfd.commanded_words[-1] == STOP_REVERSE


def _pdu(kind: Kind, frame: bytes) -> bytes:
    # TCP: 7-byte MBAP header, then the PDU. RTU: device id, the PDU, a 2-byte CRC.
    return frame[7:] if kind == "tcp" else frame[1:-2]


# --- start-up refusal (SR-9) ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("settings", "parameter", "value"),
    [
        ({"comm_timeout": 0}, "09.03", 0),  # time-out disabled
        ({"comm_timeout": 11}, "09.03", 11),  # 1.1 s, longer than 1.0 s
        ({"comm_fault_action": 3}, "09.02", 3),  # keep running
        ({"comm_fault_action": 0}, "09.02", 0),  # warn and keep running
    ],
)
async def test_startup_refusal_never_writes_run(
    settings: VfdSettings, parameter: str, value: int
) -> None:
    """SR-9: an unsafe drive-side deadman is refused; the fault names the parameter and value."""
    async with simulated_drive("tcp", make_vfd(**settings)) as (vfd, server):
        driver = make_driver(server)
        async with running(driver):
            await eventually(lambda: faulted(driver), "the refusal")
            fault = status_of(driver).fault
            assert fault is not None
            assert fault.startswith("drive_config:")
            assert f"parameter {parameter}" in fault
            assert f" is {value} " in fault
            # A controller that insists: stop, then run, over several polls.
            for _ in range(5):
                before = status_of(driver).t
                driver.command_speed(0.0)
                driver.command_speed(1.0)
                # Polling goes on (the belt stays visible), so t advances.
                await eventually(advanced_past(driver, before), "the next poll")
            assert status_of(driver).fault == fault
    # The stop word at start-up, and again on the way out of run() (SR-9, SR-11).
    assert vfd.commanded_words == [STOP_REVERSE, STOP_REVERSE]
    assert driver.run_writes == 0
    assert not vfd.running


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_exception_response_is_a_drive_fault() -> None:
    """A map pointing at an address the drive does not have: exception 2 -> drive_fault."""
    bad_map = replace(RMAP, output_frequency=0x2110)
    async with simulated_drive("tcp") as (vfd, server):
        driver = make_driver(server, rmap=bad_map)
        async with running(driver):
            await eventually(lambda: faulted(driver), "the fault")
            fault = status_of(driver).fault
            assert fault is not None
            assert fault.startswith("drive_fault:")
            assert "illegal address" in fault
            assert "0x2110" in fault
            driver.command_speed(0.0)
            driver.command_speed(1.0)
            before = vfd.requests
            await vfd.wait_until(lambda: vfd.requests > before + 3, timeout_s=5)
    assert driver.run_writes == 0
    assert not vfd.running


@pytest.mark.asyncio
async def test_write_refused_by_the_drive_is_a_fault_and_stops() -> None:
    """The drive answers 'illegal value' to 4.0 mph (80 Hz > its 60 Hz maximum)."""
    async with simulated_drive("tcp") as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            ticks.target = 4.0
            await eventually(lambda: faulted(driver, "drive_fault:"), "the fault")
            fault = status_of(driver).fault
            assert fault is not None
            assert "illegal value" in fault
            assert "frequency command" in fault
            await vfd.wait_until(lambda: not vfd.running, timeout_s=5)
    assert vfd.commanded_words[-1] == STOP_REVERSE
    assert vfd.frequency_command == 2000


@pytest.mark.asyncio
async def test_drive_error_code_is_a_drive_fault() -> None:
    async with simulated_drive("tcp") as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            vfd.inject_error(7)
            await eventually(lambda: faulted(driver, "drive_fault:"), "the fault")
            assert "error code 7" in (status_of(driver).fault or "")


# --- a dead link (SR-9) -----------------------------------------------------------------------


async def _cut(kind: Kind, server: ModbusDeviceServer) -> None:
    if kind == "tcp":
        await server.close()  # the server stops; the drive itself keeps running
    else:
        server.unplug()  # the RS-485 cable is pulled


async def _restore(kind: Kind, server: ModbusDeviceServer, vfd: SimulatedVfd) -> ModbusDeviceServer:
    if kind == "tcp":
        assert server.port is not None
        return await serve(kind, vfd, port=server.port)
    server.plug()
    return server


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_dead_link_faults_keeps_stopping_and_never_restarts(kind: Kind) -> None:
    """SR-9: a dead link shows within 300 ms and status() stops advancing; stop attempts go on;
    the drive's own time-out stops the belt; when the link returns the belt stays stopped even
    though a stale controller still asks for 1.0 mph; only a stop then a start runs it again."""
    vfd = make_vfd()
    server = await serve(kind, vfd)
    try:
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)

            cut_at = time.monotonic()
            await _cut(kind, server)
            await eventually(lambda: faulted(driver, "drive_link:"), "the link fault", 2.0)
            lost = status_of(driver)
            assert lost.t - cut_at < DETECT_S

            attempts = driver.connect_attempts
            await eventually(lambda: driver.connect_attempts >= attempts + 3, "stop attempts")
            assert status_of(driver).t == lost.t  # no answers, no new status

            # The drive-side deadman stops the belt within its time-out.
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=5)
            [trip] = vfd.comm_timeout_trips
            assert trip.stopped
            assert DEADMAN_S <= trip.t - trip.last_request_t < DEADMAN_S + 0.2

            words_before = len(vfd.command_log)
            server = await _restore(kind, server, vfd)
            await eventually(lambda: healthy(driver), "the link back", 10.0)
            requests = vfd.requests
            await vfd.wait_until(lambda: vfd.requests > requests + 10, timeout_s=5)
            new_words = vfd.commanded_words[words_before:]
            assert new_words  # stop attempts reached the drive once the link was back
            assert set(new_words) == {STOP_REVERSE}  # never a run
            assert not vfd.running
            assert vfd.belt.speed_mph == 0.0

            # A fresh stop-then-start from the controller does run it: the link is fine.
            ticks.target = 0.0
            seen = ticks.ticks
            await eventually(lambda: ticks.ticks >= seen + 2, "two ticks asking for a stop")
            before = driver.run_writes
            ticks.target = 1.0
            await vfd.wait_until(lambda: vfd.running, timeout_s=5)
            await eventually(lambda: driver.run_writes == before + 1, "the run answered")
    finally:
        await server.close()
        await vfd.close()


# --- the drive-side deadman when the host dies (SR-9) -------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_sr9_sr11_driver_task_cancelled_writes_the_stop_word(kind: Kind) -> None:
    """A cancelled driver writes the stop word on its way out, over either transport; the belt
    stops by it, not by the drive's deadman (which the SIGKILL test below shows)."""
    async with simulated_drive(kind) as (vfd, server):
        driver = make_driver(server)
        task = asyncio.create_task(driver.run())
        async with ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
        await cancel_and_wait(task)
        assert task.cancelled()
        await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=5)
    assert vfd.comm_timeout_trips == []
    assert vfd.commanded_words[-1] == STOP_REVERSE


CHILD = """
import asyncio, sys
from pathlib import Path
from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.drivers.vfd_codec import RegisterMap

async def main() -> None:
    rmap = RegisterMap.from_toml(Path(sys.argv[2]))
    driver = ModbusVfdDriver("tcp", host="127.0.0.1", port=int(sys.argv[1]),
                             register_map=rmap, mph_per_hz=0.05)
    asyncio.get_running_loop().create_task(driver.run())
    target = 0.0
    while True:  # a minimal controller: stop until the drive is healthy, then 1.0 mph
        st = driver.status()
        driver.command_speed(target)
        if st is not None and st.fault is None:
            target = 1.0
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_driver_process_sigkilled_drive_stops_the_belt() -> None:
    async with simulated_drive("tcp") as (vfd, server):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(server.port), str(DELTA_MAP), cwd=ROOT, env=env
        )
        try:
            await vfd.wait_until(lambda: vfd.running and vfd.belt.speed_mph > 0.95, timeout_s=30)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=5)
    assert proc.returncode == -signal.SIGKILL
    [trip] = vfd.comm_timeout_trips
    assert trip.stopped
    assert DEADMAN_S <= trip.t - trip.last_request_t < DEADMAN_S + 0.2


@pytest.mark.asyncio
async def test_keep_running_drive_keeps_running_when_the_host_dies() -> None:
    """Why SR-9 refuses 09.02 = 3: such a drive, started by any client, runs on after silence."""
    async with simulated_drive("tcp", make_vfd(comm_fault_action=3)) as (vfd, server):
        assert server.port is not None
        await asyncio.to_thread(_sync_start, server.port)
        await vfd.wait_until(lambda: vfd.belt.speed_mph > 0.95, timeout_s=5)
        silent_since = vfd.last_request_t
        await vfd.wait_until(lambda: vfd.belt.t > silent_since + 2 * DEADMAN_S, timeout_s=5)
        assert vfd.running
        assert vfd.belt.speed_mph > 0.95
        assert vfd.comm_timeout_trips[0].stopped is False


# --- independent clients ------------------------------------------------------------------------


def _sync_start(port: int) -> None:
    with ModbusTcpClient("127.0.0.1", port=port, timeout=2) as client:
        assert not client.write_register(0x2001, 2000, device_id=1).isError()
        assert not client.write_register(0x2000, RUN_REVERSE, device_id=1).isError()


def _sync_session(port: int) -> list[int]:
    """pymodbus's plain synchronous client, none of the driver's code."""
    with ModbusTcpClient("127.0.0.1", port=port, timeout=2) as client:
        params = client.read_holding_registers(0x0902, count=2, device_id=1)
        assert not params.isError()
        assert not client.write_register(0x2001, 1600, device_id=1).isError()
        assert not client.write_register(0x2000, 0x12, device_id=1).isError()  # run forward
        status = client.read_holding_registers(0x2100, count=4, device_id=1)
        assert not status.isError()
        bad = client.read_holding_registers(0x2110, count=1, device_id=1)
        assert bad.isError()
        assert bad.exception_code == 2
        return [*params.registers, *status.registers]


@pytest.mark.asyncio
async def test_pymodbus_sync_client_reads_and_writes_the_simulated_vfd() -> None:
    async with simulated_drive("tcp") as (vfd, server):
        assert server.port is not None
        values = await asyncio.to_thread(_sync_session, server.port)
        assert values[:2] == [1, 5]  # 09.02 = 1 (ramp to stop), 09.03 = 5 (0.5 s)
        assert values[2] == 0  # no error
        assert values[4] == 1600  # frequency command read back (0x2102)
        assert vfd.running
        assert vfd.direction == "forward"


@pytest.mark.asyncio
async def test_driver_stops_a_drive_left_running() -> None:
    """SR-11: at start-up the driver's first frame stops whatever the drive was doing."""
    async with simulated_drive("tcp") as (vfd, server):
        assert server.port is not None
        await asyncio.to_thread(_sync_start, server.port)
        await vfd.wait_until(lambda: vfd.running, timeout_s=5)
        driver = make_driver(server)
        async with running(driver):
            await vfd.wait_until(lambda: not vfd.running, timeout_s=5)
            await eventually(lambda: healthy(driver), "a healthy status")
    # Stopped first, the stop word repeated until standstill, never anything else.
    assert vfd.commanded_words[0] == RUN_REVERSE
    assert set(vfd.commanded_words[1:]) == {STOP_REVERSE}


async def _mbpoll(
    server: ModbusDeviceServer, address: int, *, count: int = 1, write: int | None = None
) -> str:
    """One mbpoll call; -0: addresses as on the wire (0-based), -1: once, -o 2: 2 s time-out."""
    if server.transport == "tcp":
        options, target = ["-m", "tcp", "-p", str(server.port)], "127.0.0.1"
    else:
        assert server.path is not None
        options, target = ["-m", "rtu", "-b", "19200", "-P", "none"], server.path
    options += ["-a", "1", "-0", "-1", "-o", "2", "-r", str(address)]
    # mbpoll [options] host|device [values to write]
    args = [*options, "-c", str(count), target] if write is None else [*options, target, str(write)]
    proc = await asyncio.create_subprocess_exec(
        "mbpoll", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    return text


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll not installed")
@pytest.mark.parametrize("kind", KINDS)
async def test_mbpoll_reads_and_writes_the_simulated_vfd(kind: Kind) -> None:
    """An independent client (libmodbus) we did not write talks to the simulated drive."""
    async with simulated_drive(kind) as (vfd, server):
        out = await _mbpoll(server, 0x0902, count=2)
        assert "[2306]: \t1" in out  # 09.02 = 1, ramp to stop
        assert "[2307]: \t5" in out  # 09.03 = 5, 0.5 s
        await _mbpoll(server, 0x2001, write=2000)
        await _mbpoll(server, 0x2000, write=RUN_REVERSE)
        assert vfd.running
        assert vfd.direction == "reverse"
        out = await _mbpoll(server, 0x2102)
        assert "[8450]: \t2000" in out
        await _mbpoll(server, 0x2000, write=STOP_REVERSE)
        assert not vfd.running
