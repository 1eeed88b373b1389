"""Bounds of the links to the drive and to the sensors, defined once.

The configuration's schema (``treadguard check-config``) and the drivers that run with the
settings read the same numbers, so a file that check-config accepts is one the drivers accept:
a bound that differed between the two once let ``run`` die on a file found ``ok``.
"""

from __future__ import annotations

# SR-9: the drive is asked for its status at least this often, well inside its own
# communication time-out (the Trackmaster's disconnect stop fires after 500 ms of silence).
DRIVE_MAX_POLL_INTERVAL_S = 0.1
# SR-9: no valid answer from the drive for this long is a lost link; a Modbus VFD's poll
# interval and request time-out together stay within it.
DRIVE_LINK_TIMEOUT_S = 0.3
# The Modbus VFD driver's bound on one request (and on one connection attempt).
VFD_REQUEST_TIMEOUT_S = 0.1
# A Trackmaster's answer to one frame: the default, and the most check-config allows (the
# driver itself takes up to DRIVE_LINK_TIMEOUT_S).
TRACKMASTER_ACK_TIMEOUT_S = 0.2
TRACKMASTER_MAX_ACK_TIMEOUT_S = 0.25

# SR-8: a wired sensor input (a GPIO line, a Modbus bit) is read at least this often, and one
# Modbus request for it waits at most this long; check-config also checks that one lost
# answer cannot make the sensor stale within safety.sensor_timeout_s.
SENSOR_MAX_POLL_INTERVAL_S = 0.1
SENSOR_MAX_REQUEST_TIMEOUT_S = 0.25
# The most bits one Modbus read may ask for (the protocol's limit for coils and inputs): the
# inputs of one device and table must span no more, as one request reads them all.
MODBUS_MAX_BITS_PER_READ = 2000

# docs/tablet-contract.md: the state is published at least every 500 ms while the belt moves.
MAX_STATE_PERIOD_S = 0.5
