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


@pytest.mark.asyncio
async def test_h42_a_restart_is_no_reset_of_a_worn_brake_fault(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """The worn-brake fault latched, the daemon stopped (systemctl restart, a crash, a power
    cut): the next daemon starts with the fault latched again, and its reset is refused until
    the brake is commissioned again. Kept only in memory, a restart cleared it, and the belt
    ran again on the worn brake."""
    tm = "tm-worn"
    worn = 'kind = "simulator"\nbrake_wear = 0.6'
    first = make_daemon(treadmill_id=tm, drive=worn)
    async with clinician(broker, tm) as doc:
        for n in range(2):  # two slow emergency stops in a row: the watch's fault
            await doc.start_running(f"u-{n}", program="first_session")
            ok(await doc.command("estop"))
            if n == 0:
                await doc.event("maintenance_warning")
                await doc.reset_when_allowed()
        faulted = await doc.state(
            lambda s: s["state"] == "fault" and s["stop_watch"]["fault_pending"],
            within=SESSION_WAIT_S,
        )
        assert faulted["latched"]["cause"] == "drive_fault", faulted
    assert first.stop() == 0

    second = make_daemon(treadmill_id=tm, drive=worn)
    async with clinician(broker, tm) as doc:
        again = await doc.state(lambda s: s["state"] == "fault", within=5.0)
        assert again["latched"]["cause"] == "drive_fault", again
        assert again["stop_watch"]["fault_pending"] is True
        refused = await doc.command("reset")
        assert refused["ok"] is False, refused
        assert "commission the treadmill again" in refused["error"]["message"]
        start = await doc.command("start_session", user="u-9", program="first_session")
        assert start["ok"] is False, start
    assert second.alive()
    assert "brake_fault_on_record" in second.log_text()
