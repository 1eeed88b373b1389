"""next_deadline after 51d6f47 gives what the closure version before it gave, for any state."""

from __future__ import annotations

import math
import subprocess
import types
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import safety.core as core_module
from safety.core import SafetyCore
from safety.decisions import State

ROOT = Path(__file__).resolve().parents[1]


def _old_next_deadline() -> Any:
    """The method as it was at 51d6f47's parent, compiled in safety.core's namespace."""
    source = subprocess.run(
        ["git", "show", "51d6f47^:safety/core.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    start = source.index("    def next_deadline(self)")
    end = source.index("    def snapshot(self)")
    body = "\n".join(line[4:] for line in source[start:end].splitlines())
    namespace = dict(vars(core_module))
    exec(compile(body, "old_next_deadline", "exec"), namespace)
    return namespace["next_deadline"]


OLD = _old_next_deadline()
times = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-10, 10)


@settings(max_examples=3000, deadline=None)
@given(
    now=times,
    readings=st.lists(st.tuples(times, st.booleans()), max_size=4),
    sensor_timeout=times,
    drive_timeout=times,
    drive_t=st.none() | times,
    state=st.sampled_from(list(State)),
    both_lost=st.booleans(),
    debounce=times,
    grip_count=times,
    countdown_until=times,
)
def test_same_as_before(
    now: float,
    readings: list[tuple[float, bool]],
    sensor_timeout: float,
    drive_timeout: float,
    drive_t: float | None,
    state: State,
    both_lost: bool,
    debounce: float,
    grip_count: float,
    countdown_until: float,
) -> None:
    fake = types.SimpleNamespace(
        limits=types.SimpleNamespace(
            sensor_timeout_s=sensor_timeout, drive_timeout_s=drive_timeout, grip_debounce_s=debounce
        ),
        now=now,
        _readings={i: types.SimpleNamespace(t=t) for i, (t, _) in enumerate(readings)},
        _stale_reported={i for i, (_, rep) in enumerate(readings) if rep},
        state=state,
        _drive_t=drive_t,
        _both_lost_now=lambda: both_lost,
        _grip_count=grip_count,
        _countdown_until=countdown_until,
    )
    old = OLD(fake)
    new = SafetyCore.next_deadline(fake)  # type: ignore[arg-type]
    assert (old is None and new is None) or (
        old is not None
        and new is not None
        and (old == new or (math.isnan(old) and math.isnan(new)))
    ), (old, new)
