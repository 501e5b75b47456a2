"""gpnas analyze: the partial Spearman against closed forms, the surrogate on synthetic searches with and without
a signal beyond size, and the command end to end on real search stores (Optuna study + MLflow)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr
from scipy.stats import t as student_t
from searchutil import cli_env, run_cli

from gpnas.errors import ConfigError
from gpnas.results.analysis import analyze_dataset, partial_spearman
from gpnas.results.analysis_data import MIN_TRIALS, Dataset, Row, build_dataset
from gpnas.results.records import SearchInfo
from gpnas.results.surrogate import cross_validate, fit_surrogate


# ------------------------------------------------------------------------------------------ partial Spearman
def _size(n: int, seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gflops = rng.lognormal(0.0, 0.6, n)
    return rng, gflops, gflops * rng.lognormal(0.0, 0.3, n) * 1e6


def test_a_function_of_size_correlates_with_ap_but_adds_nothing_beyond_size() -> None:
    rng, gflops, params = _size(60, 0)
    ap = 0.1 * np.log(gflops) + 0.02 * rng.normal(size=60)
    controls = np.column_stack([gflops, params])
    exact = gflops ** 2  # a monotone function of GFLOPs: its ranks are GFLOPs' ranks
    assert spearmanr(exact, ap).statistic > 0.8
    assert partial_spearman(exact, ap, controls) == (0.0, 1.0)
    noisy = np.log(gflops) + 0.01 * rng.normal(size=60)  # almost a function of GFLOPs
    assert spearmanr(noisy, ap).statistic > 0.8
    assert abs(partial_spearman(noisy, ap, controls)[0]) < 0.3


def test_a_feature_with_its_own_signal_keeps_a_high_partial_rho() -> None:
    rng, gflops, params = _size(60, 1)
    feature = rng.normal(size=60)
    ap = 0.1 * np.log(gflops) + 0.1 * feature + 0.01 * rng.normal(size=60)
    r, p = partial_spearman(feature, ap, np.column_stack([gflops, params]))
    assert r > 0.8 and p < 1e-10


def test_partial_spearman_equals_the_precision_matrix_form_and_the_ols_t_test() -> None:
    rng = np.random.default_rng(2)
    for n in (8, 25, 80):
        x, y, c1, c2 = rng.normal(size=(4, n))
        y = y + 0.5 * x + 0.3 * c1
        r, p = partial_spearman(x, y, np.column_stack([c1, c2]))
        ranks = np.column_stack([rankdata(v) for v in (x, y, c1, c2)])
        prec = np.linalg.inv(np.corrcoef(ranks, rowvar=False))  # partial r = -P_xy / sqrt(P_xx P_yy)
        assert r == pytest.approx(-prec[0, 1] / math.sqrt(prec[0, 0] * prec[1, 1]), abs=1e-10)
        # Frisch-Waugh: the t of x's coefficient in OLS of rank(y) on [1, rank(c1), rank(c2), rank(x)]
        design = np.column_stack([np.ones(n), ranks[:, 2], ranks[:, 3], ranks[:, 0]])
        coef, *_ = np.linalg.lstsq(design, ranks[:, 1], rcond=None)
        resid = ranks[:, 1] - design @ coef
        dof = n - design.shape[1]
        se = math.sqrt(resid @ resid / dof * np.linalg.inv(design.T @ design)[3, 3])
        assert p == pytest.approx(2 * student_t.sf(abs(coef[3] / se), dof), rel=1e-8)


# ------------------------------------------------------------------------------------------ the surrogate
def _dataset(n: int, signal: float, seed: int, distractors: int = 3) -> Dataset:
    """A synthetic search: AP grows with log GFLOPs, plus ``signal`` × gp_signal, plus noise."""
    rng, gflops, params = _size(n, seed)
    feature = rng.normal(size=n)
    ap = 0.3 * np.log(gflops) / 0.6 + signal * feature + 0.1 * rng.normal(size=n)
    names = ("gp_signal", *(f"gp_noise{j}" for j in range(distractors)))
    values = np.column_stack([feature, rng.normal(size=(n, distractors))])
    rows = tuple(Row(trial=i, search="synthetic", arch_id=f"a{i}", gflops=float(gflops[i]), params=float(params[i]),
                     target=float(ap[i]), features=dict(zip(names, map(float, values[i]), strict=True)))
                 for i in range(n))
    return Dataset(rows=rows, features=names, target="proxy", target_label="proxy AP", target_reason="synthetic",
                   searches=("synthetic",), complete={"synthetic": n})


def _delta(ds: Dataset) -> float:
    y = ds.column("target")
    inputs = (*ds.features, "gflops", "params")
    X = np.column_stack([ds.column(k) for k in inputs])
    full = cross_validate(X, y, inputs, repeats=1)
    size = cross_validate(X[:, -2:], y, inputs[-2:], repeats=1)
    return full.rho - size.rho


def test_the_surrogate_sees_a_signal_beyond_size_and_says_so_honestly_without_one() -> None:
    assert _delta(_dataset(30, signal=0.6, seed=3)) > 0.3
    assert _delta(_dataset(30, signal=0.0, seed=3)) < 0.1


def test_the_report_is_deterministic_and_json_ready() -> None:
    ds = _dataset(12, signal=0.6, seed=4)
    first, second = analyze_dataset(ds, repeats=1), analyze_dataset(ds, repeats=1)
    assert json.dumps(first, allow_nan=False) == json.dumps(second, allow_nan=False)
    assert first["features"][0]["feature"] == "gp_signal"
    assert first["importance"][0]["input"] == "gp_signal"


def test_fit_surrogate_predicts_metric_dicts_and_names_a_missing_input() -> None:
    ds = _dataset(12, signal=0.6, seed=5)
    model = fit_surrogate(ds.rows)
    assert model.features == ("gp_noise0", "gp_noise1", "gp_noise2", "gp_signal", "gflops", "params")
    metrics = [{**r.features, "gflops": r.gflops, "params_m": r.params / 1e6} for r in ds.rows]
    np.testing.assert_allclose(model.predict(metrics), model.predict([r.inputs() for r in ds.rows]))
    assert model.predict([]).shape == (0,)
    with pytest.raises(ConfigError, match="candidate 0 has no finite 'gp_noise0'"):
        model.predict([{"gflops": 1.0, "params": 1e6}])
    with pytest.raises(ConfigError, match=f"at least {MIN_TRIALS}"):
        fit_surrogate(ds.rows[:3])


# ------------------------------------------------------------------------------------------ real search stores
def _metrics(i: int, rng: np.random.Generator) -> dict[str, float]:
    gflops = float(rng.lognormal(0.0, 0.5))
    signal = float(rng.normal())
    metrics = {"gflops": gflops, "params": gflops * 1.3e6, "params_m": gflops * 1.3, "latency_ms": 2 * gflops,
               "ap": 0.2 + 0.05 * math.log(gflops) + 0.03 * signal + 0.005 * float(rng.normal()),
               "gp_max_sgp": float(3 + i % 4), "gp_mean_sgp": signal, "gp_n_cls_total": float(rng.integers(4, 20)),
               "gp_grad_norm_mean": float(rng.lognormal()), "gp_const": 1.0, "gp_measure_seconds": 0.5,
               "zc_synflow": float(rng.normal()), "zc_naswot": gflops + float(rng.normal())}
    if i % 2:
        metrics["zc_maedet_entropy"] = 1.0  # recorded for some trials only: dropped as missing
    metrics["ap50"] = 2 * metrics["ap"]
    metrics["val_loss"] = 1.5 - 2 * metrics["ap"]  # the demo's search objective
    return metrics


def _build_search(root: Path, name: str, arch_ids: list[str], *, seed: int, mlflow: bool) -> Path:
    """A finished search folder: config, an Optuna study with one complete trial per arch_id (the same arch_id
    gets the same metrics in every search), a failed one, and the MLflow store the tracker writes."""
    import optuna

    from gpnas.experiments.config import load_config, save_config
    from gpnas.results import study as st
    from gpnas.results.records import TrialResult
    from gpnas.results.tracking import MlflowTracker

    cfg = load_config("demo", [f"storage.root={root}", f"name={name}"])
    save_config(cfg, cfg.folder().path)
    info = cfg.info()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=st.open_storage(cfg.folder()), study_name=name,
                                directions=info.directions())
    for arch in arch_ids:
        metrics = _metrics(int(arch[1:]), np.random.default_rng(int(arch[1:]) + seed))
        st.tell_result(study, study.ask(), TrialResult(arch_id=arch, state="complete", metrics=metrics),
                       cfg.objectives, {})
    st.tell_result(study, study.ask(), TrialResult(arch_id="broken", state="failed", reason="diverged"),
                   cfg.objectives, {})
    if mlflow:
        tracker = MlflowTracker.connect(info)
        tracker.start_search(info)
        tracker.finish_search(info)
    return cfg.folder().path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis") / "runs"
    return {"alpha": _build_search(root, "alpha", [f"a{i}" for i in range(12)], seed=0, mlflow=True),
            "beta": _build_search(root, "beta", [f"a{i}" for i in range(9, 16)], seed=0, mlflow=False),
            "few": _build_search(root, "few", ["a0", "a1", "a2"], seed=0, mlflow=False)}


def _gpnas(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(tmp_path, *args, env=cli_env(COLUMNS="200"))


def _info(folder: Path) -> SearchInfo:
    """The search as the CLI reads it (its saved config)."""
    from gpnas.experiments.search_api import open_search

    return open_search(folder)[1].info()


@pytest.mark.slow
def test_the_dataset_keeps_one_row_per_arch_and_says_what_it_dropped(stores: dict[str, Path]) -> None:
    ds = build_dataset([_info(stores["alpha"]), _info(stores["beta"])])
    assert len(ds.rows) == 16 and sum(r.merged for r in ds.rows) == 19  # a9..a11 ran in both searches
    assert ds.complete == {"alpha": 12, "beta": 7} and ds.target == "proxy"
    assert "gp_measure_seconds" not in ds.features and "gp_max_sgp" in ds.features and "zc_synflow" in ds.features
    assert ds.dropped["zc_maedet_entropy"].startswith("missing in 8 of 16")
    assert ds.dropped["gp_const"].startswith("constant")


@pytest.mark.slow
def test_long_budget_ap_becomes_the_target_once_enough_candidates_have_it(stores: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "alpha"
    shutil.copytree(stores["alpha"], folder, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    (folder / "fidelity").mkdir()
    jobs = [{"label": f"trial-{i}", "kind": kind, "seed": seed, "arch_id": f"a{i}", "state": "complete",
             "ap": 0.5 + i / 100 + seed / 1000} for i in range(6) for kind, seed in (("reference", 0), ("reference", 1),
                                                                                    ("proxy", 0))]
    write = lambda n: (folder / "fidelity" / "runs.jsonl").write_text(  # noqa: E731
        "".join(json.dumps(j) + "\n" for j in jobs if int(j["arch_id"][1:]) < n) + '{"cut by a ki')
    write(6)
    ds = build_dataset([_info(folder)])
    assert ds.target == "fidelity" and len(ds.rows) == 6
    assert {r.arch_id: r.target for r in ds.rows}["a2"] == pytest.approx(0.5205)  # mean of its reference seeds
    assert build_dataset([_info(folder)], "proxy").target == "proxy"
    write(4)
    assert build_dataset([_info(folder)]).target == "proxy"  # auto: 4 candidates are too few
    with pytest.raises(ConfigError, match="4 distinct candidate"):
        build_dataset([_info(folder)], "fidelity")


@pytest.mark.slow
def test_gpnas_analyze_writes_the_report_and_logs_it_to_the_search_run(stores: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    folder = stores["alpha"]
    out = _gpnas(tmp_path, "analyze", str(folder))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "partial ρ" in out.stdout and "gp_mean_sgp" in out.stdout and "verdict:" in out.stdout
    for name in ("analysis.json", "analysis.md", "analysis.png"):
        assert (folder / "analysis" / name).stat().st_size > 0, name
    report = json.loads((folder / "analysis" / "analysis.json").read_text())
    assert report["n_rows"] == 12 and report["target"] == "proxy" and report["verdict"]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name("alpha")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`gpnas.role` = 'search'")[0]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "analysis")} == \
        {"analysis/analysis.json", "analysis/analysis.md", "analysis/analysis.png"}
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["analysis_delta_rho"] == pytest.approx(report["delta_rho"])
    assert {"analysis_surrogate_rho", "analysis_size_rho"} <= logged.keys()


@pytest.mark.slow
def test_gpnas_analyze_pools_several_searches(stores: dict[str, Path], tmp_path: Path) -> None:
    out = _gpnas(tmp_path, "analyze", "alpha", "beta", "--root", str(stores["alpha"].parent), "--json",
                 "--no-mlflow")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["searches"] == ["alpha", "beta"] and report["n_rows"] == 16
    assert Path(report["files"]["json"]).parent == stores["alpha"].parent / "analysis-alpha+beta"


@pytest.mark.slow
def test_gpnas_analyze_refuses_a_search_with_too_few_trials(stores: dict[str, Path], tmp_path: Path) -> None:
    out = _gpnas(tmp_path, "analyze", str(stores["few"]))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "search 'few'" in out.stderr and "3 complete trial" in out.stderr and "at least 5" in out.stderr
