"""Ray for one search: start a local Ray (or connect to a cluster), remember the local processes so that a
resume can end what a killed driver left behind, and shut down what this driver started.

The search modules (this one, :mod:`gpnas.experiments.searcher`, :mod:`gpnas.experiments.recorder`,
:mod:`gpnas.experiments.runner`) are the only ones that import ray, lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpnas.errors import ConfigError
from gpnas.results.folder import SearchFolder

__all__ = ["check_resources", "child_pids", "cleanup_stale_ray", "import_ray", "prepare_ray", "ray_session"]

#: Tune settings a search needs: trials report gpnas' own keys (not every metric on every report), and the
#: old console output, which the search's own progress line replaces.
_TUNE_ENV = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "RAY_AIR_NEW_OUTPUT": "0"}


def import_ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as err:  # pragma: no cover - ray is a dependency
        raise ConfigError(f"ray[tune] is not importable ({err}); install gradpath-nas with its dependencies") from None
    return ray


def prepare_ray(address: str | None) -> None:
    """Settings read when ray is imported or a Tuner starts: call it first.

    A local search (no address) runs Ray in single-node mode: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray
    take the loopback address as the node's, so GCS, raylet, workers, agents and the driver listen on 127.0.0.1
    only (checked against ray 2.60.0: ray.init's private ``_node_ip_address`` changes nothing either way). A
    cluster address is the user's explicit choice. A cluster started with `ray start` uses token auth (its token
    in ~/.ray/auth_token); a driver only presents it when RAY_AUTH_MODE=token is set before ray is imported."""
    for key, value in _TUNE_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message=".*experimental feature.*")  # Tune's notes on its own APIs
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def child_pids() -> set[int]:
    """The process ids of this process's direct children, read from ``/proc`` (Linux; empty elsewhere).

    A local ``ray.init`` starts Ray's node processes (GCS, raylet, monitors) as children of the driver, and Ray has
    no public accessor for them: the difference of this set before and after ``ray.init`` names them."""
    me, pids = os.getpid(), set()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            # the command name (in parentheses) may hold spaces: the parent pid is the 2nd field after it
            if int(stat.rpartition(")")[2].split()[1]) == me:
                pids.add(int(entry.name))
    return pids


def cleanup_stale_ray(folder: SearchFolder) -> list[int]:
    """End the Ray processes a killed driver of this search left behind (checked by their command line)."""
    path = folder.ray_pids
    if not path.is_file():
        return []
    info = json.loads(path.read_text())
    killed = []
    for pid in [info.get("driver"), *info.get("ray", [])]:
        if not pid or pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmdline or "gpnas" in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    path.unlink(missing_ok=True)
    return killed


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) address must accept a connection within seconds; Ray itself
    would retry for minutes before it gives up."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address / ray_address {address!r}: give HOST:PORT of the cluster's head node "
                          "(e.g. 10.0.0.5:6379, as `ray start --head` printed it), or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(f"no Ray cluster answers at {address} ({err.strerror or type(err).__name__}); start it "
                          "with `ray start --head` on that machine, fix --address, or leave it out to run on this "
                          "machine") from None


def check_resources(cpu: float, gpu: float, custom: dict[str, float] | None = None) -> None:
    """Refuse a per-trial request the cluster can never schedule (Tune would wait forever at '0 running')."""
    ray = import_ray()
    total = ray.cluster_resources()
    for name, amount in (custom or {}).items():
        have = float(total.get(name, 0))
        if amount > have:
            known = sorted(k for k in total if k not in ("CPU", "GPU", "memory", "object_store_memory")
                           and not k.startswith(("node:", "accelerator_type:")))
            raise ConfigError(f"budget.resources.{name}={amount:g} per trial, but this Ray cluster has {have:g} of "
                              f"it (custom resources: {known or 'none'}); start the worker nodes with "
                              f"`ray start --resources '{{\"{name}\": N}}'` or change budget.resources")
    have_cpu, have_gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    if gpu > have_gpu:
        raise ConfigError(f"budget.gpu={gpu:g} per trial, but this Ray cluster has {have_gpu:g} GPU(s); set "
                          "budget.gpu=0 with train.device=cpu, or run on a machine or cluster with a GPU")
    if cpu > have_cpu:
        raise ConfigError(f"budget.cpu={cpu:g} per trial, but this Ray cluster has {have_cpu:g} CPU(s); lower "
                          "budget.cpu")


@contextmanager
def ray_session(address: str | None, folder: SearchFolder, num_cpus: int | None = None) -> Iterator[bool]:
    """Connect to ``address`` or start a local Ray for the block; yields whether this driver started it (and
    then shuts it down after the block)."""
    ray = import_ray()
    if ray.is_initialized():
        yield False
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": "ERROR"}
    if address:
        _check_reachable(address)
        ray.init(address=address, **kwargs)
        yield False
        return
    # never attach to a stale cluster by accident; loopback only (see prepare_ray)
    before = child_pids()
    ray.init(address="local", num_cpus=num_cpus, **kwargs)
    started = sorted(child_pids() - before)
    folder.ray_pids.write_text(json.dumps({"driver": os.getpid(), "ray": started}))
    try:
        yield True
    finally:
        ray.shutdown()
        folder.ray_pids.unlink(missing_ok=True)
