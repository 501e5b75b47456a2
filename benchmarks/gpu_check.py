"""The Python side of benchmarks/gpu_check.sh: the machine's GPUs, which packages import, a gpnas command line or a
torchrun command line parsed without running it, a search config loaded with its overrides, and the Pareto front
a search left in MLflow.

    python benchmarks/gpu_check.py env [--require-cuda] [--gpus-file FILE]
    python benchmarks/gpu_check.py imports [--find-only] MODULE ...
    python benchmarks/gpu_check.py data                        # the bundled digits set, built once into the cache
    python benchmarks/gpu_check.py parse KIND ARGS... [--- KIND ARGS...]...
    python benchmarks/gpu_check.py front SEARCH --root DIR

``imports`` exits 3 and says "X is not installed here" when a module does not import (gpu_check.sh then skips the
steps that need it). ``parse`` KINDs: cli (a gpnas command line), torchrun (torch.distributed.run's), config
(NAME OVERRIDES...: loaded and checked for a run). ``front`` exits 1 unless MLflow holds the search's Pareto runs.

``--parse-only`` before the subcommand checks its arguments and exits.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

MISSING = 3  # the exit status of `imports` when a module is missing (the shell script skips, not fails, on it)
SEPARATOR = "---"


class NotParsed(Exception):
    """A command line names something that does not exist."""


def env(require_cuda: bool, gpus_file: Path | None) -> int:
    """Print the GPUs (nvidia-smi), torch and CUDA; write the GPU count to ``gpus_file``."""
    import torch

    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5)
        print(smi.stdout.strip() or smi.stderr.strip())

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    print(f"torch {torch.__version__} · CUDA {torch.version.cuda} · {count} GPU(s): {', '.join(names) or 'none'}")
    if gpus_file is not None:
        gpus_file.parent.mkdir(parents=True, exist_ok=True)
        gpus_file.write_text(f"{count}\n")
    if require_cuda and count == 0:
        print("no CUDA device visible to torch: this check needs a GPU (bash benchmarks/gpu_check.sh --dry-run "
              "checks the script itself on a CPU machine)")
        return 1
    return 0


def imports(modules: list[str], *, find_only: bool = False) -> int:
    """0 if every module imports (``find_only``: is found, not imported: fast), else :data:`MISSING`."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None if find_only else importlib.import_module(name)
        except ImportError:
            found = False
        if not found:
            missing.append(name)
    if missing:
        print(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here")
        return MISSING
    print(f"{'found' if find_only else 'importable'}: {', '.join(modules)}")
    return 0


def data() -> int:
    """Build (once) the digits set that the throughput, search and full-training steps read."""
    import time

    from gpnas.trainers.digits import build_digits_dataset

    start = time.perf_counter()
    paths = build_digits_dataset()
    print(f"digits set in {paths.root} ({time.perf_counter() - start:.0f} s)")
    return 0


def parse_cli(args: list[str]) -> str:
    """Parse a gpnas command line with the CLI's own option checks, without running the command."""
    import typer.main

    from gpnas.experiments.cli import app

    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="gpnas")
    name, *rest = args
    command = group.get_command(ctx, name)  # type: ignore[attr-defined]
    if command is None:
        raise NotParsed(f"gpnas has no command {name!r}")
    command.make_context(name, list(rest), parent=ctx)  # click consumes the list it is given
    return f"gpnas {name}: {len(rest)} arguments parse"


def parse_torchrun(args: list[str]) -> str:
    from torch.distributed.run import parse_args

    parsed = parse_args(args)
    return f"torchrun: {parsed.nproc_per_node} process(es) of {parsed.training_script}"


def parse_config(args: list[str]) -> str:
    from gpnas.experiments.config import load_config

    name, *overrides = args
    cfg = load_config(name, overrides)
    cfg.check_for_run()
    return f"config {name}: {len(overrides)} overrides load, search '{cfg.name}' in {cfg.folder().path}"


def parse(groups: list[str]) -> int:
    """Each group (KIND ARGS..., groups separated by ``---``) parsed; the first failure stops with its message."""
    from gpnas.errors import GpnasError
    from gpnas.experiments.cli_output import click_classes

    kinds: dict[str, Callable[[list[str]], str]] = {"cli": parse_cli, "torchrun": parse_torchrun,
                                                   "config": parse_config}
    chunks: list[list[str]] = [[]]
    for token in groups:
        if token == SEPARATOR:
            chunks.append([])
        else:
            chunks[-1].append(token)
    for kind, *args in (c for c in chunks if c):
        if kind not in kinds:
            raise SystemExit(f"unknown kind {kind!r}: use one of {sorted(kinds)}")
        try:
            print(kinds[kind](args))
        except (GpnasError, NotParsed, *click_classes("ClickException")) as err:
            print(f"{kind} {' '.join(args)}\n  does not parse: {err}")
            return 1
    return 0


def front(search: str, root: str) -> int:
    """The search's Pareto runs in its MLflow store (tag is_pareto = true); 1 if there are none."""
    from mlflow import MlflowClient

    from gpnas.experiments.search_api import open_search
    from gpnas.results.mlflow_view import PARETO_FILTER

    folder, cfg = open_search(search, root)
    uri = cfg.storage.tracking_uri or folder.mlflow_uri
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=PARETO_FILTER) if ids else []
    for run in runs:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(run.data.metrics.items())
                            if k in ("ap", "gflops", "latency_ms"))
        print(f"  Pareto run {run.info.run_id}  arch_id {run.data.tags.get('arch_id', '?')}  {metrics}")
    print(f"MLflow ({uri}): {len(runs)} Pareto run(s) of search '{search}'")
    return 0 if runs else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parse-only", action="store_true", help="check the arguments and exit")
    sub = parser.add_subparsers(dest="what", required=True)
    p_env = sub.add_parser("env")
    p_env.add_argument("--require-cuda", action="store_true")
    p_env.add_argument("--gpus-file", type=Path, default=None)
    p_imports = sub.add_parser("imports")
    p_imports.add_argument("modules", nargs="+")
    p_imports.add_argument("--find-only", action="store_true", help="look the modules up without importing them")
    sub.add_parser("data")
    sub.add_parser("parse").add_argument("groups", nargs=argparse.REMAINDER)
    p_front = sub.add_parser("front")
    p_front.add_argument("search")
    p_front.add_argument("--root", required=True)
    args = parser.parse_args()
    if args.parse_only:
        if args.what == "data":  # the function it calls is there
            from gpnas.trainers.digits import build_digits_dataset  # noqa: F401
        print(f"arguments accepted: {args.what}")
        return 0
    if args.what == "env":
        return env(args.require_cuda, args.gpus_file)
    if args.what == "imports":
        return imports(args.modules, find_only=args.find_only)
    if args.what == "parse":
        return parse(args.groups)
    if args.what == "data":
        return data()
    return front(args.search, args.root)


if __name__ == "__main__":
    sys.exit(main())
