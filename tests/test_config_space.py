from __future__ import annotations

import optuna
import pytest

from gpnas.errors import ConfigError
from gpnas.experiments.config import PROXY_STEPS, load_config
from gpnas.search_space.presets import get_preset
from gpnas.search_space.space import SearchSpace


def _space(genes: dict) -> SearchSpace:
    return SearchSpace.from_config(get_preset("yolor-csp-nano"), genes)


def test_packaged_configs_load_and_overrides_apply() -> None:
    for name in ("demo", "paper-ablation", "coco-gpu"):
        assert load_config(name).name == name
    cfg = load_config("demo", ["train.seconds=12", "budget.num_trials=3", "objectives=[ap, gflops]"])
    assert cfg.train.seconds == 12 and cfg.budget.num_trials == 3 and cfg.objectives == ("ap", "gflops")
    assert cfg.directions() == ["maximize", "minimize"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["trian.seconds=3"], "did you mean 'train'"),
        (["train.secnds=3"], "did you mean 'seconds'"),
        (["objectives=[ap, speed]"], "objectives"),
        (["budget.num_trials=0"], "at least 1"),
        (["sampler.type=cmaes"], "sampler.type"),
        (["no_equals_sign"], "key.sub=value"),
        (["data.kind=coco"], "data.train_ann"),
        (["train.lrr=0.1"], "did you mean 'lr'"),  # the train section is the trainer's own config type
        (["train.hyp.clss=1"], "did you mean 'cls'"),
        (["train.lr=-1"], "train.lr must be positive"),
        (["latency.repeats=0"], "latency.repeats=0"),  # the latency section is the protocol's
        (["latency.warmupp=3"], "did you mean 'warmup'"),
        (["objectives=[ap, speed]"], "unknown: ['speed']"),
        (["latency.enabeld=false"], "did you mean 'enabled'"),
        (["train.amp=1"], "train.amp must be true or false"),
        (["space.genes.block.choicez=[csp]"], "did you mean 'choices'"),  # each gene is the space's Gene
        (["space.genes.depth_multiple.range=[2, 1]"], "space.genes.depth_multiple.range [2.0, 1.0] must be"),
        (["space.genes.depth_multiple={range: [1, 2], log: maybe}"], "depth_multiple.log must be true or false"),
    ],
)
def test_bad_config_errors_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config("demo", overrides)


def test_saved_configs_read_back_the_same() -> None:
    from gpnas.experiments.config import SearchConfig

    for name in ("demo", "paper-ablation", "coco-gpu"):
        cfg = load_config(name, ["train.eval_steps=[2, 4]", "latency.warmup_seconds=1"])
        assert SearchConfig(**cfg.model_dump(mode="json")) == cfg == SearchConfig(**cfg.model_dump())
        assert cfg.latency.protocol(img_size=64).img_size == 64 and cfg.train.eval_steps == (2, 4)


def test_search_train_defaults_match_the_benchmarked_proxy_trainer() -> None:
    from gpnas.experiments.config import SearchConfig
    from gpnas.trainers.train_config import TrainConfig

    search, trainer = SearchConfig(name="x").train, TrainConfig()
    assert (search.batch_size, search.optimizer, search.lr) == (trainer.batch_size, trainer.optimizer, trainer.lr)
    assert (search.ema, search.amp) == (trainer.ema, trainer.amp)
    assert (search.steps, search.seconds) == (PROXY_STEPS, None)  # a work budget by default
    assert search.max_seconds and search.max_seconds > 0  # with a wall-clock safety


def test_seconds_alone_selects_the_time_mode_and_no_budget_means_the_default() -> None:
    cfg = load_config(None, ["train.seconds=30"])
    assert (cfg.train.steps, cfg.train.seconds) == (None, 30)
    both = load_config(None, ["train.seconds=30", "train.steps=50"])
    assert (both.train.steps, both.train.seconds) == (50, 30)  # whichever comes first
    epochs = load_config(None, ["train.epochs=2"]).train
    assert (epochs.epochs, epochs.steps) == (2, None)  # another budget alone replaces the default steps
    assert load_config(None, ["train.steps=null"]).train.steps == PROXY_STEPS  # no budget at all: the default
    with pytest.raises(ConfigError, match="max_seconds must be positive"):
        load_config(None, ["train.max_seconds=0"])


def test_missing_config_lists_packaged_ones(tmp_path) -> None:
    with pytest.raises(ConfigError, match="demo"):
        load_config(tmp_path / "nope.yaml")


def test_conditional_genes_and_round_trip() -> None:
    space = _space({
        "block": {"choices": ["residual", "csp", "elan"]},
        "fusion": {"choices": ["both", "first", "last", "none"]},
        "mask_ratio": {"choices": [0.5, 1.0], "per_stage": True},
        "backbone_stacks": {"range": [1, 3]},
        "widths": {"choices": [[128, 256, 512, 1024], [256, 512, 1024, 1024]]},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        spec = space.suggest(trial)
        block = spec.block
        seen.add(block)
        assert ("fusion" in trial.params) == (block == "csp")
        assert ("backbone_stacks" in trial.params) == (block == "elan")
        assert ("mask_ratio_p2" in trial.params) == (block != "elan")
        assert space.contains(spec)
        assert space.from_params(space.to_params(spec)).arch_id == spec.arch_id
        study.tell(trial, 0.0)
    assert seen == {"residual", "csp", "elan"}


def test_sampler_reproducible_for_a_seed() -> None:
    space = _space({"block": {"choices": ["residual", "csp"]}, "split_ratio": {"range": [0.25, 0.75], "step": 0.25}})

    def run(seed: int) -> list[str]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))
        ids = []
        for i in range(8):
            trial = study.ask()
            ids.append(space.suggest(trial).arch_id)
            study.tell(trial, float(i % 3))
        return ids

    assert run(7) == run(7)


def test_contains_rejects_points_outside() -> None:
    space = _space({"block": {"choices": ["csp"]}, "fusion": {"choices": ["both", "last"]}})
    base = get_preset("yolor-csp-nano")
    assert space.contains(base)
    assert not space.contains(base.replace(fusion="none"))
    assert not space.contains(base.replace(neck="fpn"))
    assert not space.contains(base.replace(block="elan"))


def test_unknown_gene_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'fusion'"):
        _space({"fuson": {"choices": ["both"]}})
    with pytest.raises(ConfigError, match="per_stage"):
        _space({"neck": {"choices": ["fpn"], "per_stage": True}})


def test_an_objective_is_one_definition_that_every_layer_reads() -> None:
    """Registering an objective (here params_m, written by the size stage) is enough for config validation,
    directions and Ray modes, the Pareto view, MLflow metrics and report labels."""
    from gpnas.objectives.definitions import OBJECTIVES, Objective, register_objective
    from gpnas.results.front import front_summary
    from gpnas.results.records import TrialRecord, TrialResult
    from gpnas.results.report import _label
    from gpnas.results.tracking import _logged_metric

    with pytest.raises(ConfigError, match="params_m"):
        load_config(None, ["objectives=[ap, params_m]"])
    register_objective(Objective("params_m", "minimize", "M", "parameters (M)", "cheap", constraint="max_params_m"))
    try:
        cfg = load_config(None, ["objectives=[ap, params_m]", "constraints.max_params_m=2.0"])
        assert cfg.directions() == ["maximize", "minimize"] and cfg.modes() == ["max", "min"]
        recs = [TrialRecord(n, "complete", None, f"a{n}", None,
                            TrialResult(f"a{n}", "complete", metrics={"ap": ap, "params_m": pm}), None, {})
                for n, (ap, pm) in enumerate([(0.5, 1.0), (0.4, 0.5), (0.3, 0.9)])]
        summary = front_summary(recs, cfg.objectives, cfg.constraints.model_dump())
        assert summary.front == [0, 1] and summary.reference == [0.0, 2.0]  # the constraint bounds its reference
        assert _logged_metric("params_m") and _label("params_m") == "parameters (M)"
    finally:
        OBJECTIVES.pop("params_m")


@pytest.mark.parametrize(("override", "needle"), [
    ("data.flip=1.5", r"data\.flip must be in \[0, 1\] \(a probability\), got 1\.5"),
    ("data.hsv_h=0.9", r"data\.hsv_h must be in \[0, 0\.5\].*got 0\.9"),
    ("data.hsv_s=-0.1", r"data\.hsv_s must be in \[0, 1\].*got -0\.1"),
    ("data.cache=maybe", r"data\.cache = 'maybe' is invalid: data\.cache must be auto .*, true or false"),
    ("data.hsvv=0.4", r"unknown key 'data\.hsvv'; did you mean 'hsv_v'\?"),
])
def test_data_augmentation_and_cache_keys_are_validated(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_data_augmentation_defaults_per_kind() -> None:
    from gpnas.trainers.augment import Augment

    assert load_config(None).data.augment() == Augment()  # digits: no flip (a mirrored digit is another glyph)
    coco = load_config("coco-gpu")
    assert coco.data.augment() == Augment(flip=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4)
    assert (coco.data.cache, coco.train.val_subset) == (False, 500)
    assert load_config(None, ["data.flip=0.25", "data.cache=true"]).data.cache is True
