"""Where each key of a policy file is written, so that every problem names its line.

Problems everywhere (the loader, the schema's validators, ``preflight``) begin with the key
path they are about (``tools.shell.allowed_commands: ...``), so they are located here, by
that path, rather than each check carrying YAML marks around. A problem about a key that is
not written (a default, a missing key) is located at its nearest written parent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


def dotted(path: Iterable[str | int]) -> str:
    """A key path as problems write it: ``agents.dev.tools[1]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True, order=True)
class Mark:
    """A position in the file, counted from 1 as editors do."""

    line: int
    column: int


class KeyMarks:
    """Key path (dotted) -> where the key, or the list item, is written."""

    def __init__(self, marks: dict[str, Mark] | None = None, default: Mark | None = None) -> None:
        self._marks = marks or {}
        self._default = default
        """Where a problem that names no written key is: a YAML error's own position."""

    @classmethod
    def of(cls, root: Node) -> KeyMarks:
        """The marks of every key and list item under ``root`` (its size already bounded)."""
        marks: dict[str, Mark] = {}
        _walk(root, (), marks)
        return cls(marks)

    def locate(self, problem: str) -> Mark | None:
        """The position of the key ``problem`` begins with (or of its nearest written
        parent); the default position when it begins with no written key."""
        best = ""
        for path in self._marks:
            if (len(path) > len(best) and problem.startswith(path)
                    and problem[len(path):len(path) + 1] in (":", ".", "[")):
                best = path
        return self._marks[best] if best else self._default

    def report(self, source: str, problems: Iterable[str]) -> list[str]:
        """``problems`` as ``FILE:LINE:COLUMN: problem``, sorted by position; those that
        name no position first, as ``FILE: problem``."""
        located = [(self.locate(p), p) for p in problems]
        unplaced = [f"{source}: {p}" for mark, p in located if mark is None]
        placed = sorted(((mark, p) for mark, p in located if mark is not None),
                        key=lambda item: item[0])
        return unplaced + [f"{source}:{m.line}:{m.column}: {p}" for m, p in placed]


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(node: Node, path: tuple[str | int, ...], marks: dict[str, Mark]) -> None:
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            marks.setdefault(dotted((*path, i)), _mark(item))
            _walk(item, (*path, i), marks)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode):  # other keys are refused by the reader
                marks.setdefault(dotted((*path, key.value)), _mark(key))
                _walk(value, (*path, key.value), marks)
