"""`treadguard sim-device`: a simulated treadmill a technician can point any client at."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from pymodbus.client import ModbusTcpClient

TREADGUARD = [sys.executable, "-m", "treadguard.controller.cli"]
ROOT = Path(__file__).resolve().parent.parent


def first_line(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    """The device's first line of output (its address), waiting at most ``timeout_s``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            proc.kill()
            raise AssertionError("sim-device printed nothing")
    return proc.stdout.readline().strip()


@pytest.fixture
def device(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [*TREADGUARD, "sim-device", *request.param],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, first_line(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("device", [["trackmaster"]], indirect=True)
def test_trackmaster_device_answers_any_serial_client(
    device: tuple[subprocess.Popen[str], str],
) -> None:
    proc, path = device
    assert path.startswith("/dev/")
    with serial.Serial(path, 4800, timeout=2) as port:
        port.write(bytes([0xC0]))  # belt status: D0, then 0x31 = stopped (docs/wire-protocols.md)
        assert port.read(2) == bytes([0xD0, 0x31])
        port.write(bytes([0xA3, 0x30, 0x30, 0x31, 0x32]))  # set speed 1.2 mph
        assert port.read(1) == bytes([0xB3])
        port.write(bytes([0xC3]))  # set speed read back: D3 "0012"
        assert port.read(5) == bytes([0xD3, 0x30, 0x30, 0x31, 0x32])
        port.write(bytes([0xCF]))  # not a status request: DF
        assert port.read(1) == bytes([0xDF])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("device", [["modbus", "--tcp", "127.0.0.1:0"]], indirect=True)
def test_modbus_device_answers_any_modbus_client(
    device: tuple[subprocess.Popen[str], str],
) -> None:
    proc, address = device
    host, _, port = address.rpartition(":")
    client = ModbusTcpClient(host, port=int(port), timeout=2)
    assert client.connect()
    try:
        # 09.02 = 1 (ramp to stop) and 09.03 = 5 (0.5 s): the defaults of a safe drive.
        params = client.read_holding_registers(0x0902, count=2, device_id=1)
        assert params.registers == [1, 5]
        assert not client.write_register(0x2001, 1600, device_id=1).isError()
        assert client.read_holding_registers(0x2001, count=1, device_id=1).registers == [1600]
    finally:
        client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "device",
    [
        [
            "modbus",
            "--tcp",
            "127.0.0.1:0",
            "--line-delay-ms",
            "20",
            "--exception",
            "4",
            "--exception-on",
            "writes",
        ]
    ],
    indirect=True,
)
def test_modbus_device_injects_exceptions_and_line_delay(
    device: tuple[subprocess.Popen[str], str],
) -> None:
    """SR-9 fault injection from the command line: writes refused with exception 4 (device
    failure) while reads answer, every answer 20 ms late."""
    proc, address = device
    host, _, port = address.rpartition(":")
    client = ModbusTcpClient(host, port=int(port), timeout=2)
    assert client.connect()
    try:
        began = time.monotonic()
        params = client.read_holding_registers(0x0902, count=2, device_id=1)
        assert time.monotonic() - began >= 0.02
        assert params.registers == [1, 5]
        refused = client.write_register(0x2000, 0x21, device_id=1)
        assert refused.isError()
        assert refused.exception_code == 4
    finally:
        client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_modbus_device_needs_one_transport() -> None:
    proc = subprocess.run(
        [*TREADGUARD, "sim-device", "modbus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--tcp" in proc.stderr
