"""When a sensor's reading counts as taken (SR-8, SR-16), from its own stamp and its arrival.

A sensor stamps its readings with its own clock (MQTT: unix seconds); that clock may be wrong by
any amount, may step forward or back (NTP on a device without a real-time clock), and may be
forged. The daemon's wall clock is no better. So no stamp is compared with the daemon's wall
clock; order and freshness come from the monotonic clock at arrival, and a reading's own stamp
is compared only with the same sensor's earlier stamps:

- A stamp that is not finite is no reading.
- A stamp that runs ahead of the monotonic time elapsed since the sensor's previous reading by
  more than ``MAX_AHEAD_S`` is no reading: that much is clock trouble or a forgery, never a
  reading taken "later" than it could have been.
- A stamp that lags behind shows the reading waited somewhere (a broker's queue, a radio's
  buffer): it counts as that much older than its arrival. The wait is measured against the
  sensor's quickest delivery (the smallest arrival-minus-stamp) within the last ``WINDOW_S`` of
  arrivals, so a buffer that starts to hold readings back makes them stale at once, and a clock
  that stepped back makes the readings look old (unsafe) until the window has passed.

Pure: no clock is read here; every time arrives as an argument.
"""

from __future__ import annotations

import math
from collections import deque

MAX_AHEAD_S = 1.0  # SR-8: a stamp ahead by more than this is no reading
# How long the quickest delivery seen is kept as the measure of a reading's wait: long enough
# to outlast a stop (a clock stepped back makes readings stale, so the belt stops), short
# enough that a sensor whose clock stepped back serves a new session after it.
WINDOW_S = 10.0


class SensorClock:
    """One sensor's stamps. :meth:`reading_time` turns a stamp and its arrival (the controller's
    monotonic clock) into the time the reading counts from, or None: no reading."""

    def __init__(self, *, max_ahead_s: float = MAX_AHEAD_S, window_s: float = WINDOW_S) -> None:
        self._max_ahead_s = max_ahead_s
        self._window_s = window_s
        self._previous: tuple[float, float] | None = None  # (stamp, arrival)
        # (arrival, arrival - stamp) of the readings taken, the smallest offsets only: the
        # sliding-window minimum.
        self._offsets: deque[tuple[float, float]] = deque()

    def reading_time(self, stamp: float, arrival: float) -> float | None:
        if not (math.isfinite(stamp) and math.isfinite(arrival)):
            return None
        previous = self._previous
        self._previous = (stamp, arrival)
        if previous is not None:
            ahead = (stamp - previous[0]) - max(0.0, arrival - previous[1])
            if ahead > self._max_ahead_s:
                # Measured against the stamp just before, whether that one was taken or not:
                # a clock stepped forward costs one reading, and the next one, in step with
                # it, is taken with a fresh measure of the delivery (see below).
                return None
        offset = arrival - stamp
        if not math.isfinite(offset):
            return None
        window = self._offsets
        while window and window[0][0] < arrival - self._window_s:
            window.popleft()
        while window and window[-1][1] >= offset:
            window.pop()
        window.append((arrival, offset))
        # The reading waited this much longer than the quickest delivery of the window.
        waited = offset - window[0][1]
        return arrival - waited
