from __future__ import annotations

import pytest

from gpnas.errors import ConfigError
from gpnas.experiments.config import load_config
from gpnas.experiments.evaluate import evaluate_candidate
from gpnas.search_space.presets import get_preset

pytestmark = pytest.mark.slow  # whole candidate evaluations: the latency table's calibration, training, features


@pytest.fixture
def cfg():  # GPNAS_CACHE: the session's (conftest), its latency table calibrated once
    return load_config(None, ["data.n_train=24", "data.n_val=8", "train.steps=2", "train.batch_size=8",
                              "train.seconds=null", "latency.repeats=2", "latency.warmup=1",
                              "latency.iters_per_repeat=1"])


def test_complete_candidate_has_every_objective_and_features(cfg, tmp_path) -> None:
    spec = get_preset("yolor-prn-nano").replace(width_multiple=0.0625)
    reports = []
    result = evaluate_candidate(spec, cfg, reports.append, weights_dir=tmp_path / "w")
    assert result.state == "complete", result.reason
    for key in ("ap", "ap50", "gflops", "params", "latency_ms", "gp_max_sgp", "gp_mean_dup", "gp_grad_norm_mean"):
        assert key in result.metrics, key
    assert result.history and reports  # per-epoch AP was reported
    assert result.gp_layers and result.latency["protocol"]["img_size"] == 160
    assert result.weights_path and (tmp_path / "w" / f"{spec.arch_id}.pt").is_file()
    # the features known before training, and one table with the statistics at init and after training
    for key in ("zc_synflow", "zc_grad_norm", "zc_naswot", "zc_maedet_entropy", "gp_init_grad_norm_mean",
                "gp_stage_p3_mean_sgp", "gp_stage_head_grad_norm_init", "gp_stage_neck_n_cls"):
        assert key in result.metrics and result.metrics[key] == result.metrics[key], key  # present, not NaN
    row = next(r for r in result.gp_layers if r["stage"] == "p3")
    assert row["grad_norm_init"] > 0 and row["grad_norm"] > 0 and row["grad_norm"] != row["grad_norm_init"]
    assert {r["stage"] for r in result.gp_layers} == {"stem", "p2", "p3", "p4", "p5", "neck", "head"}
    assert not any(k.startswith(("gp_", "zc_")) for k in reports[0])  # features are not per-epoch reports


def test_infeasible_candidate_is_not_trained(cfg) -> None:
    cfg = cfg.model_copy(update={"constraints": cfg.constraints.model_copy(update={"max_gflops": 1e-6})})
    result = evaluate_candidate(get_preset("yolor-csp-nano"), cfg)
    assert result.state == "infeasible"
    assert "max_gflops" in result.reason
    assert not result.history and "ap" not in result.metrics


def test_invalid_spec_is_a_recorded_failure(cfg) -> None:
    result = evaluate_candidate({"block": "csp", "fusion": "sideways"}, cfg)
    assert result.state == "failed"
    assert "fusion" in result.reason and "SpecError" in result.reason


def test_same_spec_seed_and_work_budget_give_the_same_ap(cfg) -> None:
    import torch

    spec = get_preset("yolor-v3-nano").replace(width_multiple=0.0625)
    cfg = load_config(None, ["data.n_train=24", "data.n_val=8", "train.steps=6", "train.batch_size=8",
                             "latency.enabled=false", "objectives=[ap, gflops]", "train.seed=3"])
    first = evaluate_candidate(spec, cfg)
    torch.manual_seed(999)  # another trial ran in this worker before: its RNG state must not matter
    torch.randn(100)
    second = evaluate_candidate(spec, cfg)
    assert first.state == second.state == "complete"
    assert first.metrics["ap"] == second.metrics["ap"]
    assert [h["ap"] for h in first.history] == [h["ap"] for h in second.history]


def test_features_before_training_do_not_change_what_is_learned(cfg, tmp_path) -> None:
    """Init gradients and zero-cost proxies work on copies with a fixed batch: the trained weights are the same
    bits with them or without them."""
    import torch

    spec = get_preset("yolor-v3-nano").replace(width_multiple=0.0625)
    base = ["data.n_train=24", "data.n_val=8", "train.steps=3", "train.batch_size=8", "latency.enabled=false",
            "objectives=[ap, gflops]", "gradient_path.measured=false", "gradient_path.structural=false"]
    on = evaluate_candidate(spec, load_config(None, base), weights_dir=tmp_path / "on")
    off = evaluate_candidate(spec, load_config(None, [*base, "gradient_path.at_init=false",
                                                      "gradient_path.zero_cost=false"]), weights_dir=tmp_path / "off")
    assert on.state == off.state == "complete"
    a, b = (torch.load(r.weights_path) for r in (on, off))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "zc_naswot" in on.metrics and not any(k.startswith(("zc_", "gp_init_")) for k in off.metrics)


def test_trial_past_its_wall_clock_cap_is_recorded_as_timeout(cfg, tmp_path) -> None:
    from gpnas.results.records import COUNTED_STATES
    from gpnas.results.study import open_storage, tell_result, trial_record

    cfg = load_config(None, ["data.n_train=24", "data.n_val=8", "train.steps=100000", "train.batch_size=8",
                             "train.max_seconds=1", "latency.enabled=false", "objectives=[ap, gflops]"])
    result = evaluate_candidate(get_preset("yolor-v3-nano").replace(width_multiple=0.0625), cfg)
    assert result.state == "timeout"
    assert "train.max_seconds=1" in result.reason and "partial" in result.reason
    assert "ap" in result.metrics and result.history  # the partial AP is kept, for the record

    import optuna

    study = optuna.create_study(storage=open_storage(tmp_path / "t"), directions=cfg.directions())
    trial = study.ask()
    tell_result(study, trial, result, cfg.objectives, {})
    rec = trial_record(study.get_trials()[0])
    assert rec.state == "timeout" and rec.state in COUNTED_STATES and rec.values is None  # not a scored point
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL


def test_repeats_train_more_seeds_and_score_their_mean(cfg) -> None:
    spec = get_preset("yolor-v3-nano").replace(width_multiple=0.0625)
    base = ["data.n_train=24", "data.n_val=8", "train.steps=6", "train.batch_size=8", "latency.enabled=false",
            "objectives=[val_loss, gflops]", "gradient_path.measured=false"]
    runs = [evaluate_candidate(spec, load_config(None, [*base, f"train.seed={seed}"])).metrics for seed in (3, 4)]
    result = evaluate_candidate(spec, load_config(None, [*base, "train.seed=3", "train.repeats=2"]))
    assert result.state == "complete", result.reason
    m = result.metrics
    assert m["repeats"] == 2
    for name in ("ap", "ap50", "val_loss"):  # each run is the run that seed gives alone; the score is their mean
        assert [m[f"{name}_run0"], m[f"{name}_run1"]] == [runs[0][name], runs[1][name]], name
        assert m[name] == pytest.approx((runs[0][name] + runs[1][name]) / 2), name
    assert runs[0]["val_loss"] != runs[1]["val_loss"]  # two seeds, two runs
    assert m["steps"] == 6  # the first run's history and budget stay the trial's
    with pytest.raises(ConfigError, match=r"train.repeats 2 scores a trial on the mean of whole runs"):
        load_config(None, [*base, "train.repeats=2", "early_stopping.type=asha"])
    with pytest.raises(ConfigError, match=r"train.repeats must be an integer >= 1"):
        load_config(None, [*base, "train.repeats=0"])
