"""What the journal holds, for the clinician: ``treadguard history`` (a table or JSON lines)
and ``treadguard report SESSION`` (one self-contained HTML page: the session's facts, its belt
speed and target against time drawn in SVG, and its events marked on the same time axis)."""

from __future__ import annotations

import html
from datetime import datetime

from treadguard.controller.journal import EventRow, SessionRow

# Events worth a mark on the chart; the rest are listed in the table below it.
MARKED = {
    "belt_started": "#2a7",
    "speed_step": "#888",
    "cap_warning": "#d90",
    "stopping": "#27c",
    "grip_warning": "#d90",
    "estop": "#c22",
    "fault": "#c22",
    "session_ended": "#222",
}
WIDTH, HEIGHT, PAD = 900, 320, 48
MAX_MPH = 1.4  # the axis: the band's top (1.2) and some


def when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def history_table(sessions: list[SessionRow]) -> str:
    header = ("id", "user", "program", "started", "belt time s", "cap s", "top mph", "ended")
    rows = [
        (
            str(s.id),
            s.user,
            s.program,
            when(s.started_at),
            _num(s.belt_moving_s),
            _num(s.cap_s, 0),
            _num(s.max_speed_mph, 2),
            s.end_reason or "open",
        )
        for s in sessions
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def _chart(
    session: SessionRow,
    events: list[EventRow],
    samples: list[tuple[float, float | None, float | None]],
) -> str:
    t0 = session.started_at
    t1 = max([session.ended_at or t0, *(ts for ts, _, _ in samples), t0 + 1.0])

    def x(ts: float) -> float:
        return PAD + (ts - t0) / (t1 - t0) * (WIDTH - 2 * PAD)

    def y(mph: float) -> float:
        return HEIGHT - PAD - min(mph, MAX_MPH) / MAX_MPH * (HEIGHT - 2 * PAD)

    def line(points: list[tuple[float, float]], style: str) -> str:
        if not points:
            return ""
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        return f'<polyline fill="none" {style} points="{coords}"/>'

    speed = [(t, v) for t, v, _ in samples if v is not None]
    target = [(t, v) for t, _, v in samples if v is not None]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="belt speed against time">',
        f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for mph in (0.0, 0.4, 0.8, 1.2):
        parts.append(
            f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(mph):.1f}" y2="{y(mph):.1f}" '
            f'stroke="#e4e4e4"/><text x="{PAD - 6}" y="{y(mph) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{mph:.1f}</text>'
        )
    span = t1 - t0
    step = next(s for s in (10, 30, 60, 120, 300, 600, 1e9) if span / s <= 10)
    tick = 0.0
    while tick <= span:
        parts.append(
            f'<text x="{x(t0 + tick):.1f}" y="{HEIGHT - PAD + 16}" font-size="11" '
            f'text-anchor="middle">{int(tick // 60)}:{int(tick % 60):02d}</text>'
        )
        tick += step
    parts.append(line(target, 'stroke="#27c" stroke-dasharray="5,4" stroke-width="1.5"'))
    parts.append(line(speed, 'stroke="#222" stroke-width="2"'))
    for n, e in enumerate(ev for ev in events if ev.type in MARKED):
        colour, at = MARKED[e.type], x(e.ts)
        # Near the right edge the label goes to the left of its line, not off the chart.
        label_x, anchor = (at - 3, "end") if at > WIDTH - PAD - 90 else (at + 3, "start")
        parts.append(
            f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{PAD}" y2="{HEIGHT - PAD}" '
            f'stroke="{colour}" stroke-width="1"/><text x="{label_x:.1f}" '
            f'y="{PAD + 12 + 12 * (n % 4)}" font-size="10" fill="{colour}" '
            f'text-anchor="{anchor}">{html.escape(e.type)}</text>'
        )
    parts.append(
        f'<text x="{PAD}" y="{PAD - 10}" font-size="12">belt mph (solid) and target (dashed)'
        " against session time (m:ss)</text></svg>"
    )
    return "\n".join(p for p in parts if p)


def session_report(
    session: SessionRow,
    events: list[EventRow],
    samples: list[tuple[float, float | None, float | None]],
    *,
    treadmill: str,
) -> str:
    facts = [
        ("treadmill", treadmill),
        ("session", str(session.id)),
        ("user", session.user),
        ("program", session.program),
        ("started", when(session.started_at)),
        ("ended", f"{when(session.ended_at)} ({session.end_reason or 'still open'})"),
        (
            "belt-moving time",
            f"{_num(session.belt_moving_s)} s of a {_num(session.cap_s, 0)} s cap",
        ),
        ("top speed", f"{_num(session.max_speed_mph, 2)} mph"),
    ]
    fact_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts
    )
    event_rows = "".join(
        f"<tr><td>{html.escape(when(e.ts))}</td><td>+{e.ts - session.started_at:.1f} s</td>"
        f"<td>{html.escape(e.type)}</td><td>{html.escape(_fields(e))}</td></tr>"
        for e in events
    )
    title = f"treadguard session {session.id}: {session.user}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 2px 12px 2px 0; vertical-align: top; }}
.events td {{ border-top: 1px solid #eee; font-size: 0.9em; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table>{fact_rows}</table>
{_chart(session, events, samples)}
<h2>Events</h2>
<table class="events"><tr><th>time</th><th>into session</th><th>event</th><th>details</th></tr>
{event_rows}</table>
</body></html>
"""


def _fields(event: EventRow) -> str:
    return ", ".join(f"{k}={v}" for k, v in event.fields.items() if k != "session_id")
