"""``gpnas ui``: the MLflow UI of a search's local store, opened on the search's runs table."""

from __future__ import annotations

import os

from gpnas.errors import ConfigError
from gpnas.results.folder import SearchFolder
from gpnas.results.mlflow_store import MlflowStore

__all__ = ["serve_ui"]


def ui_experiment(folder: SearchFolder) -> str | None:
    """The id of the search's experiment in the folder's local store, its kind and views brought up to date (a
    search made before gpnas wrote them), or None when the store holds no search run. The store is the folder's
    own, so any search run in it is this search's (even when the folder has moved since)."""
    import time

    store = MlflowStore(folder.mlflow_uri, folder)
    experiments = [e.experiment_id for e in store.client.search_experiments()]
    runs = store.client.search_runs(experiments, filter_string="tags.`gpnas.role` = 'search'", max_results=1,
                                    order_by=["attributes.start_time DESC"]) if experiments else []
    if not runs:
        return None
    experiment_id = runs[0].info.experiment_id
    tags = dict(store.client.get_experiment(experiment_id).tags)
    store.update_experiment_view(experiment_id, tags, int(time.time() * 1000))
    return experiment_id


def serve_ui(folder: SearchFolder, port: int = 5000) -> int:
    """Serve the MLflow UI for a search's local store on 127.0.0.1 (blocks until the server ends).

    The server runs in its own process group: SIGTERM and SIGINT to this process are passed to the server (which
    passes them once to its web worker; a second SIGINT would make the worker force-quit with a traceback), and
    whatever is left of the group is ended on the way out, so stopping ``gpnas ui`` frees the port. Returns the
    server's exit status (128 + the signal number when a signal ended it)."""
    import contextlib
    import signal
    import subprocess
    import sys
    import threading
    import time

    from gpnas.results.mlflow_view import runs_url

    if not folder.mlflow_db.is_file():
        raise ConfigError(f"{folder.path} has no local MLflow store ({folder.mlflow_db.name}); was it run with "
                          "--tracking-uri?")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", folder.mlflow_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    experiment_id = ui_experiment(folder)
    base = f"http://127.0.0.1:{port}"
    link = runs_url(base, experiment_id) if experiment_id is not None else base
    print(f"MLflow UI for {folder.name}: {link}  (Ctrl-C to stop)", flush=True)
    child = subprocess.Popen(cmd, env=env, start_new_session=True)  # Ctrl-C reaches it only through us

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    def to_group(signum: int) -> bool:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:  # the whole group has ended
            return False
        return True

    handled = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    previous = {signum: signal.signal(signum, forward) for signum in handled}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if to_group(signal.SIGTERM):  # a worker that outlived the server, or the server when we leave on an error
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and to_group(0):
                time.sleep(0.1)
            to_group(signal.SIGKILL)
            child.wait()
    return 128 - code if code < 0 else code
