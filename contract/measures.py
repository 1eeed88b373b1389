"""A user's measures (docs/plan.md): what each kind is, its unit and the values it can take.

The contract (``record_measure``) checks a measure's shape; the daemon checks its value
against :data:`MEASURES` (``out_of_range`` otherwise, with the range in words) and journals it;
the reports show it with its title and unit. A measure is the clinician's record, never needed
for the belt to move: the safety core never sees one.
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

    def range_words(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.lowest:g} to {self.highest:g}{unit}"

    def value_words(self, value: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{value:.1f}{unit}" if self.unit else f"{value:g}"


# The ranges take in every value a person can score or take, and nothing a slip of the finger
# gives: a TUG of 0.5 s or 400 s, a KOOS of 150, is refused rather than recorded.
MEASURES: dict[MeasureKind, Measure] = {
    MeasureKind.TUG: Measure("Timed Up and Go", "s", 1.0, 300.0, higher_is_better=False),
    MeasureKind.KOOS: Measure("KOOS", "", 0.0, 100.0, higher_is_better=True),
    MeasureKind.WOMAC: Measure("WOMAC", "", 0.0, 96.0, higher_is_better=False),
    MeasureKind.WALK_10M: Measure("10 m walk", "s", 1.0, 300.0, higher_is_better=False),
}


def out_of_range(kind: MeasureKind, value: float) -> str | None:
    """Why ``value`` cannot be a measure of ``kind``, or None."""
    measure = MEASURES[kind]
    if not measure.lowest <= value <= measure.highest:  # NaN fails this too
        return f"a {measure.title} is {measure.range_words()}, not {value:g}"
    return None
