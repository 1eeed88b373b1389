"""Waits and task groups for loops that go on after a failure (the reconnect loops).

Python 3.11's ``asyncio.TaskGroup`` cancels the task that holds it when a child fails; when
the child fails while the group is being left (its body has finished, it waits for the
children) it never takes that request back, and the task's ``cancelling()`` count stays
raised for the rest of its life. On 3.11.0-3.11.2 (Debian 12's Python) every later
``asyncio.timeout`` in that task then ends in ``CancelledError`` instead of ``TimeoutError``:
a reconnect loop's back-off ended the loop, "cancelled", and a daemon that looked alive was
deaf. Two rules keep a loop out of it, whatever the Python:

- :func:`in_own_task`: a task group that can fail while its caller goes on runs in a task of
  its own, which takes the raised count with it when it ends;
- :func:`wait_until_set`: a wait bounded in time that does not depend on the cancellation
  count at all (``asyncio.wait`` with a timeout, never ``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def in_own_task(coro: Coroutine[Any, Any, T], *, name: str) -> T:
    """Run ``coro`` in a task of its own and return (or raise) what it does.

    Cancelling the caller cancels that task (``await`` passes it on) and the caller then ends
    in ``CancelledError`` as before; whatever the task does to its own cancellation count
    stays with it."""
    return await asyncio.create_task(coro, name=name)


async def wait_until_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` has passed; True if it is set.

    A cancellation of the caller ends it in ``CancelledError`` as usual."""
    if event.is_set():
        return True
    waiter = asyncio.create_task(event.wait(), name="wait-until-set")
    try:
        await asyncio.wait({waiter}, timeout=max(0.0, timeout_s))
    finally:
        waiter.cancel()
    return event.is_set()
