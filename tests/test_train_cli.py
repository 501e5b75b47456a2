"""`gpnas train` end to end in a subprocess, on a tiny digits set chosen through the hidden size knobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from searchutil import cli_env, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpnas_train_json_end_to_end(tmp_path: Path) -> None:
    env = cli_env(GPNAS_CACHE=str(tmp_path / "cache"), GPNAS_DIGITS_N_TRAIN="32", GPNAS_DIGITS_N_VAL="8")
    proc = run_cli(ROOT, "train", "yolor-csp-nano", "--steps", "3", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["name"] == "yolor-csp-nano" and out["steps"] == 3
    for key in ("ap", "ap50", "train_seconds", "images_per_second"):
        assert isinstance(out[key], float) and out[key] >= 0.0, key
    assert out["images_per_second"] > 0 and out["data"] == "digits-s0-32"
    assert (tmp_path / "cache" / "digits-v1-s0-160-32-8").is_dir()


def test_bad_digits_size_knob_is_a_clear_error(tmp_path: Path) -> None:
    env_bad = {"GPNAS_DIGITS_N_TRAIN": "lots"}
    proc = run_cli(ROOT, "train", "yolor-csp-nano", "--steps", "1", "--json",
                   env={**cli_env(), **env_bad, "GPNAS_CACHE": str(tmp_path)})
    assert proc.returncode == 2
    assert "GPNAS_DIGITS_N_TRAIN" in proc.stderr


@pytest.mark.parametrize("value", ["0", "-3"])
def test_digits_size_knob_must_be_positive(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpnas.errors import ConfigError
    from gpnas.experiments.train_one import digits_sizes

    monkeypatch.setenv("GPNAS_DIGITS_N_VAL", value)
    with pytest.raises(ConfigError, match="GPNAS_DIGITS_N_VAL"):
        digits_sizes()
