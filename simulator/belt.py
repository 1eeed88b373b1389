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
    # A worn brake: this fraction (0 to below 1) of every deceleration, controlled and
    # emergency, is lost. The stop-quality watch (safety/stop_watch.py) is tested with it.
    brake_wear: float = 0.0


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
        self.brake_wear = 0.0
        self.wear_brake(params.brake_wear)

    def wear_brake(self, wear: float) -> None:
        """From now on the belt brakes with ``1 - wear`` of its deceleration."""
        if not 0.0 <= wear < 1.0:
            raise ValueError(f"brake_wear must be at least 0 and below 1, not {wear!r}")
        self.brake_wear = wear

    # The host side: every call is also proof of life for the deadman.

    def host_command(self, t: float, mph: float) -> None:
        if t > self.t:  # (advance's own test, saved a call: most commands come at its time)
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
        if t > self.t:
            self.advance(t)
        self._last_host_t = t
        return self.speed_mph

    # The physics.

    def advance(self, t: float) -> None:
        if self.t >= t:
            return
        # The state in locals for the loop, written back once: this loop runs 25,000 times in
        # an 8-minute session and was the simulator's largest cost in its profile.
        p = self.params
        now, speed, lagged, command = self.t, self.speed_mph, self._lagged_mph, self.command_mph
        last_host_t, emergency = self._last_host_t, self._emergency
        moving_s, max_speed, last_moving_t = self.moving_s, self.max_speed_mph, self.last_moving_t
        lag_s, full_follow = p.lag_s, self._full_step_follow
        decel = (p.estop_decel_mph_s if emergency else p.decel_mph_s) * (1.0 - self.brake_wear)
        while now < t:
            dt = _STEP_S if t - now > _STEP_S else t - now
            now += dt
            if command > 0 and now - last_host_t > p.deadman_s:
                command = 0.0
                self.deadman_trips += 1
            if lag_s > 0:
                follow = full_follow if dt == _STEP_S else 1.0 - math.exp(-dt / lag_s)
                lagged += (command - lagged) * follow
            else:
                lagged = command
            if lagged < _ZERO_MPH and command == 0.0:
                lagged = 0.0
            if lagged > speed:
                speed += p.accel_mph_s * dt
                if speed > lagged:
                    speed = lagged
            else:
                speed -= decel * dt
                if speed < lagged:
                    speed = lagged
            if speed > MOVING_MPH:
                moving_s += dt
                last_moving_t = now
                if speed > max_speed:
                    max_speed = speed
        self.t, self.speed_mph, self._lagged_mph, self.command_mph = now, speed, lagged, command
        self.moving_s, self.max_speed_mph, self.last_moving_t = moving_s, max_speed, last_moving_t

    def moving(self) -> bool:
        return self.speed_mph > MOVING_MPH
