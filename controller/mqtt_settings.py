"""The broker settings of a configuration, as the daemon, the tablet client and the simulated
user all read them: ``[mqtt]`` with its environment overrides, TLS paths resolved against the
configuration file's folder, the prefix defaulted from the treadmill's id."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from treadguard.config.loading import ConnectionLoaded, LoadedConfig
from treadguard.contract.mqtt import default_prefix


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to the broker: the CA that signed its certificate, optionally a client certificate."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        elif self.key_file is not None:
            raise ValueError("a TLS key file needs its certificate file")
        return context


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    prefix: str
    username: str | None
    password: str | None
    tls: TlsSettings | None


def broker_settings(loaded: LoadedConfig | ConnectionLoaded) -> BrokerSettings:
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


QUERIES_SUFFIX = "-queries"


def query_broker_settings(loaded: LoadedConfig) -> BrokerSettings:
    """The broker settings of the daemon's query connection: the same broker, TLS and prefix,
    under the queries account (``[mqtt] queries_username``, by default the daemon's account
    with ``-queries`` after it; anonymous when the daemon's own account is)."""
    mqtt = loaded.config.mqtt
    username = mqtt.queries_username
    if username is None and mqtt.username is not None:
        username = mqtt.username + QUERIES_SUFFIX
    secret = mqtt.queries_password
    return replace(
        broker_settings(loaded),
        username=username,
        password=None if secret is None else secret.get_secret_value(),
    )
