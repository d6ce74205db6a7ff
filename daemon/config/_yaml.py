"""YAML for policies: PyYAML's safe loader, minus what a policy never needs and a parser
must not choke on.

Refused, each as a problem with its line: a key given twice (YAML's silent last-wins would let
a second ``execute_command:`` block quietly replace the first), a key that is a list or a
mapping, an alias that contains itself, aliases that fan a small file out into a huge tree
(the "billion laughs"), nesting deeper than any policy, and a scalar Python cannot turn into
a value (an integer of thousands of digits, the 13th month).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from execgate.daemon.config._marks import KeyMarks

MAX_DEPTH = 64
"""Deeper than any policy; keeps every later recursive step far from Python's limit."""
MAX_VALUES = 100_000
"""Values in the tree once every alias is expanded."""


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader with the checks above."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """A scalar Python refuses becomes a problem at its line, not a traceback."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            reason = ("an integer too long to read" if "digits" in str(exc)
                      else f"cannot read this value ({exc})")
            raise ConstructorError(None, None, reason, node.start_mark) from None


def _construct_mapping(loader: _PolicyLoader, node: MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_PolicyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_mapping)


def _refuse(message: str, node: Node) -> ConstructorError:
    return ConstructorError(None, None, message, node.start_mark)


def _measure(node: Node, open_nodes: set[int], sizes: dict[int, int], depth: int) -> int:
    """Values under ``node`` with aliases expanded; each shared node is measured once, so
    a fan-out is found without being expanded."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _refuse("a recursive alias (an alias inside the node it names)", node)
    if depth > MAX_DEPTH:
        raise _refuse(f"nested more than {MAX_DEPTH} levels deep", node)
    children: list[Node] = []
    if isinstance(node, SequenceNode):
        children = list(node.value)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                raise _refuse("a key must be a plain value, not a list or a mapping", key)
            children += [key, value]
    open_nodes.add(id(node))
    size = 1 + sum(_measure(child, open_nodes, sizes, depth + 1) for child in children)
    open_nodes.discard(id(node))
    if size > MAX_VALUES:
        raise _refuse(f"expands to more than {MAX_VALUES} values (aliases repeated inside "
                      "aliases?)", node)
    sizes[id(node)] = size
    return size


def read_yaml(text: str) -> tuple[Any, KeyMarks]:
    """The single document in ``text`` and where each of its keys is written; raises
    yaml.YAMLError naming the line."""
    loader = _PolicyLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None, KeyMarks()
        _measure(node, set(), {}, 0)
        return loader.construct_document(node), KeyMarks.of(node)
    finally:
        loader.dispose()
