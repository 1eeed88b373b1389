"""The daemon as a tablet finds it: ``treadguard run`` in its own process, a private Mosquitto,
and a client that knows only docs/tablet-contract.md.

A whole session; every refusal code; an emergency stop and its reset; grips released and a
fall signalled through the MQTT sensor topics (SR-4, SR-5, SR-8); the broker killed and
restarted mid-session (SR-12); SIGTERM and a second signal (SR-11).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import aiomqtt
import pytest

from tests.clinician import (
    SESSION_WAIT_S,
    STANDSTILL_MPH,
    clinician,
    ok,
    refused,
    running,
    sensor_user,
)
from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import (
    DAEMON_ENV,
    SENSOR_TM,
    SENSORS,
    Broker,
    auth_lines,
    body,
    have_mosquitto,
    login,
    tablet,
    text_is,
)
from tests.periodic import pause
from treadguard.contract.mqtt import MAX_COMMAND_AGE_S

REGISTER_MAP = ROOT / "config" / "drives" / "delta-vfd-e.toml"


# ----------------------------------------------------------------------------- sessions


@pytest.mark.asyncio
async def test_sr1_sr3_whole_session_over_mqtt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    daemon = make_daemon(treadmill_id="tm-session")
    async with clinician(broker, "tm-session") as doc:
        idle = await doc.state(lambda s: True, within=5.0)
        assert idle["state"] == "idle"
        assert idle["session"] is None
        assert idle["treadmill_id"] == "tm-session"
        assert idle["latched"] is None

        # SR-7: a user the journal has no session of is on their first: no later program,
        # and a start that names none gets the first-session program and its cap.
        message = refused(
            await doc.command("start_session", user="u-17", program="reverse_walking"),
            "preconditions_unmet",
        )
        assert "first" in message
        ok(await doc.command("start_session", user="u-17"))
        started = await doc.event("session_started")
        assert started["user"] == "u-17"
        countdown = await doc.state(lambda s: s["state"] == "countdown", within=5.0)
        assert countdown["speed_mph"] == 0.0
        assert countdown["session"]["user"] == "u-17"
        assert countdown["session"]["program"] == "first_session"
        assert countdown["session"]["cap_s"] == 180.0

        state = await doc.state(running, within=SESSION_WAIT_S)
        assert state["target_mph"] == 0.8
        assert state["speed_mph"] <= 1.2

        # SR-1: inside the band is taken, outside it refused and the target kept.
        ok(await doc.command("set_speed", mph=1.0))
        message = refused(await doc.command("set_speed", mph=1.5), "out_of_range")
        assert "1.5" in message
        faster = await doc.state(lambda s: s["target_mph"] == 1.0, within=5.0)
        assert faster["state"] == "running"
        refused(await doc.command("start_session", user="u-17"), "not_allowed")

        ok(await doc.command("stop"))
        ended = await doc.event("session_ended")
        assert ended["reason"] == "operator_stop"
        done = await doc.state(
            lambda s: s["state"] == "idle" and s["speed_mph"] <= STANDSTILL_MPH,
            within=SESSION_WAIT_S,
        )
        assert done["session"] is None

        # That session was stopped after seconds: not the first session the protocol means
        # (SR-7), so the next start that names no program is a first session again. (A first
        # session run to its cap makes the next one reverse walking: the scenario
        # short_first_session_does_not_count.)
        ok(await doc.command("start_session", user="u-17"))
        again = await doc.state(lambda s: s["state"] == "countdown", within=5.0)
        assert again["session"]["program"] == "first_session"
        assert again["session"]["cap_s"] == 180.0
        assert int(again["session"]["id"]) == int(countdown["session"]["id"]) + 1
        ok(await doc.command("stop"))
    assert daemon.alive()


@pytest.mark.asyncio
async def test_state_goes_out_at_least_every_500ms_while_the_belt_moves(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    make_daemon(treadmill_id="tm-period")
    async with clinician(broker, "tm-period") as doc:
        await doc.start_running("u-1", program="first_session")
        arrivals = []
        for _ in range(10):
            state = await doc.state(lambda s: True, within=1.0)
            assert state["state"] == "running"
            arrivals.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps) <= 0.5, gaps


# ----------------------------------------------------------------------------- refusals


@pytest.mark.asyncio
async def test_sr15_every_refusal_code_over_mqtt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Each refusal code of docs/tablet-contract.md, provoked the way a faulty tablet would; the
    daemon lives."""
    daemon = make_daemon(treadmill_id="tm-codes", sensors="mqtt")  # no readings: unsafe
    async with clinician(broker, "tm-codes") as doc:
        await doc.raw(b"{not json")
        refused(await doc.reply_to(None), "invalid_json")
        await doc.raw(b"[1, 2]")
        refused(await doc.reply_to(None), "invalid_command")
        await doc.raw(json.dumps({"id": "big", "type": "heartbeat", "pad": "x" * 5000}).encode())
        refused(await doc.reply_to(None), "payload_too_large")
        await doc.raw(json.dumps({"id": "nt", "type": "jump"}).encode())
        refused(await doc.reply_to("nt"), "unknown_type")
        await doc.raw(json.dumps({"id": "bad-field", "type": "set_speed", "mph": "fast"}).encode())
        refused(await doc.reply_to("bad-field"), "invalid_command")

        refused(await doc.command("set_speed", mph=1.0), "not_allowed")  # no session
        refused(await doc.command("reset"), "not_allowed")  # nothing latched
        message = refused(await doc.command("start_session", user="u-2"), "preconditions_unmet")
        assert "grip" in message  # it names what is missing
        refused(await doc.command("start_session", user="u-2", cap_s=9999.0), "out_of_range")

        await doc.raw(json.dumps({"id": "once", "type": "heartbeat"}).encode())
        ok(await doc.reply_to("once"))
        await doc.raw(json.dumps({"id": "once", "type": "set_speed", "mph": 1.0}).encode())
        refused(await doc.reply_to("once"), "duplicate")

        # A retained command is refused, not run (else it would run again at every connect).
        await doc.raw(json.dumps({"id": "kept", "type": "estop"}).encode(), retain=True)
        refused(await doc.reply_to("kept"), "not_allowed")
        await doc.raw(b"", retain=True)  # clear it from the broker

        ok(await doc.command("estop"))
        message = refused(await doc.command("start_session", user="u-2"), "latched")
        assert "remote_estop" in message or "estop" in message
        state = await doc.state(lambda s: s["state"] == "estop", within=5.0)
        assert state["latched"]["cause"] == "remote_estop"
    assert daemon.alive()


# ----------------------------------------------------------------------------- stops


@pytest.mark.asyncio
async def test_sr6_sr12_remote_estop_latches_and_reset_needs_standstill(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    make_daemon(treadmill_id="tm-estop")
    async with clinician(broker, "tm-estop") as doc:
        await doc.start_running("u-3", program="first_session")
        ok(await doc.command("estop"))
        event = await doc.event("estop")
        assert event["cause"] == "remote_estop"
        assert isinstance(event["stop_latency_ms"], float)
        assert 0.0 <= event["stop_latency_ms"] < 1000.0
        latched = await doc.state(lambda s: s["state"] == "estop", within=5.0)
        assert latched["latched"]["kind"] == "estop"
        assert latched["target_mph"] == 0.0
        # SR-6: nothing moves the belt until a reset, and a reset never moves it.
        refused(await doc.command("set_speed", mph=1.0), "not_allowed")  # the session is over
        refused(await doc.command("start_session", user="u-3"), "latched")
        still = await doc.state(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=5.0)
        assert still["state"] == "estop"
        await doc.reset_when_allowed()
        idle = await doc.state(lambda s: s["state"] == "idle", within=5.0)
        assert idle["latched"] is None
        assert idle["target_mph"] == 0.0
        assert (await doc.event("reset"))["type"] == "reset"


@pytest.mark.asyncio
async def test_sr4_sr5_sr8_grips_and_fall_through_the_mqtt_sensor_topics(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    make_daemon(treadmill_id="tm-grip", sensors="mqtt")
    async with sensor_user(broker, "tm-grip") as user, clinician(broker, "tm-grip") as doc:
        await doc.state(lambda s: s["grip"] == {"left": True, "right": True}, within=5.0)
        await doc.start_running("u-4", program="first_session")

        user.values["grip_left"] = False  # SR-4: one hand is a warning, the belt runs on
        warning = await doc.event("grip_warning")
        assert warning["hand"] == "left"
        user.values["grip_right"] = False  # both: an emergency stop after the debounce
        event = await doc.event("estop")
        assert event["cause"] == "grip_lost"
        state = await doc.state(lambda s: s["state"] == "estop", within=5.0)
        assert state["latched"]["cause"] == "grip_lost"

        # SR-6: the reset is refused while the cause is still there.
        refused(await doc.command("reset"), "preconditions_unmet")
        user.values["grip_left"] = user.values["grip_right"] = True
        await doc.state(lambda s: s["grip"] == {"left": True, "right": True}, within=5.0)
        await doc.reset_when_allowed()

        await doc.start_running("u-4", program="first_session")
        user.values["fall"] = True  # SR-5: at once
        assert (await doc.event("estop"))["cause"] == "fall"


@pytest.mark.asyncio
async def test_sr8_sensors_that_go_silent_or_send_garbage_stop_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    make_daemon(treadmill_id="tm-silent", sensors="mqtt")
    async with clinician(broker, "tm-silent") as doc:
        async with sensor_user(broker, "tm-silent"):
            await doc.state(lambda s: s["stale"] == [], within=5.0)
            await doc.start_running("u-5", program="first_session")
        # The sensors stop reporting; garbage on their topics is no reading either.
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            for name in ("grip_left", "grip_right", "fall"):
                await client.publish(f"{doc.p}/sensors/{name}", b'{"value": 1}', qos=1)
            event = await doc.event("estop")
        assert event["cause"] in ("sensor_stale", "grip_lost")
        # Each sensor goes stale half a second after its own last reading (the last round of
        # readings may have been cut short): all three, and the stop stays latched.
        every = {"grip_left", "grip_right", "fall"}
        await doc.state(lambda s: s["state"] == "estop" and set(s["stale"]) == every, within=5.0)


@pytest.mark.asyncio
async def test_sr15_whole_session_under_the_shipped_acl(tmp_path: Path) -> None:
    """The daemon, the tablet and the sensors each with their own account of the shipped ACL
    (config/mosquitto/acl); the daemon's password comes from the environment. A command from
    any other account never reaches the daemon."""
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path, auth_lines(tmp_path))
    broker.start()
    config = daemon_config(
        tmp_path,
        broker.port,
        treadmill_id=SENSOR_TM,
        sensors="mqtt",
        mqtt_extra='username = "treadguard"',
    )
    daemon = DaemonProcess(config, tmp_path / "d.log", env=DAEMON_ENV)
    daemon.start()
    try:
        async with (
            sensor_user(broker, SENSOR_TM, account=SENSORS),
            clinician(broker, SENSOR_TM, account="tablet") as doc,
        ):
            await doc.state(lambda s: s["stale"] == [], within=10.0)
            await doc.start_running("u-12", program="first_session")
            async with tablet(broker, **login("sensors")) as intruder:
                # Acknowledged by the broker before it is dropped, so it is gone by the time
                # the tablet's next command is answered.
                await intruder.publish(f"{doc.p}/cmd", b'{"id": "x", "type": "estop"}')
            ok(await doc.command("heartbeat"))
            answered = time.time()
            state = await doc.state(lambda s: s["ts"] >= answered, within=1.0)
            assert state["state"] == "running"
            assert state["latched"] is None
            ok(await doc.command("stop"))
            await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
    finally:
        daemon.stop()
        broker.kill()
    assert "mqtt_connected" in daemon.log_text()


# ----------------------------------------------------------------------------- a real wire


@pytest.mark.asyncio
async def test_sr9_sr13_the_daemon_drives_a_modbus_vfd_over_a_real_socket(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, modbus_device: str
) -> None:
    """The same daemon and configuration a clinic runs, with drive.kind = "modbus": the belt
    speed in the state is the drive's feedback, and an estop stops the drive."""
    host, _, port = modbus_device.rpartition(":")
    drive = (
        f'kind = "modbus"\ntransport = "tcp"\nhost = "{host}"\ntcp_port = {port}\n'
        f"register_map = '{REGISTER_MAP.as_posix()}'\nmph_per_hz = 0.05"
    )
    make_daemon(treadmill_id="tm-vfd", sensors="mqtt", drive=drive)
    async with sensor_user(broker, "tm-vfd"), clinician(broker, "tm-vfd") as doc:
        # The sensors fresh and the drive answering (its speed known): a start before the
        # drive's first answer is refused, rightly ("drive is not answering").
        await doc.state(lambda s: s["stale"] == [] and s["speed_mph"] is not None, within=10.0)
        await doc.start_running("u-10", program="first_session")
        ok(await doc.command("estop"))
        assert (await doc.event("estop"))["cause"] == "remote_estop"
        stopped = await doc.state(
            lambda s: s["state"] == "estop" and s["speed_mph"] <= STANDSTILL_MPH, within=5.0
        )
        assert stopped["latched"]["cause"] == "remote_estop"


# ----------------------------------------------------------------------------- the broker


@pytest.mark.asyncio
async def test_sr12_broker_killed_mid_session_never_moves_the_belt_and_recovers(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """With the broker gone the tablet's heartbeats stop: SR-12's grace ends the session with
    a controlled stop (no latch). The daemon lives, reconnects by itself, says "online" again
    and republishes its state."""
    daemon = make_daemon(treadmill_id="tm-broker")
    async with clinician(broker, "tm-broker") as doc:
        await doc.start_running("u-7", program="first_session")
        broker.kill()
    assert daemon.alive()
    await asyncio.to_thread(broker.start)  # retained messages died with the old broker
    async with clinician(broker, "tm-broker", heartbeat=False) as doc:
        state = await doc.state(lambda s: True, within=5.0)
        assert state["state"] in ("running", "stopping", "idle")
        assert state["speed_mph"] <= 1.2
        assert state["target_mph"] <= 1.2
        # No heartbeat since the broker went: a controlled stop, not an emergency stop.
        ended = await doc.state(
            lambda s: s["state"] == "idle" and s["speed_mph"] <= STANDSTILL_MPH,
            within=SESSION_WAIT_S,
        )
        assert ended["latched"] is None
        assert ended["session"] is None
        ok(await doc.command("heartbeat"))
    assert daemon.alive()


@pytest.mark.asyncio
async def test_sr12_sr13_a_hung_broker_never_holds_up_the_control_loop(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A broker that stops answering mid-session (SIGSTOP) blocks every publication of the
    daemon's; the control loop runs on regardless, and SR-12's grace ends the session *while*
    the broker is frozen, not when it comes back."""
    daemon = make_daemon(treadmill_id="tm-hung")
    async with clinician(broker, "tm-hung") as doc:
        await doc.start_running("u-11", program="first_session")
        frozen_at = time.time()
        broker.freeze()
        try:
            # The fault lasts the heartbeat grace (5 s), the controlled stop (2 s) and some.
            await asyncio.sleep(9.0)
            assert daemon.alive()
        finally:
            thawed_at = time.time()
            broker.thaw()
        # The events the daemon kept while the broker was hung arrive after it reconnects.
        stopping = await doc.tab.next(
            f"{doc.p}/events", lambda m: body(m)["type"] == "stopping", within=SESSION_WAIT_S
        )
        event = body(stopping)
        assert isinstance(event, dict)
        assert event["reason"] == "tablet_lost"
        assert frozen_at < event["ts"] < thawed_at
        final = await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
        assert final["latched"] is None
    assert daemon.alive()


# ----------------------------------------------------------------------------- lifecycle


@pytest.mark.asyncio
async def test_sr11_sigterm_stops_the_session_publishes_offline_and_exits_0(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    daemon = make_daemon(treadmill_id="tm-term")
    async with clinician(broker, "tm-term") as doc:
        await doc.start_running("u-8", program="first_session")
        daemon.signal(signal.SIGTERM)
        ended = await doc.event("session_ended")
        assert ended["reason"] == "shutdown"
        final = await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
        assert final["speed_mph"] <= STANDSTILL_MPH
        offline = await doc.tab.next(f"{doc.p}/availability", text_is("offline"))
        assert offline.retain
    assert await asyncio.to_thread(daemon.wait) == 0


@pytest.mark.asyncio
async def test_a_session_a_crash_left_open_is_announced_ended_by_the_restarted_daemon(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """The daemon killed mid-session (SIGKILL: a crash, the mains cut) and started again on
    the same journal: it closes the session as interrupted, and says so on the events topic
    once connected, so a tablet that kept the session open hears that it is over. Its belt
    time is what its samples show, no more than the test saw it run; a clinician may confirm
    it as the user's first session."""
    daemon = make_daemon(treadmill_id="tm-crash")
    async with clinician(broker, "tm-crash") as doc:
        asked = time.monotonic()
        state = await doc.start_running("u-crash", program="first_session")
        session = str(state["session"]["id"])
        daemon.signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.wait)
        ran = time.monotonic() - asked
        await doc.tab.next(f"{doc.p}/availability", text_is("offline"))
        daemon.start()
        ended = await doc.event("session_ended")
        assert (ended["session_id"], ended["reason"]) == (session, "interrupted")
        assert 0.0 < ended["belt_moving_s"] <= ran, (ended, ran)
        idle = await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
        assert idle["session"] is None
        confirmed = await doc.command(
            "confirm_first_session", session_id=session, clinician="c-1", user="u-crash"
        )
        assert confirmed["ok"] is True, confirmed


@pytest.mark.asyncio
async def test_sr11_second_signal_is_an_emergency_stop(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SIGTERM, and SIGTERM again before standstill: an emergency stop at once, on record as
    the daemon's own (cause shutdown, a second signal), never as a tablet's E-STOP."""
    daemon = make_daemon(treadmill_id="tm-twice")
    async with clinician(broker, "tm-twice") as doc:
        await doc.start_running("u-9", program="first_session")
        daemon.signal(signal.SIGTERM)
        await doc.event("stopping")
        daemon.signal(signal.SIGTERM)
        event = await doc.event("estop")
        assert (event["cause"], event["detail"]) == ("shutdown", "second signal"), event
        await doc.tab.next(f"{doc.p}/availability", text_is("offline"))
    assert await asyncio.to_thread(daemon.wait) == 0


@pytest.mark.asyncio
async def test_sr15_a_start_delivered_late_is_refused_a_stop_is_not(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Commands stamped with ``ts`` (an extension of contract v1): a start older than
    MAX_COMMAND_AGE_S, as a broker that hung would deliver it, is refused; a stamped stop of
    the same age still ends a running session."""
    make_daemon(treadmill_id="tm-late")
    async with clinician(broker, "tm-late") as doc:
        await doc.until(lambda s: s["stale"] == [], within=5.0)
        old = time.time() - (MAX_COMMAND_AGE_S + 2.0)
        late_start = {"id": "late-1", "type": "start_session", "user": "u-l", "ts": old}
        await doc.raw(json.dumps(late_start).encode())
        message = refused(await doc.reply_to("late-1"), "not_allowed")
        assert "too old" in message
        # Refused before the core, and still a safety event: journaled, then published.
        event = await doc.event("command_refused")
        assert (event["command"], event["code"]) == ("start_session", "not_allowed")
        journal = broker.workdir / "journal-tm-late.sqlite"
        with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT fields FROM events WHERE type = 'command_refused'").fetchall()
        assert [json.loads(r[0])["message"] for r in rows] == [message]
        fresh = {"id": "late-2", "type": "start_session", "user": "u-l", "ts": time.time()}
        await doc.raw(json.dumps(fresh).encode())
        ok(await doc.reply_to("late-2"))
        await doc.state(running, within=SESSION_WAIT_S)
        old_stop = {"id": "late-3", "type": "stop", "ts": time.time() - 60.0}
        await doc.raw(json.dumps(old_stop).encode())
        ok(await doc.reply_to("late-3"))
        ended = await doc.event("session_ended")
        assert ended["reason"] == "operator_stop"
        # An entry of the record sent again later (a replay after a restart, when its id is no
        # longer remembered) must not stand over the correction entered since.
        session = str(ended["session_id"])
        entry = {"type": "outcome_after", "session_id": session, "pain": 8}
        await doc.raw(json.dumps({"id": "late-4", **entry, "ts": time.time()}).encode())
        ok(await doc.reply_to("late-4"))
        replayed = {"id": "late-5", **entry, "ts": time.time() - 60.0}
        await doc.raw(json.dumps(replayed).encode())
        assert "too old" in refused(await doc.reply_to("late-5"), "not_allowed")


@pytest.mark.asyncio
async def test_sr14_refusals_before_the_core_are_coalesced_with_a_count(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Garbage on <p>/cmd is answered every time, but a tablet gone mad cannot fill the
    journal: the first refusal of its kind in a second goes out as it is, the rest of that
    second as one command_refused event with their count."""
    make_daemon(treadmill_id="tm-flood")
    async with clinician(broker, "tm-flood", heartbeat=False) as doc:
        for i in range(30):
            await doc.raw(json.dumps({"id": f"bad-{i}", "type": "launch"}).encode())
        for i in range(30):
            refused(await doc.reply_to(f"bad-{i}"), "unknown_type")
        first = await doc.event("command_refused")
        assert (first["command"], first["code"]) == ("launch", "unknown_type")
        assert "count" not in first
        counted = await doc.event("command_refused")
        assert (counted["command"], counted["code"], counted["count"]) == (
            "other",
            "unknown_type",
            29,
        )


@pytest.mark.asyncio
async def test_sr12_the_daemon_off_the_broker_once_during_a_session_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A client connects once under the daemon's client id (a broker that lets any client
    choose its id, or the daemon's own account used elsewhere), holds it a moment and leaves:
    Mosquitto closes the daemon's connection without a word, and the daemon is back on the
    broker a moment later. Meanwhile the tablet's commands reached nobody, an E-STOP among
    them; however seldom it comes (once every few seconds escapes any count of short
    connections), the tablet is no longer known to reach the belt: the session stops under
    control, as when the tablet's heartbeats are lost (SR-12)."""
    tm = "tm-taken-once"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-once", program="first_session")
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"treadguard-{tm}"):
            await asyncio.sleep(0.4)  # the client id held a moment, not a synchronisation
        ended = await doc.event("session_ended")
        assert ended["reason"] == "tablet_lost", ended
        still = await doc.until(
            lambda s: s["speed_mph"] is not None and s["speed_mph"] <= STANDSTILL_MPH, 10.0
        )
        assert still["latched"] is None, still  # a controlled stop: nothing to reset
    assert "mqtt_link_lost_in_session" in daemon.log_text()


async def _as_the_daemon(port: int, identifier: str, stop: asyncio.Event) -> None:
    """Connect under ``identifier`` again each time the broker closes this connection (the
    daemon's reconnect took the id back), until ``stop``."""
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier=identifier) as client:
                async with asyncio.timeout(1.0):
                    async for _ in client.messages:
                        pass
        except (aiomqtt.MqttError, TimeoutError):
            pass
        await pause(stop, 0.05)  # a client's reconnect delay, not a synchronisation


@pytest.mark.asyncio
async def test_sr12_a_client_that_takes_the_daemons_session_over_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A broker that lets any client choose its client id (this test's), and a client that
    connects as the daemon (its client id, `treadguard-<treadmill>`) during a session and
    again whenever it is knocked off (as a second process under the daemon's id does): the
    broker closes the older connection each time, and a daemon knocked off again and again
    would lose the tablet's commands, an E-STOP among them, with the belt running. The daemon
    takes it for a rival controller: the belt stops, the fault latches."""
    tm = "tm-taken-over"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-taken", program="first_session")
        stop = asyncio.Event()
        rival = asyncio.create_task(_as_the_daemon(broker.port, f"treadguard-{tm}", stop))
        try:
            state = await doc.state(lambda s: s["latched"] is not None, within=20.0)
        finally:
            stop.set()
            await rival
        assert (state["latched"]["kind"], state["latched"]["cause"]) == ("fault", "rival_daemon")
        still = await doc.until(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=10.0)
        assert still["latched"]["cause"] == "rival_daemon"
    assert "mqtt_knocked_off" in daemon.log_text()
