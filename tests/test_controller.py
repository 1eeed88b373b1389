"""The controller in-process: the emergency-stop fast path and its timers (SR-4, SR-5, SR-8,
SR-13), the simulated belt's physics (SR-9 drive side), the virtual clock, and the asyncio
control loop on a scaled clock.

A test rig puts the real Controller, SafetyCore (from config/sim.toml), SimulatedDriver and Belt
on a VirtualLoop, with sensors reporting and the control tick running as callbacks on that loop
that a test can switch off.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treadguard.config.loading import LoadedConfig, load_config
from treadguard.config.schema import SimulatedDriveSection
from treadguard.controller.control import Controller
from treadguard.controller.loop import ScaledClock, run_control_loop
from treadguard.drivers.simulated import SimulatedDriver
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import Accepted, Cause, Event, EventType, State
from treadguard.safety.inputs import (
    EStop,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    Sensor,
    SetSpeed,
    StartSession,
    Stop,
)
from treadguard.simulator.belt import Belt, BeltParams
from treadguard.simulator.virtual_loop import VirtualLoop

ROOT = Path(__file__).resolve().parents[1]

# docs/requirements.md
GRIP_DEBOUNCE_S = 0.3  # SR-4
SENSOR_TIMEOUT_S = 0.5  # SR-8
START_MPH = 0.8  # first session starts at 0.8 mph


@pytest.fixture(scope="module")
def loaded() -> LoadedConfig:
    return load_config(ROOT / "config" / "sim.toml")


def belt_params(loaded: LoadedConfig) -> BeltParams:
    drive = loaded.config.drive
    assert isinstance(drive, SimulatedDriveSection)
    return BeltParams(
        accel_mph_s=drive.accel_mph_s,
        decel_mph_s=drive.decel_mph_s,
        estop_decel_mph_s=drive.estop_decel_mph_s,
        lag_s=drive.lag_s,
        deadman_s=drive.deadman_s,
        max_mph=drive.max_mph,
    )


@pytest.fixture
def params(loaded: LoadedConfig) -> BeltParams:
    return belt_params(loaded)


class _QuietLog:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


class Rig:
    """Controller + core + simulated driver and belt + a scripted user, on a VirtualLoop."""

    def __init__(self, loaded: LoadedConfig) -> None:
        cfg = loaded.config
        self.loop = VirtualLoop()
        self.belt = Belt(belt_params(loaded))
        self.driver = SimulatedDriver(self.belt, self.loop.time)
        self.core = SafetyCore(
            cfg.safety,
            loaded.programs,
            default_program=cfg.programs.default,
            commissioned_until=math.inf,
        )
        self.controller = Controller(self.core, self.driver, self.loop, logger=_QuietLog())
        self.events: list[Event] = []
        self.controller.subscribe(self.events.append)
        self.tick_period = 1.0 / cfg.control.tick_hz
        self.report_s = cfg.sensors.report_interval_s
        self.hands = {Hand.LEFT: True, Hand.RIGHT: True}
        self.fallen = False
        self.silent: set[Sensor] = set()
        self.ticking = True
        self.ticks = 0
        self.loop.call_at(0.0, self._tick, 0)
        self.loop.call_at(0.0, self._report, 0)
        self.loop.call_at(0.0, self._heartbeat, 0)

    # The periodic parts of the world.

    def _tick(self, k: int) -> None:
        if not self.ticking:
            return
        self.ticks += 1
        self.controller.tick()
        self.loop.call_at((k + 1) * self.tick_period, self._tick, k + 1)

    def _report(self, k: int) -> None:
        for sensor in Sensor:
            self.send(sensor)
        self.loop.call_at((k + 1) * self.report_s, self._report, k + 1)

    def _heartbeat(self, k: int) -> None:
        self.controller.submit(Heartbeat(t=self.loop.time()))
        self.loop.call_at(k + 1.0, self._heartbeat, k + 1)

    def send(self, sensor: Sensor) -> None:
        if sensor in self.silent:
            return
        t = self.loop.time()
        if sensor is Sensor.FALL:
            self.controller.submit(FallReading(t=t, fallen=self.fallen))
        else:
            hand = Hand.LEFT if sensor is Sensor.GRIP_LEFT else Hand.RIGHT
            self.controller.submit(GripReading(t=t, hand=hand, held=self.hands[hand]))

    # Helpers.

    def run_until(self, t: float) -> None:
        self.loop.run_until(t)

    def start_running(self, at: float = 1.0, until: float = 10.0) -> None:
        """A first session: started at ``at``, running at its start speed by ``until``."""
        self.run_until(at)
        decision = self.controller.submit(StartSession(t=self.loop.time(), user="p-test"))
        assert isinstance(decision.reply, Accepted), decision.reply
        self.run_until(until)
        assert self.core.state is State.RUNNING
        self.belt.advance(self.loop.time())
        assert self.belt.speed_mph == pytest.approx(START_MPH, abs=0.02)
        assert self.driver.emergency_stops == 0

    def of_type(self, type_: EventType) -> list[Event]:
        return [ev for ev in self.events if ev.type is type_]


# --------------------------------------------------------------------------- SR-13 fast path


@pytest.mark.parametrize(
    ("make_input", "cause"),
    [
        (lambda t: FallReading(t=t, fallen=True), Cause.FALL),
        (lambda t: EStop(t=t), Cause.REMOTE_ESTOP),
    ],
    ids=["fall", "remote_estop"],
)
def test_sr13_sr5_stop_reaches_the_driver_inside_submit(
    loaded: LoadedConfig, make_input: Callable[[float], Input], cause: Cause
) -> None:
    rig = Rig(loaded)
    rig.start_running()
    t = 10.02  # between two ticks and two sensor reports
    rig.run_until(t)
    rig.belt.advance(t)
    speed_before = rig.belt.speed_mph
    ticks_before = rig.ticks

    decision = rig.controller.submit(make_input(t))

    # Nothing else has run: the clock has not moved and no tick happened...
    assert rig.loop.time() == t
    assert rig.ticks == ticks_before
    # ...and the drive already has its emergency stop.
    assert decision.emergency_stop
    assert rig.driver.emergency_stops == 1
    assert rig.driver.commanded_mph == 0.0
    assert rig.belt.command_mph == 0.0
    assert rig.core.state is State.ESTOP
    assert rig.core.latch is not None
    assert rig.core.latch.cause is cause
    (stop,) = rig.controller.stops
    assert (stop.cause, stop.trigger_t, stop.issued_t, stop.latency_ms) == (cause.value, t, t, 0.0)
    (estop,) = rig.of_type(EventType.ESTOP)
    assert estop.fields["cause"] == cause.value
    assert estop.fields["stop_latency_ms"] == 0.0
    # It is the drive's fastest stop: in 0.1 s the belt loses estop_decel * 0.1.
    rig.belt.advance(t + 0.1)
    decel = belt_params(loaded).estop_decel_mph_s
    assert rig.belt.speed_mph == pytest.approx(speed_before - decel * 0.1, abs=1e-6)


def test_sr4_sr13_both_grips_released_stop_at_debounce_without_ticks(
    loaded: LoadedConfig,
) -> None:
    rig = Rig(loaded)
    rig.start_running()
    release_t = 10.04  # off the tick and sensor-report grids
    rig.run_until(release_t)
    rig.ticking = False  # from here on, no control tick runs
    ticks = rig.ticks
    rig.hands = {Hand.LEFT: False, Hand.RIGHT: False}
    for sensor in (Sensor.GRIP_LEFT, Sensor.GRIP_RIGHT):
        rig.send(sensor)
    assert rig.core.state is State.RUNNING, "the debounce has not run out yet"
    assert rig.driver.emergency_stops == 0

    due = release_t + GRIP_DEBOUNCE_S
    rig.run_until(due - 0.001)
    assert rig.core.state is State.RUNNING
    assert rig.driver.emergency_stops == 0

    rig.run_until(due)
    # mypy keeps the narrowing of the assert above; the state has moved on since
    assert rig.core.state is State.ESTOP  # type: ignore[comparison-overlap]
    assert rig.core.latch is not None
    assert rig.core.latch.cause is Cause.GRIP_LOST
    assert rig.driver.emergency_stops == 1
    assert rig.belt.command_mph == 0.0
    (stop,) = rig.controller.stops
    assert stop.cause == "grip_lost"
    assert stop.issued_t == pytest.approx(due, abs=1e-9)
    assert stop.trigger_t == pytest.approx(due, abs=1e-9)
    assert stop.latency_ms == 0.0
    assert rig.ticks == ticks, "no tick ran: the controller's own timer stopped the belt"


def test_sr4_one_hand_released_is_a_warning_only(loaded: LoadedConfig) -> None:
    rig = Rig(loaded)
    rig.start_running()
    rig.hands[Hand.LEFT] = False
    rig.send(Sensor.GRIP_LEFT)
    rig.run_until(15.0)
    assert rig.core.state is State.RUNNING
    assert rig.driver.emergency_stops == 0
    (warning,) = rig.of_type(EventType.GRIP_WARNING)
    assert warning.fields["hand"] == "left"


def test_sr8_silent_fall_sensor_stops_at_last_reading_plus_timeout_without_ticks(
    loaded: LoadedConfig,
) -> None:
    rig = Rig(loaded)
    rig.start_running()
    last_t = 10.02
    rig.run_until(last_t)
    rig.send(Sensor.FALL)  # its last reading
    rig.silent.add(Sensor.FALL)
    rig.run_until(10.2)
    rig.ticking = False  # the drive stays fresh until well after the sensor's time-out
    ticks = rig.ticks

    due = last_t + SENSOR_TIMEOUT_S
    rig.run_until(due - 0.001)
    assert rig.core.state is State.RUNNING
    assert rig.driver.emergency_stops == 0

    rig.run_until(due)
    # mypy keeps the narrowing of the assert above; the state has moved on since
    assert rig.core.state is State.ESTOP  # type: ignore[comparison-overlap]
    assert rig.core.latch is not None
    assert rig.core.latch.cause is Cause.SENSOR_STALE
    assert rig.driver.emergency_stops == 1
    (stop,) = rig.controller.stops
    assert stop.issued_t == pytest.approx(due, abs=1e-9)
    assert stop.latency_ms == 0.0
    assert rig.ticks == ticks
    assert [ev.fields["sensor"] for ev in rig.of_type(EventType.SENSOR_STALE)] == ["fall"]


def test_sr8_silent_grip_sensor_warns_at_its_timeout_without_ticks(loaded: LoadedConfig) -> None:
    rig = Rig(loaded)
    rig.start_running()
    last_t = 10.02
    rig.run_until(last_t)
    rig.send(Sensor.GRIP_LEFT)
    rig.silent.add(Sensor.GRIP_LEFT)
    rig.run_until(10.2)
    rig.ticking = False

    due = last_t + SENSOR_TIMEOUT_S
    rig.run_until(due - 0.001)
    assert rig.of_type(EventType.GRIP_WARNING) == []
    rig.run_until(due)
    (warning,) = rig.of_type(EventType.GRIP_WARNING)
    assert warning.t == pytest.approx(due, abs=1e-9)
    assert warning.fields == {"hand": "left", "cause": "sensor_stale"}
    assert rig.core.state is State.RUNNING  # one hand: a warning, no stop (SR-4)
    assert rig.driver.emergency_stops == 0


# --------------------------------------------------------------------------- belt physics


def poll_every(belt: Belt, start: float, end: float, step: float) -> list[tuple[float, float]]:
    samples = []
    k = 1
    while start + k * step <= end + 1e-9:
        t = start + k * step
        samples.append((t, belt.host_poll(t)))
        k += 1
    return samples


def test_belt_follows_a_command_within_its_acceleration_limits(params: BeltParams) -> None:
    belt = Belt(params)
    belt.host_command(0.0, 1.0)
    up = [(0.0, 0.0), *poll_every(belt, 0.0, 6.0, 0.05)]
    for (t0, v0), (t1, v1) in pairwise(up):
        assert v1 - v0 <= params.accel_mph_s * (t1 - t0) + 1e-9
        assert v1 <= 1.0 + 1e-9
    # 1.0 mph cannot be reached sooner than 1.0 / accel seconds.
    assert belt_speed_at(up, 1.0 / params.accel_mph_s - 0.05) < 1.0 - 1e-3
    assert up[-1][1] == pytest.approx(1.0, abs=1e-3)

    belt.host_command(6.0, 0.0)
    down = [(6.0, up[-1][1]), *poll_every(belt, 6.0, 9.0, 0.05)]
    for (t0, v0), (t1, v1) in pairwise(down):
        assert v0 - v1 <= params.decel_mph_s * (t1 - t0) + 1e-9
        assert v1 >= 0.0
    assert belt_speed_at(down, 6.0 + 1.0 / params.decel_mph_s - 0.05) > 0.0
    assert down[-1][1] == 0.0
    assert belt.deadman_trips == 0


def belt_speed_at(samples: list[tuple[float, float]], t: float) -> float:
    return min(samples, key=lambda s: abs(s[0] - t))[1]


def test_belt_emergency_stop_decelerates_at_estop_decel(params: BeltParams) -> None:
    belt = Belt(params)
    belt.host_command(0.0, 1.0)
    poll_every(belt, 0.0, 5.0, 0.1)
    assert belt.speed_mph == pytest.approx(1.0, abs=1e-3)

    belt.host_emergency_stop(5.0)
    belt.host_poll(5.1)
    assert belt.speed_mph == pytest.approx(1.0 - params.estop_decel_mph_s * 0.1, abs=1e-3)
    belt.host_poll(5.0 + 1.0 / params.estop_decel_mph_s + 0.02)
    assert belt.speed_mph == 0.0

    # For comparison, an ordinary stop command loses at most decel * 0.1 in the same time.
    other = Belt(params)
    other.host_command(0.0, 1.0)
    poll_every(other, 0.0, 5.0, 0.1)
    other.host_command(5.0, 0.0)
    assert other.host_poll(5.1) >= 1.0 - params.decel_mph_s * 0.1 - 1e-3


def test_sr9_belt_deadman_stops_a_silent_host(params: BeltParams) -> None:
    belt = Belt(params)
    belt.host_command(0.0, 1.0)
    poll_every(belt, 0.0, 4.0, 0.1)  # the host is alive until 4.0 s
    assert belt.speed_mph == pytest.approx(1.0, abs=1e-3)
    last = 4.0

    belt.advance(last + params.deadman_s - 0.02)
    assert belt.command_mph == 1.0
    assert belt.deadman_trips == 0

    belt.advance(last + params.deadman_s + 0.02)
    assert belt.command_mph == 0.0
    assert belt.deadman_trips == 1

    stopped_by = last + params.deadman_s + params.lag_s * 5 + 1.0 / params.decel_mph_s
    belt.advance(stopped_by)
    assert belt.speed_mph == 0.0
    # It stays stopped when the host comes back with only polls; a new command restarts it.
    assert belt.host_poll(stopped_by + 1.0) == 0.0
    assert belt.command_mph == 0.0
    belt.host_command(stopped_by + 1.0, 0.8)
    poll_every(belt, stopped_by + 1.0, stopped_by + 5.0, 0.1)
    assert belt.speed_mph == pytest.approx(0.8, abs=1e-3)
    assert belt.deadman_trips == 1


def test_sr9_polling_keeps_the_deadman_quiet(params: BeltParams) -> None:
    """The link kept busy at well under half the deadman (SR-9: poll every 100 ms)."""
    belt = Belt(params)
    belt.host_command(0.0, 1.0)
    samples = poll_every(belt, 0.0, 20.0, 0.1)
    assert belt.deadman_trips == 0
    assert all(v == pytest.approx(1.0, abs=1e-3) for t, v in samples if t >= 3.0)


# --------------------------------------------------------------------------- VirtualLoop


def test_virtual_loop_runs_callbacks_in_time_order() -> None:
    loop = VirtualLoop()
    seen: list[tuple[str, float]] = []
    for name, when in [("c", 3.0), ("a", 1.0), ("d", 4.5), ("b", 2.0)]:
        loop.call_at(when, lambda n=name: seen.append((n, loop.time())))
    loop.run_until(4.0)
    assert seen == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert loop.time() == 4.0
    loop.run_until(5.0)
    assert seen[-1] == ("d", 4.5)
    assert loop.time() == 5.0


def test_virtual_loop_same_time_callbacks_run_in_scheduling_order() -> None:
    loop = VirtualLoop()
    seen: list[int] = []
    # Interleave with other times so the heap is reshuffled between them.
    for i in range(50):
        loop.call_at(1.0, seen.append, i)
        loop.call_at(0.5 + (i % 7) * 0.25, lambda: None)
    loop.run_until(10.0)
    assert seen == list(range(50))


def test_virtual_loop_callbacks_scheduled_while_running() -> None:
    loop = VirtualLoop()
    seen: list[tuple[str, float]] = []

    def first() -> None:
        seen.append(("first", loop.time()))
        loop.call_at(loop.time(), lambda: seen.append(("same time, later", loop.time())))
        loop.call_later(0.5, lambda: seen.append(("later", loop.time())))
        loop.call_later(5.0, lambda: seen.append(("too late", loop.time())))

    loop.call_at(1.0, first)
    loop.call_at(1.0, lambda: seen.append(("second", loop.time())))
    loop.run_until(2.0)
    assert seen == [
        ("first", 1.0),
        ("second", 1.0),
        ("same time, later", 1.0),
        ("later", 1.5),
    ]


def test_virtual_loop_cancel() -> None:
    loop = VirtualLoop()
    seen: list[str] = []
    keep = loop.call_at(1.0, seen.append, "keep")
    drop = loop.call_at(1.0, seen.append, "drop")
    drop.cancel()
    assert drop.cancelled()
    assert not keep.cancelled()
    loop.run_until(2.0)
    assert seen == ["keep"]


def test_virtual_loop_time_only_moves_forward() -> None:
    loop = VirtualLoop(t0=5.0)
    assert loop.time() == 5.0
    loop.run_until(3.0)
    assert loop.time() == 5.0
    seen: list[float] = []
    handle = loop.call_at(2.0, lambda: seen.append(loop.time()))  # in the past
    assert handle.when == 5.0
    loop.run_until(5.0)
    assert seen == [5.0]
    loop.run_until(8.0)
    loop.call_later(1.0, lambda: seen.append(loop.time()))
    loop.run_until(7.0)  # backwards: nothing runs, time stays
    assert loop.time() == 8.0
    assert seen == [5.0]
    loop.run_until(9.0)
    assert seen == [5.0, 9.0]


# --------------------------------------------------------------------------- asyncio


def test_scaled_clock_refuses_a_non_positive_scale() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="positive"):
            ScaledClock(loop, 0.0)
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_run_control_loop_ticks_on_a_scaled_clock(loaded: LoadedConfig) -> None:
    loop = asyncio.get_running_loop()
    clock = ScaledClock(loop, scale=10.0)
    cfg = loaded.config
    belt = Belt(belt_params(loaded), t0=clock.time())
    driver = SimulatedDriver(belt, clock.time)
    core = SafetyCore(
        cfg.safety,
        loaded.programs,
        default_program=cfg.programs.default,
        t0=clock.time(),
        commissioned_until=math.inf,
    )
    controller = Controller(core, driver, clock, logger=_QuietLog())
    tick_times: list[float] = []
    real_tick = controller.tick

    def counting_tick() -> Any:
        tick_times.append(clock.time())
        return real_tick()

    controller.tick = counting_tick  # type: ignore[method-assign]
    period = 1.0 / cfg.control.tick_hz
    run_for = 2.0  # scenario seconds: 40 ticks, 0.2 s of wall time at 10x
    done = asyncio.Event()
    clock.call_at(run_for, done.set)
    task = asyncio.create_task(run_control_loop(controller, clock, period))
    async with asyncio.timeout(10):
        await done.wait()
    ended = clock.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert ended >= run_for
    assert len(tick_times) >= 5, "ticks arrive"
    # Ticks run on deadlines: never early, never in a burst.
    assert len(tick_times) <= ended / period + 2
    assert tick_times == sorted(tick_times)
    t0 = tick_times[0]
    resolution = 0.01  # asyncio may wake a timer up to its clock resolution early (x scale)
    for k, t in enumerate(tick_times):
        assert t >= t0 + k * period - resolution
    # Each tick polled the drive and moved the core's clock on.
    assert core.now == pytest.approx(tick_times[-1], abs=period)
    status = driver.status()
    assert status is not None
    assert status.speed_mph == 0.0
    assert core.state is State.IDLE


# --------------------------------------------------------------------------- SR-15 listeners


class _Log(_QuietLog):
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def error(self, event: str, **kwargs: Any) -> None:
        self.errors.append({"event": event, **kwargs})


def test_sr15_a_listener_that_raises_skips_neither_the_next_listener_nor_the_deadline(
    loaded: LoadedConfig,
) -> None:
    """SR-15: a listener that raises (here on every event) is logged at most once a second;
    the listeners after it hear every event, the input's caller gets its decision, and the
    deadline timer still stops the belt when both grips are let go, without ticks."""
    rig = Rig(loaded)
    log = _Log()
    rig.controller._log = log
    calls: list[EventType] = []

    def broken(ev: Event) -> None:
        calls.append(ev.type)
        raise RuntimeError("a listener with a bug")

    rig.controller.subscribe(broken, name="broken")
    after: list[Event] = []
    rig.controller.subscribe(after.append, name="after")
    rig.start_running()
    assert calls
    assert [ev.type for ev in after] == calls
    assert 1 <= len(log.errors) <= 10  # one a second at most: the session took ~9 s
    assert log.errors[0]["listener"] == "broken"
    assert "a listener with a bug" in log.errors[0]["traceback"]
    rig.ticking = False
    t0 = rig.loop.time()
    rig.hands = {Hand.LEFT: False, Hand.RIGHT: False}
    rig.run_until(t0 + 2.0)
    assert rig.driver.emergency_stops == 1
    assert EventType.ESTOP in [ev.type for ev in after]


def test_sr14_a_gate_holds_back_only_what_it_says_and_a_failing_gate_holds_nothing(
    loaded: LoadedConfig,
) -> None:
    rig = Rig(loaded)
    rig.controller._log = _Log()
    held: list[Event] = []

    def gate(ev: Event) -> bool:
        if ev.type is EventType.COMMAND_REFUSED:
            held.append(ev)
            return False
        raise KeyError("a gate with a bug")

    rig.controller.gate = gate
    rig.controller.submit(SetSpeed(t=0.0, mph=1.0))  # no session: refused
    rig.start_running()
    assert [ev.type for ev in held] == [EventType.COMMAND_REFUSED]
    assert EventType.COMMAND_REFUSED not in [ev.type for ev in rig.events]
    assert EventType.SESSION_STARTED in [ev.type for ev in rig.events]


# --------------------------------------------------------------------------- H-11, H-14


class SlowingLog(SimulatedDriver):
    """The simulated driver, remembering each ask with the ``slowing`` flag it came with."""

    def __init__(self, belt: Belt, clock: Callable[[], float]) -> None:
        super().__init__(belt, clock)
        self.asks: list[tuple[float, bool]] = []

    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        self.asks.append((mph, slowing))
        super().command_speed(mph, slowing=slowing)


def test_h11_h14_decisions_that_slow_the_belt_reach_the_driver_as_slowing(
    loaded: LoadedConfig,
) -> None:
    """Controller.submit tells the driver which asks slow the belt (a decision whose target is
    below the speed it asks): the drivers then never start the belt or raise its speed on such
    an ask. The ramp up and a steady belt are plain asks; a lower speed's ramp down and every
    ask of a stop, its first (held at the speed asked before) included, are slowing."""
    rig = Rig(loaded)
    driver = SlowingLog(rig.belt, rig.loop.time)
    rig.driver = rig.controller.driver = driver
    rig.start_running()
    assert driver.asks
    assert not any(slowing for _, slowing in driver.asks)

    rig.controller.submit(SetSpeed(t=rig.loop.time(), mph=1.0))
    rig.run_until(rig.loop.time() + 2.0)
    assert rig.core.commanded == pytest.approx(1.0)
    assert not any(slowing for _, slowing in driver.asks)

    mark = len(driver.asks)
    rig.controller.submit(SetSpeed(t=rig.loop.time(), mph=0.9))
    rig.run_until(rig.loop.time() + 1.0)
    down = [(mph, slowing) for mph, slowing in driver.asks[mark:] if mph > 0.9]
    assert down
    assert all(slowing for _, slowing in down)
    assert rig.core.commanded == pytest.approx(0.9)

    mark = len(driver.asks)
    before = driver.asks[-1][0]
    rig.controller.submit(Stop(t=rig.loop.time()))
    rig.run_until(rig.loop.time() + 4.0)
    stopping = driver.asks[mark:]
    assert stopping[0] == (before, True), "the stop's first ask: held, and slowing"
    assert all(slowing for mph, slowing in stopping if mph > 0.0)
    assert stopping[-1][0] == 0.0
    assert rig.driver.emergency_stops == 0


@given(
    asks=st.lists(
        st.one_of(
            st.tuples(st.floats(min_value=0.0, max_value=1.5), st.booleans()),
            st.just(None),  # an emergency stop
        ),
        max_size=40,
    )
)
def test_h11_h14_the_simulated_driver_never_starts_or_speeds_up_the_belt_on_a_slowing_ask(
    asks: list[tuple[float, bool] | None],
) -> None:
    """The in-process driver keeps the drivers' rule (drivers/base.py): a slowing ask hands the
    belt at most the speed it was last told (so never a start from 0); a plain ask is handed on
    as asked."""
    belt = Belt(BeltParams())
    driver = SimulatedDriver(belt, lambda: 0.0)
    for ask in asks:
        told = driver.told_mph
        if ask is None:
            driver.emergency_stop()
            assert belt.command_mph == 0.0
            continue
        mph, slowing = ask
        driver.command_speed(mph, slowing=slowing)
        assert driver.told_mph == (min(mph, told) if slowing else mph)
        assert belt.command_mph == min(driver.told_mph, belt.params.max_mph)
