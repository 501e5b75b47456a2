"""The refined front: which trials are refined, and how their refined AP replaces the proxy AP (no training)."""

from __future__ import annotations

import json

import optuna
import pytest

from gpnas.errors import ConfigError
from gpnas.experiments.config import load_config
from gpnas.experiments.refine import included_trials, refine_targets
from gpnas.experiments.runner import base_spec
from gpnas.results import study as st
from gpnas.results.export import _row
from gpnas.results.front import front_summary
from gpnas.results.records import TrialResult
from gpnas.search_space.presets import get_preset


def _study(points: list[tuple[str, float, float]]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for arch, ap, gflops in points:
        result = TrialResult(arch_id=arch, state="complete", metrics={"ap": ap, "ap50": 2 * ap, "gflops": gflops})
        study.add_trial(optuna.trial.create_trial(
            values=[ap, gflops], user_attrs={"gpnas_state": "complete", "arch_id": arch, "result": result.to_json()}))
    return study


def test_targets_are_the_first_ranks_best_ap_first_one_per_arch() -> None:
    cfg = load_config(None, ["objectives=[ap, gflops]"])
    # ranks: a (0.5, 2) and b (0.3, 1) are the front; c (0.4, 3) behind; a again (reused result); d behind c
    study = _study([("a", 0.5, 2.0), ("b", 0.3, 1.0), ("c", 0.4, 3.0), ("a", 0.5, 2.0), ("d", 0.1, 4.0)])
    recs = st.records(study)
    assert [r.arch_id for r in refine_targets(recs, cfg, top=1, max_trials=6)] == ["a", "b"]
    assert [r.arch_id for r in refine_targets(recs, cfg, top=2, max_trials=6)] == ["a", "b", "c"]
    assert [r.arch_id for r in refine_targets(recs, cfg, top=3, max_trials=2)] == ["a", "b"]


def test_the_refined_front_replaces_the_proxy_front() -> None:
    study = _study([("a", 0.5, 2.0), ("b", 0.3, 1.0), ("c", 0.4, 3.0)])
    assert front_summary(st.records(study), ["ap", "gflops"]).front == [0, 1]
    refined = {"ap_mean": 0.2, "ap_sd": 0.05, "ap50_mean": 0.4, "ap": [0.15, 0.25], "seeds": [0, 1],
               "budget": {"steps": 600}, "ap_proxy": 0.5, "failed": []}
    st.set_refined(study, 0, refined)
    st.set_refined(study, 1, {**refined, "ap_mean": 0.25, "ap": [0.2, 0.3], "ap_proxy": 0.3})
    recs = st.records(study)
    a = recs[0]
    assert a.metric("ap") == 0.2 and a.metric("ap_proxy") == 0.5 and a.metric("ap50") == 0.4
    assert a.values == (0.5, 2.0)  # the study's own values (what the sampler learnt from) are unchanged
    # only refined trials compete now: b (0.25 at 1 GFLOP) dominates a (0.2 at 2); c was never refined
    assert front_summary(recs, ["ap", "gflops"]).front == [1]
    row = _row(recs[1])
    assert row["refined"] and row["ap"] == 0.25 and row["seeds"] == [0, 1] and row["ap_proxy"] == 0.3
    assert not _row(recs[2])["refined"]
    assert json.loads(study.user_attrs["refined"]).keys() == {"0", "1"}
    assert st.records(study, refined=False)[0].metric("ap") == pytest.approx(0.5)


def test_included_trials_are_found_by_number_or_by_the_preset_the_search_enqueued() -> None:
    cfg = load_config("demo", ["enqueue=[yolor-csp-nano, yolor-elan-nano]"])
    preset = get_preset("yolor-csp-nano").replace(anchors=base_spec(cfg).anchors).arch_id
    study = _study([("a", 0.5, 2.0), (preset, 0.3, 1.0), ("c", 0.4, 3.0)])
    recs = st.records(study)
    assert cfg.named_points()[preset] == "yolor-csp-nano"  # the figures label the enqueued point by its name
    assert [r.number for r in included_trials(recs, ("yolor-csp-nano", "2", "1"), cfg)] == [1, 2]
    with pytest.raises(ConfigError, match=r"'yolor-elan-nano' is no complete trial of search 'demo' "
                                          r"\(enqueued: .*\); add it to"):
        included_trials(recs, ("yolor-elan-nano",), cfg)
    with pytest.raises(ConfigError, match="trial 7 is not a complete trial of search 'demo'; complete trials: "
                                          r"\[0, 1, 2\]"):
        included_trials(recs, ("7",), cfg)
    assert load_config("demo", ["refine.include=[yolor-csp-nano, 3]"]).refine.include == ("yolor-csp-nano", "3")
