"""Belt physics of a simulated treadmill drive.

The drive follows the host's speed command through a first-order lag and its own acceleration
limits, has a faster emergency deceleration, and keeps its own deadman: when the host has been
silent for ``deadman_s`` it stops the belt by itself and stays stopped until commanded again,
as a Trackmaster with CDS enabled or a VFD with its communication time-out would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from treadguard.safety.limits import STANDSTILL_MPH

# Integration step: the lag is integrated exactly per step and the acceleration limits are
# linear, so 20 ms is accurate and keeps an 8-minute run to 24,000 steps.
_STEP_S = 0.02
_ZERO_MPH = 1e-3
# Above this the belt counts as moving (the safety core's standstill threshold).
MOVING_MPH = STANDSTILL_MPH


@dataclass(frozen=True)
class BeltParams:
    accel_mph_s: float = 0.5
    decel_mph_s: float = 0.8
    estop_decel_mph_s: float = 3.0
    lag_s: float = 0.15
    deadman_s: float = 0.5
    max_mph: float = 12.0


class Belt:
    def __init__(self, params: BeltParams, t0: float = 0.0) -> None:
        self.params = params
        self.t = t0
        self.speed_mph = 0.0
        self.command_mph = 0.0
        self._lagged_mph = 0.0
        self._emergency = False
        self._last_host_t = t0
        self.deadman_trips = 0
        # The lag's share of a whole integration step, computed once (most steps are whole).
        self._full_step_follow = (
            1.0 - math.exp(-_STEP_S / params.lag_s) if params.lag_s > 0 else 1.0
        )
        # Watched by the simulator's statistics, integrated at the physics step.
        self.moving_s = 0.0
        self.max_speed_mph = 0.0
        self.last_moving_t: float | None = None

    # The host side: every call is also proof of life for the deadman.

    def host_command(self, t: float, mph: float) -> None:
        self.advance(t)
        self._last_host_t = t
        self.command_mph = min(max(mph, 0.0), self.params.max_mph)
        if self.command_mph > 0:
            self._emergency = False

    def host_emergency_stop(self, t: float) -> None:
        self.advance(t)
        self._last_host_t = t
        self.command_mph = 0.0
        self._lagged_mph = 0.0
        self._emergency = True

    def host_poll(self, t: float) -> float:
        self.advance(t)
        self._last_host_t = t
        return self.speed_mph

    # The physics.

    def advance(self, t: float) -> None:
        p = self.params
        while self.t < t:
            dt = min(_STEP_S, t - self.t)
            self.t += dt
            if self.command_mph > 0 and self.t - self._last_host_t > p.deadman_s:
                self.command_mph = 0.0
                self.deadman_trips += 1
            if p.lag_s > 0:
                follow = self._full_step_follow if dt == _STEP_S else 1.0 - math.exp(-dt / p.lag_s)
                self._lagged_mph += (self.command_mph - self._lagged_mph) * follow
            else:
                self._lagged_mph = self.command_mph
            if self._lagged_mph < _ZERO_MPH and self.command_mph == 0.0:
                self._lagged_mph = 0.0
            goal = self._lagged_mph
            if goal > self.speed_mph:
                self.speed_mph = min(goal, self.speed_mph + p.accel_mph_s * dt)
            else:
                decel = p.estop_decel_mph_s if self._emergency else p.decel_mph_s
                self.speed_mph = max(goal, self.speed_mph - decel * dt)
            if self.speed_mph > MOVING_MPH:
                self.moving_s += dt
                self.last_moving_t = self.t
                self.max_speed_mph = max(self.max_speed_mph, self.speed_mph)

    def moving(self) -> bool:
        return self.speed_mph > MOVING_MPH
