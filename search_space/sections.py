"""Config sections that are frozen dataclasses (STYLE.md 6): built from a mapping of a YAML file or of overrides,
unknown keys refused with the close match, every value checked by the dataclass's own ``__post_init__``.

The types live on the floor that uses them (``TrainConfig`` in trainers, ``LatencyProtocol`` in objectives,
``Gene`` here); a search config holds them as its sections, so each is defined and validated in one place. Their
messages name the key as the config spells it (``train.lr``, ``space.genes.block.range``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from gpnas.errors import ConfigError

__all__ = ["from_mapping", "is_number", "is_whole", "section_keys", "to_mapping", "unknown_key"]

T = TypeVar("T")


def is_number(value: Any) -> bool:
    """A finite int or float (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: Any, low: int) -> bool:
    """An int (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def unknown_key(key: Any, section: str, keys: Sequence[str]) -> ConfigError:
    """The error for ``section.key`` not among ``keys``: the close match, else the valid keys."""
    close = difflib.get_close_matches(str(key), list(keys), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(keys)}"
    where = f"{section}.{key}" if section else str(key)
    return ConfigError(f"unknown key '{where}'; {hint}")


def section_keys(cls: type, exclude: Sequence[str] = ()) -> list[str]:
    """The keys a config section of dataclass ``cls`` accepts, in field order."""
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude]  # type: ignore[arg-type]


def from_mapping(cls: type[T], data: Any, *, section: str, exclude: Sequence[str] = (), **fixed: Any) -> T:
    """``cls(**data, **fixed)`` for the section ``section`` of a config. An instance of ``cls`` is returned as it
    is; a key outside ``cls``'s fields (less ``exclude``, which the config does not set) is refused with the close
    match; a nested dataclass field given as a mapping is built the same way (its keys named
    ``section.field.key``). Everything else is checked by ``cls.__post_init__``."""
    if isinstance(data, cls):
        return data
    keys = section_keys(cls, exclude)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} must be a mapping of its keys ({', '.join(keys)}), got {data!r}")
    for key in data:
        if key not in keys:
            raise unknown_key(key, section, keys)
    values = dict(data)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            values[key] = from_mapping(hint, value, section=f"{section}.{key}")
    return cls(**values, **fixed)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_mapping(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def to_mapping(obj: Any, *, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The config section ``obj`` (a dataclass) as JSON-able values: what :func:`from_mapping` reads back."""
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in exclude}
