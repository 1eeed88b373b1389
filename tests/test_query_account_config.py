"""`[mqtt] queries_username` may not name an account that is already connected to the broker
(docs/daemon.md, "Queries"; docs/mqtt-security.md).

The shipped broker configuration takes each account's user name as its client id
(use_username_as_clientid), so two connections under one account keep replacing each other.
The daemon's own account there: its command link and its query connection knocked each other
off some three times a second, commands went unanswered and an E-STOP waited 10 s. The tablet's
account: the daemon's query connection knocked the clinician's tablet off (the session ended
``tablet_lost``). Both are refused by the configuration's loader, so ``check-config`` and
``run`` say so with the field, and the daemon never starts with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import assert_refused, check_config, valid_config, write
from treadguard.config.loading import ConfigError, load_config
from treadguard.controller.mqtt_settings import query_broker_settings

FIELD = "mqtt.queries_username"
ENV = "TREADGUARD_MQTT__QUERIES_USERNAME"


def mqtt(**settings: str) -> str:
    return "[mqtt]\n" + "".join(f"{key} = {value!r}\n" for key, value in settings.items())


def refusal(tmp_path: Path, text: str) -> str:
    """The loader's one problem with ``text``, which must be of the query account."""
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text))
    (problem,) = refused.value.problems
    assert problem.startswith(f"{FIELD}: "), problem
    return problem.removeprefix(f"{FIELD}: ")


def test_sr15_the_query_account_may_not_be_the_daemons_own(tmp_path: Path) -> None:
    text = valid_config(extra=mqtt(username="treadguard", queries_username="treadguard"))
    said = refusal(tmp_path, text)
    assert said.startswith("'treadguard' is mqtt.username, the daemon's own account"), said
    assert "replacing each other" in said, said

    found = assert_refused(check_config(write(tmp_path, text, "check.toml")))
    assert found == {FIELD: said}


def test_sr15_the_daemons_own_account_from_the_environment_is_refused_with_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, valid_config(extra=mqtt(username="treadguard-tm-02")))
    found = assert_refused(check_config(path, {ENV: "treadguard-tm-02"}))
    assert found[FIELD].startswith("'treadguard-tm-02' is mqtt.username"), found
    assert found[FIELD].endswith(f"(from {ENV})"), found
    monkeypatch.setenv(ENV, "treadguard-tm-02")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems == [f"{FIELD}: {found[FIELD]}"]


@pytest.mark.parametrize(
    ("account", "whose"),
    [
        ("tablet", "the clinician's tablet"),
        ("tablet-tm-01", "a tablet"),
        ("dashboard", "a clinic dashboard"),
        ("dashboard-2", "a clinic dashboard"),
        ("sensors-tm-test", "a sensor device"),
        ("sensors-tm-01", "a sensor device"),
        ("treadguard", "a daemon"),
        # Another treadmill's daemon on the same broker, and that daemon's query connection.
        ("treadguard-tm-02", "another treadmill's daemon"),
        ("treadguard-tm-01-queries", "another treadmill's daemon"),
        ("treadguard-queries", "another treadmill's daemon"),
    ],
)
def test_sr15_the_query_account_may_not_be_a_devices_account(
    tmp_path: Path, account: str, whose: str
) -> None:
    """The shipped accounts of the tablet, the dashboard, the sensors (scripts/install makes
    ``sensors-<treadmill id>``; the shipped ACL has ``sensors-tm-01``) and the daemon, and the
    accounts named after them for a second device (docs/mqtt-security.md): each is some
    device's connection, which the query connection would knock off the broker."""
    text = valid_config(extra=mqtt(username="treadguard-tm-test", queries_username=account))
    said = refusal(tmp_path, text)
    assert said.startswith(f"{account!r} is {whose}'s account"), said
    assert "knock" in said, said

    found = assert_refused(check_config(write(tmp_path, text, "check.toml")))
    assert found == {FIELD: said}


def test_sr15_an_anonymous_daemon_still_may_not_take_the_tablets_account(tmp_path: Path) -> None:
    said = refusal(tmp_path, valid_config(extra=mqtt(queries_username="tablet")))
    assert said.startswith("'tablet' is the clinician's tablet's account"), said


@pytest.mark.parametrize(
    ("settings", "queries_as"),
    [
        ({}, None),  # anonymous, as on the simulator's own broker
        ({"username": "treadguard"}, "treadguard-queries"),  # the shipped accounts
        ({"username": "treadguard-tm-02"}, "treadguard-tm-02-queries"),
        ({"username": "treadguard", "queries_username": "queries-tm-01"}, "queries-tm-01"),
        ({"queries_username": "queries-tm-01"}, "queries-tm-01"),
        # An account of its own that merely begins like a device's name.
        ({"username": "treadguard", "queries_username": "tablets-queries"}, "tablets-queries"),
    ],
)
def test_a_query_account_of_its_own_is_accepted(
    tmp_path: Path, settings: dict[str, str], queries_as: str | None
) -> None:
    path = write(tmp_path, valid_config(extra=mqtt(**settings)))
    loaded = load_config(path)
    assert query_broker_settings(loaded).username == queries_as
    proc = check_config(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["ok"]
