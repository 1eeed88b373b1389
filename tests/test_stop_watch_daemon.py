"""The stop-quality watch in the daemon, over MQTT (a Mosquitto per test): the state's
stop_watch extension and the stop_checked event. The daemon's baselines are its journal's
current commissioning (tests/daemon_process.py seeds one as treadguard commission writes it);
a kind without one is not compared (tests/test_stop_watch.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker


@pytest.mark.asyncio
async def test_the_commissioned_stops_are_the_baselines_and_a_good_brake_is_judged_good(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    daemon = make_daemon(treadmill_id="tm-watch", env={"TREADGUARD_STOP_WATCH__MARGIN_PCT": "25"})
    async with clinician(broker, "tm-watch") as doc:
        idle = await doc.state(lambda s: "stop_watch" in s, within=5.0)
        assert idle["stop_watch"] == {
            "margin_pct": 25.0,
            "fault_pending": False,
            "emergency": {"baseline": True, "slow_in_a_row": 0, "last": None},
            "controlled": {"baseline": True, "slow_in_a_row": 0, "last": None},
        }
        await doc.start_running("u-1", program="first_session")
        ok(await doc.command("estop"))
        checked = await doc.event("stop_checked")
        assert checked["kind"] == "emergency"
        assert checked["verdict"] == "good", checked
        assert checked["speed_mph"] > 0.5
        assert 0.0 < checked["standstill_s"] < 2.0
        assert checked["baseline_deceleration_mph_per_s"] > 0.0
        after = await doc.state(
            lambda s: s["stop_watch"]["emergency"]["last"] == "good", within=SESSION_WAIT_S
        )
        assert after["stop_watch"]["emergency"]["slow_in_a_row"] == 0
    assert daemon.alive()
