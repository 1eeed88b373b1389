"""The codes a person types for a person: a user's code, a clinician's id (docs/tablet-contract.md).

Two codes that look the same on a page must be the same code: otherwise one patient's history
splits under two codes ("p-012" and "p-012" followed by a zero-width space), or a report shows
a code other than the one on record (a right-to-left override turns "p-\\u202e210" into
"p-012" on screen). So a code holds only characters that show as themselves: none that are
invisible or format the text around them, no space but the ordinary one and none at either
end, and written in Unicode's composed form (NFC: "é" as one character, as most keyboards
type it, never "e" and a combining accent). :func:`code_problem` is the one check, used by
the contract's commands and queries and by the command line; :func:`shown_code` shows a code
from an older journal, which may hold any of these, with each such character written as an
escape, so none is hidden.

Pure: no I/O.
"""

from __future__ import annotations

import unicodedata

CODE_MAX_CHARS = 64  # as a start's user (the safety core's bound)

# By Unicode general category: what a character of it does to a code on screen.
_CATEGORY_WORDS = {
    "Cf": "an invisible formatting character",  # bidi overrides, zero-width space and joiners
    "Cc": "a control character",
    "Cs": "a lone surrogate",
    "Co": "a private-use character",  # a glyph of one font, or none
    "Cn": "an unassigned character",  # no glyph; a later Unicode may give it any meaning
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
# Characters that show as nothing though their category is a visible one (Unicode's
# Default_Ignorable_Code_Point, less the Cf and Cn characters the categories above take):
# the Hangul fillers (letters that are blank), the combining grapheme joiner, the Khmer inherent
# vowels, the Mongolian free variation selectors and the variation selectors; and the blank
# Braille pattern (a symbol of no dots, U+2800), which prints as a space.
_INVISIBLE = frozenset(
    {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0}
    | set(range(0x180B, 0x1810))
    | set(range(0xFE00, 0xFE10))
    | set(range(0xE0100, 0xE01F0))
)


def code_point(char: str) -> str:
    """A character by its code point, as Unicode writes it: "U+202E"."""
    return f"U+{ord(char):04X}"


def character_problem(char: str) -> str | None:
    """What ``char`` would do in a code, in words ("an invisible formatting character"), or
    None for a character that shows as itself."""
    words = _CATEGORY_WORDS.get(unicodedata.category(char))
    if words is not None:
        return words
    if ord(char) in _INVISIBLE:
        return "an invisible character"
    if char != " " and char.isspace():
        # A no-break, ideographic or thin space reads as the ordinary one.
        return "a space other than the ordinary space"
    return None


def code_problem(value: str, field: str, *, max_chars: int = CODE_MAX_CHARS) -> str | None:
    """Why ``value`` cannot be the code ``field`` (a user's, a clinician's), in words that name
    the field and the character ("user contains an invisible formatting character (U+202E)"),
    or None. Nothing is changed: a code is taken as typed, or refused."""
    for char in value:
        problem = character_problem(char)
        if problem is not None:
            return f"{field} contains {problem} ({code_point(char)})"
    if not value:
        return f"{field} is empty: a code of 1-{max_chars} characters is needed"
    if value != value.strip():
        if not value.strip():
            return f"{field} is only spaces: a code of 1-{max_chars} characters is needed"
        return f"{field} begins or ends with a space"
    if len(value) > max_chars:
        return f"{field} is {len(value)} characters long; a code is at most {max_chars}"
    composed = unicodedata.normalize("NFC", value)
    if composed != value:
        # "é" is one character (U+00E9) or two (e, U+0301) depending on the keyboard: the same
        # on screen, two codes to a computer, and one patient's record would split.
        return (
            f"{field} is not in Unicode's composed form (NFC): the same text typed on another "
            f"keyboard would be another code; send it composed ({composed})"
        )
    return None


def shown_code(code: str) -> str:
    """``code`` as a report or a terminal shows it: a code the contract accepts as it is;
    in a code from an older journal, each character that would not show as itself, and a space
    at either end, written as an escape ("p-\\u202e210"), so what is on record is what is
    seen."""
    last = len(code) - 1
    return "".join(
        _escaped(c) if character_problem(c) is not None or (c == " " and n in (0, last)) else c
        for n, c in enumerate(code)
    )


def _escaped(char: str) -> str:
    n = ord(char)
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"
