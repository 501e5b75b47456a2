"""Reading a search config file: a YAML path or a packaged config's name, its size and encoding checked, and the
dotted overrides applied to what it holds. ``gpnas.experiments.config`` validates the result as a SearchConfig.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpnas.errors import ConfigError
from gpnas.search_space.yaml_load import DuplicateKeyError, load_yaml

__all__ = ["MAX_CONFIG_BYTES", "PACKAGED_CONFIGS", "apply_override", "read_config_file", "resolve_config_path"]

PACKAGED_CONFIGS = Path(__file__).parent / "configs"
#: The largest config file read (checked before reading it); search configs are a few kB.
MAX_CONFIG_BYTES = 1 << 20


def apply_override(data: dict[str, Any], override: str) -> None:
    """``a.b.c=value``: the value is parsed as a YAML scalar/list (``3``, ``true``, ``[1, 2]``, ``null``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: write it as key.sub=value (e.g. train.seconds=30)")
    key, raw = override.split("=", 1)
    try:
        value = load_yaml(raw, f"override {override!r}") if raw.strip() else ""
    except DuplicateKeyError as err:
        raise ConfigError(str(err)) from None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: '{part}' is not a section")
    node[parts[-1]] = value


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a packaged config (``demo``, ``paper-ablation``, ``coco-gpu``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such config file, and not a packaged config ({', '.join(names)})")


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a config file holds. ConfigError naming the file if it is larger than
    :data:`MAX_CONFIG_BYTES` (checked before reading), not UTF-8 text, not YAML, empty, or not a mapping."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte (1 MiB) limit of a "
                              "config file; a search config is a short YAML file (is this the right file?)")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start} cannot be decoded); a search config is a "
                          "YAML text file (is this the right file?)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: a binary file (it holds NUL bytes), not UTF-8 text; a search config is a "
                          "YAML text file (is this the right file?)")
    try:
        loaded = load_yaml(text, str(path))
    except DuplicateKeyError as err:
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if loaded is None:
        raise ConfigError(f"{path} is empty (or holds only comments); write the settings that differ from the "
                          "defaults, e.g. 'name: my-search', or start from a packaged config (--config demo)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a search config must be a YAML mapping")
    return loaded
