"""Grip and fall contacts on GPIO lines (drivers/gpio_inputs.py).

What runs where:
- The reader's own logic (edge wake-ups, polling for freshness, a failing chip, retries) runs
  against a stand-in for libgpiod's line request whose descriptor is a real pipe, so the event
  loop's reader path is the real one.
- libgpiod itself is exercised for real only where it can fail here: a chip that does not
  exist, a device that is not a GPIO chip.
- Reading real lines needs a GPIO chip. The kernel's gpio-sim module provides one where it is
  loaded (configfs at /sys/kernel/config/gpio-sim, as root); that test is skipped on a machine
  without it, and this project's CI machine has neither configfs nor loadable modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gpiod
import pytest

from tests.drive_helpers import eventually
from treadguard.drivers.gpio_inputs import (
    GpioChipInputs,
    GpioLine,
    LineRequestLike,
    open_gpiod_request,
)

GPIO_SIM = Path("/sys/kernel/config/gpio-sim")


@dataclass(frozen=True)
class Edge:
    """An edge event as gpiod reports one."""

    line_offset: int
    event_type: gpiod.EdgeEvent.Type


class PipeLines:
    """A line request stand-in: ``levels`` are what a read returns; an edge queues an event
    and writes a byte to the pipe, which makes the descriptor readable as the kernel's is."""

    def __init__(self, levels: list[bool]) -> None:
        self.levels = levels
        self.events: list[Edge] = []
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.fail_reads = False
        self.released = False
        self.reads = 0

    @property
    def fd(self) -> int:
        return self._read_fd

    def get_values(self, lines: list[int | str] | None = None) -> Sequence[object]:
        if self.fail_reads:
            raise OSError(19, "No such device")
        self.reads += 1
        return list(self.levels)

    def read_edge_events(self, max_events: int | None = None) -> Sequence[Edge]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 64)
        events, self.events = self.events, []
        return events

    def edge(self, offset: int, *, rising: bool) -> None:
        kind = gpiod.EdgeEvent.Type.RISING_EDGE if rising else gpiod.EdgeEvent.Type.FALLING_EDGE
        self.events.append(Edge(offset, kind))
        os.write(self._write_fd, b"e")

    def release(self) -> None:
        self.released = True
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)


class Opener:
    """Hands out a fresh PipeLines per request; ``refuse`` makes requests fail."""

    def __init__(self, levels: list[bool]) -> None:
        self.levels = levels
        self.refuse: OSError | None = None
        self.requests: list[PipeLines] = []

    def __call__(
        self, chip: str, lines: Sequence[GpioLine]
    ) -> tuple[LineRequestLike, list[int | str]]:
        if self.refuse is not None:
            raise self.refuse
        request = PipeLines(self.levels)
        self.requests.append(request)
        return request, [entry.line for entry in lines]


class Seen:
    def __init__(self) -> None:
        self.latest: dict[int, bool] = {}
        self.history: list[tuple[int, bool]] = []
        self.count = 0

    def __call__(self, index: int, t: float, high: bool) -> None:
        self.latest[index] = high
        self.history.append((index, high))
        self.count += 1


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_sr8_levels_are_read_every_poll_while_nothing_changes() -> None:
    opener, seen = Opener([True, False]), Seen()
    gpio = GpioChipInputs(
        "/dev/gpiochip9", [GpioLine(17), GpioLine(27)], seen, poll_interval_s=0.01,
        open_request=opener,
    )  # fmt: skip
    task = asyncio.create_task(gpio.run())
    try:
        await eventually(lambda: gpio.reads >= 5, "five reads")
        assert seen.latest == {0: True, 1: False}
        assert seen.count >= 10  # every read reports every line: each one a fresh reading
    finally:
        await stop(task)
    assert opener.requests[0].released


@pytest.mark.asyncio
async def test_sr13_an_edge_is_read_at_once_not_at_the_next_poll() -> None:
    opener, seen = Opener([True]), Seen()
    # A poll so slow that only the edge path can deliver the change within the wait.
    gpio = GpioChipInputs(
        "/dev/gpiochip9", [GpioLine(17)], seen, poll_interval_s=60.0, open_request=opener
    )
    task = asyncio.create_task(gpio.run())
    try:
        await eventually(lambda: seen.latest == {0: True}, "the first read")
        opener.levels[0] = False
        opener.requests[0].edge(17, rising=False)
        await eventually(lambda: seen.latest == {0: False}, "the edge's read", timeout_s=2.0)
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_sr5_a_pulse_shorter_than_the_loops_reaction_is_not_lost() -> None:
    """A fall detector's relay blinks low for 5 ms while the loop is busy: by the time the
    reader runs the line is high again, but the edges say it was low, and that is passed on."""
    opener, seen = Opener([True, True]), Seen()
    gpio = GpioChipInputs(
        "/dev/gpiochip9", [GpioLine(5), GpioLine(6)], seen, poll_interval_s=60.0,
        open_request=opener,
    )  # fmt: skip
    task = asyncio.create_task(gpio.run())
    try:
        await eventually(lambda: seen.latest == {0: True, 1: True}, "the first read")
        request = opener.requests[0]
        request.edge(6, rising=False)
        request.edge(6, rising=True)  # back high before the reader ran
        await eventually(lambda: (1, False) in seen.history, "the pulse's low", timeout_s=2.0)
        i = seen.history.index((1, False))
        # The edges in order, then the levels read now.
        assert seen.history[i : i + 4] == [(1, False), (1, True), (0, True), (1, True)]
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_sr8_a_chip_that_fails_stops_the_readings_and_is_requested_again() -> None:
    opener, seen = Opener([True]), Seen()
    gpio = GpioChipInputs(
        "/dev/gpiochip9", [GpioLine(17)], seen, poll_interval_s=0.01, retry_s=0.05,
        open_request=opener,
    )  # fmt: skip
    task = asyncio.create_task(gpio.run())
    try:
        await eventually(lambda: gpio.reads >= 2, "two reads")
        first = opener.requests[0]
        first.fail_reads = True
        opener.refuse = OSError(2, "No such file or directory")  # unplugged, for a while
        await eventually(lambda: gpio.problem is not None, "the failure to be reported")
        assert gpio.problem is not None
        assert "No such device" in gpio.problem
        count = seen.count
        await eventually(lambda: "cannot request lines 17" in (gpio.problem or ""), "a retry")
        assert seen.count == count  # no reading while the chip cannot be read
        assert first.released
        opener.refuse = None
        await eventually(lambda: seen.count > count, "readings after the chip came back")
        assert gpio.problem is None
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_sr8_a_missing_chip_is_reported_by_libgpiod_and_gives_no_reading(
    tmp_path: Path,
) -> None:
    seen = Seen()
    missing = str(tmp_path / "gpiochip7")
    gpio = GpioChipInputs(missing, [GpioLine(17)], seen, poll_interval_s=0.01, retry_s=0.05)
    task = asyncio.create_task(gpio.run())
    try:
        await eventually(lambda: gpio.problem is not None, "the missing chip to be reported")
        assert gpio.problem == (
            f"cannot request lines 17 of {missing}: [Errno 2] No such file or directory"
        )
        assert seen.count == 0
    finally:
        await stop(task)


def test_two_inputs_on_one_line_are_refused_before_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "17" and "GPIO17" are one line: gpiod's request would merge them, and one contact would
    be two sensors. A stand-in chip names its lines as a Raspberry Pi's does."""

    class NamedChip:
        def __init__(self, path: str) -> None:
            self.path = path

        def __enter__(self) -> NamedChip:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def line_offset_from_id(self, line: int | str) -> int:
            return int(str(line).removeprefix("GPIO"))

        def request_lines(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("requested despite the duplicate")

    monkeypatch.setattr(gpiod, "Chip", NamedChip)
    with pytest.raises(ValueError, match="two inputs on one line"):
        open_gpiod_request("/dev/gpiochip0", [GpioLine(17), GpioLine("GPIO17")])


def test_a_device_that_is_not_a_gpio_chip_is_refused_by_libgpiod() -> None:
    with pytest.raises(OSError, match="No such device"):
        open_gpiod_request("/dev/null", [GpioLine(0)])


# --- real lines on the kernel's simulated GPIO chip, where this machine has one ---------------


@pytest.fixture
def sim_chip() -> Iterator[tuple[str, Path]]:
    """A gpio-sim chip with 8 lines: its /dev path and the sysfs folder of its lines."""
    if not GPIO_SIM.is_dir() or os.geteuid() != 0:
        pytest.skip(
            "needs the kernel's gpio-sim module (configfs /sys/kernel/config/gpio-sim) and root; "
            "this machine has no GPIO chip to read real lines from"
        )
    device = GPIO_SIM / f"treadguard-{uuid.uuid4().hex[:8]}"
    bank = device / "gpio-bank0"
    device.mkdir()
    bank.mkdir()
    (bank / "num_lines").write_text("8")
    (device / "live").write_text("1")
    try:
        chip_name = (bank / "chip_name").read_text().strip()
        dev_name = (device / "dev_name").read_text().strip()
        yield f"/dev/{chip_name}", Path("/sys/devices/platform") / dev_name / chip_name
    finally:
        (device / "live").write_text("0")
        bank.rmdir()
        device.rmdir()


@pytest.mark.asyncio
async def test_real_lines_on_gpio_sim_edges_and_levels(sim_chip: tuple[str, Path]) -> None:
    chip, lines_dir = sim_chip
    seen = Seen()
    gpio = GpioChipInputs(
        chip, [GpioLine(2, bias="pull_down"), GpioLine(5)], seen, poll_interval_s=60.0
    )
    (lines_dir / "sim_gpio5" / "pull").write_text("pull-up")
    task = asyncio.create_task(gpio.run())
    try:
        await eventually(lambda: seen.latest == {0: False, 1: True}, "the first read")
        (lines_dir / "sim_gpio2" / "pull").write_text("pull-up")
        await eventually(lambda: seen.latest.get(0) is True, "the rising edge", timeout_s=2.0)
        (lines_dir / "sim_gpio5" / "pull").write_text("pull-down")
        await eventually(lambda: seen.latest.get(1) is False, "the falling edge", timeout_s=2.0)
    finally:
        await stop(task)
