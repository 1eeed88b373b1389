"""The board's network to one test at a time, across pytest-xdist's workers (and any other
test run on this machine).

The doctor's network check asks every socket of the machine that listens beyond loopback,
whoever holds it (controller/network_probe.py): a test that opens such a socket (a relay, a
proxy on every address, a broker on the board's address) changes what another test's doctor
finds, and a doctor run of its own is changed by another test's. Such tests, and every doctor
run, hold this lock while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator

import pytest_asyncio

LOCK = "/tmp/treadguard-tests-board-network.lock"
WAIT_S = 900.0  # bound: the longest any holder keeps it, many times over
_held = 0  # how deep this process holds it (a doctor run inside a test that holds it)
_fd: int | None = None


@contextlib.asynccontextmanager
async def alone_on_the_network() -> AsyncIterator[None]:
    """Held until the block ends; taken again by the same process, it is only counted."""
    global _held, _fd
    if _held == 0:
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + WAIT_S
        while True:  # bounded: WAIT_S
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"{LOCK} held for more than {WAIT_S:g} s") from None
                # A poll for a lock another process holds: its release is what is waited for.
                await asyncio.sleep(0.05)
        _fd = fd
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if _held == 0 and _fd is not None:
            os.close(_fd)  # closing it releases the lock
            _fd = None


@pytest_asyncio.fixture
async def board_network() -> AsyncIterator[None]:
    """The whole test alone on the board's network."""
    async with alone_on_the_network():
        yield
