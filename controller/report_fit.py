"""What of a report fits on its one printed A4 page (docs/reports.md, "On paper").

The page is laid out by the browser that prints it, not here; so the report asks, before it
is written, how tall each part of it will be: each piece of text is wrapped as the browser
wraps it (at spaces; a word longer than its line broken anywhere, as ``overflow-wrap:
anywhere`` does) with the advance widths of DejaVu Sans, the first and widest of the fonts the
page names (matplotlib ships it). The sizes and line heights of the page's type are the ones
below, which report.css is written from, so the stylesheet and this reckoning cannot drift
apart. What does not fit is left off the printed page only (it stays on the page on screen),
and the printed page says what it left off.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

from treadguard.controller.charts import WIDTH_IN

PT_MM = 25.4 / 72
PAGE_WIDTH_MM = 186.0  # A4's 210 mm less 12 mm margins each side (report.css's @page)
PAGE_HEIGHT_MM = 273.0  # 297 mm less the margins
# What the reckoning may be out by: a row's borders rounded to device pixels, a kerning pair,
# a fallback font's taller line. Spent once a page, not per line.
SLACK_MM = 6.0
# Widths are reckoned a little wide, for rounding: kerning only narrows a line. (With 1.0, the
# reckoning was already never short of Chromium's lines in tests/test_report_paper.py.)
WIDTH_MARGIN = 1.02
# A character DejaVu Sans has no glyph for is drawn from another font: CJK fonts draw wide
# characters an em wide; anything else is reckoned wider than DejaVu's widest letters.
WIDE_EM = 1.0
UNKNOWN_EM = 1.2
# Text of the clinician's that may run long is printed up to this many lines, then cut with
# "…" and a word that the page on screen has it all: a note under the session's facts (down to
# NOTE_LINES_LEAST where the page needs the room), an event's details.
NOTE_LINES = 12
NOTE_LINES_LEAST = 4
DETAIL_LINES = 4


@dataclass(frozen=True)
class Face:
    """A kind of text on the page: its size (pt), line height (times the size) and weight."""

    size_pt: float
    line: float
    bold: bool = False

    @property
    def line_mm(self) -> float:
        return self.size_pt * self.line * PT_MM


TITLE = Face(14.0, 1.2, bold=True)
HEADING = Face(10.5, 1.2, bold=True)
TEXT = Face(9.0, 1.3)
ROW = Face(8.0, 1.15)  # the tables' rows
ROW_HEAD = Face(8.0, 1.15, bold=True)  # the tables' headers
NOTE = Face(8.0, 1.3)  # the clinician's notes, and the printed page's word on what it leaves off
CAPTION = Face(7.5, 1.3)
FOOT = Face(7.0, 1.3)

# The facts' table: label, value, label, value (% of the page's width).
FACT_PERCENTS = (22, 28, 22, 28)
# Spacing, in mm, as report.css has it.
TITLE_BELOW = 1.0
SUB_BELOW = 2.0
HEADING_ABOVE, HEADING_BELOW = 3.0, 1.0
CELL_PAD_V, CELL_PAD_RIGHT = 0.5, 2.0  # above and below; to the right of a cell
NUM_PAD_RIGHT = 3.0  # a number's cell
RULE_MM = 0.3  # a row's rule (1 CSS px is 0.26 mm)
FIGURE_MARGIN = 1.0  # above and below a chart
NOTES_GAP = 1.0  # between two paragraphs of notes
FOOT_ABOVE = 3.0


def chart_mm(height_in: float) -> float:
    """A chart's height on paper: drawn WIDTH_IN wide (controller/charts.py), it is scaled to
    the page's width."""
    return PAGE_WIDTH_MM * height_in / WIDTH_IN


def chart_in(height_mm: float) -> float:
    """The height to draw a chart at for ``height_mm`` on paper."""
    return height_mm * WIDTH_IN / PAGE_WIDTH_MM


@cache
def _font(bold: bool) -> FT2Font:
    weight = "bold" if bold else "normal"
    prop = font_manager.FontProperties(family="DejaVu Sans", weight=weight)
    # A font object of our own: matplotlib's (get_font) is shared with its renderers, which
    # set its size to theirs as they draw.
    font = FT2Font(font_manager.findfont(prop, fallback_to_default=True))
    font.set_size(1000.0, 72.0)  # a glyph's advance in 1/65536 px is then 1000 x its ems
    return font


@cache
def advance_em(char: str, bold: bool = False) -> float:
    """One character's width in ems, as DejaVu Sans draws it (or the stand-in widths)."""
    font = _font(bold)
    code = ord(char)
    if font.get_char_index(code) == 0:
        return WIDE_EM if unicodedata.east_asian_width(char) in "WF" else UNKNOWN_EM
    glyph = font.load_char(code)
    # The linear advance is the unhinted one, as a browser lays text out for print.
    return float(glyph.linearHoriAdvance) / 65536.0 / 1000.0


def width_em(text: str, bold: bool = False) -> float:
    return sum(advance_em(c, bold) for c in text) * WIDTH_MARGIN


def _words(text: str) -> list[str]:
    # HTML collapses a run of spaces into one, and breaks a line at a space. The other breaks
    # the browser may take (after a hyphen, between CJK characters) are not counted: with
    # fewer places to break, the reckoning errs towards more lines, not fewer.
    return [w for w in text.split(" ") if w]


def line_count(text: str, width_mm: float, face: Face) -> int:
    """How many lines ``text`` takes in a box ``width_mm`` wide, in ``face``."""
    room = width_mm / (face.size_pt * PT_MM)  # in ems
    return max(1, len(_lines(text, room, face.bold)))


def _lines(text: str, room: float, bold: bool) -> list[str]:
    """``text`` broken into lines ``room`` ems wide, greedily, as the browser breaks it."""
    space = width_em(" ", bold)
    lines: list[str] = []
    line, used = "", 0.0
    for word in _words(text):
        w = width_em(word, bold)
        if line and used + space + w <= room:
            line, used = f"{line} {word}", used + space + w
            continue
        if line:
            lines.append(line)
        line, used = "", 0.0
        if w <= room:
            line, used = word, w
            continue
        # A word wider than the line: broken anywhere (overflow-wrap: anywhere).
        for char in word:
            c = advance_em(char, bold) * WIDTH_MARGIN
            if line and used + c > room:
                lines.append(line)
                line, used = "", 0.0
            line, used = line + char, used + c
    if line:
        lines.append(line)
    return lines


CUT_MARK = " … (cut here on paper: on screen in full)"


def cut(text: str, width_mm: float, face: Face, most: int, *, lead: str = "") -> str | None:
    """``text`` cut to what fits in ``most`` lines after ``lead`` (the words before it in its
    paragraph), ending with CUT_MARK, when it is longer; None when it fits as it is."""
    before = f"{lead} " if lead else ""
    if line_count(before + text, width_mm, face) <= most:
        return None
    # The longest start of the text that fits with the mark after it (the lines a start
    # takes never fall as it grows).
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if line_count(before + text[:mid].rstrip() + CUT_MARK, width_mm, face) <= most:
            low = mid
        else:
            high = mid - 1
    kept = text[:low]
    # At a space, where one is near the end: a word is not cut in two for a few letters.
    space = kept.rfind(" ")
    if space > 0 and len(kept) - space <= 20:
        kept = kept[:space]
    return kept.rstrip() + CUT_MARK


def rows_mm(lines: int, face: Face = ROW) -> float:
    """A table row of ``lines`` lines: the text, its padding and its rule."""
    return lines * face.line_mm + 2 * CELL_PAD_V + RULE_MM


@dataclass(frozen=True)
class Columns:
    """A table's columns: each one's share of the page's width in %, and which of them hold
    numbers (right-aligned, with more room to their right: report.css's ``num``)."""

    percents: tuple[int, ...]
    numeric: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        assert sum(self.percents) == 100, self.percents

    def text_mm(self, column: int) -> float:
        """How wide the text of a cell of ``column`` may run."""
        pad = NUM_PAD_RIGHT if column in self.numeric else CELL_PAD_RIGHT
        return PAGE_WIDTH_MM * self.percents[column] / 100 - pad

    def lines(self, cells: Sequence[str], face: Face = ROW) -> int:
        """A row's lines: its tallest cell's."""
        assert len(cells) == len(self.percents), cells
        return max(line_count(text, self.text_mm(i), face) for i, text in enumerate(cells))

    def row_mm(self, cells: Sequence[str], face: Face = ROW) -> float:
        return rows_mm(self.lines(cells, face), face)


class Room:
    """The printed page's height in mm, spent from the top down by the parts a report always
    prints; what is left is for the rows it may leave off."""

    def __init__(self) -> None:
        self.left = PAGE_HEIGHT_MM - SLACK_MM

    def text(self, text: str, face: Face, *, below: float = 0.0) -> None:
        """A paragraph (or a heading) the page's width, and the space below it."""
        self.left -= line_count(text, PAGE_WIDTH_MM, face) * face.line_mm + below

    def heading(self, text: str) -> None:
        self.left -= HEADING_ABOVE
        self.text(text, HEADING, below=HEADING_BELOW)

    def chart(self, caption: str, height_mm: float) -> None:
        self.left -= 2 * FIGURE_MARGIN + height_mm
        self.text(caption, CAPTION)

    def facts(self, columns: Columns, rows: Sequence[Sequence[str]]) -> None:
        """A table of facts, without rules: rows of (label, value, label, value), or of
        (label, value) with the value across the other columns."""
        for cells in rows:
            if len(cells) == 2:
                across = sum(columns.text_mm(i) + CELL_PAD_RIGHT for i in range(1, 4))
                lines = max(
                    line_count(cells[0], columns.text_mm(0), TEXT),
                    line_count(cells[1], across - CELL_PAD_RIGHT, TEXT),
                )
            else:
                lines = columns.lines(cells, TEXT)
            self.left -= lines * TEXT.line_mm + 2 * CELL_PAD_V

    def footer(self, text: str) -> None:
        self.left -= FOOT_ABOVE
        self.text(text, FOOT)


def keep_within(
    heights: Sequence[float], order: Sequence[int], room: float, *, in_turn: bool = False
) -> set[int]:
    """The rows (by index) that fit in ``room`` mm, taken in ``order`` while they fit: a row
    too tall for what is left is passed over for the shorter ones after it, or, ``in_turn``,
    ends the taking."""
    kept: set[int] = set()
    for i in order:
        if heights[i] > room:
            if in_turn:
                break
            continue
        kept.add(i)
        room -= heights[i]
    return kept
