"""The sensor clock rule through the real daemon over a real Mosquitto (SR-8, SR-16, SR-4): a
sensor's stamps are compared only with its own earlier stamps, never with the daemon's wall
clock; an unsafe reading is never dropped for its stamp; two sources on one sensor are unsafe.

The daemon's wall clock cannot be stepped from a test; what a step of it would change is how
the sensors' stamps stand against it, and that is what these sensors' clocks do instead: a
sensor clock 60 s behind the daemon's is the daemon's wall clock stepped 60 s forward.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiomqtt
import pytest

from tests.clinician import clinician
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker
from tests.periodic import Elsewhere, pause, periodic_elsewhere

NAMES = ("grip_left", "grip_right", "fall")


class ClockedSensors:
    """The three sensors of docs/tablet-contract.md, every 50 ms, each stamping with its own clock:
    ``time.time() + offset[name]``; on a thread of their own (tests/periodic.py)."""

    def __init__(self, port: int, tm: str, offset: dict[str, float] | None = None) -> None:
        self.port = port
        self.p = f"treadmill/{tm}"
        self.values = {"grip_left": True, "grip_right": True, "fall": False}
        self.offset = dict.fromkeys(NAMES, 0.0) | (offset or {})
        self.paused: set[str] = set()
        self._client: aiomqtt.Client | None = None
        self.elsewhere: Elsewhere | None = None

    async def publish(self, name: str, value: bool, offset: float | None = None) -> None:
        """One reading out of turn, published by the sensors' own thread."""
        assert self.elsewhere is not None
        await self.elsewhere.run(self._publish(name, value, offset))

    async def _publish(self, name: str, value: bool, offset: float | None = None) -> None:
        assert self._client is not None
        ts = time.time() + (self.offset[name] if offset is None else offset)
        payload = json.dumps({"value": value, "ts": ts}).encode()
        await self._client.publish(f"{self.p}/sensors/{name}", payload, qos=0)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            self._client = client
            while not stop.is_set():
                for name in NAMES:
                    if name not in self.paused:
                        await self._publish(name, self.values[name])
                await pause(stop, 0.05)  # the sensors' report period, not a synchronisation


@asynccontextmanager
async def clocked_sensors(
    broker: Broker, tm: str, offset: dict[str, float] | None = None
) -> AsyncIterator[ClockedSensors]:
    """The sensors, publishing from the start with the clocks ``offset`` gives (a clock that
    changes later steps, and a step back makes its readings stale for a while, safety/stamps.py)."""
    sensors = ClockedSensors(broker.port, tm, offset)
    async with periodic_elsewhere(sensors.run, f"clocked-{tm}") as elsewhere:
        sensors.elsewhere = elsewhere
        yield sensors


@pytest.mark.asyncio
async def test_sr8_sr16_a_fall_after_the_sensor_clock_steps_back_stops_at_once(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """The fall sensor's clock steps back 10 s, then it reports a fall: an emergency stop for
    the fall, at once, and a stop_latency_ms no larger than the time the test saw pass (the
    readings used to be dropped as out of order, the stop came 0.5 s later as sensor_stale)."""
    make_daemon(treadmill_id="tm-step", sensors="mqtt")
    async with (
        clinician(broker, "tm-step") as doc,
        clocked_sensors(broker, "tm-step") as sensors,
    ):
        await doc.state(lambda s: s["stale"] == [] and all(s["grip"].values()), within=10.0)
        await doc.start_running("u-step", program="first_session")
        sensors.paused.add("fall")
        sensors.offset["fall"] = -10.0
        await sensors.publish("fall", False)  # stamped 10 s back: old, but no harm
        published = time.monotonic()
        await sensors.publish("fall", True)
        event = await doc.event("estop")
        seen_ms = (time.monotonic() - published) * 1000.0
        assert event["cause"] == "fall"
        assert 0.0 <= event["stop_latency_ms"] <= seen_ms
        state = await doc.state(lambda s: s["state"] == "estop", within=5.0)
        assert state["latched"]["cause"] == "fall"


@pytest.mark.asyncio
async def test_sr16_sensors_whose_clocks_differ_from_the_daemons_wall_clock_still_count(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Sensor clocks 60 s behind the daemon's wall clock (as after a step forward of the
    daemon's clock) and 60 s ahead: their readings count from their arrival, a session runs,
    and a release still stops it."""
    make_daemon(treadmill_id="tm-wall", sensors="mqtt")
    async with (
        clinician(broker, "tm-wall") as doc,
        clocked_sensors(
            broker, "tm-wall", {"grip_left": -60.0, "grip_right": 60.0, "fall": -60.0}
        ) as sensors,
    ):
        await doc.state(lambda s: s["stale"] == [] and all(s["grip"].values()), within=10.0)
        await doc.start_running("u-wall", program="first_session")
        sensors.values["grip_left"] = sensors.values["grip_right"] = False
        assert (await doc.event("estop"))["cause"] == "grip_lost"


@pytest.mark.asyncio
async def test_sr4_sr16_a_forged_held_against_a_real_release_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A second client publishes "held" on both grip topics at 20 Hz while the real sensors
    report a release: the belt stops, and the state says which sensors disagree."""
    make_daemon(treadmill_id="tm-forged", sensors="mqtt")
    async with (
        clinician(broker, "tm-forged") as doc,
        clocked_sensors(broker, "tm-forged") as sensors,
        clocked_sensors(broker, "tm-forged") as forger,
    ):
        forger.paused.update(NAMES)
        await doc.state(lambda s: s["stale"] == [] and all(s["grip"].values()), within=10.0)
        await doc.start_running("u-forged", program="first_session")
        forger.paused.difference_update(("grip_left", "grip_right"))
        sensors.values["grip_left"] = sensors.values["grip_right"] = False
        assert (await doc.event("estop"))["cause"] == "grip_lost"
        state = await doc.state(lambda s: "sensor_problems" in s, within=5.0)
        assert "two sources" in state["sensor_problems"]["grip_left"]


@pytest.mark.asyncio
async def test_sr8_readings_that_waited_are_stale_on_arrival(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A sensor whose readings start to arrive 2 s after their stamps (held back somewhere):
    by its own earlier stamps each one waited 2 s, so it is stale on arrival though readings
    keep coming, and a start is refused."""
    make_daemon(treadmill_id="tm-old", sensors="mqtt")
    async with (
        clinician(broker, "tm-old") as doc,
        clocked_sensors(broker, "tm-old") as sensors,
    ):
        await doc.state(lambda s: s["stale"] == [] and all(s["grip"].values()), within=10.0)
        sensors.offset["grip_left"] = -2.0
        await doc.state(lambda s: s["stale"] == ["grip_left"], within=5.0)
        reply = await doc.command("start_session", user="u-old")
        assert reply["ok"] is False
        assert "left grip sensor has no fresh reading" in reply["error"]["message"]
