"""YAML as gpnas reads it: PyYAML's safe loader, except that a key given twice in one mapping is an error.

Plain ``yaml.safe_load`` keeps the last of two equal keys, so a config with two ``budget:`` sections silently runs
with the second; every config, spec and override gpnas reads goes through :func:`load_yaml` instead. No torch.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

__all__ = ["DuplicateKeyError", "UniqueKeyLoader", "load_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives the same key twice. The message names the source, the key and both lines."""

    def __init__(self, source: str, key: Any, first_line: int, line: int, mark: yaml.Mark | None) -> None:
        self.key, self.first_line, self.line = key, first_line, line
        where = f"on line {line}" if first_line == line else f"at line {first_line} and again at line {line}"
        super().__init__(problem=f"{source}: key {key!r} is given twice in one mapping ({where}); YAML would keep "
                                 "only the last one: merge the two into one entry, or delete one", problem_mark=mark)

    def __str__(self) -> str:
        return str(self.problem)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a repeated key (a ``<<`` merge may still be overridden)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # a complex key is refused by the base loader; a merge key may repeat
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(str(key_node.start_mark.name), key, seen[key], line, key_node.start_mark)
                seen[key] = line
            except TypeError:  # unhashable: the base loader says so with its own message
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """The document in ``text``, read by :class:`UniqueKeyLoader`; ``source`` (a path, or ``override 'a.b=...'``)
    names it in a :class:`DuplicateKeyError`. Other syntax errors are PyYAML's ``yaml.YAMLError``, as from
    ``yaml.safe_load``."""
    loader = UniqueKeyLoader(text)
    loader.name = source  # the name marks carry (PyYAML's default is '<unicode string>')
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
