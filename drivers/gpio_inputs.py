"""Grip and fall contacts on GPIO lines, read through libgpiod v2 (the ``gpiod`` package).

One :class:`GpioChipInputs` per chip requests all of its lines as inputs with edge detection.
An edge wakes the event loop through the request's file descriptor, so a released grip or a
fall reaches the controller at once (SR-13); between edges the levels are read every
``poll_interval_s`` anyway, and each successful read is a fresh reading: a chip that stops
answering stops the readings, and the safety core's time-out makes the sensor stale (SR-8).

The levels passed on are the electrical ones (True = high): polarity and debounce are applied
by :mod:`drivers.input_filter`, one place for every kind of wired input, so gpiod's own
``active_low`` and kernel debounce are left off.

A chip or line that cannot be requested (missing device, line taken by another program, no
permission) is logged with the reason and tried again every ``retry_s``: the sensor stays
stale, and the core refuses starts, until it can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

_log = logging.getLogger("treadguard.drivers.gpio_inputs")

BiasName = Literal["as_is", "pull_up", "pull_down", "disabled"]
# (index of the line in the list given, time of the read, level is high)
LevelCallback = Callable[[int, float, bool], None]


@dataclass(frozen=True, slots=True)
class GpioLine:
    line: int | str  # offset on the chip, or the line's name
    bias: BiasName = "as_is"


class EdgeEventLike(Protocol):
    """What is used of ``gpiod.EdgeEvent``."""

    @property
    def line_offset(self) -> int: ...

    @property
    def event_type(self) -> object: ...  # EdgeEvent.Type: RISING_EDGE or FALLING_EDGE


class LineRequestLike(Protocol):
    """What is used of ``gpiod.LineRequest``."""

    @property
    def fd(self) -> int: ...

    def get_values(self, lines: list[int | str] | None = None) -> Sequence[object]: ...

    def read_edge_events(self, max_events: int | None = None) -> Sequence[EdgeEventLike]: ...

    def release(self) -> None: ...


OpenRequest = Callable[[str, Sequence[GpioLine]], tuple[LineRequestLike, list[int | str]]]


def open_gpiod_request(
    chip: str, lines: Sequence[GpioLine]
) -> tuple[LineRequestLike, list[int | str]]:
    """Request ``lines`` of ``chip`` as inputs with both edges detected; returns the request
    and the offsets to read, in the order of ``lines``. OSError when it cannot be done."""
    import gpiod
    from gpiod.line import Bias, Direction, Edge

    bias = {
        "as_is": Bias.AS_IS,
        "pull_up": Bias.PULL_UP,
        "pull_down": Bias.PULL_DOWN,
        "disabled": Bias.DISABLED,
    }
    with gpiod.Chip(chip) as handle:
        offsets: list[int | str] = [handle.line_offset_from_id(entry.line) for entry in lines]
        if len(set(offsets)) != len(offsets):
            # Two inputs on one line ("17" and "GPIO17"): one contact would be two sensors, and
            # gpiod's request would silently merge them.
            raise ValueError(f"two inputs on one line: {[e.line for e in lines]} are {offsets}")
        config: dict[int | str, gpiod.LineSettings | None] = {
            offset: gpiod.LineSettings(
                direction=Direction.INPUT, edge_detection=Edge.BOTH, bias=bias[entry.bias]
            )
            for offset, entry in zip(offsets, lines, strict=True)
        }
        request = handle.request_lines(config, consumer="treadguard")  # type: ignore[arg-type]
    return request, offsets


def _is_high(value: object) -> bool:
    # gpiod.line.Value is truthy when ACTIVE; with active_low off, active is the high level.
    return bool(value)


def _rising(event: EdgeEventLike) -> bool:
    return getattr(event.event_type, "name", "") == "RISING_EDGE"


class GpioChipInputs:
    def __init__(
        self,
        chip: str,
        lines: Sequence[GpioLine],
        on_level: LevelCallback,
        *,
        poll_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = 1.0,
        open_request: OpenRequest = open_gpiod_request,
    ) -> None:
        if not lines:
            raise ValueError("no lines to read")
        self.chip = chip
        self._lines = list(lines)
        self._on_level = on_level
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._retry_s = retry_s
        self._open_request = open_request
        self._broken: asyncio.Event | None = None
        self._problem: str | None = None
        self.reads = 0  # successful reads, for tests and diagnostics

    @property
    def problem(self) -> str | None:
        """Why the lines cannot be read right now; None while they are read."""
        return self._problem

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                request, offsets = self._open_request(self.chip, self._lines)
            except (OSError, ValueError) as exc:
                # ValueError: gpiod's answer to a line name the chip does not have.
                self._set_problem(f"cannot request lines {self._describe()} of {self.chip}: {exc}")
                await asyncio.sleep(self._retry_s)
                continue
            broken = self._broken = asyncio.Event()
            index_of = {offset: i for i, offset in enumerate(offsets)}
            loop.add_reader(request.fd, self._on_edges, request, offsets, index_of)
            try:
                while not broken.is_set():
                    self._read(request, offsets)
                    try:
                        async with asyncio.timeout(self._poll_interval_s):
                            await broken.wait()
                    except TimeoutError:
                        pass
            except OSError as exc:
                self._set_problem(f"reading {self.chip} failed: {exc}")
            except Exception as exc:
                # Whatever else goes wrong is a failed read too: released, requested again,
                # and never the end of the reader (or of the daemon's task group).
                _log.exception("unexpected error reading %s", self.chip)
                self._set_problem(f"reading {self.chip} failed: {exc!r}")
            finally:
                loop.remove_reader(request.fd)
                with contextlib.suppress(OSError):
                    request.release()
            await asyncio.sleep(self._retry_s)

    def _describe(self) -> str:
        return ", ".join(str(entry.line) for entry in self._lines)

    def _on_edges(
        self, request: LineRequestLike, offsets: list[int | str], index_of: dict[int | str, int]
    ) -> None:
        """The request's descriptor is readable: edges happened. Each edge's level is passed
        on in order, then the level read now: a pulse shorter than the loop's reaction (a
        fall detector's relay blinking during a journal write) still reaches the filter,
        which takes its unsafe half at once."""
        try:
            t = self._clock()
            for event in request.read_edge_events():
                index = index_of.get(event.line_offset)
                if index is not None:
                    self._on_level(index, t, _rising(event))
            self._read(request, offsets)
        except Exception as exc:
            self._set_problem(f"reading {self.chip} failed: {exc!r}")
            # The descriptor may stay readable: no more callbacks until the request is new.
            asyncio.get_running_loop().remove_reader(request.fd)
            if self._broken is not None:
                self._broken.set()

    def _read(self, request: LineRequestLike, offsets: list[int | str]) -> None:
        t = self._clock()  # before the read: the reading is at least as old as this
        values = request.get_values(offsets)
        if len(values) != len(offsets):
            raise OSError(f"asked for {len(offsets)} lines, got {len(values)} values")
        self.reads += 1
        if self._problem is not None:
            _log.warning("gpio %s readable again", self.chip)
            self._problem = None
        for index, value in enumerate(values):
            self._on_level(index, t, _is_high(value))

    def _set_problem(self, problem: str) -> None:
        if problem != self._problem:
            _log.error("gpio: %s", problem)
        self._problem = problem
