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
journal read-only, a connection per request; it ends at the end of its input (the daemon gone).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from treadguard.config.loading import LoadedConfig, load_config
from treadguard.controller.journal import Journal, JournalError
from treadguard.controller.proposal_book import NotKnown, StartChoice, fingerprint, work_out


def answer(loaded: LoadedConfig, journal_path: Path, request: Any) -> dict[str, Any]:
    """The answer to one request line's object; never raises on any input."""
    if not isinstance(request, dict):
        return {"user": None, "not_known": "the request is not an object"}
    user, now = request.get("user"), request.get("now")
    if not isinstance(user, str) or not isinstance(now, int | float) or isinstance(now, bool):
        return {"user": user if isinstance(user, str) else None, "not_known": "bad request"}
    try:
        journal = Journal.read_only(journal_path)
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


def serve(loaded: LoadedConfig, lines: TextIO, out: TextIO, *, expected: str | None = None) -> None:
    journal_path = loaded.resolve(loaded.config.journal.path)
    differs = expected is not None and expected != fingerprint(loaded)
    for line in lines:
        try:
            request = json.loads(line)
        except ValueError:
            request = None
        if differs:
            user = request.get("user") if isinstance(request, dict) else None
            got: dict[str, Any] = {
                "user": user if isinstance(user, str) else None,
                "not_known": f"the configuration ({loaded.path}) was changed since the daemon "
                "started, and the proposal would follow rules or programs it does not run: "
                "restart treadguard (between sessions), or choose a program",
            }
        else:
            got = answer(loaded, journal_path, request)
        out.write(json.dumps(got) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="treadguard's proposal worker")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--fingerprint", help="the daemon's fingerprint() of its configuration")
    args = parser.parse_args(argv)
    serve(load_config(args.config), sys.stdin, sys.stdout, expected=args.fingerprint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
