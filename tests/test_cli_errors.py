"""Bad input never prints a traceback: the `gpnas` command as a user types it (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from searchutil import GPNAS, cli_env, cli_here, free_port

# The command through its entry point in this process (cli_here: the same parsing, printing and exit status
# without an interpreter's start-up each); `gpnas ui` under SIGTERM gets its own process. test_cli.py runs the
# installed command in a subprocess.

SEARCH_YAML = "name: tiny\nspace:\n  base: yolor-csp-nano\n  genes:\n    backbone_stacks: {range: [1, 2]}\n" \
              "objectives: [ap, gflops]\n"


def _fails(tmp_path: Path, *args: str, says: tuple[str, ...], code: int = 2) -> str:
    out = cli_here(tmp_path, *args)
    assert out.returncode == code, (args, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, (args, out.stderr[-3000:])
    for text in says:
        assert text in out.stderr, (args, text, out.stderr)
    return out.stderr


@pytest.mark.parametrize(("args", "says"), [
    (("search",), ("Usage:", "--config")),
    (("frobnicate",), ("Usage:", "frobnicate")),
    (("describe", "yolor-csp-nano", "--img", "abc"), ("Usage:", "--img")),
    (("export", "s", "--frobnicate"), ("Usage:", "--frobnicate")),
])
def test_usage_errors_print_the_usage_and_exit_2(tmp_path: Path, args: tuple[str, ...], says: tuple[str, ...]) -> None:
    _fails(tmp_path, *args, says=says)


@pytest.mark.parametrize(("args", "says"), [
    (("describe", "nonexistent-preset"), ("nonexistent-preset",)),
    (("describe", "/no/such.yaml"), ("/no/such.yaml",)),
    (("describe", "yolor-csp-nano", "--img", "33"), ("--img", "33")),
    (("describe", "yolor-csp-nano", "--head", "banana"), ("--head", "banana")),
    (("train", "yolor-csp-nano", "--steps", "0"), ("steps", "0")),
    (("train", "yolor-csp-nano", "--data", "/no/such.json", "--images", "/tmp"), ("/no/such.json",)),
    (("latency", "yolor-csp-nano", "--dtype", "fp16"), ("fp16",)),
    (("latency", "yolor-csp-nano", "--device", "banana"), ("banana",)),
    (("status", "/no/such/folder"), ("/no/such/folder",)),
    (("pareto", "/no/such"), ("/no/such",)),
    (("export", "/no/such"), ("/no/such",)),
    (("fidelity",), ("--panel",)),
])
def test_bad_values_are_named_in_one_paragraph(tmp_path: Path, args: tuple[str, ...], says: tuple[str, ...]) -> None:
    text = _fails(tmp_path, *args, says=("error", *says))
    assert "Usage:" not in text


def test_brackets_in_a_config_error_are_printed(tmp_path: Path) -> None:
    (tmp_path / "C.yaml").write_text(SEARCH_YAML.replace("[1, 2]", "[2, 1]"))
    _fails(tmp_path, "search", "--config", "C.yaml", says=("C.yaml", "backbone_stacks", "[low, high]"))


def test_markup_like_paths_are_text(tmp_path: Path) -> None:
    """A closing tag in a path once crashed the printer; brackets are text in errors and in normal output."""
    odd = tmp_path / "[/x]" / "[bold]"
    _fails(tmp_path, "describe", str(odd / "a.yaml"), says=(str(odd / "a.yaml"),))
    out = cli_here(tmp_path, "describe", "yolor-csp-nano", "--export-spec", str(odd / "s.yaml"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"spec written to {odd / 's.yaml'}" in " ".join(out.stdout.split())


def _tiny_search(tmp_path: Path, weights: Path | None = None) -> Path:
    """A real search folder: its saved config, an Optuna study with one complete trial, and the trial's spec
    (and, when given, the trial's weights file)."""
    import optuna

    from gpnas.experiments.config import load_config, save_config
    from gpnas.results import study as st
    from gpnas.results.records import TrialResult
    from gpnas.search_space.presets import get_preset

    (tmp_path / "C.yaml").write_text(SEARCH_YAML)
    cfg = load_config(str(tmp_path / "C.yaml"), [f"storage.root={tmp_path / 'runs'}"])
    folder = cfg.folder()
    save_config(cfg, folder.path)
    study = optuna.create_study(storage=st.open_storage(folder), study_name=cfg.name, directions=cfg.directions())
    spec = get_preset("yolor-csp-nano")
    result = TrialResult(arch_id=spec.arch_id, state="complete", metrics={"ap": 0.25, "ap50": 0.5, "gflops": 0.1},
                         spec=spec.to_dict(), weights_path=None if weights is None else str(weights))
    trial = study.ask()
    st.tell_result(study, trial, result, tuple(cfg.objectives), {})
    folder.write_trial(trial.number, result, spec.to_yaml())
    return folder.path


def test_export_refuses_a_file_or_an_unusable_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    _fails(tmp_path, "export", "/no/such", "--out", "taken", says=("taken", "is a file"))
    _fails(tmp_path, "export", "/no/such", "--out", "taken/sub", says=("taken/sub", "is a file"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    text = _fails(tmp_path, "export", "/no/such", "--out", "full", says=("full", "notes.txt", "--force"))
    assert "no search" not in text  # the folder is refused before the search is read
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into any folder")
def test_export_refuses_a_folder_it_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(tmp_path, "export", "/no/such", "--out", "locked/out", says=("locked", "cannot be written"))
    finally:
        locked.chmod(0o700)


def test_export_into_a_folder_with_files_needs_force(tmp_path: Path) -> None:
    folder = _tiny_search(tmp_path)
    out = cli_here(tmp_path, "export", str(folder), "--out", "exported")
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((tmp_path / "exported" / "manifest.json").read_text())
    spec_name = manifest["architectures"][0]["spec"]
    (tmp_path / "exported" / spec_name).write_text("stale")
    _fails(tmp_path, "export", str(folder), "--out", "exported", says=("exported", "manifest.json", spec_name,
                                                                        "--force"))
    assert (tmp_path / "exported" / spec_name).read_text() == "stale"
    out = cli_here(tmp_path, "export", str(folder), "--out", "exported", "--force")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "exported" / spec_name).read_text() != "stale"


def test_export_checks_the_weights_before_writing(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    folder = _tiny_search(tmp_path, weights=weights)
    _fails(tmp_path, "export", str(folder), "--weights", "--out", "exported", says=("trial 0", "weights", "w.pt"))
    assert not (tmp_path / "exported").exists()  # nothing half-written
    weights.write_bytes(b"state dict")
    out = cli_here(tmp_path, "export", str(folder), "--weights", "--out", "exported")
    assert out.returncode == 0, out.stderr[-3000:]
    entry = json.loads((tmp_path / "exported" / "manifest.json").read_text())["architectures"][0]
    assert (tmp_path / "exported" / entry["weights"]).read_bytes() == b"state dict"


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: psutil may not be installed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended while we looked
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # a real MLflow server under `gpnas ui`, in its own process
def test_sigterm_to_gpnas_ui_stops_the_mlflow_server(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    folder = _tiny_search(tmp_path)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").create_experiment("x")
    port = free_port()
    proc = subprocess.Popen([*GPNAS, "ui", str(folder), "--port", str(port)], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _accepts(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(0.5)
        below = _descendants(proc.pid)
        assert below, "gpnas ui should run the server as a child process"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while (_accepts(port) or any(_alive(p) for p in below)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _accepts(port), "the port is still held after gpnas ui ended"
        assert not [p for p in below if _alive(p)], "a server process outlived gpnas ui"
        assert code in (0, 128 + signal.SIGTERM), code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pareto_plot_draws_the_front_of_a_search(tmp_path: Path) -> None:
    from PIL import Image

    folder = _tiny_search(tmp_path)
    out = cli_here(tmp_path, "pareto", str(folder), "--plot", "front/pareto.png")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wrote front/pareto.png" in out.stdout + out.stderr
    with Image.open(tmp_path / "front" / "pareto.png") as img:
        assert img.format == "PNG" and img.size[0] >= 800
