"""The `gpnas` command takes input one way: options are checked as the command line is read (ranges, exclusive
options, a single value given twice), and every YAML gpnas reads refuses a key given twice."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from searchutil import cli_env, run_cli

from gpnas.errors import ConfigError, SpecError
from gpnas.experiments import cli_options as opt
from gpnas.experiments.cli import app
from gpnas.experiments.config_file import apply_override, read_config_file
from gpnas.search_space.spec import load_spec
from gpnas.search_space.yaml_load import DuplicateKeyError, load_yaml

DEMO = "name: bad\nbudget: {num_trials: 1}\ndata: {n_train: 24, n_val: 8}\ntrain: {steps: 1, batch_size: 8}\n"


def _parse(*args: str) -> dict[str, Any]:
    """The parameters `gpnas ARGS` would run its command with (parsed, checked, not run)."""
    group = typer.main.get_command(app)
    ctx = group.make_context("gpnas", list(args[:1]))
    command = group.get_command(ctx, args[0])
    assert command is not None, args[0]
    return command.make_context(args[0], list(args[1:]), parent=ctx).params


def _refused(*args: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(*args)
    assert says in str(info.value), str(info.value)


def _gpnas(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path, *args, env=cli_env(COLUMNS="200"))


# ------------------------------------------------------------------------------------------ out-of-range values
@pytest.mark.parametrize(("args", "says"), [
    (("ui", "s", "--port", "99999"), "--port 99999: must be in 1..65535"),
    (("ui", "s", "--port", "0"), "--port 0"),
    (("export", "s", "--opset", "3"), f"--opset 3: must be in {opt.OPSETS[0]}..{opt.OPSETS[1]}"),
    (("export", "s", "--opset", "21"), "--opset 21"),
    (("export", "s", "--batch", "0"), "--batch 0"),
    (("export", "s", "--img", "33"), "--img 33"),
    (("train", "a", "--steps", "0"), "--steps 0"),
    (("train", "a", "--epochs", "0"), "--epochs 0"),
    (("train", "a", "--seconds", "0"), "--seconds 0"),
    (("train", "a", "--max-seconds", "-1"), "--max-seconds -1"),
    (("train", "a", "--batch-size", "0"), "--batch-size 0"),
    (("train", "a", "--lr", "0"), "--lr 0"),
    (("train", "a", "--seed", "-1"), "--seed -1"),
    (("latency", "a", "--threads", "0"), "--threads 0"),
    (("latency", "a", "--warmup", "-1"), "--warmup -1"),
    (("latency", "a", "--mode", "guess"), "--mode guess"),
    (("describe", "a", "--head", "banana"), "--head banana"),
    (("refine", "s", "--workers", "0"), "--workers 0"),
    (("refine", "s", "--budget-multiplier", "0.5"), "--budget-multiplier 0.5"),
    (("fidelity", "--panel", "nano", "--candidates", "1"), "--candidates 1"),
    (("analyze", "s", "--target", "best"), "--target best"),
])
def test_out_of_range_values_are_refused_while_parsing(args: tuple[str, ...], says: str) -> None:
    _refused(*args, says=says)


def test_values_in_range_parse() -> None:
    assert _parse("ui", "s", "--port", "65535")["port"] == 65535
    assert _parse("export", "s", "--opset", str(opt.OPSETS[0]))["opset"] == opt.OPSETS[0]
    assert _parse("export", "s", "--batch", "dynamic")["batch"] == "dynamic"
    assert _parse("train", "a", "--steps", "1", "--max-seconds", "60")["steps"] == 1


def test_the_opset_range_is_torchs() -> None:
    constants = pytest.importorskip("torch.onnx._constants")
    assert opt.OPSETS[1] == constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    assert opt.OPSETS[0] >= constants.ONNX_MIN_OPSET


# ------------------------------------------------------------------------------------------ conflicting options
@pytest.mark.parametrize(("budgets", "says"), [
    (("--steps", "2", "--epochs", "1"), "--steps and --epochs cannot be given together"),
    (("--seconds", "9", "--steps", "2"), "--steps and --seconds"),
    (("--epochs", "1", "--seconds", "9", "--steps", "2"), "--steps, --epochs and --seconds"),
])
def test_two_training_budgets_are_refused(budgets: tuple[str, ...], says: str) -> None:
    _refused("train", "a", *budgets, says=says)


def test_a_dynamic_size_needs_torch_exports_opsets(tmp_path: Path) -> None:
    out = _gpnas(tmp_path, "export", "s", "--dynamic-size", "--opset", "13")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "--opset 13 with --dynamic-size" in " ".join(out.stderr.split()), out.stderr


def test_one_budget_with_a_wall_clock_cap_is_fine() -> None:
    params = _parse("train", "a", "--epochs", "1", "--max-seconds", "30")
    assert (params["epochs"], params["steps"], params["max_seconds"]) == (1, None, 30.0)


# ------------------------------------------------------------------------------------------ repeated options
@pytest.mark.parametrize(("args", "says"), [
    (("export", "s", "--opset", "13", "--opset", "18"), "--opset is given 2 times"),
    (("ui", "s", "--port", "5000", "--port", "5001"), "--port is given 2 times"),
    (("search", "-c", "a.yaml", "--config", "b.yaml"), "--config is given 2 times"),
    (("train", "a", "--steps", "1", "--steps", "2"), "--steps is given 2 times"),
    (("status", "s", "--root", "a", "--root", "b"), "--root is given 2 times"),
])
def test_a_single_valued_option_given_twice_is_refused(args: tuple[str, ...], says: str) -> None:
    _refused(*args, says=says)


def test_a_repeated_flag_is_harmless() -> None:
    assert _parse("status", "s", "--json", "--json")["as_json"] is True


def test_format_repeats_and_comma_lists_merge() -> None:
    assert _parse("export", "s")["fmt"] == ("spec",)
    assert _parse("export", "s", "--format", "onnx", "--format", "torchscript")["fmt"] == ("onnx", "torchscript")
    merged = _parse("export", "s", "--format", "onnx,spec", "--format", "torchscript,onnx")["fmt"]
    assert merged == ("onnx", "spec", "torchscript")
    _refused("export", "s", "--format", "onnx", "--format", "banana", says="--format banana")


def test_export_formats_are_the_exporters() -> None:
    from gpnas.results.deploy import FORMATS

    assert opt.EXPORT_FORMATS == FORMATS


def test_every_command_checks_its_command_line() -> None:
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert len(commands) > 10
    assert all(isinstance(c, opt.StrictCommand) for c in commands.values()), commands


def test_root_and_search_name_are_one_definition() -> None:
    group = typer.main.get_command(app)
    params = [p for c in group.commands.values() for p in c.params]  # type: ignore[attr-defined]
    roots = [p for p in params if p.name == "root"]
    searches = [p for p in params if p.name == "search"]
    assert len(roots) >= 10 and len(searches) >= 8
    assert {p.help for p in roots} == {"Folder that holds the searches."}
    assert {p.help for p in searches} == {"Search name (under --root) or its folder."}
    assert {p.default for p in roots} == {opt.DEFAULT_ROOT}


# ------------------------------------------------------------------------------------------ duplicate YAML keys
@pytest.mark.parametrize(("text", "key", "where"), [
    ("a: 1\nb: 2\na: 3\n", "a", "at line 1 and again at line 3"),
    ("x:\n  y: 1\n  z: 2\n  y: 3\n", "y", "at line 2 and again at line 4"),
    ("x: {a: 1, a: 2}\n", "a", "on line 1"),
    ("- {a: 1}\n- {b: 1, b: 2}\n", "b", "on line 2"),
])
def test_a_key_given_twice_is_an_error(text: str, key: str, where: str) -> None:
    with pytest.raises(DuplicateKeyError) as info:
        load_yaml(text, "f.yaml")
    message = str(info.value)
    assert message.startswith(f"f.yaml: key {key!r} is given twice") and where in message, message
    assert isinstance(info.value, yaml.YAMLError)


def test_what_yaml_allows_still_loads() -> None:
    assert load_yaml("a: {x: 1}\nb: {x: 2}\n", "f") == {"a": {"x": 1}, "b": {"x": 2}}  # same key, two mappings
    merged = load_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "f")  # a merge may be overridden
    assert merged["c"] == {"x": 3, "y": 2}
    assert load_yaml("[1, 2]", "f") == [1, 2] and load_yaml("", "f") is None


def test_config_spec_and_override_refuse_duplicates(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(DEMO + "budget: {num_trials: 2}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'budget' is given twice .*line 2 and again at line 5"):
        read_config_file(config)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: mine\nblock: csp\nblock: elan\n")
    with pytest.raises(SpecError, match=r"s\.yaml: key 'block' is given twice"):
        load_spec(spec)
    with pytest.raises(ConfigError, match=r"override .*key 'choices' is given twice"):
        apply_override({}, "space.genes.block={choices: [csp], choices: [elan]}")


# ------------------------------------------------------------------------------------------ as a user types them
@pytest.mark.parametrize(("args", "files", "says"), [
    (("ui", "s", "--port", "99999"), {}, "--port 99999"),
    (("export", "s", "--opset", "3"), {}, "--opset 3"),
    (("train", "yolor-csp-nano", "--steps", "2", "--epochs", "1"), {}, "--steps and --epochs"),
    (("export", "s", "--format", "onnx", "--format", "banana"), {}, "--format banana"),
    (("export", "s", "--opset", "13", "--opset", "18"), {}, "--opset is given 2 times"),
    (("search", "--config", "c.yaml", "--no-mlflow"), {"c.yaml": DEMO + "budget: {num_trials: 2}\n"},
     "'budget' is given twice"),
    (("describe", "s.yaml"), {"s.yaml": "name: mine\nblock: csp\nblock: elan\n"}, "'block' is given twice"),
])
def test_each_class_exits_2_without_a_traceback(tmp_path: Path, args: tuple[str, ...], files: dict[str, str],
                                                says: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = _gpnas(tmp_path, *args)
    assert out.returncode == 2, (args, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    assert "error:" in out.stderr and says in " ".join(out.stderr.split()), out.stderr
