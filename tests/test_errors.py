"""The three levels of a failure inside a search, decided by the error's type (gpnas.errors.trial_level), and the
evaluation that follows them: a failure of the candidate is a recorded state, a bad input and a bug are raised."""

from __future__ import annotations

import pytest
import torch

from gpnas import errors
from gpnas.experiments import evaluate


@pytest.mark.parametrize(("err", "level"), [
    (errors.SpecError("width 0"), "candidate"),
    (errors.InfeasibleCandidate("gflops exceeded"), "candidate"),
    (errors.TrainingDiverged("nan"), "candidate"),
    (errors.OutOfMemory("oom"), "candidate"),
    (errors.TrialTimeout("cap"), "candidate"),
    (errors.ConfigError("train.steps"), "input"),
    (errors.DataError("classes"), "input"),
    (ZeroDivisionError("bug"), "bug"),
    (KeyError("bug"), "bug"),
])
def test_every_failure_has_one_level(err: BaseException, level: str) -> None:
    assert errors.trial_level(err) == level


def test_only_failures_of_the_candidate_become_recorded_states() -> None:
    declared = evaluate._declared_failure
    assert declared(errors.SpecError("width 0 leaves no channels")) == (
        "failed", "SpecError: width 0 leaves no channels")
    assert declared(errors.InfeasibleCandidate("gflops exceeded by 0.1"))[0] == "infeasible"
    assert declared(errors.TrialTimeout("cap"))[0] == "timeout"
    assert declared(torch.cuda.OutOfMemoryError("CUDA out of memory"))[0] == "failed"
    assert declared(errors.DataError("the dataset has 3 classes")) is None  # raised: it stops the search
    assert declared(errors.ConfigError("train.steps")) is None
    assert declared(ValueError("a bug")) is None


def test_a_bad_input_inside_a_search_exits_2_and_a_bug_1() -> None:
    assert errors.SearchInputError("x").exit_code == 2
    assert not issubclass(errors.SearchAborted, errors.GpnasError)  # the CLI reports it as a bug, exit 1
