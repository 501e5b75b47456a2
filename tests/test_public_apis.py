"""The package reaches ray, optuna and mlflow through their public APIs only: a new release of one of them then
breaks a fresh install loudly (a missing public name) or not at all, never silently through a renamed private
attribute. Checked on the source (AST, so docstrings and comments may name private things to explain why not)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_space", "trainers", "objectives", "results", "experiments")
LIBS = ("ray", "optuna", "mlflow")
#: private attributes of these libraries' objects that code has reached for: flagged on any object but a class's own
KNOWN_PRIVATE = frozenset({"_ot_trials", "_ot_study", "_completed_trials", "_storage", "_backend", "_trial_id",
                           "_study_id", "_cached_frozen_trial", "_global_node", "_private", "_raylet", "_metric",
                           "_mode", "_tracking_client", "_tracking_service", "_experiment_id", "_run_id"})
REFLECTION = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _chain(node: ast.AST) -> str | None:
    """``a.b(...).c[0]`` -> "a.b.c": the dotted path an expression is reached by, or None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, (ast.Call, ast.Subscript)):
        return _chain(node.func if isinstance(node, ast.Call) else node.value)
    if isinstance(node, ast.Attribute):
        base = _chain(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _Scan(ast.NodeVisitor):
    """Collects (line, what) for each private access. A name is a library object when it is bound to an import of
    a library, to an expression reached from one (``study = optuna.load_study(...)``, ``for t in study.trials``),
    or annotated with a library type."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.bound: set[str] = set()
        self.classes: list[tuple[bool, set[str]]] = []  # (subclasses a library class, attributes it assigns)

    def _lib(self, node: ast.AST | None) -> bool:
        path = _chain(node) if node is not None else None
        parts = path.split(".") if path else []
        return any(".".join(parts[:i]) in self.bound for i in range(1, len(parts) + 1))

    def _bind(self, target: ast.AST, value: ast.AST | None) -> None:
        if not self._lib(value):
            return
        for t in target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]:
            path = _chain(t) if isinstance(t, (ast.Name, ast.Attribute)) else None
            if path:
                self.bound.add(path)

    def _module(self, line: int, module: str) -> None:
        parts = module.split(".")
        if parts[0] in LIBS and any(_private(p) for p in parts[1:]):
            self.found.append((line, f"private module {module}"))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node.lineno, alias.name)
            if alias.name.split(".")[0] in LIBS:
                self.bound.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            self._module(node.lineno, f"{module}.{alias.name}")
            if module.split(".")[0] in LIBS:
                self.bound.add(alias.asname or alias.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        own = {t.attr for t in ast.walk(node) if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store)}
        own |= {t.name for t in node.body if isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.classes.append((any(self._lib(b) for b in node.bases), own))
        self.generic_visit(node)
        self.classes.pop()

    def visit_arg(self, node: ast.arg) -> None:
        if node.annotation is not None and self._lib(node.annotation):
            self.bound.add(node.arg)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            self._bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        self._bind(node.target, node.value if node.value is not None else node.annotation)

    def visit_For(self, node: ast.For) -> None:
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        if not _private(node.attr):
            return
        own_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        lib_class, assigned = self.classes[-1] if self.classes else (False, set())
        known = node.attr in KNOWN_PRIVATE or node.attr.startswith("_ot_")
        if self._lib(node.value) or (known and not own_self) or (own_self and lib_class and node.attr not in assigned):
            self.found.append((node.lineno, f"private attribute .{node.attr} of {_chain(node.value) or 'an object'}"))

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        name = _chain(node.func) or ""
        literal = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if name in REFLECTION and len(node.args) > 1 and literal and _private(literal[0]) and \
                (self._lib(node.args[0]) or literal[0] in KNOWN_PRIVATE):
            self.found.append((node.lineno, f"{name}(..., {literal[0]!r}) on {_chain(node.args[0])}"))
        for keyword in node.keywords:
            if keyword.arg and _private(keyword.arg) and self._lib(node.func):
                self.found.append((node.lineno, f"private keyword {keyword.arg}= of {name}"))
        if name.rsplit(".", 1)[-1] in ("import_module", "__import__") and literal:
            self._module(node.lineno, literal[0])


def private_accesses(source: str) -> list[tuple[int, str]]:
    scan = _Scan()
    scan.visit(ast.parse(source))
    return sorted(scan.found)


def test_the_package_uses_no_private_attribute_of_ray_optuna_or_mlflow() -> None:
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            problems += [f"{path.relative_to(ROOT)}:{line}: {what}: {lines[line - 1].strip()}"
                         for line, what in private_accesses(source)]
    assert not problems, "use the public API of ray / optuna / mlflow instead of:\n" + "\n".join(problems)


@pytest.mark.parametrize("source", [
    "import ray\nnode = getattr(ray._private.worker, '_global_node', None)",
    "import ray\nray.init(address='local', _node_ip_address='127.0.0.1')",
    "from ray._private import ray_constants",
    "from optuna import _hypervolume",
    "import importlib\nimportlib.import_module('mlflow.store._unity_catalog')",
    "import optuna\nstudy = optuna.load_study(study_name='s', storage='x')\nstudy._storage.get_trial(1)",
    "def end(study, trial):\n    return study._storage, trial._trial_id",
    "import optuna\ndef end(study: optuna.Study):\n    for t in study.get_trials():\n        print(t._params)",
    "from ray.tune.search.optuna import OptunaSearch\nclass S(OptunaSearch):\n"
    "    def f(self, i):\n        return self._ot_trials[i]",
    "from ray.tune.search import Searcher\nclass S(Searcher):\n    def f(self):\n        return self._metric",
    "import optuna\nclass S:\n    def __init__(self):\n        self.study = optuna.create_study()\n"
    "    def f(self):\n        return self.study._study_id",
])
def test_the_check_finds_private_access(source: str) -> None:
    assert private_accesses(source), source


@pytest.mark.parametrize("source", [
    '"""Not ``optuna._hypervolume``: a docstring may say why."""\nimport optuna  # not ray._private',
    "class Tracker:\n    def __init__(self):\n        self._client = None\n    def f(self):\n"
    "        return self._client\ndef g(tracker):\n    return tracker._reopen('run')",
    "from ray.tune.search import Searcher\nclass S(Searcher):\n    def __init__(self):\n        self._queue = []\n"
    "    def f(self):\n        return self._queue",
    "import optuna\nstudy = optuna.load_study(study_name='s', storage='x')\nprint(study.trials[0].number)",
    "from gpnas.search_space._exports import lazy_exports",
])
def test_the_check_passes_public_use(source: str) -> None:
    assert private_accesses(source) == [], source


def _small_search(tmp_path: Path, name: str) -> tuple[Any, Any, Any]:
    """A search over two candidates with its study created, as the runner leaves it: -> (cfg, storage, recorder)."""
    import optuna
    from rich.console import Console

    from gpnas.experiments.config import load_config
    from gpnas.experiments.recorder import Recorder
    from gpnas.results import study as st

    cfg = load_config(None, [f"storage.root={tmp_path / 'runs'}", f"name={name}", "objectives=[ap, gflops]",
                             "latency.enabled=false", "sampler.type=random", "sampler.seed=1",
                             "space.genes={block: {choices: [residual, csp]}}"])
    cfg.folder().path.mkdir(parents=True)
    storage = st.open_storage(cfg.folder())
    optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.directions())
    recorder = Recorder(cfg, cfg.folder(), None, Console(file=open(tmp_path / "console.txt", "w")))  # noqa: SIM115
    return cfg, storage, recorder


def test_the_searcher_asks_and_tells_its_own_study(tmp_path: Path) -> None:
    """Driven as Tune drives it: each candidate is trained once, a repeat proposal is re-asked (recorded as
    ``duplicate``), and once the space is exhausted the repeat runs with the earlier result to reuse."""
    import pickle

    from gpnas.experiments.runner import build_space
    from gpnas.experiments.searcher import MAX_REASKS, GpnasSearcher, make_sampler
    from gpnas.results import study as st
    from gpnas.results.records import TrialResult

    cfg, storage, recorder = _small_search(tmp_path, "ask")
    searcher = GpnasSearcher(recorder=recorder, space=build_space(cfg), metric=list(cfg.objectives),
                             mode=cfg.modes(), sampler=make_sampler(cfg), study_name=cfg.name, storage=storage)
    for i in range(3):
        params = searcher.suggest(f"t{i}")
        arch = recorder.asked[f"t{i}"].user_attrs["arch_id"]
        done = params.get("gpnas_reuse") or TrialResult(arch, "complete", metrics={"ap": 0.1 * (i + 1),
                                                                                    "gflops": 1.0}).to_json()
        for _ in range(2):  # a second completion of the same trial is ignored
            searcher.on_trial_complete(f"t{i}", {"gpnas_state": "complete", "gpnas_result": done})
    recs = st.records(st.load_study(cfg.folder(), cfg.name))
    counted = [r for r in recs if r.state == "complete"]
    assert len(counted) == 3 and len({r.arch_id for r in counted}) == 2 and all(r.values for r in counted)
    assert st.counts(recs)["duplicate"] >= MAX_REASKS  # the third proposal was re-asked before it was accepted
    assert counted[-1].result.metrics == next(r for r in counted if r.arch_id == counted[-1].arch_id).result.metrics
    assert len(pickle.dumps(searcher)) < 1000  # Tune pickles its searcher; the state lives in the study


def test_interrupted_trials_are_ended_through_the_storage(tmp_path: Path) -> None:
    """A trial another (dead) process left RUNNING is ended FAIL ``interrupted`` by study name and trial number."""
    import optuna

    from gpnas.results import study as st

    cfg, storage, _ = _small_search(tmp_path, "killed")
    trial = optuna.load_study(study_name=cfg.name, storage=st.open_storage(cfg.folder())).ask()
    trial.suggest_categorical("block", ["residual", "csp"])
    study = st.load_study(cfg.folder(), cfg.name)
    assert st.mark_interrupted(study, storage) == [trial.params]
    (rec,) = st.records(st.load_study(cfg.folder(), cfg.name))
    assert rec.state == "interrupted" and "re-queued" in rec.reason
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL
