"""A decision that lowers the target during a ramp up never asks for more than the higher of
the speed asked before it and the new target (H-11; safety/core.py's clamp in handle)."""

from __future__ import annotations

from tests.test_safety_examples import at_speed
from treadguard.safety.decisions import Accepted
from treadguard.safety.inputs import SetSpeed


def test_sr1_a_lower_speed_just_above_the_last_ask_is_not_overshot() -> None:
    """Ramping from 1.0 to 1.2 mph, the clinician lowers the target to a speed a hair above
    the one last asked. The decision that carries it takes the ramp's step for the time since
    the last input first, and so asks for more than both the speed last asked and the
    target the clinician has just set."""
    world = at_speed(1.0, "reverse_walking")
    assert isinstance(world.command(lambda t: SetSpeed(t, 1.2)).reply, Accepted)
    world.run(0.5)
    before = world.commanded
    new_target = round(before + 0.002, 4)
    world.ms += 40  # between two of the world's inputs
    d = world.command(lambda t: SetSpeed(t, new_target))
    assert isinstance(d.reply, Accepted)
    assert d.speed_mph <= max(before, new_target) + 1e-12, (before, new_target, d.speed_mph)
