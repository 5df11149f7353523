"""Reading a YAML file (or a packaged resource) with errors that name the file.

A key given twice in one mapping is refused (plain YAML keeps the last one silently: a site
file with two `port:` lines would run on whichever came last).
"""

from __future__ import annotations

from collections.abc import Hashable
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, Hashable):
                continue  # SafeLoader itself refuses it, with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> object:
    """YAML text → data, refusing duplicate keys (yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe


def read_yaml(file: Path | Traversable, source: str, error: type[Exception]) -> object:
    """Parsed YAML of `file`; unreadable or malformed files raise `error` naming `source`."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise error(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {describe(exc)}") from None


def describe(exc: yaml.YAMLError) -> str:
    """What is wrong and where (line, column), without the lines themselves: PyYAML quotes
    them, and a site file's may hold a password."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)  # a reader's error: a character's code and its position
    parts = [
        f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
        if text
    ]
    return "; ".join(parts + ([exc.note] if exc.note else []))
