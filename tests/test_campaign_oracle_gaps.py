"""Defects the campaign's oracle (tests/campaign.py) should find, each planted in a run the way
test_campaign.py plants its own. Each test first shows the unplanted run passes and that the
planted defect really happens (from the run's own records), then asks the oracle to name it.
A test here that fails is a defect the oracle lets through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tests.campaign import Oracle, Record, run_session
from treadguard.controller.simulation import ScenarioRun
from treadguard.safety.decisions import Decision, EventType
from treadguard.safety.inputs import DriveFeedback, FallReading, GripReading, Input
from treadguard.simulator.scenario import Scenario

START = {"at": 1.0, "do": "start_session", "user": "p-001"}


def _scenario(*steps: dict[str, object], end: float = 20.0, **world: object) -> Scenario:
    return Scenario.model_validate(
        {"name": "planted", "end": end, "world": world, "step": list(steps)}
    )


def _judged(
    scenario: Scenario, plant: Callable[[ScenarioRun], None] | None
) -> tuple[Record, list[str]]:
    record = run_session(scenario, plant)
    return record, Oracle(record).check()


def _wrap_handle(run: ScenarioRun, after: Callable[[Input, Decision], Decision]) -> None:
    handle = run.core.handle

    def planted(event: Input) -> Decision:
        return after(event, handle(event))

    run.core.handle = planted  # type: ignore[method-assign]


def _estops(record: Record) -> int:
    return sum(1 for _, mph in record.calls if mph is None)


def test_sr4_a_grip_count_that_restarts_on_every_touch_is_found() -> None:
    """SR-4 amended: a user who keeps letting go (250 ms off, 100 ms on) is stopped. Planted:
    the count restarts on every touch (the plain timer the amendment rules out)."""
    steps: list[dict[str, object]] = [START]
    t = 8.0
    while t < 14.0:
        steps.append({"at": round(t, 3), "do": "release", "hand": "both"})
        steps.append({"at": round(t + 0.25, 3), "do": "grip", "hand": "both"})
        t += 0.35
    scenario = _scenario(*steps)

    def plant(run: ScenarioRun) -> None:
        def restart(event: Input, d: Decision) -> Decision:
            if isinstance(event, GripReading) and event.held:
                run.core._grip_count = 0.0
            return d

        _wrap_handle(run, restart)

    good, found = _judged(scenario, None)
    assert found == []
    assert _estops(good) >= 1
    bad, found = _judged(scenario, plant)
    assert _estops(bad) == 0  # the planted core never does: the belt ran on for 6 s
    assert any("SR-4" in v for v in found), found


def test_sr6_a_controlled_stop_that_first_speeds_up_is_found() -> None:
    """The class of defect c819fa2 fixed, on a stop the tablet did not send: the decision
    that carries SR-12's tablet-loss stop asks for 0.01 mph more than the speed before it (the
    ramp's step up), then ramps down at 0.4 mph/s from there (SR-2 holds throughout). STOPPING
    is not among the oracle's stop events, so the rise is never judged."""
    scenario = _scenario(START, {"at": 10.0, "do": "tablet_leaves"}, end=25.0)

    def plant(run: ScenarioRun) -> None:
        last: dict[str, float] = {}

        def up_first(event: Input, d: Decision) -> Decision:
            now = run.core.now
            if any(ev.type is EventType.STOPPING for ev in d.events) and d.speed_mph > 0:
                out = d.speed_mph + 0.01
            elif "mph" in last:
                out = max(d.speed_mph, last["mph"] - 0.4 * (now - last["t"]), 0.0)
            else:
                return d
            last.update(mph=out, t=now)
            if out <= 0.0:
                last.clear()
            return replace(d, speed_mph=out)

        _wrap_handle(run, up_first)

    _, found = _judged(scenario, None)
    assert found == []
    bad, found = _judged(scenario, plant)
    stopping_t = next(ev.t for ev in bad.events if ev.type is EventType.STOPPING)
    before = [mph for t, mph in bad.calls if t < stopping_t - 1e-9 and mph is not None][-1]
    at = [mph for t, mph in bad.calls if abs(t - stopping_t) < 1e-9 and mph is not None]
    assert at
    assert at[0] > before
    assert any("SR-6" in v or "SR-12" in v for v in found), found


def test_sr12_a_tablet_loss_stop_that_never_slows_the_belt_is_found() -> None:
    """SR-12: the tablet gone for the grace period is a controlled stop. Planted: the stop is
    announced (STOPPING published) but the target is left as it was, so the belt runs on at
    its speed to the end of the run. check_tablet takes the event as the stop."""
    scenario = _scenario(START, {"at": 10.0, "do": "tablet_leaves"}, end=40.0)

    def plant(run: ScenarioRun) -> None:
        begin_stop = run.core._begin_stop

        def announced_only(reason: Any) -> None:
            target = run.core.target
            begin_stop(reason)
            if reason.value == "tablet_lost":
                run.core.target = target

        run.core._begin_stop = announced_only  # type: ignore[method-assign]

    _, found = _judged(scenario, None)
    assert found == []
    bad, found = _judged(scenario, plant)
    assert any(ev.type is EventType.STOPPING for ev in bad.events)
    assert bad.belt[-1][1] > 0.7  # still running at the end, 25 s after the grace ran out
    assert any("SR-12" in v or "SR-6" in v for v in found), found


def test_sr12_a_tablet_lost_during_an_interval_is_found_when_the_interval_ends_anyway() -> None:
    """SR-12: no heartbeat for the grace period stops the session. Planted: an endless grace.
    The tablet leaves 3 s before the interval's own stop; the interval's STOPPING (a rest)
    falls inside the grace window, and the next interval starts with no tablet at all."""
    scenario = _scenario(
        {"at": 1.0, "do": "start_session", "user": "p-001", "program": "intervals"},
        {"at": 57.5, "do": "tablet_leaves"},
        end=150.0,
        history={"p-001": 3},
    )

    def plant(run: ScenarioRun) -> None:
        run.core.limits = run.core.limits.model_copy(update={"heartbeat_grace_s": 1e6})

    _good, found = _judged(scenario, None)
    assert found == []
    bad, found = _judged(scenario, plant)
    starts = [ev for ev in bad.events if ev.type is EventType.BELT_STARTED]
    assert len(starts) >= 2
    assert starts[1].t > 57.5 + 5.0
    assert any("SR-12" in v for v in found), found


def test_sr9_a_drive_fault_the_core_never_hears_of_is_found() -> None:
    """SR-9: a drive error latches a fault and stops the belt. Planted: the controller's
    statuses lose their fault. The fault lasts 2 s, shorter than the oracle's stop bound, so
    check_drive never looks; nothing else asks for a stop."""
    scenario = _scenario(START, {"at": 9.0, "do": "drive_fault"}, {"at": 11.0, "do": "drive_ok"})

    def plant(run: ScenarioRun) -> None:
        handle = run.core.handle

        def deaf(event: Input) -> Decision:
            if isinstance(event, DriveFeedback) and event.fault is not None:
                event = replace(event, fault=None, detail="")
            return handle(event)

        run.core.handle = deaf  # type: ignore[method-assign]

    good, found = _judged(scenario, None)
    assert found == []
    assert _estops(good) >= 1
    bad, found = _judged(scenario, plant)
    assert _estops(bad) == 0
    assert max(v for _, v in bad.belt) > 0.7
    assert any("SR-9" in v for v in found), found


def test_sr1_a_belt_held_below_the_band_is_found() -> None:
    """SR-1: the commanded speed is 0, a ramp to or from 0, or inside the program's band
    (0.8-1.2 mph). Planted: a band computed wrongly (0.4-1.2); the session runs at 0.5 mph."""
    scenario = _scenario({**START, "target_mph": 0.5})

    def plant(run: ScenarioRun) -> None:
        run.core._band = lambda program: (0.4, 1.2)  # type: ignore[method-assign]

    good, found = _judged(scenario, None)
    assert found == []
    assert not any(ev.type is EventType.BELT_STARTED for ev in good.events)  # refused
    bad, found = _judged(scenario, plant)
    held = [mph for _, mph in bad.calls if mph is not None and mph > 0]
    assert held
    assert max(held) < 0.8 - 1e-6
    assert held[-1] == held[-2]
    assert any("SR-1" in v for v in found), found


def test_sr7_a_short_first_session_that_makes_the_next_a_returning_one_is_found() -> None:
    """SR-7 amended: the first-session hard limit (300 s) holds for a user's first session,
    and a first session is one that ran to its cap (or its shortest cap). Planted: any
    session on record makes the user a returning one. p-001 stops after a few seconds, then
    starts reverse walking with a cap of 480 s; check_first_session counts only the first
    start it saw of each user."""
    scenario = _scenario(
        START,
        {"at": 6.0, "do": "stop"},
        {
            "at": 12.0,
            "do": "start_session",
            "user": "p-001",
            "program": "reverse_walking",
            "cap_s": 480.0,
        },
        end=30.0,
    )

    def plant(run: ScenarioRun) -> None:
        seen: set[str] = set()
        run.system.subscribe(
            lambda ev: (
                seen.add(str(ev.fields.get("user")))
                if ev.type is EventType.SESSION_STARTED
                else None
            ),
            name="plant",
        )
        run.system._returning = lambda user: user.strip() in seen  # type: ignore[method-assign]

    good, found = _judged(scenario, None)
    assert found == []
    assert [ev.fields["cap_s"] for ev in good.events if ev.type is EventType.SESSION_STARTED] == [
        180.0
    ]  # the second start refused: still the first session
    bad, found = _judged(scenario, plant)
    caps = [ev.fields["cap_s"] for ev in bad.events if ev.type is EventType.SESSION_STARTED]
    assert caps == [180.0, 480.0]
    assert any("SR-7" in v for v in found), found


def test_sr3_sr6_the_decision_that_ends_a_session_asking_the_belt_to_move_is_found() -> None:
    """The controller calls the driver before it publishes the decision's events, so in the
    oracle's log the call of the decision that ends a session comes before its SESSION_ENDED.
    Planted: the decision that aborts a start (a hand let go during the countdown) asks the
    standing belt for 0.01 mph (within SR-2) - the H-14 kind of Stop that starts the belt.
    check_no_speed_up_after_a_stop reads the call as before the stop, and check_starts
    excuses a reading that arrived in the same instant."""
    scenario = _scenario(START, {"at": 2.0, "do": "release", "hand": "left"}, end=10.0)

    def plant(run: ScenarioRun) -> None:
        def moves_as_it_ends(event: Input, d: Decision) -> Decision:
            if any(ev.type is EventType.SESSION_ENDED for ev in d.events):
                return replace(d, speed_mph=0.01)
            return d

        _wrap_handle(run, moves_as_it_ends)

    good, found = _judged(scenario, None)
    assert found == []
    assert all(mph in (None, 0.0) for _, mph in good.calls)  # the belt is never asked to move
    bad, found = _judged(scenario, plant)
    ended = next(ev.t for ev in bad.events if ev.type is EventType.SESSION_ENDED)
    assert (ended, 0.01) in bad.calls  # asked to move at the instant its session was aborted
    assert any("SR-3" in v or "SR-6" in v for v in found), found


def test_sr5_sr13_a_fall_that_waits_for_the_next_tick_is_found() -> None:
    """SR-5: a fall is an emergency stop at once; SR-13: the trigger reaches the driver at
    once, not at the next control tick. Planted: fall readings wait 49 ms on their way to the
    core (a sensor path that queues them for the tick). check_fall allows a whole tick."""
    scenario = _scenario(START, {"at": 8.0, "do": "fall"})

    def plant(run: ScenarioRun) -> None:
        submit = run.system.submit_reading

        def queued(reading: Any) -> None:
            if isinstance(reading, FallReading) and reading.fallen:
                run.timers.call_at(run.timers.time() + 0.049, submit, reading)
                return
            submit(reading)

        run.system.submit_reading = queued  # type: ignore[method-assign]

    good, found = _judged(scenario, None)
    assert found == []
    assert any(mph is None and abs(t - 8.0) < 1e-6 for t, mph in good.calls)  # at once
    bad, found = _judged(scenario, plant)
    first = min(t for t, mph in bad.calls if mph is None)
    assert first - 8.0 > 0.045  # the emergency stop went out ~49 ms after the fall
    assert any("SR-5" in v or "SR-13" in v for v in found), found


def test_sr3_a_start_without_its_countdown_is_found() -> None:
    """SR-3: a short countdown (3 s) is announced before the belt moves. Planted: a countdown
    of 0 s; the belt is asked to move at the instant the session is accepted. check_starts
    looks at grips, the fall input and the drive, never at the countdown."""
    scenario = _scenario(START)

    def plant(run: ScenarioRun) -> None:
        run.core.limits = run.core.limits.model_copy(update={"countdown_s": 0.0})

    _, found = _judged(scenario, None)
    assert found == []
    bad, found = _judged(scenario, plant)
    first_move = min(t for t, mph in bad.calls if mph is not None and mph > 0)
    assert first_move - 1.0 < 0.1  # moving within a tick of the start, no countdown
    assert any("SR-3" in v for v in found), found
