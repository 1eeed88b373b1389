"""The process that works the daemon's proposals out (controller/proposal_book.py).

A proposal for a user with thousands of sessions is a fraction of a second of pure Python; on
a thread of the daemon it would hold the interpreter's lock against the event loop, which runs
the control tick and handles an E-STOP (measured: a 1 ms timer up to 118 ms late, by
benchmarks/bench_proposal_book.py). So it runs here, in a process of its own at a lower
priority, started by the daemon with its configuration:

    python -m treadguard.controller.proposal_worker --config FILE

One request a line on standard input, ``{"user": "p-012", "now": <unix seconds>}``; one answer
a line on standard output, ``{"user", "program", "cap_s", "reason", "proposal"}`` (the whole
proposal, as a ``history`` answer carries it) or ``{"user", "not_known": <why>}``. It reads the
journal read-only, a connection per request, and only the file the daemon writes
(``--journal-identity``). Whatever stands in its way (a configuration that cannot be loaded, or
is not the daemon's) is each request's answer, so the daemon does not start it again and again.
It ends at the end of its input, and with the daemon however the daemon ends (``--parent``: the
kernel kills it when the daemon's process goes, even while it is stopped).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from treadguard.config.loading import ConfigError, LoadedConfig, load_config
from treadguard.controller.journal import Journal, JournalError
from treadguard.controller.proposal_book import NotKnown, StartChoice, fingerprint, work_out

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def answer(
    loaded: LoadedConfig, journal_path: Path, request: Any, *, identity: str | None = None
) -> dict[str, Any]:
    """The answer to one request line's object; never raises on any input. ``identity``: the
    journal's file the daemon writes; another put at ``journal_path`` is not read."""
    if not isinstance(request, dict):
        return {"user": None, "not_known": "the request is not an object"}
    user, now = request.get("user"), request.get("now")
    if not isinstance(user, str) or not isinstance(now, int | float) or isinstance(now, bool):
        return {"user": user if isinstance(user, str) else None, "not_known": "bad request"}
    try:
        journal = Journal.read_only(journal_path, identity=identity)
    except JournalError as exc:
        return {"user": user, "not_known": f"the record of {user} cannot be read ({exc})"}
    try:
        made: StartChoice | NotKnown = work_out(
            journal,
            user,
            loaded.rules,
            loaded.programs,
            zone=loaded.config.clinic.zone(),
            now=float(now),
        )
    except Exception as exc:  # whatever it was: that user's start from history says so
        made = NotKnown(
            f"the proposal for {user} could not be worked out ({type(exc).__name__}): "
            "choose a program"
        )
    finally:
        journal.close()
    if isinstance(made, NotKnown):
        return {"user": user, "not_known": made.why}
    return {
        "user": user,
        "program": made.program,
        "cap_s": made.cap_s,
        "reason": made.reason,
        "proposal": dict(made.proposal),
    }


class WorkerConfig:
    """The configuration the worker works from, loaded afresh for every request: the
    daemon's core runs what it loaded when it started, so a request is answered only from a
    load that gives the very rules, programs and zone the daemon runs (its fingerprint). By
    content, never by the files' look: a rules file that appears beside the configuration,
    one edited while the last load read it, or one put back with its old times is judged by
    what it says. (A load takes a few milliseconds; docs/benchmarks.md.)"""

    def __init__(self, path: Path, expected: str | None = None) -> None:
        """``expected``: the daemon's fingerprint() of what it loaded, if it has one."""
        self.path = path
        self.expected = expected
        self.loaded: LoadedConfig | ConfigError = ConfigError(path, ["not loaded yet"])
        self.refusal: str | None = None
        self.refresh()

    def refresh(self) -> None:
        self.loaded = _load(self.path)
        self.refusal = _refusal(self.loaded, self.expected)


def _load(path: Path) -> LoadedConfig | ConfigError:
    try:
        return load_config(path)
    except ConfigError as exc:
        return exc
    except Exception as exc:  # whatever it was: every request says so, the worker stays
        return ConfigError(path, [f"{type(exc).__name__}: {exc}"])


def serve(config: WorkerConfig, lines: TextIO, out: TextIO, *, identity: str | None = None) -> None:
    """Each line of ``lines`` answered on ``out``, the configuration looked at again first.
    ``{"check": true}`` asks only whether the configuration still serves: ``{"check": true,
    "not_known": <why>}`` if it does not."""
    for line in lines:
        config.refresh()
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        loaded, refusal = config.loaded, config.refusal
        if isinstance(request, dict) and request.get("check") is True:
            got: dict[str, Any] = {"check": True}
            if refusal is not None:
                got["not_known"] = refusal
        elif refusal is not None or isinstance(loaded, ConfigError):
            user = request.get("user") if isinstance(request, dict) else None
            got = {
                "user": user if isinstance(user, str) else None,
                "not_known": refusal,
                "configuration": True,
            }
        else:
            journal_path = loaded.resolve(loaded.config.journal.path)
            got = answer(loaded, journal_path, request, identity=identity)
        out.write(json.dumps(got) + "\n")
        out.flush()


def _refusal(loaded: LoadedConfig | ConfigError, expected: str | None) -> str | None:
    """Why no request can be answered from ``loaded``, in words for the refusal; or None."""
    if isinstance(loaded, ConfigError):
        first = loaded.problems[0] if loaded.problems else "no reason given"
        return (
            f"the configuration ({loaded.path}) cannot be loaded now ({first}): fix it and "
            "restart treadguard (between sessions), or choose a program"
        )
    if expected is not None and expected != fingerprint(loaded):
        return (
            f"the configuration ({loaded.path}) was changed since the daemon "
            "started, and the proposal would follow rules or programs it does not run: "
            "restart treadguard (between sessions), or choose a program"
        )
    return None


def die_with(parent: int) -> None:
    """Killed by the kernel when ``parent`` (the daemon, whose thread started this process)
    ends, however it ends; SIGKILL, so a worker stopped with SIGSTOP goes too. If it has
    already ended, this process ends now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # gone before the line above: nobody would kill this one
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="treadguard's proposal worker")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--fingerprint", help="the daemon's fingerprint() of its configuration")
    parser.add_argument("--journal-identity", help="the daemon's Journal.identity()")
    parser.add_argument("--parent", type=int, help="the daemon's process id: end with it")
    args = parser.parse_args(argv)
    if args.parent is not None:
        die_with(args.parent)
    config = WorkerConfig(args.config, args.fingerprint)
    serve(config, sys.stdin, sys.stdout, identity=args.journal_identity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
