"""The MLflow UI a user gets from `gpnas ui`, checked in a real headless browser.

Builds a tiny search (a few hand-made trials, no training) whose MLflow SQLite store is written by the real
``MlflowTracker``, serves it with `gpnas ui` on a free port, opens the exact link `gpnas ui` prints in headless
Chromium, saves a screenshot, and reads the rendered page: is it the runs table (not the GenAI overview), and
which columns does it show. Prints what it found (JSON) and exits 1 when a wanted column or the table is missing.

    .venv/bin/python benchmarks/ui_check.py [--screenshot /tmp/gpnas-ui.png] [--keep DIR]

It also opens the experiment's plain address (``#/experiments/<id>``, no view) in a fresh browser and reports
where that lands, for information: MLflow 3.17.2's UI picks GenAI or model training from its toggle (the link's
``workflowType``, else the browser's last choice, else GenAI), not from the experiment's kind tag.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

#: the column headers the link must show, with the metric, tag or param each stands for
WANTED = {"AP": "ap", "GFLOPs": "gflops", "latency": "latency_ms", "params": "params_m", "is_pareto": "is_pareto",
          "arch_id": "arch_id", "a gene": "block"}
#: what only the GenAI pages show (their side bar and overview; MLflow 3.17 opens a kind-less experiment there)
GENAI_MARKERS = ("Sessions", "Judges", "Agent versions", "Token usage")
#: hand-made trials: (arch_id, ap, gflops, latency_ms, params_m), val loss 1 - AP; the front is AP up (val loss
#: down), GFLOPs down
TRIALS = [("arch-a", 0.31, 0.9, 4.1, 1.8), ("arch-b", 0.22, 0.4, 2.3, 0.9), ("arch-c", 0.18, 0.6, 3.0, 1.1),
          ("arch-d", 0.12, 0.2, 1.6, 0.5)]


def find_chromium() -> str | None:
    """A Chromium or Chrome binary on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def build_search(root: Path) -> Path:
    """A finished tiny search under ``root``: config, study and an MLflow store (experiment, search run, one run
    per trial, Pareto tags, report) written by the real tracker. -> the search folder."""
    import optuna

    from gpnas.experiments.config import load_config, save_config
    from gpnas.results import study as st
    from gpnas.results.records import TrialResult
    from gpnas.results.tracking import MlflowTracker

    cfg = load_config("demo", [f"storage.root={root}", "name=uicheck"])
    folder = cfg.folder()
    save_config(cfg, folder.path)
    info = cfg.info()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=st.open_storage(folder), study_name=cfg.name,
                                directions=info.directions())
    blocks = ["residual", "csp", "elan"]
    for k, (arch_id, ap, gflops, latency_ms, params_m) in enumerate(TRIALS):
        study.enqueue_trial({"block": blocks[k % 3]})
        trial = study.ask()
        trial.suggest_categorical("block", blocks)  # a gene, shown as a param column
        result = TrialResult(arch_id=arch_id, state="complete",
                             metrics={"ap": ap, "ap50": 2 * ap, "val_loss": 1.0 - ap, "gflops": gflops,
                                      "latency_ms": latency_ms,
                                      "params_m": params_m, "params": params_m * 1e6})
        st.tell_result(study, trial, result, cfg.objectives, {})
    tracker = MlflowTracker.connect(info)
    tracker.start_search(info)
    tracker.finish_search(info)
    return folder.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_group(proc: subprocess.Popen[str], grace: float = 20.0) -> None:
    """End a process started with ``start_new_session``: SIGTERM to its group (gpnas ui passes it on to the
    server and ends the server's own group), then SIGKILL whatever is left."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _discard(stream: IO[str]) -> None:
    for _ in iter(stream.readline, ""):
        pass


@contextmanager
def gpnas_ui(folder: Path, port: int, timeout: float = 60.0) -> Iterator[str]:
    """`gpnas ui <folder> --port <port>` as a user runs it; yields the link it prints once the UI answers."""
    cmd = [sys.executable, "-m", "gpnas.experiments.cli", "ui", str(folder), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    drain = threading.Thread(target=_discard, args=(proc.stdout,), daemon=True)
    try:
        assert proc.stdout is not None
        link, seen = None, []
        deadline = time.monotonic() + timeout
        while link is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"gpnas ui ended with {proc.returncode}: {''.join(seen)[-2000:]}")
            seen.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+/\S*", line)
            link = found.group(0) if found else None
        if link is None:
            raise RuntimeError(f"gpnas ui printed no link in {timeout:.0f} s: {''.join(seen)[-2000:]}")
        _wait_http(f"http://127.0.0.1:{port}/health", deadline)
        drain.start()  # the server logs on: read it, so a full pipe never blocks the server
        yield link
    finally:
        _stop_group(proc)
        if drain.is_alive():
            drain.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_http(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in time")
        time.sleep(0.3)


def _chromium(binary: str, args: list[str], profile: Path, timeout: float) -> str:
    """One headless Chromium run (its own profile and process group). -> its stdout."""
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        _stop_group(proc, grace=2.0)
    return out


def render(binary: str, url: str, *, work: Path, screenshot: Path | None = None, wait_ms: int = 12000,
           size: str = "3200,1200") -> str:
    """The page at ``url`` after ``wait_ms`` of (virtual) time, in a fresh profile (as a first visit): its
    rendered DOM, and a PNG at ``screenshot`` when given (a second browser run: one run cannot do both)."""
    common = [f"--window-size={size}", f"--virtual-time-budget={wait_ms}"]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        _chromium(binary, [*common, f"--screenshot={screenshot}", url], Path(tempfile.mkdtemp(dir=work)), 90)
    return _chromium(binary, [*common, "--dump-dom", url], Path(tempfile.mkdtemp(dir=work)), timeout=90)


def read_page(dom: str) -> dict[str, Any]:
    """What the rendered page shows: the runs table's column headers, the rows' run names, GenAI markers."""
    headers = [html.unescape(h) for h in re.findall(r'data-testid="sort-header-([^"]*)"', dom)]
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    return {"headers": headers,
            "trial_rows": sorted(set(re.findall(r"trial \d{4} arch-[a-z]", text))),
            "genai_markers": [m for m in GENAI_MARKERS if m in text],
            "runs_table": 'role="grid"' in dom or "ag-root" in dom}


def missing_columns(headers: list[str]) -> list[str]:
    """The wanted columns (see :data:`WANTED`) with no header naming their metric or tag."""
    return [label for label, key in WANTED.items() if key not in headers]


def check(screenshot: Path, keep: Path | None = None, *, bare: bool = True) -> dict[str, Any]:
    """The whole check; -> what it found at the link (headers, rows, GenAI markers, missing columns) and, with
    ``bare``, where the experiment's plain address (``#/experiments/<id>``, no view) lands."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no chromium / chromium-browser / google-chrome on PATH")
    with tempfile.TemporaryDirectory(prefix="gpnas-ui-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        folder = build_search(work / "runs")
        built = time.perf_counter() - start
        with gpnas_ui(folder, free_port()) as link:
            found: dict[str, Any] = read_page(render(binary, link, work=work, screenshot=screenshot))
            if bare:
                plain = link.split("#")[0] + "#/experiments/" + link.split("/experiments/")[1].split("/")[0]
                page = read_page(render(binary, plain, work=work))
                found["bare"] = {"url": plain, "runs_table": page["runs_table"],
                                 "genai_markers": page["genai_markers"]}
        found.update(link=link, screenshot=str(screenshot), missing=missing_columns(found["headers"]),
                     build_seconds=round(built, 1), total_seconds=round(time.perf_counter() - start, 1))
        return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, default=Path(tempfile.gettempdir()) / "gpnas-ui-check.png",
                        help="where to save the PNG (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="build the search here and keep it (default: a temp dir)")
    args = parser.parse_args()
    if find_chromium() is None:
        print("skipped: no chromium / chromium-browser / google-chrome on PATH (apt-get install chromium)")
        return 0
    found = check(args.screenshot.resolve(), args.keep.resolve() if args.keep else None)
    print(json.dumps(found, indent=2))
    # the plain address is for information: MLflow 3.17.2's UI takes the view from its GenAI / Model training
    # toggle (the link's workflowType, else the browser's last choice, else GenAI), not from the experiment's kind
    ok = found["runs_table"] and not found["missing"] and not found["genai_markers"]
    print("OK: runs table with the search's columns" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
