"""Trainers pause while a latency is measured: the slot protocol between processes (real flock, real processes)."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from gpnas.trainers.device_slot import TrainingSlot, exclusive_device


@pytest.fixture(autouse=True)
def _own_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPNAS_LATENCY_LOCK", str(tmp_path / "lock"))


def _train_step(seconds: float, started: mp.Event) -> None:
    slot = TrainingSlot()
    with slot:
        started.set()
        time.sleep(seconds)
    slot.close()


def _measure(seconds: float, started: mp.Event) -> None:
    with exclusive_device():
        started.set()
        time.sleep(seconds)


def test_a_measurement_waits_for_the_step_in_flight() -> None:
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    step = ctx.Process(target=_train_step, args=(1.0, started))
    step.start()
    assert started.wait(30)
    t0 = time.perf_counter()
    with exclusive_device() as waited:
        assert time.perf_counter() - t0 >= 0.5 and waited >= 0.5  # the step finished first
    step.join(10)


def test_a_step_waits_while_a_measurement_runs() -> None:
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    measure = ctx.Process(target=_measure, args=(1.0, started))
    measure.start()
    assert started.wait(30)
    slot = TrainingSlot()
    t0 = time.perf_counter()
    with slot:
        assert time.perf_counter() - t0 >= 0.5  # paused until the measurement ended
    slot.close()
    measure.join(10)


def test_trainers_share_the_machine() -> None:
    one, two = TrainingSlot(), TrainingSlot()
    t0 = time.perf_counter()
    with one, two:
        assert time.perf_counter() - t0 < 0.5
    one.close()
    two.close()
