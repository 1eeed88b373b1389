"""From a wired contact's electrical level to a sensor reading, failing closed.

``active`` says which level means "asserted": a grip held, or a fall signalled. The filter's
one rule: the unsafe reading counts at once, the safe one only after the level has stayed safe
for the whole debounce time. A bouncing contact can therefore delay a start (a grip that settles
into "held"), never a stop (SR-5: a fall counts at once; SR-4's own grip debounce lives in the
safety core and applies to what this filter passes on).

No clock is read here: each sample carries its time, as every safety input does.
"""

from __future__ import annotations

from dataclasses import dataclass

_EPS = 1e-9  # times are float seconds: 0.045 - 0.025 is a hair under 0.02


@dataclass(frozen=True, slots=True)
class Sample:
    """The level read at ``t`` (seconds, the controller's monotonic clock)."""

    t: float
    high: bool


class LevelFilter:
    """``asserted_is_safe``: True for a grip (asserted = held), False for a fall sensor
    (asserted = fallen). ``debounce_s`` = 0 passes every level through unchanged. Two samples
    more than ``max_gap_s`` apart restart a debounce in progress: what the level did in between
    is not known, so it has not been seen steady."""

    def __init__(
        self,
        *,
        active_high: bool,
        asserted_is_safe: bool,
        debounce_s: float,
        max_gap_s: float = float("inf"),
    ) -> None:
        if debounce_s < 0:
            raise ValueError(f"debounce must be 0 or more, not {debounce_s}")
        self._active_high = active_high
        self._asserted_is_safe = asserted_is_safe
        self._debounce_s = debounce_s
        self._max_gap_s = max_gap_s
        self._last_t: float | None = None
        # Since when the level has been safe without a break; None while it is unsafe.
        self._safe_since: float | None = None
        self._output_safe = False  # before any sample: unsafe

    def asserted(self, high: bool) -> bool:
        return high == self._active_high

    def update(self, sample: Sample) -> bool:
        """The filtered reading after ``sample``: True when asserted (held / fallen)."""
        safe_now = self.asserted(sample.high) == self._asserted_is_safe
        if (
            self._last_t is not None
            and sample.t - self._last_t > self._max_gap_s
            and not self._output_safe
        ):
            # Settling, then unwatched for a while: the settling starts again. A reading that
            # was already safe stays so (the safety core judges the gap itself, as staleness):
            # turning it unsafe here would stop the belt for a late sample, not a fall.
            self._safe_since = None
        self._last_t = sample.t
        if not safe_now:
            self._safe_since = None
            self._output_safe = False
        else:
            if self._safe_since is None:
                self._safe_since = sample.t
            if sample.t - self._safe_since >= self._debounce_s - _EPS:
                self._output_safe = True
        return self._output_safe == self._asserted_is_safe

    @property
    def safe(self) -> bool:
        return self._output_safe
