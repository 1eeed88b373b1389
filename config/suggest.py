"""'Did you mean ...?' for a key no configuration table or program file knows.

A misspelt key is refused (the schema forbids extra keys); this names the key it was probably
meant to be, from the table the key sits in, so the person editing the file sees the fix.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold: itself, a list's or a union's members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is Annotated:
        return _models_in(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, tuple, dict, Sequence):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


def _tags(model: type[BaseModel], field: str | None = None) -> list[str]:
    """The values of a model's Literal field ``field`` (any, when None): a discriminated
    union's tag, such as drive.kind."""
    found: list[str] = []
    for name, info in model.model_fields.items():
        if (field is None or name == field) and get_origin(info.annotation) is Literal:
            found += [str(v) for v in get_args(info.annotation)]
    return found


def models_at(root: type[BaseModel], loc: Sequence[int | str]) -> list[type[BaseModel]]:
    """The models the table at ``loc`` may be (several: a union, before its tag is known)."""
    models: list[type[BaseModel]] = [root]
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of tables
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if fields:
            models = [m for f in fields for m in _models_in(f.annotation)]
        else:  # a union's tag in pydantic's path: the member it names
            models = [m for m in models if part in _tags(m)]
    return models


def keys_at(root: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys the table at ``loc`` (the path to the unknown key, without it) may have."""
    return sorted({name for m in models_at(root, loc) for name in m.model_fields})


def tags_at(root: type[BaseModel], loc: Sequence[int | str], field: str) -> list[str]:
    """The values the tag ``field`` of a union table at ``loc`` may take, in the schema's
    order."""
    found: list[str] = []
    for model in models_at(root, loc):
        found += [t for t in _tags(model, field) if t not in found]
    return found


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """' (did you mean "port"?)', or '' when nothing known is close."""
    close = difflib.get_close_matches(word.lower(), list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
