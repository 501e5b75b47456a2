"""Successive halving by Pareto rank: the rung decisions, their order and their persistence (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpnas.errors import ConfigError
from gpnas.experiments.config import load_config
from gpnas.experiments.successive_halving import SuccessiveHalving
from gpnas.results.pareto import hypervolume_contributions


def test_hypervolume_contribution_is_what_the_front_loses_without_a_point() -> None:
    # maximise AP, minimise GFLOPs; reference (0, 10). Points (0.5, 2), (0.8, 6), (0.4, 4) [dominated]
    values = np.array([[0.5, 2.0], [0.8, 6.0], [0.4, 4.0]])
    contrib = hypervolume_contributions(values, ["maximize", "minimize"], [0.0, 10.0])
    # HV = 0.5*8 + (0.8-0.5)*4 = 5.2; without the first: 0.8*4 + 0.4*2 = 4.0 ((0.4, 4) then adds 0.4 x (6-4))
    assert contrib[0] == pytest.approx(5.2 - (0.8 * 4 + 0.4 * 2))
    assert contrib[1] == pytest.approx(5.2 - 0.5 * 8)
    assert contrib[2] == 0.0


def test_first_arrival_continues_and_the_top_share_continues() -> None:
    sh = SuccessiveHalving([10, 30], eta=3, objectives=("ap", "gflops"))
    assert sh.decide("a", 0, [0.10, 1.0]).decision == "promote"  # alone at the rung
    assert sh.decide("b", 0, [0.05, 1.0]).decision == "stop"  # dominated by a; 2 seen, 1 continues
    assert sh.decide("c", 0, [0.20, 1.0]).decision == "promote"  # dominates both
    # six seen: keep 2. d is non-dominated (cheapest) but adds hypervolume, e adds none (AP 0)
    sh.decide("d", 0, [0.02, 0.1])
    sh.decide("e", 0, [0.0, 0.05])
    f = sh.decide("f", 0, [0.01, 5.0])
    assert f.decision == "stop" and (f.position, f.seen) == (5, 6)
    assert sh.order(0)[:2] == ["c", "d"]  # rank 0 {c, d, e}: e's AP 0 contributes no hypervolume


def test_ap_mode_ignores_cost() -> None:
    sh = SuccessiveHalving([10], eta=2, objectives=("ap", "gflops"), mode="score")
    sh.decide("big", 0, [0.3, 9.0])
    assert sh.decide("small", 0, [0.2, 0.1]).decision == "stop"  # 2 seen, 1 continues: the higher AP
    mo = SuccessiveHalving([10], eta=2, objectives=("ap", "gflops"))
    mo.decide("big", 0, [0.3, 9.0])
    # reference (0, 9.9): small adds 0.2 x 9.8 - overlap = 1.78 of hypervolume, big only 0.1 x 0.9 = 0.09
    assert mo.decide("small", 0, [0.2, 0.1]).decision == "promote"
    assert mo.order(0) == ["small", "big"]


def test_score_mode_ranks_by_the_first_trained_objective() -> None:
    sh = SuccessiveHalving([10], eta=2, objectives=("gflops", "val_loss", "ap"), mode="score")
    assert sh.score == "val_loss"  # minimised: the lower loss continues, whatever AP and cost say
    sh.decide("low-loss", 0, [9.0, 1.5, 0.01])
    assert sh.decide("high-loss", 0, [0.1, 2.5, 0.30]).decision == "stop"
    with pytest.raises(ValueError, match="measured in training"):
        SuccessiveHalving([10], eta=2, objectives=("gflops", "latency_ms"))


def test_infeasible_ranks_after_every_feasible_trial() -> None:
    sh = SuccessiveHalving([10], eta=2, objectives=("ap", "gflops"))
    sh.decide("over", 0, [0.9, 1.0], violation=0.5)
    sh.decide("ok", 0, [0.1, 1.0])
    sh.decide("worse", 0, [0.9, 2.0], violation=2.0)
    assert sh.order(0) == ["ok", "over", "worse"]


def test_a_decision_is_taken_once_and_restored_on_resume() -> None:
    sh = SuccessiveHalving([10, 30], eta=2, objectives=("ap", "gflops"))
    sh.decide("a", 0, [0.5, 1.0])
    b = sh.decide("b", 0, [0.1, 1.0])
    assert b.decision == "stop"
    sh.decide("c", 0, [0.9, 1.0])
    assert sh.decide("b", 0, [0.99, 0.1]).decision == "stop"  # a re-run of b: the decision stands
    again = SuccessiveHalving([10, 30], eta=2, objectives=("ap", "gflops"))
    for key, entry in sh.rungs[0].items():
        again.restore(key, 0, entry.values, entry.violation, entry.decision)
    assert {k: e.decision for k, e in again.rungs[0].items()} == {k: e.decision for k, e in sh.rungs[0].items()}
    assert again.decide("d", 0, [0.95, 1.0]).decision == "promote"  # ranked against the restored three
    assert again.rung_of(30) == 1 and again.rung_of(20) is None


def test_missing_ap_ranks_last() -> None:
    sh = SuccessiveHalving([10], eta=2, objectives=("ap", "gflops"))
    sh.decide("nan", 0, [math.nan, 1.0])
    sh.decide("ok", 0, [0.0, 1.0])
    assert sh.order(0) == ["ok", "nan"]


def test_config_places_rungs_below_the_budget_in_its_unit() -> None:
    es = ["early_stopping.type=mo-asha"]
    assert load_config(None, [*es, "train.steps=300"]).rungs() == ("steps", (33, 100))
    assert load_config(None, [*es, "train.steps=600", "early_stopping.reduction_factor=2",
                              "early_stopping.min_budget=150"]).rungs() == ("steps", (150, 300))
    assert load_config(None, [*es, "train.epochs=9", "train.steps=null"]).rungs() == ("epochs", (1, 3))
    with pytest.raises(ConfigError, match="leaves no rung below"):
        load_config(None, [*es, "train.steps=10", "early_stopping.min_budget=10"])
    with pytest.raises(ConfigError, match="needs a work budget"):
        load_config(None, [*es, "train.seconds=60", "train.steps=null"])
    with pytest.raises(ConfigError, match=r"early_stopping\.type: asha"):
        load_config(None, ["early_stopping.asha=true"])
    with pytest.raises(ConfigError, match=r"train\.eval_every"):
        load_config(None, [*es, "train.epochs=8", "train.steps=null", "train.eval_every=3",
                           "early_stopping.reduction_factor=2"])
