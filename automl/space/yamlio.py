"""Hardened YAML reading for search spaces, and the writing of normalised spaces.

Safe loading (no Python objects), numbers like `1e-4` read as numbers (YAML 1.2), a key given twice
in one mapping refused with both line numbers, and documents that expand (through aliases) to more
than `MAX_NODES` values or that refer to themselves refused before they are built in memory.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from automl.space.problems import Problem, excerpt

MAX_TEXT = 1 << 20  # bytes of YAML
MAX_NODES = 20_000  # values after alias expansion; a real space has a few hundred
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """Safe YAML loading that also reads 1e-4 and 1.0e12 as numbers (YAML 1.2), not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded (capped past the limit).
    Iterative and memoised per node, so a billion-laughs graph costs only its own size."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                line = child.start_mark.line + 1 if child.start_mark else "?"
                raise Problem(f"a YAML alias refers to a value that contains it (line {line})")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _duplicate_keys(root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping, naming its path and both lines."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*path, i)) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    stack.append((value_node, path))
                    continue
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in lines:
                    raise Problem(f"key given twice (lines {lines[key]} and {line})", *path, key)
                lines[key] = line
                stack.append((value_node, (*path, key)))


def load_yaml(text: str) -> Any:
    """Parse YAML text safely; problems are `Problem`s (with a path for duplicate keys)."""
    if len(text.encode("utf-8", "replace")) > MAX_TEXT:
        raise Problem(f"the search space is over {MAX_TEXT // 1024} KiB; refused")
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise Problem(f"invalid YAML{where}: {excerpt(problem, 120)}") from None
        except RecursionError:
            raise Problem("invalid YAML: nested too deeply") from None
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise Problem(f"the document expands to more than {MAX_NODES} values (YAML aliases?); refused")
        _duplicate_keys(node)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            raise Problem(f"invalid YAML: {excerpt(str(e).splitlines()[0], 120)}") from None
    finally:
        loader.dispose()


def dump_yaml(document: Any) -> str:
    """YAML text of a JSON-like document: sections in order, leaf mappings and lists inline."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=1000, allow_unicode=True)
