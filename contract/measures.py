"""A user's measures (docs/plan.md): what each kind is, its unit, the values it can take and
the resolution it is kept to.

The contract (``record_measure``) checks a measure's shape; the daemon checks its value
against :data:`MEASURES` (``out_of_range`` otherwise, with the range and the resolution in
words, :func:`value_problem`) and journals it; the reports, the history answer and the FHIR
export show it with its title and unit, as one number (:meth:`Measure.shown`). A measure is the
clinician's record, never needed for the belt to move: the safety core never sees one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MeasureKind(StrEnum):
    TUG = "tug"  # Timed Up and Go, seconds
    KOOS = "koos"  # Knee injury and Osteoarthritis Outcome Score, 0-100 (100: no problems)
    WOMAC = "womac"  # WOMAC total, Likert 3.1 version, 0-96 (0: no problems)
    WALK_10M = "walk_10m"  # 10 metre walk test, seconds


@dataclass(frozen=True)
class Measure:
    title: str
    unit: str  # "s", or "" for a score
    lowest: float
    highest: float
    # Whether a higher value is better (KOOS), for the reports' words; False: lower is better.
    higher_is_better: bool
    # The resolution, in decimal places: a value is a whole number of steps of 10**-places.
    places: int

    def range_words(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.lowest:g} to {self.highest:g}{unit}"

    def step_words(self) -> str:
        """The resolution in words: "whole numbers", "steps of 0.01 s"."""
        if self.places == 0:
            return "whole numbers"
        unit = f" {self.unit}" if self.unit else ""
        return f"steps of {10.0**-self.places:.{self.places}f}{unit}"

    def at_resolution(self, value: float) -> bool:
        """Whether ``value`` is a whole number of steps: the number nearest a decimal of at
        most ``places`` places, as a person types it (12.34 s, a KOOS of 64.3)."""
        return round(value, self.places) == value

    def shown(self, value: float) -> float:
        """``value`` as every view shows it: to the resolution (a value an older journal holds
        may be finer), and 0 for -0."""
        return round(value, self.places) + 0.0

    def number_words(self, value: float, *, sign: bool = False) -> str:
        """The number shown, its trailing zeros dropped: a score "64.3", "62"; a time keeps one
        decimal, "12.0", "11.96". ``sign``: "+" before a positive number (a change)."""
        text = f"{self.shown(value):{'+' if sign else ''}.{self.places}f}"
        if "." in text:
            keep = 1 if self.unit else 0
            whole, decimals = text.split(".")
            decimals = decimals.rstrip("0").ljust(keep, "0")
            text = f"{whole}.{decimals}" if decimals else whole
        return text

    def value_words(self, value: float) -> str:
        """A value with its unit: "12.0 s", "11.96 s", "64.3", "62"."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.number_words(value)}{unit}"


# The ranges take in every value a person can score or take, and nothing a slip of the finger
# gives: a TUG of 0.5 s or 400 s, a KOOS of 150, is refused rather than recorded. The
# resolutions are the instruments': a timed test by a stopwatch's hundredths; a KOOS subscale
# is 100 less a mean of its items' 0-4 answers scaled to 0-100 (64.3), kept to 0.1; a WOMAC
# total (Likert 3.1) is a sum of 24 answers of 0-4, a whole number.
MEASURES: dict[MeasureKind, Measure] = {
    MeasureKind.TUG: Measure("Timed Up and Go", "s", 1.0, 300.0, higher_is_better=False, places=2),
    MeasureKind.KOOS: Measure("KOOS", "", 0.0, 100.0, higher_is_better=True, places=1),
    MeasureKind.WOMAC: Measure("WOMAC", "", 0.0, 96.0, higher_is_better=False, places=0),
    MeasureKind.WALK_10M: Measure("10 m walk", "s", 1.0, 300.0, higher_is_better=False, places=2),
}


def value_problem(kind: MeasureKind, value: float) -> str | None:
    """Why ``value`` cannot be a measure of ``kind`` (out of its range, or finer than its
    resolution: refused, never rounded), or None."""
    measure = MEASURES[kind]
    if not measure.lowest <= value <= measure.highest:  # NaN fails this too
        return f"a {measure.title} is {measure.range_words()}, not {value:g}"
    if not measure.at_resolution(value):
        # As the value came, to its last figure: "64.3000001", not "64.3".
        figures = repr(float(value)).removesuffix(".0")
        return (
            f"a {measure.title} is {measure.range_words()} in {measure.step_words()}, not {figures}"
        )
    return None
