"""The house rules of the code base, checked on the source: one import namespace, imports that flow one way
(errors → search_space → trainers → objectives → results → experiments) without cycles, and no public name that a
package's face promises but does not have."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("errors", "search_space", "trainers", "objectives", "results", "experiments")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "gpnas." + ".".join(parts)


def _is_module(name: str) -> bool:
    parts = name.split(".")[1:]
    return ROOT.joinpath(*parts).with_suffix(".py").is_file() or ROOT.joinpath(*parts, "__init__.py").is_file()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> set[str]:
    """Every gpnas module imported anywhere in the file (lazy imports included), except type-only imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gpnas."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpnas."):
            # ``from package import submodule`` imports the submodule (its package __init__ runs first anyway)
            found.update(f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}") else node.module
                         for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for floor in FLOORS:
        for path in sorted((ROOT / floor).rglob("*.py")):
            graph[_module_name(path)] = _imports(ast.parse(path.read_text(), filename=str(path)))
    return graph


def _floor(module: str) -> int:
    return FLOORS.index(module.split(".")[1])


def test_imports_never_point_to_a_higher_floor() -> None:
    upward = [f"{src} -> {dst}" for src, targets in _graph().items() for dst in targets if _floor(dst) > _floor(src)]
    assert upward == [], "imports must flow " + " -> ".join(FLOORS) + "; these point back up:\n" + "\n".join(upward)


def test_the_module_import_graph_has_no_cycle() -> None:
    graph = _graph()
    known = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(known[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(known):
        if module not in state:
            walk(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("floor", FLOORS)
def test_each_package_names_its_public_api(floor: str) -> None:
    package = importlib.import_module(f"gpnas.{floor}")
    assert package.__all__, f"gpnas.{floor} has no __all__"
    for name in package.__all__:
        assert getattr(package, name) is not None, f"gpnas.{floor}.{name}"


def test_the_distribution_claims_only_the_gpnas_name(tmp_path: Path) -> None:
    """Installed, the packages are gpnas.*; from outside the checkout, the bare folder names do not import."""
    code = ("import importlib.util as u; import gpnas.results, gpnas.experiments.config; "
            f"print([u.find_spec(n) is None for n in {list(FLOORS)!r}])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([True] * len(FLOORS)), out.stdout + out.stderr


def _train_keys_named_in_messages() -> set[str]:
    """Every ``train.<key>`` (``train.hyp.cls`` too) that a string under trainers/ tells the user to set."""
    keys = set()
    for path in (ROOT / "trainers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                keys.update(re.findall(r"\btrain\.([a-z_]+(?:\.[a-z_]+)*)", node.value))
    return keys


def test_every_train_key_the_trainer_names_is_a_search_config_key() -> None:
    from gpnas.experiments.config import SearchConfig

    named = _train_keys_named_in_messages()
    assert {"lr", "warmup_fraction", "max_seconds"} <= named, named  # the scan finds the messages
    for key in sorted(named):
        section: object = SearchConfig().train
        for part in key.split("."):
            assert dataclasses.is_dataclass(section) and part in {f.name for f in dataclasses.fields(section)}, \
                f"the trainer tells users to set train.{key}, which a search config does not accept"
            section = getattr(section, part)
