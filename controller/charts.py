"""The reports' charts, drawn by matplotlib to SVG text that the page holds inline.

No pyplot: each chart is a Figure of its own on the Agg canvas, so nothing global is touched
and no display is ever looked for. Text stays text in the SVG (``svg.fonttype = none``), so a
printed page is sharp and a test can read the labels; ids are salted with a constant so the
same journal gives the same page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

# Both charts are the page's width on A4 (210 mm less 2 x 12 mm margins is 7.3 in). Each gives
# up height, down to HEIGHT_MIN_IN, where the printed page needs it for the session's events or
# the patient's latest sessions (controller/report.py).
WIDTH_IN = 7.2
HEIGHT_IN = 2.5
HEIGHT_MIN_IN = 1.8
# At most this many sessions' dates under the trend: more would overprint.
TREND_LABELS = 24
MARK_ROWS = 4  # rows of labels over the session chart
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "treadguard",
    "font.family": "sans-serif",
    "font.size": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
MAX_MPH = 1.4  # the speed axis at least: the band's top (1.2) and some
SPEED, TARGET, AFTER = "#222222", "#2277cc", "#999999"
STOP_RED, WARN_AMBER, START_GREEN = "#cc2222", "#dd9900", "#22aa77"


@dataclass(frozen=True)
class Mark:
    """An event drawn on the session chart: seconds into the session, its label, colour."""

    t_s: float
    label: str
    colour: str
    kind: str  # the event's type, in its line's SVG id: mark-<n>-<kind>


@dataclass(frozen=True)
class TrendPoint:
    session: int  # in its bar's SVG id: session-<n>-belt
    label: str  # the session's date, under its bar
    belt_min: float | None
    cap_min: float
    top_mph: float | None
    stopped: bool  # ended by an emergency stop or a fault: drawn red


def _svg(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    out = io.StringIO()
    fig.savefig(
        out, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
    )
    text = out.getvalue()
    return text[text.index("<svg") :]  # no XML prolog or doctype inside an HTML page


def _clock(value: float, _pos: object = None) -> str:
    m, s = divmod(round(value), 60)
    return f"{m}:{s:02d}"


def session_chart(
    samples: Sequence[tuple[float, float | None, float | None]],
    marks: Sequence[Mark],
    *,
    ended_s: float | None,
    height_in: float = HEIGHT_IN,
) -> str:
    """Belt speed (solid) and target (dashed) against seconds into the session; the samples
    after ``ended_s`` (the belt running down after the session ended) in grey, on a shaded
    band; each mark a vertical line with its label."""
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        ax = fig.add_subplot()
        end = math.inf if ended_s is None else ended_s
        during = [(t, v) for t, v, _ in samples if v is not None and t <= end]
        after = [(t, v) for t, v, _ in samples if v is not None and t >= end]
        target = [(t, v) for t, _, v in samples if v is not None and t <= end]
        # Each line has an SVG id (gid) of its own: what the page's tests look for.
        if target:
            ax.plot(*zip(*target, strict=True), color=TARGET, lw=1.2, ls="--",
                    drawstyle="steps-post", label="target", gid="target")  # fmt: skip
        if during:
            ax.plot(*zip(*during, strict=True), color=SPEED, lw=1.6, label="belt speed",
                    gid="belt-speed")  # fmt: skip
        if len(after) > 1:
            ax.axvspan(end, after[-1][0], color="#eeeeee", lw=0)
            ax.plot(*zip(*after, strict=True), color=AFTER, lw=1.6,
                    label="belt after the session ended", gid="belt-after-end")  # fmt: skip
        top = max([MAX_MPH, *(v * 1.1 for _, v in during + after)])
        span = max([1.0, ended_s or 0.0, *(t for t, _, _ in samples), *(m.t_s for m in marks)])
        ax.set_xlim(0.0, span)
        ax.set_ylim(0.0, top)
        _marks(ax, marks)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=[1, 2, 3, 5, 6, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(_clock))
        ax.set_xlabel("time into the session (min:s)")
        ax.set_ylabel("mph")
        ax.grid(axis="y", color="#e4e4e4", lw=0.6)
        if during or target:
            ax.legend(loc="lower center", fontsize=7, frameon=False, ncols=3)
        return _svg(fig)


def _marks(ax: Axes, marks: Sequence[Mark]) -> None:
    """Each mark a line; its label in the first of the rows over the chart where it overprints
    no other, the marks given first in ``marks`` placed first. A mark with no room left in any
    row (a run of speed changes a second apart) keeps its line without a label."""
    left, right = ax.get_xlim()
    span = right - left
    # A label's width as a share of the span: 6.5 pt type, about 0.6 em a character, on axes
    # about 6.4 in wide.
    share = 6.5 * 0.6 / (6.4 * 72)
    taken: list[list[tuple[float, float]]] = [[] for _ in range(MARK_ROWS)]
    for n, mark in enumerate(marks):
        ax.axvline(mark.t_s, color=mark.colour, lw=0.8, gid=f"mark-{n}-{mark.kind}")
        # Near the right edge a label goes to the left of its line rather than off the chart.
        near_end = mark.t_s > left + 0.82 * span
        width = (len(mark.label) + 2) * share * span
        start = mark.t_s - width if near_end else mark.t_s
        row = next(
            (
                r
                for r in range(MARK_ROWS)
                if all(start + width <= a or b <= start for a, b in taken[r])
            ),
            None,
        )
        if row is None:
            continue
        taken[row].append((start, start + width))
        # The rows a line of type apart, from the top of the axes, whatever the chart's height.
        ax.annotate(
            f" {mark.label} ",
            xy=(mark.t_s, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0.0, -1.5 - 8.0 * row),
            textcoords="offset points",
            color=mark.colour,
            fontsize=6.5,
            ha="right" if near_end else "left",
            va="top",
        )


def trend_chart(points: Sequence[TrendPoint], *, height_in: float = HEIGHT_IN) -> str:
    """Per session, oldest on the left: belt minutes (bars, the cap as a tick above each;
    red where an emergency stop or fault ended it) and the top speed (a line)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        belt, speed = fig.subplots(2, 1, sharex=True)
        xs = list(range(1, len(points) + 1))
        bars = belt.bar(
            xs,
            [p.belt_min or 0.0 for p in points],
            color=[STOP_RED if p.stopped else "#7799bb" for p in points],
            width=0.6,
        )
        for bar, p in zip(bars, points, strict=True):
            bar.set_gid(f"session-{p.session}-belt")
        belt.scatter(
            xs, [p.cap_min for p in points], marker="_", s=120, color="#444444", label="cap"
        )
        belt.set_ylabel("belt min")
        belt.set_ylim(0.0, max([1.0, *(p.cap_min * 1.1 for p in points)]))
        belt.legend(loc="upper left", fontsize=7, frameon=False)
        tops = [(x, p.top_mph) for x, p in zip(xs, points, strict=True) if p.top_mph is not None]
        if tops:
            speed.plot(
                *zip(*tops, strict=True),
                color=SPEED,
                marker="o",
                ms=3 if len(points) <= 60 else 1.5,  # hundreds of sessions: dots, not a smear
                lw=1.2,
                gid="top-speed",
            )
        speed.set_ylim(0.0, max([MAX_MPH, *(v * 1.1 for _, v in tops)]))
        speed.set_ylabel("top mph")
        # Every session's date while they fit; past that every k-th, the latest always.
        step = math.ceil(len(points) / TREND_LABELS)
        shown = list(range(len(points) - 1, -1, -step))[::-1]
        speed.set_xticks(
            [xs[i] for i in shown],
            [points[i].label for i in shown],
            rotation=45 if len(shown) > 10 else 0,
            fontsize=7,
        )
        speed.set_xlim(0.4, len(points) + 0.6)
        for ax in (belt, speed):
            ax.grid(axis="y", color="#e4e4e4", lw=0.6)
        return _svg(fig)
