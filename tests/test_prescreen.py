"""The pre-screen: its rankings (pure), and the searcher recording the proposals it did not train (a real Optuna
study and the real searcher, asked as Ray Tune asks it; no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from gpnas.errors import ConfigError
from gpnas.experiments.config import load_config
from gpnas.experiments.prescreen import Prescreen, rank_by_hypervolume_gain, rank_by_proxy


def test_hypervolume_gain_prefers_what_extends_the_front() -> None:
    known = np.array([[0.30, 1.0], [0.10, 0.2]])  # (AP, GFLOPs)
    candidates = np.array([
        [0.20, 0.9],   # dominated by (0.30, 1.0)? no: cheaper; but inside the front's staircase -> small gain
        [0.40, 1.0],   # new best AP at the same cost: the largest gain
        [0.05, 0.5],   # dominated by (0.10, 0.2): no gain
        [0.25, 0.2],   # dominates (0.10, 0.2): a large gain
    ])
    order, gains = rank_by_hypervolume_gain(candidates, known, ["ap", "gflops"])
    assert gains[2] == 0.0 and gains[1] > 0 and gains[3] > gains[0]
    assert list(order[:2]) == sorted([1, 3], key=lambda i: -gains[i]) and order[-1] == 2


def test_a_proxy_ranks_by_pareto_rank_then_by_its_value() -> None:
    rows = np.array([[5.0, 1.0], [4.0, 0.5], [3.0, 2.0], [6.0, 3.0]])  # (proxy, GFLOPs)
    # front: 0 (5, 1.0), 1 (4, 0.5), 3 (6, 3.0); 2 is dominated by 0 and 1
    assert list(rank_by_proxy(rows, ["zc_naswot", "gflops"])) == [3, 0, 1, 2]


@pytest.mark.parametrize(("override", "needle"), [
    (["prescreen.score=synflw"], r"did you mean 'synflow'"),
    (["prescreen.candidates=3", "prescreen.keep=3"], r"1 <= keep < candidates"),
])
def test_prescreen_settings_are_validated(override: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, override)


def test_the_searcher_trains_the_best_proposal_and_records_the_rest(tmp_path: Path, monkeypatch) -> None:
    """Each pre-screen round measures 3 proposals without training; the best goes to Tune, the other two are in
    the study as ``screened`` with their score, rank and reason, and use no budget."""
    import optuna

    from gpnas.experiments.recorder import Recorder
    from gpnas.experiments.runner import build_space
    from gpnas.experiments.searcher import GpnasSearcher, make_sampler
    from gpnas.results import study as st

    monkeypatch.setenv("GPNAS_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [f"storage.root={tmp_path / 'runs'}", "name=screen", "data.n_train=16", "data.n_val=8",
                             "prescreen.candidates=3", "prescreen.keep=1", "prescreen.score=naswot",
                             "objectives=[ap, gflops]", "latency.enabled=false", "sampler.seed=1"])
    folder = cfg.folder()
    folder.path.mkdir(parents=True)
    storage = st.open_storage(folder)
    optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.directions())
    recorder = Recorder(cfg, folder, None, Console(file=open(tmp_path / "console.txt", "w")))  # noqa: SIM115
    searcher = GpnasSearcher(recorder=recorder, space=build_space(cfg), metric=list(cfg.objectives),
                             mode=cfg.modes(), sampler=make_sampler(cfg), study_name=cfg.name, storage=storage,
                             prescreen=Prescreen(cfg))
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert isinstance(first, dict) and isinstance(second, dict)
    recs = st.records(st.load_study(folder, cfg.name))
    screened = [r for r in recs if r.state == "screened"]
    assert len(screened) == 4 and st.counts(recs)["screened"] == 4 and st.finished(recs) == 0
    assert all(r.reason.startswith("pre-screen: zc_naswot") and "of 3 proposals (the best 1 are trained)" in r.reason
               for r in screened)
    trials = {t.number: t for t in st.load_study(folder, cfg.name).get_trials(deepcopy=False)}
    kept = [t for t in trials.values() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(kept) == 2 and all(t.user_attrs["screen_rank"] == 1 for t in kept)
    for r in screened:
        attrs = trials[r.number].user_attrs
        assert attrs["screen_rank"] in (2, 3) and attrs["screen_metrics"]["zc_naswot"] == attrs["screen_score"]
    assert all(t.user_attrs["screen_metrics"]["zc_naswot"] == t.user_attrs["screen_score"] for t in kept)
    assert "pre-screen: training" in (tmp_path / "console.txt").read_text()


def test_the_surrogate_score_ranks_by_predicted_hypervolume_gain() -> None:
    """From 5 complete trials on, a surrogate fitted on their features predicts AP; a proposal whose feature
    says 'high AP' at a low cost is ranked first, one that cannot be measured last."""
    from gpnas.experiments.prescreen import Scored

    cfg = load_config(None, ["prescreen.candidates=3", "prescreen.keep=1", "objectives=[ap, gflops]"])
    screen = Prescreen(cfg)
    assert not screen.ready(4) and screen.ready(5)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(12):
        f, g = rng.uniform(0, 1), rng.uniform(0.1, 1.0)
        history.append({"ap": 0.4 * f, "gflops": g, "params": 1e6 * g, "gp_mean_sgp": f, "zc_naswot": rng.normal(),
                        "gp_grad_norm_mean": 5.0})  # a post-training feature: never an input before training
    good = Scored(None, metrics={"gflops": 0.2, "params": 2e5, "gp_mean_sgp": 0.95, "zc_naswot": 0.0})
    poor = Scored(None, metrics={"gflops": 0.9, "params": 9e5, "gp_mean_sgp": 0.05, "zc_naswot": 0.0})
    broken = Scored(None, error="SpecError: no channels")
    order = screen.score([poor, broken, good], history)
    assert order == [2, 0, 1] and (good.rank, poor.rank, broken.rank) == (1, 2, 3)
    assert good.predicted_ap > poor.predicted_ap and good.score > 0
    assert "predicted AP" in screen.reason(poor, 3) and "could not be measured" in screen.reason(broken, 3)
