"""A virtual clock with the two methods of an asyncio loop that the controller uses.

``time()`` and ``call_at()`` behave like asyncio's, but time only moves when the next callback
is due, so a whole session runs in a fraction of a second and the same inputs always give the
same timeline: callbacks due at the same time run in the order they were scheduled.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class VirtualHandle:
    __slots__ = ("_args", "_callback", "_cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class VirtualLoop:
    def __init__(self, t0: float = 0.0) -> None:
        self._now = t0
        self._queue: list[tuple[float, int, VirtualHandle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> VirtualHandle:
        now = self._now
        # max(when, now) without the call (a NaN ``when`` stays NaN, as with max).
        when = now if now > when else when
        handle = VirtualHandle(when, callback, args)
        heapq.heappush(self._queue, (when, next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> VirtualHandle:
        return self.call_at(self._now + delay, callback, *args)

    def run_until(self, t_end: float) -> None:
        """Run every callback due up to and including ``t_end``, then stand at ``t_end``."""
        queue = self._queue
        pop = heapq.heappop
        # The handle's fields read here rather than through its methods: this loop runs every
        # callback of a simulated session (about 23,000 in 8 minutes).
        while queue and queue[0][0] <= t_end:
            when, _, handle = pop(queue)
            if handle._cancelled:
                continue
            self._now = when
            handle._callback(*handle._args)
        self._now = max(self._now, t_end)
