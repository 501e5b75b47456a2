"""Every failure that means something has its own type (STYLE.md 9).

Each one is a ValueError or RuntimeError subclass, so callers that only know the builtin types still catch them,
and each message names the file, field or value and says how to fix it.
"""

from __future__ import annotations


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
