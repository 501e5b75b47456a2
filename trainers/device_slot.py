"""Training and timing on one machine, without timing each other: trainers pause while a latency is measured.

Two lock files beside the latency lock (``$GPNAS_LATENCY_LOCK`` or ``<tmpdir>/gpnas-latency.lock``):

* every training step (and every val evaluation) holds ``.busy`` **shared**, after a momentary shared hold of
  ``.intent``; several trainers run together;
* a latency measurement takes ``.intent`` **exclusive** (new steps then wait at their start) and then ``.busy``
  exclusive (it waits for the steps in flight, at most one step each): it times on a quiet machine, and the
  trainers resume when it is done.

The kernel releases ``flock`` locks when a process dies, so a killed trial never blocks the others. A step pays
four ``flock`` calls (microseconds). Without ``fcntl`` (not POSIX) nothing is locked.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms
    fcntl = None  # type: ignore[assignment]

__all__ = ["TrainingSlot", "exclusive_device", "lock_base"]


def lock_base() -> Path:
    """The machine-wide lock path the latency lock uses; the slot files sit beside it."""
    override = os.environ.get("GPNAS_LATENCY_LOCK")
    return Path(override) if override else Path(tempfile.gettempdir()) / "gpnas-latency.lock"


def _open(suffix: str) -> IO[str]:
    path = lock_base().with_name(lock_base().name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # held open for the slot's life, closed by close()


class TrainingSlot:
    """Held by a trainer around each step: ``with slot: step()``. Re-usable; ``close()`` releases the files."""

    def __init__(self) -> None:
        self._intent = _open(".intent") if fcntl is not None else None
        self._busy = _open(".busy") if fcntl is not None else None

    def __enter__(self) -> TrainingSlot:
        if fcntl is not None and self._intent is not None and self._busy is not None:
            fcntl.flock(self._intent, fcntl.LOCK_SH)  # waits while a measurement is pending or running
            fcntl.flock(self._busy, fcntl.LOCK_SH)
            fcntl.flock(self._intent, fcntl.LOCK_UN)
        return self

    def __exit__(self, *exc: object) -> None:
        if fcntl is not None and self._busy is not None:
            fcntl.flock(self._busy, fcntl.LOCK_UN)

    def close(self) -> None:
        for handle in (self._intent, self._busy):
            if handle is not None:
                handle.close()


@contextmanager
def exclusive_device() -> Iterator[float]:
    """Hold the machine with no training step running for the block; yields the seconds spent waiting."""
    if fcntl is None:  # pragma: no cover - non-POSIX platforms
        yield 0.0
        return
    start = time.perf_counter()
    with _open(".intent") as intent, _open(".busy") as busy:
        fcntl.flock(intent, fcntl.LOCK_EX)
        fcntl.flock(busy, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(busy, fcntl.LOCK_UN)
            fcntl.flock(intent, fcntl.LOCK_UN)
