"""A second Mosquitto on the board, besides the broker on [mqtt] port: one that bridges into
the board's broker (with the tablet's account) lets its own clients, anonymous ones here,
command the treadmill. It is judged by its configuration as it reads it, through its own
root: run in a mount namespace of its own, it may find other files at the paths the doctor
reads. Against real brokers: the harm shown first, then the doctor's broker files check."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.mosquitto import (
    FILES_SETTLE_S,
    MOSQUITTO,
    PASSWORDS,
    SENSOR_TM,
    free_ports,
    have_mosquitto,
    wait_listening,
)
from tests.test_doctor import (
    Rig,
    rig,  # noqa: F401 (the fixture)
)
from tests.test_doctor_broker_setups import _reaches_now
from treadguard.config.loading import load_config
from treadguard.controller.doctor import DoctorOptions, Verdict, check_broker_files
from treadguard.controller.mqtt_settings import broker_settings

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


@pytest.mark.parametrize("bridged", [True, False])
def test_a_second_broker_is_judged_by_the_files_it_reads(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
    bridged: bool,
) -> None:
    """The second broker runs in a mount namespace of its own, its folder of configuration
    mounted over the one the doctor reads (there: a harmless file). Bridged into the board's
    broker, anonymous clients of its own command the treadmill, and the doctor names its
    bridge (TODO); without a bridge, it is no way in, and is not named."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    (port,) = free_ports(1)
    seen_here = tmp_path / "kiosk"
    seen_here.mkdir()
    (seen_here / "kiosk.conf").write_text(f"listener {port} 127.0.0.1\n")
    own = tmp_path / "kiosk-own"
    own.mkdir()
    (own / "kiosk.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        + (
            f"connection board\naddress 127.0.0.1:{rig.broker.port}\n"
            f"remote_username tablet\nremote_password {PASSWORDS['tablet']}\n"
            "topic treadmill/# both 1\n"
            if bridged
            else ""
        )
    )
    command = f"mount --bind {own} {seen_here} && exec {MOSQUITTO} -c {seen_here / 'kiosk.conf'}"
    time.sleep(FILES_SETTLE_S)  # its files older than its start, past the doctor's tick
    kiosk = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(kiosk, [port], lambda: "the second mosquitto exited")
        cmd = f"treadmill/{SENSOR_TM}/cmd"
        daemon = ("treadguard", PASSWORDS["treadguard"])
        # Anonymous, at the second broker: it reaches the daemon only through a bridge.
        assert _reaches_now(rig.broker.port, cmd, daemon, None, port) == bridged
        rig.drive = 'kind = "simulator"'
        loaded = load_config(rig.config())
        options = DoctorOptions(mosquitto_conf=rig.broker.conf)
        checks = check_broker_files(loaded, broker_settings(loaded), options)
    finally:
        kiosk.terminate()
        kiosk.wait(timeout=10)
    named = [c for c in checks if f"(pid {kiosk.pid}) is another Mosquitto" in c.detail]
    if bridged:
        assert [c.verdict for c in named] == [Verdict.TODO], checks
        assert f"its bridge board ({kiosk.pid}" not in named[0].detail  # named by its file
        assert "its bridge board (" in named[0].detail, named
        assert f"at 127.0.0.1:{rig.broker.port}" in named[0].detail, named
    else:
        assert named == [], checks
