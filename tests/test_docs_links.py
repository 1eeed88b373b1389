"""The docs stand alone: every relative link of README.md and docs/*.md, and every ``docs/...``
or ``*.md`` file they name, is in the repository (a link to a heading finds that heading), and
no file of the repository points at a document kept outside it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Made by `npm ci` in tablet/, never kept in the repository (docs/tablet-page.md names one).
GENERATED = ("tablet/node_modules/",)

# Documents the project was first written from, which live outside the repository: a user of
# the repository never sees them, so nothing may point at them. Spelled in pieces so that this
# file does not name them itself.
OUTSIDE = tuple(
    "".join(parts)
    for parts in (
        ("MQTT-API", ".md"),
        ("SAFETY", ".md"),
        ("PROTOCOLS", ".md"),
        ("STACK-NOTES", ".md"),
        ("DESIGN", ".md"),
        ("../", "shared/"),
        ("/work/", "shared"),
    )
)

# Not part of the repository: version control, environments, caches, build and run output.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "node_modules",
        "build",
        ".run",
        "mutants",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        ".import_linter_cache",
    }
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./)*(?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w/-])")
_DOCS_PATH = re.compile(r"(?<![\w/.-])(docs/[\w./-]*)")


def _prose_lines(text: str) -> Iterator[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text in lower case, punctuation dropped (hyphens and
    underscores kept), spaces as hyphens; a link's text stands for the link."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link may name in a Markdown file: its headings (a repeated heading gets
    -1, -2, ... as on GitHub) and its explicit ``<a id="...">``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        heading = _HEADING.match(line)
        if heading is not None:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(_EXPLICIT_ANCHOR.findall(line))
    return found


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images of a text, outside code."""
    targets: list[str] = []
    for line in _prose_lines(text):
        targets += _LINK.findall(_CODE_SPAN.sub("", line))
    return targets


def named_files(text: str) -> set[str]:
    """Every ``docs/...`` path and every ``*.md`` file name a text mentions, code included
    (a command in a code block names real files too), web addresses left out."""
    text = _URL.sub("", text)
    names = set(_MD_NAME.findall(text)) | set(_DOCS_PATH.findall(text))
    return {name.rstrip(".,;:") for name in names} - {""}


def resolve(doc: Path, name: str) -> Path | None:
    """Where a file named in ``doc`` is: beside the doc, from the repository's root, or in
    docs/ (the README's table names docs by their bare names)."""
    for base in (doc.parent, ROOT, ROOT / "docs"):
        candidate = (base / name).resolve()
        if candidate.exists():
            return candidate
    return None


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_relative_link_and_its_anchor_exist(doc: Path) -> None:
    broken: list[str] = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto: and the like: not a file of the repository
        path_part, _, fragment = target.partition("#")
        path = doc if not path_part else (doc.parent / path_part).resolve()
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif not path.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target}: no heading or anchor #{fragment} in {_rel(path)}")
    assert not broken, f"{_rel(doc)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_file_a_doc_names_is_in_the_repository(doc: Path) -> None:
    missing = sorted(
        name
        for name in named_files(doc.read_text(encoding="utf-8"))
        if not name.startswith(GENERATED) and resolve(doc, name) is None
    )
    assert not missing, f"{_rel(doc)} names files that are not in the repository: {missing}"


def repository_files() -> Iterator[Path]:
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            yield Path(folder) / name


def test_no_file_points_at_a_document_outside_the_repository() -> None:
    found: list[str] = []
    for path in repository_files():
        data = path.read_bytes()
        found += [f"{_rel(path)}: {name}" for name in OUTSIDE if name.encode() in data]
    assert not found, (
        "the docs must stand alone; these name documents outside the repository:\n"
        + ("\n".join(found))
    )


# --- the checks themselves, on small texts --------------------------------------------------------


def test_slugs_follow_github() -> None:
    assert slug("Publishing limits (SR-14, SR-15)") == "publishing-limits-sr-14-sr-15"
    assert slug("Replies (`<p>/reply`)") == "replies-preply"
    assert slug("On the gym's network") == "on-the-gyms-network"
    assert slug("SR-1 Speed envelope") == "sr-1-speed-envelope"
    assert slug("A [linked](x.md) word") == "a-linked-word"


def test_repeated_headings_and_explicit_anchors(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text(
        '# Top\n## Part\n## Part\n| SR-1 | <a id="sr-1"></a>row |\n```\n# not a heading\n```\n'
    )
    assert anchors(doc) == {"top", "part", "part-1", "sr-1"}


def test_links_skip_code_and_named_files_skip_addresses() -> None:
    text = (
        "[a](a.md) `[b](b.md)` ![c](img/c.png)\n```\n[d](d.md)\n```\n"
        "see docs/x.md, y.md and https://example.org/z.md\n"
    )
    assert links(text) == ["a.md", "img/c.png"]
    assert named_files(text) == {"a.md", "b.md", "d.md", "docs/x.md", "y.md"}
