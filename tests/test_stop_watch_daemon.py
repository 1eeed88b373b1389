"""The stop-quality watch in the daemon, over MQTT (a Mosquitto per test): the state's
stop_watch extension and the stop_checked event. Until commissioning gives the daemon its
baselines there are none, and the daemon says so instead of inventing one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker


@pytest.mark.asyncio
async def test_without_baselines_every_stop_is_reported_and_none_compared(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    daemon = make_daemon(treadmill_id="tm-watch", env={"TREADGUARD_STOP_WATCH__MARGIN_PCT": "25"})
    async with clinician(broker, "tm-watch") as doc:
        idle = await doc.state(lambda s: "stop_watch" in s, within=5.0)
        assert idle["stop_watch"] == {
            "margin_pct": 25.0,
            "fault_pending": False,
            "emergency": {"baseline": False, "slow_in_a_row": 0, "last": None},
            "controlled": {"baseline": False, "slow_in_a_row": 0, "last": None},
        }
        await doc.start_running("u-1", program="first_session")
        ok(await doc.command("estop"))
        checked = await doc.event("stop_checked")
        assert checked["kind"] == "emergency"
        assert checked["verdict"] == "no_baseline"
        assert "no emergency baseline" in checked["why"]
        assert checked["speed_mph"] > 0.5
        assert 0.0 < checked["standstill_s"] < 2.0
        after = await doc.state(
            lambda s: s["stop_watch"]["emergency"]["last"] == "no_baseline", within=SESSION_WAIT_S
        )
        assert after["stop_watch"]["emergency"]["slow_in_a_row"] == 0
    assert daemon.alive()
