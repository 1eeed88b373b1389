"""systemd's notify protocol (sd_notify), for ``Type=notify`` and ``WatchdogSec``.

A datagram of ``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET`` (a path, or an
abstract name starting with ``@``). Outside systemd the variable is unset and every call does
nothing. The watchdog interval is half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
advises; the daemon pings from the control tick, so a loop that stops ticking stops the pings
and systemd restarts it (the drive's own deadman has stopped the belt by then, SR-9).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)  # never wait for systemd on the control tick
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 2e6
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str) -> None:
        """``notify(READY="1", STATUS="idle")``; does nothing outside systemd."""
        if self._socket is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError:
            self.failures += 1  # systemd gone or its queue full: the watchdog will tell

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
