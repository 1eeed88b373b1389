"""Periodic test clients (heartbeats, sensors) that end when told to, not when cancelled.

On Python 3.11 ``asyncio.wait_for``, which aiomqtt awaits every publication with, swallows a
cancellation that arrives just as the publication completes (fixed in 3.12). A loop that
relied on ``task.cancel()`` to end would then run on for good, and the test waiting for it
would hang. The daemon's own link stops on a flag for the same reason (controller/mqtt_link.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiomqtt


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
