"""Periodic test clients (heartbeats, sensors) that end when told to, not when cancelled.

On Python 3.11 ``asyncio.wait_for``, which aiomqtt awaits every publication with, swallows a
cancellation that arrives just as the publication completes (fixed in 3.12). A loop that
relied on ``task.cancel()`` to end would then run on for good, and the test waiting for it
would hang. The daemon's own link stops on a flag for the same reason (controller/mqtt_link.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import aiomqtt

T = TypeVar("T")


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """A loop's period: ``seconds``, or less once ``stop`` is set."""
    with suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


@asynccontextmanager
async def periodic(
    loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[None]:
    """Run ``loop(stop)`` in a task for the ``async with`` block. On the way out ``stop`` is
    set (the loop ends at its next check, whatever happened to a cancellation) and the task is
    cancelled too (so a long wait ends at once), then awaited."""
    stop = asyncio.Event()
    task = asyncio.create_task(loop(stop))
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


class Elsewhere:
    """An event loop on a thread of its own, and a way to run a coroutine on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine`` run on that loop, awaited from this one."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))


@asynccontextmanager
async def elsewhere(name: str) -> AsyncIterator[Elsewhere]:
    """An event loop on a thread of its own (named ``name``) for the ``async with`` block, as
    a device is a machine of its own: a test process busy with its clients and browsers (CI
    runs several at once) never holds up what runs there."""
    there = Elsewhere(asyncio.new_event_loop())
    thread = threading.Thread(target=there.loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield there
    finally:
        there.loop.call_soon_threadsafe(there.loop.stop)
        await asyncio.to_thread(thread.join, 10.0)
        there.loop.close()


@asynccontextmanager
async def periodic_elsewhere(
    loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str
) -> AsyncIterator[Elsewhere]:
    """As :func:`periodic`, with ``loop(stop)`` on an event loop of a thread of its own
    (:func:`elsewhere`): a sensor the daemon takes as stale went silent because the test said
    so. What the test hands it (its values) is read by that loop as it goes;
    :meth:`Elsewhere.run` runs one more coroutine there (a publication out of turn)."""
    async with elsewhere(name) as there:

        async def begin() -> tuple[asyncio.Event, asyncio.Task[None]]:
            stop = asyncio.Event()
            return stop, asyncio.create_task(loop(stop))

        stop, task = await there.run(begin())

        async def end() -> None:
            stop.set()
            task.cancel()
            # Bounded: an MQTT client's exit waits for a broker, which a test may have stopped.
            with suppress(asyncio.CancelledError, aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(10.0):
                    await task

        try:
            yield there
        finally:
            await there.run(end())
