"""How a failure is named: every failure that means something has its own type, on the ground floor (every other
package imports from here; this package imports nothing of gpnas).

Each message names the file, field or value and says how to fix it. A failure inside a search has one of three
levels, decided by its type (:func:`trial_level`):

- **the candidate** (:class:`SpecError`, :class:`InfeasibleCandidate`, :class:`TrainingDiverged`,
  :class:`OutOfMemory`, :class:`TrialTimeout`): the trial is recorded with its reason and the search goes on;
- **the input** (:class:`ConfigError`, :class:`DataError`): every trial would fail the same way, so the first one
  stops the search, once, with exit code 2 and the message (:class:`SearchInputError`); after a fix, ``gpnas
  resume`` runs the remaining budget;
- **a bug in gpnas** (anything else): the search stops once with exit code 1 and the traceback
  (:class:`SearchAborted`).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ConfigError", "DataError", "GpnasError", "InfeasibleCandidate", "OutOfMemory", "SearchAborted",
           "SearchFailed", "SearchInputError", "SearchInterrupted", "SpecError", "TrainingDiverged", "TrialTimeout",
           "trial_level"]


class GpnasError(Exception):
    """Base of gpnas' own errors: the CLI prints these as one paragraph, without a traceback, and exits with
    ``exit_code`` (2: the input or the situation needs a fix)."""

    exit_code = 2


class SpecError(GpnasError, ValueError):
    """An architecture spec (or its YAML/JSON file) is invalid."""


class ConfigError(GpnasError, ValueError):
    """A search configuration (or an override) is invalid."""


class DataError(GpnasError, ValueError):
    """A dataset, annotation file or detection list is missing or malformed."""


class InfeasibleCandidate(GpnasError):
    """A candidate violates a constraint on its cheap objectives; it is recorded, not trained."""


class TrainingDiverged(GpnasError, RuntimeError):
    """The loss became NaN or inf during proxy training."""


class OutOfMemory(GpnasError, RuntimeError):
    """A candidate did not fit in device memory."""


class TrialTimeout(GpnasError, RuntimeError):
    """A trial's training hit its wall-clock cap (``train.max_seconds``); its partial AP is recorded, not scored."""


class SearchAborted(RuntimeError):
    """A trial hit a bug in gpnas (not a failure of its candidate): the search stops, with the trial's traceback.

    Deliberately not a :class:`GpnasError`: it is not the user's input to fix, and the CLI reports it as a bug."""


class SearchInterrupted(GpnasError):
    """The search was stopped (Ctrl-C) before its budget was spent; its running trials were re-queued."""

    exit_code = 130


class SearchFailed(GpnasError):
    """The search spent its budget but no trial completed (every one failed, timed out or was infeasible)."""

    exit_code = 3


class SearchInputError(GpnasError):
    """A trial met a bad input that every trial shares (a :class:`ConfigError` or :class:`DataError`, e.g. a dataset
    whose class count does not match the spec): the search stopped after that trial instead of failing each one."""


def trial_level(err: BaseException) -> Literal["candidate", "input", "bug"]:
    """Which level a failure inside a trial belongs to (see the module's docstring)."""
    if isinstance(err, (ConfigError, DataError)):
        return "input"
    if isinstance(err, GpnasError):
        return "candidate"
    return "bug"
