"""The broker settings of a configuration, as the daemon, the tablet client and the simulated
user all read them: ``[mqtt]`` with its environment overrides, TLS paths resolved against the
configuration file's folder, the prefix defaulted from the treadmill's id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.loading import LoadedConfig
from contract.mqtt import default_prefix
from controller.mqtt_link import TlsSettings


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    prefix: str
    username: str | None
    password: str | None
    tls: TlsSettings | None


def broker_settings(loaded: LoadedConfig) -> BrokerSettings:
    mqtt = loaded.config.mqtt

    def resolved(path: Path | None) -> Path | None:
        return None if path is None else loaded.resolve(path)

    tls = None
    if mqtt.tls is not None:
        tls = TlsSettings(
            ca_file=loaded.resolve(mqtt.tls.ca_file),
            cert_file=resolved(mqtt.tls.cert_file),
            key_file=resolved(mqtt.tls.key_file),
        )
    prefix = mqtt.prefix if mqtt.prefix is not None else default_prefix(loaded.config.treadmill.id)
    return BrokerSettings(
        host=mqtt.host,
        port=mqtt.port,
        prefix=prefix,
        username=mqtt.username,
        password=None if mqtt.password is None else mqtt.password.get_secret_value(),
        tls=tls,
    )
