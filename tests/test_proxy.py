"""ProxyTrainer: it learns, it stops on NaN, it respects every budget, its callbacks see what they should, and
evaluation and EMA are callbacks."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch

from gpnas.errors import ConfigError, TrainingDiverged
from gpnas.objectives.accuracy import METRIC_KEYS, CocoEvaluator, ValEvaluation, inference_on_dataset, val_evaluation
from gpnas.search_space.builder import build_detector
from gpnas.search_space.presets import ANCHORS_DIGITS, get_preset
from gpnas.trainers.callbacks import Callback, EarlyStopping
from gpnas.trainers.data import LoaderOptions
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.digits import build_digits_dataset
from gpnas.trainers.ema import EMA, ModelEMA
from gpnas.trainers.proxy import FitResult, ProxyTrainer
from gpnas.trainers.train_config import MAX_AUTO_WORKERS, PROXY_STEPS, TRIAL_MAX_SECONDS, TrainBudget, TrainConfig

IMG = 64  # the 160-px digits letterboxed down: a step takes ~20 ms, so every test here is a few seconds


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ProxyData:
    root = tmp_path_factory.mktemp("digits")
    build_digits_dataset(root, n_train=32, n_val=16)
    return ProxyData.digits(root=root, n_train=32, n_val=16, img_size=IMG, augment=False)


def _model() -> torch.nn.Module:
    scale = IMG / 160
    anchors = tuple(tuple((max(1, round(w * scale)), max(1, round(h * scale))) for w, h in level)
                    for level in ANCHORS_DIGITS)
    torch.manual_seed(0)
    return build_detector(get_preset("yolor-v3-nano").replace(img_size=IMG, anchors=anchors))


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.losses: list[float] = []
        self.metrics: list[dict[str, float]] = []
        self.result: FitResult | None = None

    def on_fit_start(self, trainer: ProxyTrainer) -> None:
        self.calls.append("fit_start")

    def on_step_end(self, trainer: ProxyTrainer, losses: dict[str, float]) -> None:
        self.losses.append(losses["total"])

    def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
        self.calls.append("epoch_end")
        self.metrics.append(metrics)

    def on_fit_end(self, trainer: ProxyTrainer, result: FitResult) -> None:
        self.calls.append("fit_end")
        self.result = result


def test_loss_decreases_when_overfitting_one_batch(data: ProxyData) -> None:
    # 32 images, batch 32, no augmentation: every step sees the same batch.
    rec = Recorder()
    config = TrainConfig(batch_size=32, lr=0.01, warmup_fraction=0.1, ema=False, eval_every=1000)
    result = ProxyTrainer(config, [rec]).fit(_model(), data, TrainBudget(steps=60))
    assert result.steps == 60 == len(rec.losses)
    first, last = sum(rec.losses[:5]) / 5, sum(rec.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert all(math.isfinite(x) for x in rec.losses)


class Poison(Callback):
    """Turns the weights to NaN after step ``k``, so the loss of step k (0-based) is NaN."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_step_end(self, trainer: ProxyTrainer, losses: dict[str, float]) -> None:
        if trainer.step == self.k:
            model = self.model
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))


def test_nan_loss_raises_training_diverged_naming_the_step(data: ProxyData) -> None:
    model = _model()
    poison = Poison(3)
    poison.model = model  # type: ignore[attr-defined]
    with pytest.raises(TrainingDiverged, match=r"nan at step 3 \(epoch 0\)"):
        ProxyTrainer(TrainConfig(batch_size=8, eval_every=1000), [poison]).fit(model, data, TrainBudget(steps=10))


def test_step_budget(data: ProxyData) -> None:
    result = ProxyTrainer(TrainConfig(batch_size=8)).fit(_model(), data, TrainBudget(steps=5))
    assert (result.steps, result.epochs) == (5, 2)  # 4 steps per epoch; the 5th step opens epoch 2
    assert result.images_per_second > 0 and result.train_seconds > 0


def test_epoch_budget_and_callbacks_see_ap(data: ProxyData) -> None:
    rec, config = Recorder(), TrainConfig(batch_size=8)
    result = ProxyTrainer(config, [rec, val_evaluation(data, config)]).fit(_model(), data, TrainBudget(epochs=2))
    assert (result.steps, result.epochs) == (8, 2)
    assert rec.calls == ["fit_start", "epoch_end", "epoch_end", "fit_end"]
    assert [m["epoch"] for m in rec.metrics] == [1.0, 2.0]
    assert all({"ap", "ap50", "step"} <= m.keys() for m in rec.metrics)
    assert rec.result is result and result.history == rec.metrics and result.ap == rec.metrics[-1]["ap"]
    assert 0.0 <= result.ap <= result.ap50 <= 1.0
    assert result.eval_seconds > 0 and "model" not in result.to_dict()


def test_eval_every_skips_epochs_but_always_evaluates_the_last(data: ProxyData) -> None:
    rec = Recorder()
    ProxyTrainer(TrainConfig(batch_size=16, eval_every=2), [rec]).fit(_model(), data, TrainBudget(epochs=3))
    assert [m["epoch"] for m in rec.metrics] == [2.0, 3.0]


def test_eval_steps_are_evaluation_points_and_a_stop_there_ends_the_fit(data: ProxyData) -> None:
    rec = Recorder()  # 4 steps per epoch at batch 8: steps 2 and 4 (= the epoch end, evaluated once) and 6
    ProxyTrainer(TrainConfig(batch_size=8, eval_steps=(2, 4, 6)), [rec]).fit(_model(), data, TrainBudget(steps=8))
    assert [m["step"] for m in rec.metrics] == [2.0, 4.0, 6.0, 8.0]

    class StopAtSix(Callback):  # as successive halving does at a rung
        def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
            trainer.should_stop = metrics["step"] == 6

    stopped = Recorder()
    result = ProxyTrainer(TrainConfig(batch_size=8, eval_steps=(2, 6)), [StopAtSix(), stopped]).fit(
        _model(), data, TrainBudget(steps=12))
    assert result.steps == 6 and result.stopped_early
    assert [m["step"] for m in stopped.metrics] == [2.0, 4.0, 6.0]
    with pytest.raises(ConfigError, match=r"train\.eval_steps"):
        TrainConfig(eval_steps=(0,))


def test_seconds_budget_counts_training_time_only(data: ProxyData) -> None:
    result = ProxyTrainer(TrainConfig(batch_size=8)).fit(_model(), data, TrainBudget(seconds=1.5))
    assert result.steps >= 1 and result.epochs >= 1
    step = result.train_seconds / result.steps  # a loaded machine makes steps slow: bound the overrun in steps
    assert 1.5 <= result.train_seconds < 1.5 + 3 * step + 1.0  # stops within a step or so of the budget


def test_early_stopping_sets_should_stop() -> None:
    trainer = ProxyTrainer()
    stop = EarlyStopping(metric="ap", patience=2)
    for ap, expected in ((0.1, False), (0.2, False), (0.2, False), (0.15, True)):
        stop.on_epoch_end(trainer, {"ap": ap})
        assert trainer.should_stop is expected


def test_early_stopping_ends_the_fit(data: ProxyData) -> None:
    class Flat(Callback):  # AP that never improves after the first evaluation
        def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
            metrics["ap"] = 0.0

    result = ProxyTrainer(TrainConfig(batch_size=16), [Flat(), EarlyStopping(patience=1)]).fit(
        _model(), data, TrainBudget(epochs=10))
    assert result.stopped_early and result.epochs == 2


def test_ema_update_moves_towards_the_model() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # decay is 0.5 from the first update
    before = ema.ema[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()
    torch.testing.assert_close(ema.ema[0].weight, before + 0.5)
    assert int(ema.ema[1].num_batches_tracked) == 7


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"at least one of train\.steps, train\.epochs or train\.seconds"):
        TrainBudget()
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eval_every"):
        TrainConfig(eval_every=0)


def test_batch_larger_than_train_set_is_a_config_error(data: ProxyData, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size 64"):
        ProxyTrainer(TrainConfig(batch_size=64)).fit(_model(), data, TrainBudget(steps=1))


def _weights_after(data: ProxyData, steps: int) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(123)  # whatever the process did before, the fit's seed decides the batches
    config = TrainConfig(batch_size=8, threads=1, seed=5)
    result = ProxyTrainer(config, [val_evaluation(data, config)]).fit(_model(), data, TrainBudget(steps=steps))
    assert result.model is not None
    return result.ap, {k: v.clone() for k, v in result.model.state_dict().items()}


def test_work_budget_is_bit_identical_on_a_quiet_and_a_loaded_machine(data: ProxyData) -> None:
    import subprocess
    import sys

    ap_quiet, quiet = _weights_after(data, 12)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        ap_loaded, loaded = _weights_after(data, 12)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert ap_quiet == ap_loaded
    assert quiet.keys() == loaded.keys()
    for name in quiet:
        assert torch.equal(quiet[name], loaded[name]), name


def test_wall_clock_cap_stops_the_run_and_says_so(data: ProxyData) -> None:
    rec, config = Recorder(), TrainConfig(batch_size=8)
    result = ProxyTrainer(config, [rec, val_evaluation(data, config)]).fit(
        _model(), data, TrainBudget(steps=100_000, max_seconds=1.0))
    assert result.timed_out and 1 <= result.steps < 100_000
    assert rec.metrics and result.ap == rec.metrics[-1]["ap"]  # the partial AP was evaluated


def test_max_seconds_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_seconds"):
        TrainBudget(steps=3, max_seconds=0)


# ------------------------------------------------------------------ evaluation and EMA as callbacks
def test_without_an_evaluation_callback_no_ap_is_recorded(data: ProxyData) -> None:
    rec = Recorder()
    result = ProxyTrainer(TrainConfig(batch_size=8), [rec]).fit(_model(), data, TrainBudget(epochs=2))
    assert result.ap == 0.0 and result.ap50 == 0.0
    assert [set(m) for m in rec.metrics] == [{"epoch", "step", "train_seconds"}] * 2
    assert result.history == rec.metrics


def test_recorded_ap_is_inference_on_dataset_of_the_returned_model(data: ProxyData) -> None:
    config = TrainConfig(batch_size=8)
    result = ProxyTrainer(config, [val_evaluation(data, config)]).fit(_model(), data, TrainBudget(steps=6))
    assert result.model is not None
    evaluator = CocoEvaluator(data.val.coco, category_ids=data.val.category_ids)
    direct = inference_on_dataset(result.model, data.val_loader(), evaluator)
    assert direct == {k: result.metrics[k] for k in METRIC_KEYS}


def test_ema_callback_is_first_and_its_average_is_the_returned_model(data: ProxyData) -> None:
    rec = Recorder()
    model = _model()
    trainer = ProxyTrainer(TrainConfig(batch_size=8, ema_decay=0.9, ema_tau=1.0), [rec])
    assert isinstance(trainer.callbacks[0], EMA) and trainer.callbacks[1] is rec
    result = trainer.fit(model, data, TrainBudget(steps=3))
    ema = trainer.callbacks[0].model_ema
    assert ema is not None and ema.updates == 3
    assert result.model is ema.ema is trainer.eval_model and trainer.model is model
    assert not torch.equal(next(result.model.parameters()), next(model.parameters()))


def test_ema_off_returns_the_trained_model_and_a_given_ema_is_not_doubled(data: ProxyData) -> None:
    model = _model()
    result = ProxyTrainer(TrainConfig(batch_size=8, ema=False)).fit(model, data, TrainBudget(steps=2))
    assert result.model is model
    mine = EMA(decay=0.5)
    trainer = ProxyTrainer(TrainConfig(batch_size=8), [mine])
    assert trainer.callbacks == [mine]
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        EMA(decay=1.0)


def test_early_stopping_needs_its_metric(data: ProxyData) -> None:
    with pytest.raises(ConfigError, match=r"metric='ap'.*val_evaluation"):
        ProxyTrainer(TrainConfig(batch_size=16), [EarlyStopping()]).fit(_model(), data, TrainBudget(epochs=1))


def test_val_evaluation_takes_the_config_thresholds(data: ProxyData) -> None:
    evaluation = val_evaluation(data, TrainConfig(conf_thres=0.25, iou_thres=0.5, max_det=7))
    assert isinstance(evaluation, ValEvaluation) and evaluation.val is data.val
    assert (evaluation.conf_thres, evaluation.iou_thres, evaluation.max_det) == (0.25, 0.5, 7)
    assert evaluation.evaluator.max_dets == 7


def test_val_subset_per_epoch_and_the_whole_split_at_the_end(data: ProxyData) -> None:
    config = TrainConfig(batch_size=8, val_subset=4)
    rec = Recorder()
    result = ProxyTrainer(config, [val_evaluation(data, config), rec]).fit(_model(), data, TrainBudget(epochs=2))
    assert [(m["epoch"], m["val_images"]) for m in result.history] == [(1.0, 4.0), (2.0, 16.0)]
    assert result.model is not None
    evaluator = CocoEvaluator(data.val.coco, category_ids=data.val.category_ids)
    full = inference_on_dataset(result.model, data.val_loader(), evaluator)
    assert full == {k: result.metrics[k] for k in METRIC_KEYS}

    class StopAtTwo(Callback):  # a rung stop right after a subset evaluation: the same step again, all images
        def on_epoch_end(self, trainer: ProxyTrainer, metrics: dict[str, float]) -> None:
            trainer.should_stop = trainer.step >= 2

    config = TrainConfig(batch_size=8, val_subset=4, eval_steps=(2,))
    result = ProxyTrainer(config, [val_evaluation(data, config), StopAtTwo()]).fit(_model(), data, TrainBudget(steps=8))
    assert [(m["step"], m["val_images"]) for m in result.history] == [(2.0, 4.0), (2.0, 16.0)]


# ------------------------------------------------------------------ TrainConfig as the search's train section
def test_train_config_budget_defaults() -> None:
    default = TrainConfig()
    assert (default.steps, default.epochs, default.seconds) == (PROXY_STEPS, None, None)
    assert default.max_seconds == TRIAL_MAX_SECONDS
    assert default.budget == TrainBudget(steps=PROXY_STEPS, max_seconds=TRIAL_MAX_SECONDS)
    assert default.budget_label() == f"{PROXY_STEPS} steps"
    epochs_only = TrainConfig(epochs=2)
    assert (epochs_only.steps, epochs_only.epochs) == (None, 2)
    assert TrainConfig(seconds=30, steps=50).budget_label() == "50 steps or 30 seconds"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"lr": 0}, "train.lr"),
    ({"batch_size": 0}, "train.batch_size"),
    ({"steps": 0}, "train.steps"),
    ({"max_seconds": -1.0}, "train.max_seconds"),
    ({"ema_tau": 0}, "train.ema_tau"),
    ({"num_workers": -1}, r"train.num_workers must be 'auto' or an integer >= 0.*got -1"),
    ({"num_workers": "lots"}, r"train.num_workers must be 'auto'.*got 'lots'"),
    ({"pin_memory": "yes"}, r"train.pin_memory must be 'auto' \(on CUDA only\), true or false, got 'yes'"),
    ({"persistent_workers": 1}, r"train.persistent_workers must be true or false"),
    ({"prefetch_factor": 0}, r"train.prefetch_factor must be an integer >= 1"),
    ({"val_subset": -3}, r"train.val_subset must be an integer >= 0.*got -3"),
])
def test_config_messages_name_the_search_config_key(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("train.", r"train\.")):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_train_config_reads_a_mapping_and_refuses_unknown_keys() -> None:
    from gpnas.search_space.sections import from_mapping, to_mapping

    config = from_mapping(TrainConfig, {"lr": 0.01, "epochs": 3, "hyp": {"cls": 2}, "eval_steps": [2]}, section="train")
    assert (config.lr, config.epochs, config.steps, config.hyp.cls, config.eval_steps) == (0.01, 3, None, 2, (2,))
    assert from_mapping(TrainConfig, {}, section="train").steps == PROXY_STEPS  # __post_init__ ran
    assert from_mapping(TrainConfig, to_mapping(config), section="train") == config  # the saved form reads back
    for bad, needle in (({"lrr": 0.01}, "unknown key 'train.lrr'; did you mean 'lr'?"),
                        ({"hyp": {"clss": 2}}, "unknown key 'train.hyp.clss'; did you mean 'cls'?"),
                        ({"hyp": {"cls": -1}}, "train.hyp.cls must be a finite gain"),
                        ({"seed": "x"}, "train.seed must be an integer"),
                        ({"steps": 2.5}, "train.steps must be a whole number")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            from_mapping(TrainConfig, bad, section="train")


def test_trainers_never_import_objectives() -> None:
    """Imports flow search_space -> trainers -> objectives: no module of trainers/ imports gpnas.objectives."""
    offenders = []
    for path in sorted((Path(__file__).resolve().parents[1] / "trainers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("gpnas.objectives")]
    assert offenders == []


def test_loader_options_per_device() -> None:
    assert TrainConfig().loader_options() == LoaderOptions(persistent_workers=True)  # CPU: no workers, no pinning
    cuda = TrainConfig(device="cuda", threads=3).loader_options()
    assert (cuda.num_workers, cuda.pin_memory) == (3, True)  # one worker per CPU the trial holds
    assert TrainConfig(device="cuda", threads=64).loader_options().num_workers == MAX_AUTO_WORKERS
    explicit = TrainConfig(device="cuda", num_workers=1, pin_memory=False, prefetch_factor=4).loader_options()
    assert (explicit.num_workers, explicit.pin_memory, explicit.kwargs()["prefetch_factor"]) == (1, False, 4)
    assert TrainConfig(num_workers=2).loader_options().num_workers == 2  # an explicit value wins on CPU too
