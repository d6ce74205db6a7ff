"""Suggestions for a mistyped key or name: the closest one the policy knows at that place."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from execgate.daemon.config._schema import PolicyConfig


def _unwrap(annotation: Any) -> Any:
    """The type a value at this place validates as: Annotated and Optional removed; of a
    union (``str | ApiKey``), the member that has keys."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            keyed = [a for a in members if _has_keys(a)]
            annotation = (keyed or members)[0]
        else:
            return annotation


def _has_keys(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    return get_origin(annotation) in (dict, list) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel))


def known_keys(path: Iterable[str | int]) -> list[str]:
    """The keys the mapping at ``path`` may have (empty: not a fixed set of keys)."""
    current: Any = PolicyConfig
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely meant to be, if one is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None
