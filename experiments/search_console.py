"""What a search prints while it runs: one line per ended trial, and a status line every few seconds (done,
running, the best score, size of the front, elapsed time and ETA) instead of Tune's raw tables."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rich.text import Text

from gpnas.results.records import TrialResult

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["ProgressSource", "progress_callback", "trial_line"]

#: seconds between two status lines
STATUS_EVERY = 15


def trial_line(number: int, tr: TrialResult, objectives: Sequence[str]) -> Text:
    """``trial  12 complete <arch_id> ap 0.31 gflops 1.2 ...`` (with the reason when it did not complete)."""
    m = tr.metrics
    keys = dict.fromkeys(("ap", "ap50", "gflops", "latency_ms", *objectives))
    figures = " ".join(f"{k} {m[k]:.4g}" for k in keys if k in m)
    why = f" — {tr.reason}" if tr.reason and tr.state != "complete" else ""
    line = Text(f"  trial {number:3d} ")
    line.append(tr.state, style="bold")
    line.append(f" {tr.arch_id} {figures}{why}")  # reasons may hold brackets: literal text, never markup
    return line


class ProgressSource(Protocol):
    """What the status line reads (the search's recorder)."""

    console: Console

    @property
    def best_score(self) -> tuple[str, float]: ...

    def front_size(self) -> int: ...


def _status(source: ProgressSource, trials: list, total: int, already: int, start: float, now: float) -> str:
    done = already + sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
    running = sum(1 for t in trials if t.status == "RUNNING")
    elapsed = now - start
    new = done - already
    eta = f"{(total - done) * elapsed / new / 60:.1f} min" if new > 0 else "?"
    score, best = source.best_score
    return (f"[dim]{time.strftime('%H:%M:%S')}[/] {done}/{total} done · {running} running · best {score} "
            f"{best:.4f} · Pareto {source.front_size()} · {elapsed / 60:.1f} min elapsed · ETA {eta}")


def progress_callback(source: ProgressSource, total: int, already: int, start: float) -> Any:
    """A Tune callback printing the status line of a search of ``total`` trials, ``already`` of them ended before
    this run started at ``start`` (built lazily: imports ray)."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.last = 0.0

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks; the recorder stays in the driver
            return {"last": self.last}

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.time()
            if now - self.last < STATUS_EVERY:
                return
            self.last = now
            source.console.print(_status(source, trials, total, already, start, now), highlight=False)

    return Progress()
