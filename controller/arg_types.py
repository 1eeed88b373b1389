"""argparse types that every command's parser shares."""

from __future__ import annotations

import argparse
from pathlib import Path


def named_path(text: str) -> Path:
    """A path that names something: an empty one is the working folder to Path, which nobody
    means by typing nothing."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name the file or folder")
    return Path(text)
